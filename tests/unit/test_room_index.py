"""The adapter's per-sid room index (libs.sio.redis_manager): a disconnect leaves the
sid's own rooms and leaves no trace, with the same result as python-socketio's scan; a
socket's own room has no bidict of its own but the same members."""

from __future__ import annotations

import socketio

from libs.sio.redis_manager import ResilientRedisManager


def _managers() -> list[socketio.AsyncManager]:
    return [ResilientRedisManager("redis://127.0.0.1:1"), socketio.AsyncManager()]


def _populate(m: socketio.AsyncManager) -> None:
    for i in range(50):
        sid, eio = f"s{i}", f"e{i}"
        m.basic_enter_room(sid, "/", None, eio_sid=eio)
        m.basic_enter_room(sid, "/", sid, eio_sid=eio)
        m.basic_enter_room(sid, "/", f"ch:{i % 5}")
        m.basic_enter_room(sid, "/", f"u:{i // 2}")
    m.pending_connect.setdefault("/", []).append("s3")
    m.pending_disconnect.setdefault("/", []).append("s4")


def test_disconnect_leaves_exactly_the_sids_rooms_like_python_socketio():
    ours, theirs = _managers()
    for m in (ours, theirs):
        _populate(m)
        m.basic_leave_room("s1", "/", "ch:1")
        m.basic_close_room("ch:2", "/")
        for sid in ("s1", "s3", "s4", "s7", "missing"):
            m.basic_disconnect(sid, "/")
    sid_rooms = {f"s{i}" for i in range(50)}
    assert ours.rooms["/"] == {r: m for r, m in theirs.rooms["/"].items() if r not in sid_rooms}
    for room in [None, "ch:0", "ch:1", "u:0", "missing", *sid_rooms, ["s0", "ch:1", "s2", "s7"]]:
        assert sorted(ours.get_participants("/", room)) == sorted(theirs.get_participants("/", room)), room
    assert "s1" not in ours.rooms["/"][None] and "u:0" in ours.rooms["/"]  # s0 is still in u:0
    assert list(ours.get_participants("/", "s7")) == []  # its sid room went with it
    assert dict(ours.pending_connect) == {} and dict(ours.pending_disconnect) == {}
    assert ours.get_rooms("s0", "/") and sorted(ours.get_rooms("s0", "/")) == sorted(theirs.get_rooms("s0", "/"))


def test_everyone_gone_leaves_no_trace():
    m = _managers()[0]
    _populate(m)
    for i in range(50):
        m.basic_disconnect(f"s{i}", "/")
    assert m.rooms == {} and m._sid_rooms == {}
    assert dict(m.pending_connect) == {} and dict(m.pending_disconnect) == {}


def test_pending_lists_keep_the_list_contract():
    m = _managers()[0]
    m.pending_connect["/"] = []
    m.pending_connect["/"].append("a")
    m.pending_connect["/"].append("b")
    assert "a" in m.pending_connect["/"] and len(m.pending_connect["/"]) == 2
    m.pending_connect["/"].remove("a")
    assert list(m.pending_connect["/"]) == ["b"]
    try:
        m.pending_connect["/"].remove("a")
    except ValueError:
        pass
    else:
        raise AssertionError("remove of a missing sid must raise ValueError, like a list")


def test_a_sid_room_is_no_bidict_but_has_its_member():
    m = _managers()[0]
    _populate(m)
    assert "s5" not in m.rooms["/"]
    assert list(m.get_participants("/", "s5")) == [("s5", "e5")]
    assert "s5" in m.get_rooms("s5", "/")
    m.basic_leave_room("s5", "/", "s5")  # leaving it, as python-socketio allows
    assert list(m.get_participants("/", "s5")) == []
    try:
        m.basic_close_room("s6", "/")
    except ValueError:
        pass
    else:
        raise AssertionError("closing a sid room must raise ValueError, like python-socketio")
