"""``python -m services.gateway``"""

import sys

from libs.service.runner import run
from services.gateway.service import build
from services.gateway.settings import GatewaySettings

if __name__ == "__main__":
    sys.exit(run("gateway", GatewaySettings, build))
