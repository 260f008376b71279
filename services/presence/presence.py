"""Presence and typing: sessions, visible status, broadcasts, expiry, node liveness.

State lives in Redis (:class:`PresenceStore`); this class decides what changed and who
is told. Broadcasts go through the shared Socket.IO adapter to guild rooms and the
friends' user rooms, once per visible change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from prometheus_client import Counter, Gauge

from libs.bus import schemas, subjects
from libs.bus.client import Bus
from libs.observability import metrics
from libs.sio.redis_manager import ResilientRedisManager, channel_room, guild_room, user_room
from services.presence.adapters.presence_store import PresenceStore
from services.presence.domain.status import visible_status

log = logging.getLogger(__name__)

ANNOUNCED = Counter("chat_presence_announcements_total", "presence events broadcast")
TYPING_STOPS = Counter("chat_presence_typing_stops_total", "typing:stop emitted", ["reason"])
NODES_DEAD = Counter("chat_presence_dead_nodes_total", "gateway nodes declared dead and cleaned up")
RESYNCS = Counter("chat_presence_resyncs_total", "gateway nodes asked to re-register their sessions")
TYPING_ENTRIES = Gauge("chat_presence_typing_entries", "users typing somewhere")
OFFLINE_AFTER_GRACE = Counter("chat_presence_offline_grace_ended_total",
                              "users whose offline grace ran out (announced if still without a session)")
KNOWN_NODES = Gauge("chat_presence_nodes", "gateway nodes with a recent heartbeat record")
RESYNC_MIN_S = 30.0  # at most one resync request per node in this long
CONTACTS_PER_LOOKUP = 1000  # users per presence lookup (one script call each)
CLOSE_CHUNK = 500  # sessions per Redis transaction when a node's sessions are dropped


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class PresenceService:
    def __init__(self, store: PresenceStore, emitter: ResilientRedisManager, bus: Bus, *,
                 typing_ttl_s: float, node_timeout_s: float, offline_grace_s: float = 0.0) -> None:
        self.store = store
        self.emitter = emitter
        self.bus = bus
        self.typing_ttl_s = typing_ttl_s
        self.node_timeout_s = node_timeout_s
        self.offline_grace_s = offline_grace_s
        self.next_sweep_at = 0.0  # when the sweep loop plans to run next (set by the loop)
        self.sweep_wakeup = asyncio.Event()
        self._last_resync: dict[str, float] = {}
        self._mismatch: dict[str, tuple[int, int]] = {}  # node -> (its count, ours) at the last heartbeat

    # -- sessions ------------------------------------------------------------------------
    async def open(self, req: schemas.SessionOpen) -> schemas.SessionOpenReply:
        return (await self.open_many([req]))[0]

    async def open_many(self, reqs: list[schemas.SessionOpen]) -> list[schemas.SessionOpenReply]:
        """Record sessions (one Redis round trip for all), announce the users who just came
        online, and answer each with the presences of its contacts (one lookup for the
        contacts of all)."""
        opened = await self.store.open_sessions(
            [(r.user.id, r.session_id, r.node, r.guild_ids, r.friend_ids) for r in reqs])
        await self.announce_many([(req.user.id, chosen, 1, (req.guild_ids, req.friend_ids))
                                  for req, (before, chosen) in zip(reqs, opened, strict=True)
                                  if before == 0 and req.announce])
        wanted = list(dict.fromkeys(u for r in reqs for u in r.contact_ids))
        shown: dict[str, schemas.Presence] = {}
        for i in range(0, len(wanted), CONTACTS_PER_LOOKUP):
            shown.update((p.user_id, p) for p in await self.visible(wanted[i:i + CONTACTS_PER_LOOKUP]))
        return [schemas.SessionOpenReply(presences=[shown[u] for u in r.contact_ids if u in shown]) for r in reqs]

    async def close(self, user_id: str, session_id: str, node: str, reason: str = "disconnect") -> None:
        await self.close_many([schemas.SessionClose(user_id=user_id, session_id=session_id, node=node)], reason)

    async def close_many(self, reqs: list[schemas.SessionClose], reason: str = "disconnect") -> None:
        """Forget sessions (one Redis round trip for all); the users left without one stop
        typing and, after the offline grace (or at once), are announced."""
        lefts = await self.store.close_sessions([(r.user_id, r.session_id, r.node) for r in reqs])
        gone = list(dict.fromkeys(r.user_id for r, left in zip(reqs, lefts, strict=True) if left == 0))
        if not gone:
            return
        typing = await self.store.typing_channels_of(gone)
        await self.typing_stop_many([(user, channel) for user, channels in typing.items() for channel in channels],
                                    reason)
        if reason == "disconnect" and self.offline_grace_s > 0:
            # A client that reconnects within the grace (a network blip, a deploy, a
            # reconnect storm) is never shown offline and back: the sweep announces
            # whatever the user's state is when the grace ends.
            due = time.time() + self.offline_grace_s
            await self.store.offline_later(gone, due)
            if due < self.next_sweep_at:
                self.sweep_wakeup.set()
        else:
            for user_id in gone:
                await self.announce(user_id)

    async def update(self, req: schemas.PresenceUpdate) -> None:
        activity = msgspec.to_builtins(req.activity) if req.activity else None
        await self.store.set_chosen(req.user_id, req.status, activity)
        await self.announce(req.user_id)

    async def visible(self, user_ids: list[str]) -> list[schemas.Presence]:
        out = []
        for user, sessions, chosen in await self.store.many(user_ids):
            status = visible_status(chosen.get("status"), sessions)
            if status != "offline":
                out.append(self._presence(user, status, chosen))
        return out

    @staticmethod
    def _presence(user: str, status: str, chosen: dict[str, Any]) -> schemas.Presence:
        act = chosen.get("activity") if status != "offline" else None
        return schemas.Presence(user_id=user, status=status,
                                activity=schemas.Activity(**act) if act else None, since=chosen.get("since"))

    async def announce(self, user_id: str) -> None:
        """Tell the user's guilds and friends what they see now, if it changed."""
        chosen, sessions = await self.store.chosen(user_id), await self.store.session_count(user_id)
        await self.announce_many([(user_id, chosen, sessions, None)])

    async def announce_many(self, users: list[tuple[str, dict[str, Any], int, tuple[list[str], list[str]] | None]]) -> None:
        """Announce each (user, chosen status, session count, audience or None) whose
        visible presence changed: what was shown is recorded for all of them in one Redis
        round trip, then each is emitted to their guilds and friends (looked up when the
        audience is None)."""
        changed = []
        for user_id, chosen, sessions, audience in users:
            status = visible_status(chosen.get("status"), sessions)
            shown = f"{status}|{msgspec.json.encode(chosen.get('activity') if status != 'offline' else None).decode()}"
            if chosen.get("shown") != shown:
                changed.append((user_id, chosen, status, shown, audience))
        if not changed:
            return
        since = now_iso()
        await self.store.set_shown_many([(user_id, shown, since) for user_id, _, _, shown, _ in changed])
        for user_id, chosen, status, _, audience in changed:
            chosen["since"] = since
            guilds, friends = audience if audience is not None else await self.store.audience(user_id)
            rooms = [guild_room(g) for g in guilds] + [user_room(f) for f in friends] + [user_room(user_id)]
            payload = msgspec.to_builtins(self._presence(user_id, status, chosen))
            await self.emitter.emit("presence", payload, room=rooms, namespace="/")
            ANNOUNCED.inc()

    # -- typing --------------------------------------------------------------------------
    async def typing_start(self, user_id: str, channel_id: str) -> None:
        await self.store.typing_start(user_id, channel_id, self.typing_ttl_s)
        self.sweep_wakeup.set()

    async def typing_stop(self, user_id: str, channel_id: str, reason: str = "sent") -> None:
        await self.typing_stop_many([(user_id, channel_id)], reason)

    async def typing_stop_many(self, pairs: list[tuple[str, str]], reason: str) -> None:
        """End the typing of (user, channel) pairs (one Redis round trip); those that were
        typing (exactly one caller wins each) are announced to their channel."""
        if not pairs:
            return
        pairs = list(dict.fromkeys(pairs))
        for (user_id, channel_id), stopped in zip(pairs, await self.store.typing_stop_many(pairs), strict=True):
            if stopped:
                await self.emitter.emit("typing:stop", {"channel_id": channel_id, "user_id": user_id},
                                        room=channel_room(channel_id), namespace="/")
                TYPING_STOPS.labels(reason).inc()

    async def sweep_due(self) -> float | None:
        """End expired typing and announce users whose offline grace ran out; returns the
        next time there is something to do (epoch seconds), if any."""
        for user in await self.store.offline_due(time.time()):
            await self.announce(user)
            OFFLINE_AFTER_GRACE.inc()
        expired = await self.store.typing_expired(time.time())
        await self.typing_stop_many([(user, channel) for channel, user in expired], "expired")
        if expired:
            metrics.CLEANUP_REMOVED.labels("typing").inc(len(expired))
        metrics.CLEANUP_RUNS.labels("typing").inc()
        sizes = await self.store.sizes()
        TYPING_ENTRIES.set(sizes["typing"])
        KNOWN_NODES.set(sizes["nodes"])
        nxt = [t for t in (await self.store.typing_next_expiry(), await self.store.offline_next()) if t is not None]
        return min(nxt) if nxt else None

    # -- node liveness ---------------------------------------------------------------------
    async def heartbeat(self, hb: schemas.NodeHeartbeat) -> None:
        await self.store.heartbeat(hb.node)
        held = await self.store.node_sessions(hb.node)
        if held == hb.sessions:
            self._mismatch.pop(hb.node, None)
            return
        # Counts differ while opens and closes are in flight (a connect storm). Only a difference
        # that stays the same over two heartbeats means presence lost track of sessions.
        seen, self._mismatch[hb.node] = self._mismatch.get(hb.node), (hb.sessions, held)
        if seen != (hb.sessions, held) or time.monotonic() - self._last_resync.get(hb.node, -1e9) <= RESYNC_MIN_S:
            return
        self._last_resync[hb.node] = time.monotonic()
        RESYNCS.inc()
        log.info("node %s reports %d sessions, presence holds %d: asking it to resync", hb.node, hb.sessions, held)
        await self.bus.publish(subjects.gateway_control(hb.node),
                               schemas.GatewayControl(op="presence_resync", user_ids=[]))

    async def node_sessions(self, req: schemas.NodeSessions) -> None:
        await self.open_many(req.sessions)
        await self.store.resync_add(req.node, req.generation, [f"{s.user.id}|{s.session_id}" for s in req.sessions])
        if req.final:
            ghosts = await self.store.resync_ghosts(req.node, req.generation)
            await self._close_all(req.node, ghosts, "resync")
            if ghosts:
                metrics.CLEANUP_REMOVED.labels("presence_resync").inc(len(ghosts))

    async def check_nodes(self) -> None:
        for node in await self.store.dead_nodes(self.node_timeout_s):
            if not await self.store.claim_node_cleanup(node):
                continue
            sessions = await self.store.take_node_sessions(node)
            log.warning("gateway node %s stopped heartbeating; removing its %d sessions", node, len(sessions))
            NODES_DEAD.inc()
            await self._close_all(node, sessions, "node_dead")
            await self.store.forget_node(node)
            metrics.CLEANUP_REMOVED.labels("dead_node_sessions").inc(len(sessions))
            await self._tell_sessions_gone(node, sessions)

    async def _close_all(self, node: str, sessions: list[tuple[str, str]], reason: str) -> None:
        for i in range(0, len(sessions), CLOSE_CHUNK):
            await self.close_many([schemas.SessionClose(user_id=u, session_id=s, node=node)
                                   for u, s in sessions[i:i + CLOSE_CHUNK]], reason)

    async def _tell_sessions_gone(self, node: str, sessions: list[tuple[str, str]]) -> None:
        gone_type = getattr(schemas, "SessionsGone", None)
        ref_type = getattr(schemas, "SessionRef", None)
        if gone_type is None or ref_type is None or not sessions:
            return
        try:
            await self.bus.publish(subjects.presence_events(), gone_type(
                node=node, sessions=[ref_type(user_id=u, session_id=s) for u, s in sessions]))
        except Exception as exc:
            log.warning("could not announce the sessions of dead node %s: %s", node, exc)

    async def sweep_stale(self) -> int:
        """Sessions whose node is not heartbeating (e.g. lost while presence was away)."""
        live = await self.store.live_nodes(self.node_timeout_s)
        removed = 0
        for user in await self.store.scan_users():
            for session, node in (await self.store.sessions_of(user)).items():
                if node not in live:
                    await self.close(user, session, node, "stale")
                    removed += 1
        metrics.CLEANUP_RUNS.labels("stale_presence").inc()
        metrics.CLEANUP_REMOVED.labels("stale_presence").inc(removed)
        return removed
