"""``python -m services.presence``"""

import sys

from libs.service.runner import run
from services.presence.service import build
from services.presence.settings import PresenceSettings

if __name__ == "__main__":
    sys.exit(run("presence", PresenceSettings, build))
