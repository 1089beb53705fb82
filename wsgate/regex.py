"""Regular expressions from settings, run by RE2: time linear in the text, whatever the pattern.

An operator's pattern (`websocket.limits.room_name_pattern`) is matched against
every room name a client sends. Python's `re` backtracks: `(a+)+$` takes time
exponential in a 30-character name. RE2 (google-re2) never backtracks, and
refuses what it cannot run in linear time (lookaround, backreferences).

Patterns keep Python's meaning: RE2 reads `\\d`, `\\w` and `\\s` as ASCII classes
and `{,n}` as literal text, so those are rewritten to the Unicode classes Python
uses for `str` patterns (`\\d`: Unicode decimal digits, `\\w`: letters, digits and
`_`, `\\s`: what `str.isspace` accepts) before RE2 compiles them. What has no
faithful rewrite (`\\b`, `\\B`, and `\\W` or `\\S` inside `[...]`) is refused with
the reason. Tests compare the result with `re` on generated patterns and texts.
"""

from __future__ import annotations

import re
import warnings

import re2

# Every character str.isspace() accepts (Python's \s for str patterns); tests check the list over all of Unicode.
_SPACE = "".join(
    f"\\x{{{code:x}}}"
    for code in (
        0x9,
        0xA,
        0xB,
        0xC,
        0xD,
        0x1C,
        0x1D,
        0x1E,
        0x1F,
        0x20,
        0x85,
        0xA0,
        0x1680,
        *range(0x2000, 0x200B),
        0x2028,
        0x2029,
        0x202F,
        0x205F,
        0x3000,
    )
)
SPACE_CODES = tuple(int(code, 16) for code in re.findall(r"\{([0-9a-f]+)\}", _SPACE))
_WORD = r"\p{L}\p{N}_"

# Perl classes outside and inside a bracket class, as Python reads them; None: no faithful rewrite there.
_OUTSIDE = {
    "d": r"\p{Nd}",
    "D": r"\P{Nd}",
    "w": f"[{_WORD}]",
    "W": f"[^{_WORD}]",
    "s": f"[{_SPACE}]",
    "S": f"[^{_SPACE}]",
    "Z": r"\z",
    "b": None,
    "B": None,
}
_INSIDE = {"d": r"\p{Nd}", "D": r"\P{Nd}", "w": _WORD, "s": _SPACE, "W": None, "S": None}
_OPEN_MIN = re.compile(r"\{,(\d+)\}")


class LinearPattern:
    """A compiled pattern: `pattern` is the operator's text, `fullmatch(text)` says whether all of it matches."""

    __slots__ = ("pattern", "_compiled")

    def __init__(self, pattern: str) -> None:
        """Raises ValueError naming what Python's `re` or RE2 refuses (Python's own message first)."""
        try:
            with warnings.catch_warnings():  # ("possible nested set": [[:alpha:]] is refused below, with the reason)
                warnings.simplefilter("ignore", FutureWarning)
                re.compile(pattern)
        except re.error as exc:
            raise ValueError(str(exc)) from None
        options = re2.Options()
        options.log_errors = False  # (RE2 would log to stderr besides raising)
        try:
            self._compiled = re2.compile(translate(pattern), options)
        except re2.error as exc:
            reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise ValueError(f"RE2 cannot run it in linear time: {reason}") from None
        self.pattern = pattern

    def fullmatch(self, text: str) -> bool:
        return self._compiled.fullmatch(text) is not None


def translate(pattern: str) -> str:
    """`pattern` (Python syntax) in RE2 syntax with Python's meaning; ValueError for what cannot keep it."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            escaped = pattern[i + 1]
            table = _INSIDE if in_class else _OUTSIDE
            if escaped in table:
                rewrite = table[escaped]
                if rewrite is None:
                    where = "inside [...]" if in_class else "(RE2 reads word boundaries as ASCII)"
                    raise ValueError(f"\\{escaped} has no linear-time equivalent {where}; write the class out")
                out.append(rewrite)
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "]" and not _class_start(pattern, i):
                in_class = False
            elif char == "[" and pattern.startswith("[:", i):
                raise ValueError("POSIX classes like [:alpha:] mean something else to Python; write the class out")
        elif char == "[":
            in_class = True
        elif char == "{" and (match := _OPEN_MIN.match(pattern, i)):
            out.append(f"{{0,{match[1]}}}")  # Python's {,n} is {0,n}; RE2 would read it as text
            i = match.end()
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _class_start(pattern: str, i: int) -> bool:
    """Whether the `]` at `i` is the class's first character (`[]...]`, `[^]...]`): a literal, not its end."""
    return pattern[i - 1] == "[" or (pattern[i - 1] == "^" and i >= 2 and pattern[i - 2] == "[")
