"""HTTP API under /api/v1: bearer auth, translate to bus requests, contract errors."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any

import msgspec
import orjson
from aiohttp import web
from opentelemetry import trace

from libs.auth.tokens import SUB_RE, TokenVerifier, issue_dev_token
from libs.bus import schemas, subjects
from libs.bus.client import Bus
from libs.bus.subjects import MessagingOps
from libs.errors import ChatError, Internal, Invalid, NotFound, Unauthorized
from libs.observability import tracing
from services.gateway import metrics
from services.gateway.transport.openapi import OPENAPI_JSON

log = logging.getLogger(__name__)
_NO_SPAN = nullcontext(trace.INVALID_SPAN)  # shared: a WebSocket's request holds it for its lifetime
_tracer = trace.get_tracer(__name__)

USER_KEY: web.RequestKey[schemas.UserRef] = web.RequestKey("user", schemas.UserRef)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def json_error(exc: ChatError) -> web.Response:
    return web.Response(body=orjson.dumps({"error": exc.to_dict()}), status=exc.http_status,
                        content_type="application/json")


async def read_json(request: web.Request, max_bytes: int = 65536) -> dict[str, Any]:
    if request.content_length and request.content_length > max_bytes:
        raise Invalid("body too large")
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Invalid("body is not JSON") from None
    if not isinstance(body, dict):
        raise Invalid("body must be a JSON object")
    return body


def str_field(body: dict[str, Any], key: str, max_len: int = 100, required: bool = True) -> str:
    value = body.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise Invalid(f"{key}: a string of 1-{max_len} characters is required")
    return value.strip()


def int_query(request: web.Request, key: str, lo: int, hi: int) -> int | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        n = int(raw)
    except ValueError:
        raise Invalid(f"{key}: must be an integer") from None
    if not lo <= n <= hi:
        raise Invalid(f"{key}: must be between {lo} and {hi}")
    return n


class HttpApi:
    def __init__(self, bus: Bus, verifier: TokenVerifier, *, dev_mode: bool, jwt_secret: str,
                 audience: str, issuer: str) -> None:
        self.bus = bus
        self.verifier = verifier
        self.dev_mode = dev_mode
        self.jwt_secret = jwt_secret
        self.audience = audience
        self.issuer = issuer

    def routes(self) -> list[web.RouteDef]:
        r = [
            web.post("/api/v1/dev/token", self.dev_token),
            web.get("/api/v1/users/@me", self.me),
            web.post("/api/v1/guilds", self.create_guild),
            web.get("/api/v1/guilds/{guild_id}", self.get_guild),
            web.post("/api/v1/guilds/{guild_id}/invites", self.create_invite),
            web.post("/api/v1/invites/{code}", self.accept_invite),
            web.get("/api/v1/channels/{channel_id}/messages", self.history),
            web.post("/api/v1/guilds/{guild_id}/channels", self.create_channel),
            web.put("/api/v1/guilds/{guild_id}/members/{user_id}", self.set_role),
            web.get("/api/v1/users/@me/friends", self.friends),
            web.put("/api/v1/users/@me/friends/{user_id}", self.put_friend),
            web.delete("/api/v1/users/@me/friends/{user_id}", self.delete_friend),
            web.get("/api/v1/openapi.json", self.openapi),
        ]
        return r

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "<none>"
        # Engine.IO requests get no span: a WebSocket's request lasts as long as the
        # connection (its events have spans of their own).
        span_cm = _NO_SPAN if request.path.startswith("/socket.io/") else \
            tracing.span(_tracer, f"http {request.method} {route}")
        with span_cm as span:
            try:
                if request.path.startswith("/api/v1/") and request.path not in ("/api/v1/dev/token", "/api/v1/openapi.json"):
                    request[USER_KEY] = await self._authenticate(request)
                resp = await handler(request)
            except web.HTTPException as exc:
                if exc.status == 404 and request.path.startswith("/api/"):
                    resp = json_error(NotFound("no such endpoint"))
                elif exc.status == 405:
                    resp = json_error(Invalid("method not allowed"))
                    resp.set_status(405)
                elif 400 <= exc.status < 500:
                    resp = json_error(Invalid(exc.reason or "bad request"))  # e.g. 413: body too large
                else:
                    raise
            except ChatError as exc:
                resp = json_error(exc)
            except Exception as exc:
                if request.path.startswith("/socket.io/"):
                    # The Engine.IO layer choked on what the client sent: the client's fault.
                    log.info("engine.io %s refused: %s", request.method, type(exc).__name__)
                    metrics.HTTP_REQUESTS.labels("/socket.io/", "400").inc()
                    return json_error(Invalid("malformed Engine.IO request"))
                log.exception("http %s %s failed", request.method, route)
                resp = json_error(Internal("internal error"))
            span.set_attribute("http.status_code", resp.status)
            metrics.HTTP_REQUESTS.labels(route, str(resp.status)).inc()
            return resp

    async def _authenticate(self, request: web.Request) -> schemas.UserRef:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise Unauthorized("missing bearer token")
        ident = await self.verifier.verify(header[7:].strip())
        return schemas.UserRef(id=ident.user_id, name=ident.name)

    async def _req(self, op: str, payload: Any, reply_type: type) -> Any:
        return await self.bus.request(subjects.service_request("messaging", op), payload, reply_type)

    # -- routes --------------------------------------------------------------------------
    async def dev_token(self, request: web.Request) -> web.Response:
        if not self.dev_mode:
            return json_error(NotFound("no such endpoint"))
        body = await read_json(request)
        sub = str_field(body, "sub", 64)
        if not SUB_RE.match(sub):
            raise Invalid("sub: 1-64 characters of [A-Za-z0-9_.-]")
        name = str_field(body, "name", 64, required=False) or sub
        token = issue_dev_token(self.jwt_secret, sub=sub, name=name, audience=self.audience,
                                issuer=self.issuer, now=time.time())
        return json_ok({"token": token})

    async def me(self, request: web.Request) -> web.Response:
        ready = await self._req(MessagingOps.READY, schemas.ReadyRequest(user=request[USER_KEY]), schemas.ReadyReply)
        return json_ok(ready)

    async def create_guild(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        guild = await self._req(MessagingOps.GUILD_CREATE,
                                schemas.CreateGuild(user=request[USER_KEY], name=str_field(body, "name", 100)),
                                schemas.Guild)
        return json_ok(guild, status=201)

    async def get_guild(self, request: web.Request) -> web.Response:
        guild = await self._req(MessagingOps.GUILD_GET,
                                schemas.GuildRequest(user=request[USER_KEY], guild_id=request.match_info["guild_id"]),
                                schemas.Guild)
        return json_ok(guild)

    async def create_invite(self, request: web.Request) -> web.Response:
        reply = await self._req(MessagingOps.INVITE_CREATE,
                                schemas.GuildRequest(user=request[USER_KEY], guild_id=request.match_info["guild_id"]),
                                schemas.InviteReply)
        return json_ok(reply, status=201)

    async def accept_invite(self, request: web.Request) -> web.Response:
        guild = await self._req(MessagingOps.INVITE_ACCEPT,
                                schemas.AcceptInvite(user=request[USER_KEY], code=request.match_info["code"]),
                                schemas.Guild)
        return json_ok(guild)

    async def history(self, request: web.Request) -> web.Response:
        limit = int_query(request, "limit", 1, 100) or 50
        reply = await self._req(MessagingOps.HISTORY, schemas.HistoryRequest(
            user=request[USER_KEY], channel_id=request.match_info["channel_id"],
            before_seq=int_query(request, "before_seq", 0, 2**62),
            after_seq=int_query(request, "after_seq", 0, 2**62), limit=limit), schemas.HistoryReply)
        return json_ok(reply)

    async def create_channel(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        reply = await self._req(MessagingOps.CHANNEL_CREATE, schemas.CreateChannel(
            user=request[USER_KEY], guild_id=request.match_info["guild_id"], name=str_field(body, "name", 100),
            kind=str_field(body, "kind", 16)), schemas.ChannelReply)
        return json_ok(reply.channel, status=201)

    async def set_role(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        member = await self._req(MessagingOps.MEMBER_ROLE, schemas.SetRole(
            user=request[USER_KEY], guild_id=request.match_info["guild_id"],
            user_id=_user_id(request.match_info["user_id"]),
            role=str_field(body, "role", 16)), schemas.Member)
        return json_ok(member)

    async def friends(self, request: web.Request) -> web.Response:
        reply = await self._req(MessagingOps.FRIENDS_LIST, schemas.ReadyRequest(user=request[USER_KEY]),
                                schemas.FriendsReply)
        return json_ok(reply)

    async def put_friend(self, request: web.Request) -> web.Response:
        reply = await self._req(MessagingOps.FRIEND_PUT, schemas.FriendRequest(
            user=request[USER_KEY], friend_id=_user_id(request.match_info["user_id"])), schemas.FriendStatus)
        return json_ok(reply)

    async def delete_friend(self, request: web.Request) -> web.Response:
        await self._req(MessagingOps.FRIEND_DELETE, schemas.FriendRequest(
            user=request[USER_KEY], friend_id=_user_id(request.match_info["user_id"])), schemas.Empty)
        return web.Response(status=204)

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=OPENAPI_JSON, content_type="application/json")


def _user_id(raw: str) -> str:
    if not SUB_RE.match(raw):
        raise NotFound("user not found")
    return raw
