"""``python -m services.messaging``"""

import sys

from libs.service.runner import run
from services.messaging.service import build
from services.messaging.settings import MessagingSettings

if __name__ == "__main__":
    sys.exit(run("messaging", MessagingSettings, build))
