"""Room-name globs (`wsgate.rooms.Glob`): fnmatch's meaning, in work linear in the room name's length.

Work is counted, never timed: `Counted` is a room name that tallies the characters the matcher compares,
charging a `find` for every position it could scan. A matcher that backtracks (a glob translated to `.*`
regular expressions, or a recursive one) compares about n^k characters for k stars; `Glob` at most
len(name) x len(pattern) (issue 20, item 7: `*:*:*:*:audit` against 255 colons).
"""

from __future__ import annotations

import fnmatch
from typing import Any, SupportsIndex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsgate.auth import AccessPolicy, Identity
from wsgate.config import AuthSettings, JwtSettings
from wsgate.rooms import Glob, RoomPatterns


class Counted(str):
    """A room name that counts the character comparisons made on it (`work`), shared by its copies."""

    work: list[int]

    def __new__(cls, text: str) -> Counted:
        name = super().__new__(cls, text)
        name.work = [0]
        return name

    def __getitem__(self, key: SupportsIndex | slice) -> str:
        self.work[0] += 1
        return str.__getitem__(self, key)

    def startswith(self, prefix: Any, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> bool:
        self.work[0] += len(prefix) if isinstance(prefix, str) else sum(map(len, prefix))
        return str.startswith(self, prefix, start, end)

    def endswith(self, suffix: Any, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> bool:
        self.work[0] += len(suffix) if isinstance(suffix, str) else sum(map(len, suffix))
        return str.endswith(self, suffix, start, end)

    def find(self, sub: str, start: SupportsIndex | None = None, end: SupportsIndex | None = None) -> int:
        first, last, _ = slice(start, end).indices(len(self))
        self.work[0] += max(last - first, 0) * max(len(sub), 1)  # every position it could look at, in full
        return str.find(self, sub, start, end)


COLONS = ":" * 255
HANDED = [COLONS, COLONS + "x", COLONS + "audit", COLONS + ":audit", "a" + COLONS, COLONS + "audi"]


@pytest.mark.parametrize("name", HANDED)
def test_the_handed_rule_costs_work_linear_in_the_name(name: str) -> None:
    pattern = "*:*:*:*:audit"
    room = Counted(name)
    assert Glob.compile(pattern, brackets=False).match(room) == fnmatch.fnmatchcase(name, pattern)
    assert 0 < room.work[0] <= len(name) * len(pattern)


@pytest.mark.parametrize("pattern", ["*:*:*:*:audit", "*a*a*a*a*a*a*a*b", "?*?*?*?*?*x", "*[:]*[!a]*:*b", "*:*:*:*:*"])
@pytest.mark.parametrize("length", [255, 4_000, 64_000])
def test_work_grows_with_the_name_not_its_power(pattern: str, length: int) -> None:
    """Doubling the name at most doubles the work (k stars cost n^k in a backtracking matcher)."""
    for name in (":" * length, "a" * length, ":a" * (length // 2) + "c"):
        room = Counted(name)
        assert Glob.compile(pattern).match(room) == fnmatch.fnmatchcase(name, pattern)
        assert 0 < room.work[0] <= len(name) * len(pattern) + len(pattern)


def _policy(*rules: str) -> AccessPolicy:
    return AccessPolicy(AuthSettings(rooms=rules, jwt=JwtSettings()))


def test_room_rules_and_token_claims_match_through_the_linear_matcher() -> None:
    """Every glob of the access policy (a rule, a placeholder rule, a token's `rooms` claim) is matched by
    `Glob`, which looks at the room name itself: a regular expression reads the string's buffer instead."""
    from wsgate.protocol import ClientError

    for rule in ("*:*:*:*:audit = nobody", "dm.{sub}.inbox = identity"):
        room = Counted(COLONS + ":audit" if "audit" in rule else "dm.bob.inbox")
        with pytest.raises(ClientError):
            _policy(rule).check(None, "subscribe", room)
        assert 0 < room.work[0] <= len(room) * len(rule)
    room = Counted(COLONS)
    identity = Identity("bob", {"rooms": ["*:*:*:*:audit", "*:*:*:*:*:*:*:x"]})
    with pytest.raises(ClientError, match="not allowed"):
        _policy().check(identity, "subscribe", room)
    assert 0 < room.work[0] <= len(room) * 30


def test_history_and_presence_patterns_match_through_the_linear_matcher() -> None:
    patterns = RoomPatterns(("*:*:*:*:audit", "chat:[a-c]*"))
    room = Counted(COLONS)
    assert not patterns.match(room)
    assert 0 < room.work[0] <= len(room) * 25
    assert patterns.match("chat:bob") and not patterns.match("chat:dave")


def test_rules_read_brackets_as_characters_and_history_patterns_as_classes() -> None:
    assert Glob.compile("room[1]", brackets=False).match("room[1]")
    assert not Glob.compile("room[1]", brackets=False).match("room1")
    assert Glob.compile("room[1]").match("room1")
    assert _policy("room[1] = nobody", "* = anyone").check(None, "subscribe", "room1") is False


_PATTERN = st.text("ab:*?[]!-", max_size=10)
_NAME = st.text("ab:[]!-\n", max_size=12)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(pattern=_PATTERN, name=_NAME)
def test_the_same_answers_as_fnmatch_in_bounded_work(pattern: str, name: str) -> None:
    room = Counted(name)
    assert Glob.compile(pattern).match(room) == fnmatch.fnmatchcase(name, pattern)
    assert room.work[0] <= len(name) * len(pattern) + len(pattern)


@settings(max_examples=1500, deadline=None)
@given(pattern=_PATTERN, name=_NAME)
def test_without_brackets_a_bracket_is_a_character(pattern: str, name: str) -> None:
    assert Glob.compile(pattern, brackets=False).match(name) == fnmatch.fnmatchcase(name, pattern.replace("[", "[[]"))


def test_the_access_policy_decides_the_same_with_its_rule_of_each_room_remembered() -> None:
    """The first rule a room falls under is worked out once per name (bounded); every client's answer is still
    its own (identity, claims), and a full memory is emptied, never wrong."""
    from wsgate.protocol import ClientError

    class Small(AccessPolicy):
        RULE_CACHE = 2

    rules = ("private-* = identity", "user:{sub} = identity", "ops:* = claim:admin", "* = anyone")
    alice, admin = Identity("alice", {"sub": "alice"}), Identity("root", {"admin": True})
    for policy in (_policy(*rules), Small(AuthSettings(rooms=rules, jwt=JwtSettings()))):
        for _ in range(2):
            for room, identity, allowed in (
                ("private-x", None, False),
                ("private-x", alice, True),
                ("user:alice", alice, True),
                ("user:alice", Identity("bob", {"sub": "bob"}), False),
                ("ops:1", alice, False),
                ("ops:1", admin, True),
                ("lobby", None, True),
            ):
                try:
                    decided = policy.check(identity, "publish", room) is False
                except ClientError:
                    decided = False
                assert decided == allowed, (room, identity)
        assert len(policy._rule_of) <= policy.RULE_CACHE
