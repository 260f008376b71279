"""Authorisation matrix: for each event and endpoint, owner / moderator / author / other
member / non-member / banned user get exactly the contract's answer."""

from __future__ import annotations

import uuid

from libs.testing.client import ChatClient, guild_with_members
from libs.testing.fixtures import Stack


def code(ack: dict) -> str:
    return "ok" if ack.get("ok") else ack["error"]["code"]


async def test_authorization_matrix(http, cluster: Stack):
    g1, g2 = cluster.gateways
    tag = uuid.uuid4().hex[:6]
    owner, mod, author, other, outsider, banned = [
        await ChatClient(http, (g1, g2)[i % 2], f"{name}{tag}").login()
        for i, name in enumerate(["owner", "mod", "author", "other", "outsider", "banned"])]
    guild = await guild_with_members(owner, mod, author, other, banned)
    gid, ch = guild["id"], guild["text_channel"]
    await owner.api("PUT", f"/guilds/{gid}/members/{mod.user_id}", {"role": "moderator"}, expect=200)
    invite = (await owner.api("POST", f"/guilds/{gid}/invites", expect=201))["code"]
    sock = {u.user_id: await u.connect() for u in (owner, mod, author, other, outsider, banned)}
    s = {name: sock[u.user_id] for name, u in
         [("owner", owner), ("mod", mod), ("author", author), ("other", other), ("outsider", outsider),
          ("banned", banned)]}
    assert code(await s["mod"].call("mod:ban", {"guild_id": gid, "user_id": banned.user_id})) == "ok"

    # message:send
    expected = {"owner": "ok", "mod": "ok", "author": "ok", "other": "ok", "outsider": "not_found",
                "banned": "not_found"}
    got = {who: code(await s[who].call("message:send", {"channel_id": ch, "content": "hi", "nonce": f"s-{who}"}))
           for who in expected}
    assert got == expected

    async def authored() -> str:
        ack = await s["author"].call("message:send", {"channel_id": ch, "content": "mine",
                                                      "nonce": uuid.uuid4().hex})
        return ack["message"]["id"]

    # message:edit: the author only
    mid = await authored()
    expected = {"owner": "forbidden", "mod": "forbidden", "other": "forbidden", "outsider": "not_found",
                "banned": "not_found", "author": "ok"}
    got = {who: code(await s[who].call("message:edit", {"channel_id": ch, "message_id": mid, "content": "e"}))
           for who in expected}
    assert got == expected

    # message:delete: the author, or a moderator and above
    for who, want in [("other", "forbidden"), ("outsider", "not_found"), ("banned", "not_found"),
                      ("mod", "ok"), ("owner", "ok"), ("author", "ok")]:
        mid = await authored()
        assert code(await s[who].call("message:delete", {"channel_id": ch, "message_id": mid})) == want, who
    mid = await authored()
    await s["author"].call("message:delete", {"channel_id": ch, "message_id": mid})
    assert code(await s["author"].call("message:edit", {"channel_id": ch, "message_id": mid, "content": "x"})) == "conflict"

    # channel:join and sync
    for who, want in [("other", "ok"), ("outsider", "not_found"), ("banned", "not_found")]:
        assert code(await s[who].call("channel:join", {"channel_id": ch})) == want, who
    for who, visible in [("other", True), ("outsider", False), ("banned", False)]:
        page = (await s[who].call("sync", {"channels": {ch: 0}}))["channels"][ch]
        assert ("error" not in page or page["error"] is None) == visible, (who, page)
        if not visible:
            assert page["error"]["code"] == "not_found" and page["events"] == []

    # HTTP endpoints
    users = {"owner": owner, "mod": mod, "author": author, "outsider": outsider, "banned": banned}
    rows = [
        ("GET", f"/channels/{ch}/messages", None, {"owner": 200, "mod": 200, "author": 200, "outsider": 404, "banned": 404}),
        ("GET", f"/guilds/{gid}", None, {"owner": 200, "mod": 200, "author": 200, "outsider": 404, "banned": 404}),
        ("POST", f"/guilds/{gid}/channels", {"name": "x", "kind": "text"},
         {"owner": 201, "mod": 403, "author": 403, "outsider": 404, "banned": 404}),
        ("POST", f"/guilds/{gid}/invites", None, {"owner": 201, "mod": 201, "author": 201, "outsider": 404, "banned": 404}),
        ("PUT", f"/guilds/{gid}/members/{author.user_id}", {"role": "member"},
         {"owner": 200, "mod": 403, "author": 403, "outsider": 404, "banned": 404}),
    ]
    for method, path, body, want in rows:
        for who, status in want.items():
            headers = {"Authorization": f"Bearer {users[who].token}"}
            async with http.request(method, f"{g1}/api/v1{path}", json=body, headers=headers) as r:
                assert r.status == status, (method, path, who, r.status, await r.text())
                if status >= 400:
                    assert (await r.json())["error"]["code"] in ("not_found", "forbidden")
    async with http.post(f"{g1}/api/v1/invites/{invite}", headers={"Authorization": f"Bearer {banned.token}"}) as r:
        assert r.status == 403 and (await r.json())["error"]["code"] == "forbidden"
    async with http.get(f"{g1}/api/v1/users/@me") as r:
        assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
    for u in users.values():
        await u.close()
    await other.close()
