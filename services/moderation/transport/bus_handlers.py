"""Moderation's NATS handlers: decode -> rules/store -> encode; after commit, make every
gateway act (and wait for it), then emit the events.

Order after a kick or ban is committed:
1. every gateway node makes the target's sockets leave the guild's channel rooms, and
   confirms (so the target receives nothing more from the guild);
2. the target's own room gets ``moderation``;
3. the guild's channel rooms get ``member:removed`` (the target is no longer in them).
The change is committed before any of this: a failure here is logged and counted, never
turned into an error for an action that has happened.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from libs.bus import schemas, subjects
from libs.bus.client import Bus
from libs.bus.subjects import ModerationOps as Ops
from libs.errors import ChatError
from libs.sio.redis_manager import ResilientRedisManager, channel_room, user_room
from services.moderation import metrics
from services.moderation.adapters.gateways import GatewayFanout
from services.moderation.adapters.store import ModerationStore, Outcome
from services.moderation.domain import rules
from services.moderation.domain.rules import Action

log = logging.getLogger(__name__)


class ModerationHandlers:
    def __init__(self, store: ModerationStore, bus: Bus, emitter: ResilientRedisManager,
                 fanout: GatewayFanout) -> None:
        self.store = store
        self.bus = bus
        self.emitter = emitter
        self.fanout = fanout

    async def register(self) -> None:
        q = subjects.queue_group("moderation")
        table: list[tuple[str, Callable[[Any], Awaitable[Any]], type]] = [
            (Ops.KICK, self.kick, schemas.KickRequest),
            (Ops.BAN, self.ban, schemas.BanRequest),
            (Ops.UNBAN, self.unban, schemas.UnbanRequest),
            (Ops.TIMEOUT, self.timeout, schemas.TimeoutRequest),
        ]
        for op, handler, req_type in table:
            await self.bus.serve(subjects.service_request("moderation", op), handler, req_type, queue=q)

    # -- handlers ------------------------------------------------------------------------
    async def kick(self, req: schemas.KickRequest) -> schemas.ModerationReply:
        with _refusals(Action.KICK):
            outcome = await self.store.kick(req.user.id, req.guild_id, req.user_id,
                                            rules.clean_reason(req.reason))
        return await self._after_commit(req.user.id, outcome)

    async def ban(self, req: schemas.BanRequest) -> schemas.ModerationReply:
        with _refusals(Action.BAN):
            rules.check_duration(req.duration_s, required=False)
            outcome = await self.store.ban(req.user.id, req.guild_id, req.user_id,
                                           rules.clean_reason(req.reason), req.duration_s)
        return await self._after_commit(req.user.id, outcome)

    async def unban(self, req: schemas.UnbanRequest) -> schemas.ModerationReply:
        with _refusals(Action.UNBAN):
            outcome = await self.store.unban(req.user.id, req.guild_id, req.user_id)
        return await self._after_commit(req.user.id, outcome)

    async def timeout(self, req: schemas.TimeoutRequest) -> schemas.ModerationReply:
        with _refusals(Action.TIMEOUT):
            rules.check_duration(req.duration_s, required=True)
            outcome = await self.store.timeout(req.user.id, req.guild_id, req.user_id,
                                               rules.clean_reason(req.reason), req.duration_s)
        return await self._after_commit(req.user.id, outcome)

    # -- after commit --------------------------------------------------------------------
    async def _after_commit(self, actor_id: str, o: Outcome) -> schemas.ModerationReply:
        metrics.ACTIONS.labels(o.action.value).inc()
        gateways = 0
        if o.removed:
            gateways = await self._leave_rooms(o)
        if o.removed or o.action is Action.TIMEOUT:
            event: dict[str, Any] = {"action": o.action.value, "guild_id": o.guild_id, "reason": o.reason}
            if o.action is not Action.KICK:
                event["until"] = o.until
            await self._emit("moderation", event, user_room(o.target_id))
        if o.removed and o.channel_ids:
            await self._emit("member:removed",
                             {"guild_id": o.guild_id, "user_id": o.target_id, "action": o.action.value},
                             [channel_room(c) for c in o.channel_ids])
        log.info("moderation %s applied", o.action.value,
                 extra={"guild_id": o.guild_id, "actor_id": actor_id, "target_id": o.target_id,
                        "gateways": gateways})
        return schemas.ModerationReply(action=o.action.value, guild_id=o.guild_id, user_id=o.target_id,
                                       until=o.until, gateways=gateways)

    async def _leave_rooms(self, o: Outcome) -> int:
        """Every gateway node takes the target's sockets out of the guild's rooms; the
        number of nodes that confirmed."""
        ctl = schemas.GatewayControl(op="leave", user_ids=[o.target_id], channel_ids=o.channel_ids,
                                     reason=o.action.value)
        try:
            result = await self.fanout.broadcast(ctl)
        except ChatError as exc:
            metrics.CONTROL_FAILED.inc()
            log.warning("gateways not told to drop the target's rooms: %s", exc.code,
                        extra={"guild_id": o.guild_id, "target_id": o.target_id})
            return 0
        except Exception:
            metrics.CONTROL_FAILED.inc()
            log.exception("gateway control broadcast failed",
                          extra={"guild_id": o.guild_id, "target_id": o.target_id})
            return 0
        if not result.acked or result.failed:
            log.warning("gateway control: %d nodes confirmed, %d failed", len(result.acked), result.failed,
                        extra={"guild_id": o.guild_id, "target_id": o.target_id})
        else:
            log.info("gateway control confirmed by %d nodes in %.0f ms", len(result.acked),
                     result.elapsed_s * 1000, extra={"nodes": result.acked})
        return len(result.acked)

    async def _emit(self, event: str, data: dict[str, Any], room: str | list[str]) -> None:
        try:
            await self.emitter.emit(event, data, room=room, namespace="/")
        except Exception:
            metrics.EMIT_FAILED.labels(event).inc()
            log.exception("could not hand %s to the Socket.IO adapter", event)
            return
        metrics.EMITS.labels(event).inc()


@contextmanager
def _refusals(action: Action) -> Iterator[None]:
    """Count a refused request by action and error code, and let the error through."""
    try:
        yield
    except ChatError as exc:
        metrics.REFUSED.labels(action.value, exc.code).inc()
        raise
