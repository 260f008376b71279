"""Gateway side of the voice events (filled in with the voice feature)."""

from __future__ import annotations

from services.gateway.transport.socket_events import SocketGateway


def register(gw: SocketGateway) -> None:
    """Add this feature's client events, connect checks and disconnect hooks to gw."""
