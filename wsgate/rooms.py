"""Room-name patterns: glob matching in time linear in the name, and which rooms a feature (history,
presence) applies to, answered fast.

Every glob wsgate matches room names with comes here: `auth.rooms` rules (`RoomRule`, parsed once when settings
load), a token's `rooms` claim,
`history.rooms`, `presence.rooms` and the example plugins' settings. A glob translated to a regular expression
(`.*` per star) backtracks: `*:*:*:*:audit` against 255 colons costs about n^4 steps in `re`. `Glob` never
backtracks (see `Glob.match`).
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

_Token = str | re.Pattern[str] | None
"""One character of a glob: a literal character, a bracket class (a compiled one-character regex, as fnmatch
reads it), or None for `?` (any character)."""


@dataclass(frozen=True, slots=True)
class _Segment:
    """A run of a glob between stars: a fixed number of characters, each matched by one token."""

    tokens: tuple[_Token, ...]
    text: str | None  # the literal text when every token is a plain character (str methods search it, in C)

    def at(self, name: str, pos: int) -> bool:
        """Whether this segment matches `name` at `pos` (the caller checked it fits): len(tokens) steps."""
        if self.text is not None:
            return name.startswith(self.text, pos)
        for offset, token in enumerate(self.tokens):
            char = name[pos + offset]
            if token is None:
                continue
            if isinstance(token, str):
                if char != token:
                    return False
            elif token.match(char) is None:
                return False
        return True

    def find(self, name: str, start: int, end: int) -> int:
        """The first position in [start, end - len) where this segment matches `name`, or -1."""
        if self.text is not None:
            return name.find(self.text, start, end)
        for pos in range(start, end - len(self.tokens) + 1):
            if self.at(name, pos):
                return pos
        return -1


@dataclass(frozen=True, slots=True)
class Glob:
    """A glob pattern compiled for `match`: `*` (any run of characters, also empty) and `?` (any one
    character); with `brackets`, `[seq]` and `[!seq]` as in `fnmatch.fnmatchcase` (the same parse: an unclosed
    `[` is a literal, `]` first in a class is a member); without, `[` is a literal character (`auth.rooms`
    rules). Case-sensitive. Built by `Glob.compile`."""

    pattern: str
    parts: tuple[_Segment, ...]  # the segments between stars; one segment: the pattern has no star
    length: int  # the fewest characters a matching name has

    @classmethod
    def compile(cls, pattern: str, *, brackets: bool = True) -> Glob:
        """Parse `pattern` (time linear in its length). Never fails: every string is a glob."""
        parts: list[_Segment] = []
        tokens: list[_Token] = []
        i, n = 0, len(pattern)
        while i < n:
            char = pattern[i]
            i += 1
            if char == "*":
                parts.append(_segment(tokens))
                tokens = []
                while i < n and pattern[i] == "*":
                    i += 1
            elif char == "?":
                tokens.append(None)
            elif char == "[" and brackets and (close := _class_end(pattern, i)) is not None:
                tokens.append(re.compile(fnmatch.translate(pattern[i - 1 : close + 1])))  # one character, no quantifier
                i = close + 1
            else:
                tokens.append(char)
        parts.append(_segment(tokens))
        return cls(pattern, tuple(parts), sum(len(part.tokens) for part in parts))

    def match(self, name: str) -> bool:
        """Whether `name` matches the whole pattern.

        The first segment must match at the start and the last at the end; each segment between stars is
        taken at its first place after the previous one (a later place never helps: the star before the next
        segment absorbs the difference), and no place is revisited. Work: at most len(name) x len(pattern)
        character comparisons, with no backtracking."""
        if len(name) < self.length:
            return False
        first, last = self.parts[0], self.parts[-1]
        if len(self.parts) == 1:
            return len(name) == self.length and first.at(name, 0)
        end = len(name) - len(last.tokens)
        if not first.at(name, 0) or not last.at(name, end):
            return False
        pos = len(first.tokens)
        for part in self.parts[1:-1]:
            found = part.find(name, pos, end)
            if found < 0:
                return False
            pos = found + len(part.tokens)
        return True


def glob_match(name: str, pattern: str) -> bool:
    """`fnmatch.fnmatchcase(name, pattern)` in time linear in the name (for patterns read once, e.g. a token's
    claim; compile a `Glob` for patterns used again)."""
    return Glob.compile(pattern).match(name)


def _segment(tokens: list[_Token]) -> _Segment:
    plain = all(isinstance(token, str) for token in tokens)
    return _Segment(tuple(tokens), "".join(t for t in tokens if isinstance(t, str)) if plain else None)


def _class_end(pattern: str, i: int) -> int | None:
    """The index of the `]` closing a bracket class opened just before `i`, or None (then `[` is a literal):
    fnmatch's own reading (a `!` first negates; a `]` first, after it, is a member)."""
    j = i
    if j < len(pattern) and pattern[j] == "!":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    close = pattern.find("]", j)
    return None if close < 0 else close


class RoomPatterns:
    """Rooms matching any of some glob patterns (fnmatch's syntax, matched by `Glob`); free to ask when there
    are none."""

    CACHE_LIMIT = 10_000  # answers remembered; the cache is emptied when full (room names are unbounded)

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._patterns = tuple(Glob.compile(pattern) for pattern in patterns)
        self._known: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def match(self, room: str | None) -> bool:
        if not self._patterns or room is None:
            return False
        answer = self._known.get(room)
        if answer is None:
            if len(self._known) >= self.CACHE_LIMIT:
                self._known.clear()
            answer = self._known[room] = any(glob.match(room) for glob in self._patterns)
        return answer


REQUIREMENT = (r"anyone|identity|plugin|nobody|claim:\S+", "anyone, identity, claim:<name>, plugin or nobody")
"""Who may do something (`auth.rooms`, `auth.broadcast`): the regular expression and how errors spell it."""
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
"""`{claim}` in a room rule: the client's own value of that claim, exactly."""
ROOM_RULE = re.compile(rf"\s*(?P<pattern>\S+)\s*=\s*(?P<requirement>{REQUIREMENT[0]})\s*")
"""One `auth.rooms` entry: a room pattern (no spaces), `=`, a requirement."""


@dataclass(frozen=True, slots=True)
class RoomRule:
    """`pattern = requirement` (one `auth.rooms` entry, `text` as written): `*` and `?` are wildcards; `{claim}`
    stands for exactly the client's own value of that claim (a string). A rule has at most one placeholder and
    then no wildcard (`parse` refuses the ambiguous ones), so every room name under it has exactly one owner.
    `[` is a literal character here. Matching costs time linear in the room name's length (`Glob`; no regular
    expression)."""

    text: str
    requirement: str
    glob: Glob  # with a placeholder: unused (an empty pattern)
    placeholder: str | None  # the claim whose value the room must hold
    affixes: tuple[str, str]  # with a placeholder: the text before and after it

    @classmethod
    def parse(cls, text: str) -> RoomRule:
        """The rule `text` says; ValueError, reading as "expected ..." or "ambiguous: ...", when it is none."""
        match = ROOM_RULE.fullmatch(text)
        if match is None:
            raise ValueError(f'expected "<room pattern> = <requirement>" with a requirement of {REQUIREMENT[1]}')
        pattern = match["pattern"]
        placeholders = PLACEHOLDER.findall(pattern)
        if len(placeholders) > 1 or (placeholders and re.search(r"[*?]", PLACEHOLDER.sub("", pattern))):
            raise ValueError(
                "ambiguous: a placeholder beside a wildcard or another placeholder lets one user's room name match "
                "another's (with {sub} and *, user 'bob' would match 'bob.smith''s rooms); use one placeholder and "
                'no wildcard, e.g. "dm.{sub} = identity"'
            )
        found = PLACEHOLDER.search(pattern)
        if found is None:
            return cls(text, match["requirement"], Glob.compile(pattern, brackets=False), None, ("", ""))
        before, after = pattern[: found.start()], pattern[found.end() :]
        return cls(text, match["requirement"], Glob.compile(""), found[1], (before, after))

    def __str__(self) -> str:
        return self.text

    def matches(self, room: str) -> bool:
        """Whether `room` falls under this rule (a placeholder stands for one or more characters)."""
        if self.placeholder is None:
            return self.glob.match(room)
        before, after = self.affixes
        return len(room) > len(before) + len(after) and room.startswith(before) and room.endswith(after)

    def owner(self, room: str) -> str:
        """The placeholder's part of a room this rule matches."""
        before, after = self.affixes
        return room[len(before) : len(room) - len(after)]
