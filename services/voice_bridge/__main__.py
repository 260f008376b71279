"""``python -m services.voice_bridge``"""

import sys

from libs.service.runner import run
from services.voice_bridge.service import build
from services.voice_bridge.settings import VoiceBridgeSettings

if __name__ == "__main__":
    sys.exit(run("voice_bridge", VoiceBridgeSettings, build))
