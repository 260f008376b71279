"""Typed bus messages (msgspec): every request and reply on NATS is one of these.

One package, one module per owner: ``core`` (shared payloads, messaging, gateway
control), ``presence``, ``moderation``, ``voice``. Import from the package.
"""

from libs.bus.schemas.core import *
from libs.bus.schemas.core import Struct, dumps  # noqa: F401
from libs.bus.schemas.moderation import *
from libs.bus.schemas.presence import *
from libs.bus.schemas.voice import *
