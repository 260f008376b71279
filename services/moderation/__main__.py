"""``python -m services.moderation``"""

import sys

from libs.service.runner import run
from services.moderation.service import build
from services.moderation.settings import ModerationSettings

if __name__ == "__main__":
    sys.exit(run("moderation", ModerationSettings, build))
