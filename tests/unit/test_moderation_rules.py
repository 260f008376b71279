"""Moderation rules: who may kick, ban and time out whom (pure, no I/O)."""

from __future__ import annotations

import pytest

from libs.errors import ChatError, Forbidden, Invalid, NotFound
from services.moderation.domain import rules
from services.moderation.domain.rules import Action

ROLES = ["member", "moderator", "admin", "owner"]


def outcome(fn, *args, **kwargs) -> str:
    try:
        fn(*args, **kwargs)
    except ChatError as exc:
        return exc.code
    return "ok"


@pytest.mark.parametrize("action", [Action.KICK, Action.BAN, Action.TIMEOUT])
@pytest.mark.parametrize("actor", ROLES)
@pytest.mark.parametrize("target", ROLES)
def test_only_strictly_higher_ranks_from_moderator_up_may_act(action, actor, target):
    def act() -> None:
        role = rules.check_actor(actor)
        rules.check_target(action, "a", role, "t", target, target_exists=True)

    allowed = actor != "member" and target != "owner" and ROLES.index(actor) > ROLES.index(target)
    expected = "ok" if allowed else "forbidden"
    assert outcome(act) == expected


@pytest.mark.parametrize("role", ROLES[1:])
@pytest.mark.parametrize("action", [Action.KICK, Action.BAN, Action.TIMEOUT])
def test_nobody_acts_on_themselves(role, action):
    with pytest.raises(Forbidden):
        rules.check_target(action, "a", role, "a", role, target_exists=True)


def test_a_non_member_caller_cannot_see_the_guild():
    with pytest.raises(NotFound):
        rules.check_actor(None)
    with pytest.raises(Forbidden):
        rules.check_actor("member")


@pytest.mark.parametrize("action,exists,expected", [
    (Action.KICK, True, "not_found"),
    (Action.TIMEOUT, True, "not_found"),
    (Action.BAN, True, "ok"),
    (Action.BAN, False, "not_found"),
])
def test_non_member_targets(action, exists, expected):
    assert outcome(rules.check_target, action, "a", "moderator", "t", None, target_exists=exists) == expected


@pytest.mark.parametrize("raw", ["", "0", "-1", "12a", "1" * 20, str(2**63), None, 5])
def test_bad_guild_ids_are_guilds_that_do_not_exist(raw):
    with pytest.raises(NotFound):
        rules.parse_guild_id(raw)  # type: ignore[arg-type]


def test_good_guild_id():
    assert rules.parse_guild_id("42") == 42


def test_durations():
    rules.check_duration(None, required=False)
    rules.check_duration(60, required=True)
    for bad in (0, -5, rules.MAX_DURATION_S + 1):
        with pytest.raises(Invalid):
            rules.check_duration(bad, required=False)
    with pytest.raises(Invalid):
        rules.check_duration(None, required=True)


@pytest.mark.parametrize("raw,expected", [
    (None, None),
    ("   ", None),
    ("spam <script>x</script> & more", "spam &lt;script&gt;x&lt;/script&gt; &amp; more"),
    ("  e\u0301\u0000\u202e ", "\u00e9"),
    ("x" * 600, "x" * rules.MAX_REASON_CHARS),
])
def test_reasons_are_plain_and_bounded(raw, expected):
    assert rules.clean_reason(raw) == expected
