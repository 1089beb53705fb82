"""wsgate.regex: an operator's pattern runs in time linear in the room name, with Python's meaning."""

from __future__ import annotations

import re
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsgate.config import ConfigError, load_settings
from wsgate.regex import SPACE_CODES, LinearPattern, translate
from wsgate.testing import StartServer


def test_the_space_class_is_pythons() -> None:
    assert SPACE_CODES == tuple(code for code in range(sys.maxunicode + 1) if chr(code).isspace())


@pytest.mark.parametrize("pattern", ["(a+)+$", "(a|a)*b", "(a*)*b", "(\\w+\\s?)+$", "(.*a){20}"])
def test_catastrophic_patterns_finish_on_long_names(pattern: str) -> None:
    """Each takes Python's `re` exponential time in the name; RE2 answers at once (the suite would hang)."""
    name = "a" * 5000 + "!"
    assert LinearPattern(pattern).fullmatch(name) is False


ATOMS = st.sampled_from(
    [
        "a",
        "b",
        "ü",
        ".",
        "\\d",
        "\\D",
        "\\w",
        "\\W",
        "\\s",
        "\\S",
        "[a-c]",
        "[^a]",
        "[\\d:]",
        "[\\w-]",
        "[\\s_]",
        "[]a]",
        "[^]b]",
        "\\.",
        ":",
        "\\Z",
    ]
)
QUANTIFIERS = st.sampled_from(["", "*", "+", "?", "{2}", "{,2}", "{1,3}", "*?"])
PATTERNS = st.lists(st.tuples(ATOMS, QUANTIFIERS).map("".join), min_size=1, max_size=5).map("".join)
TEXTS = st.text(alphabet="abcü1١:_- \u00a0\u2003.!\n", max_size=8)


@given(PATTERNS, TEXTS)
def test_matches_as_python_does(pattern: str, text: str) -> None:
    try:
        linear = LinearPattern(pattern)
    except ValueError:
        return  # refused at start-up, with the reason (checked below)
    assert linear.fullmatch(text) == bool(re.fullmatch(pattern, text)), (pattern, translate(pattern), text)


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("(?=a)a", "RE2 cannot run it in linear time: invalid perl operator: (?="),
        ("(a)\\1", "RE2 cannot run it in linear time: invalid escape sequence: \\1"),
        ("\\bword\\b", "\\b has no linear-time equivalent (RE2 reads word boundaries as ASCII); write the class out"),
        ("[\\W]", "\\W has no linear-time equivalent inside [...]; write the class out"),
        ("[[:alpha:]]", "POSIX classes like [:alpha:] mean something else to Python; write the class out"),
    ],
)
def test_what_rE2_cannot_run_is_refused_at_start_up_naming_the_key(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        LinearPattern(pattern)
    assert str(refused.value) == reason
    with pytest.raises(ConfigError) as error:
        load_settings(overrides={"websocket": {"limits": {"room_name_pattern": pattern}}})
    assert str(error.value) == (
        f"invalid setting websocket.limits.room_name_pattern = {pattern!r}: expected a regular expression ({reason})"
    )


async def test_a_catastrophic_room_name_pattern_costs_a_client_nothing(wsgate_server: StartServer) -> None:
    """The review's kind, for the operator's own regex: `(a+)+$` and a long name from a client."""
    server = await wsgate_server(websocket={"limits": {"room_name_pattern": "(a+)+$"}})
    client = await server.connect()
    reply = await client.request({"type": "subscribe", "room": "a" * 255 + "!"})
    assert (reply["error"], reply["detail"]) == ("invalid room name", "room names must match (a+)+$")
    assert (await client.subscribe("aaa"))["type"] == "subscribed"
