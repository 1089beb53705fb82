"""wsgate's promises, each checked as an invariant over what the clients and the nodes saw. Pure: no I/O.

Each promise is stated once here and in docs/faults.md, "Fault model" (tests keep the two equal).
A check returns the violations it found, as lines; none means the promise held.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PROMISES = {
    "told": 'What a publisher is told matches what happened: "not sent" only for a message nobody got, "outcome '
    'unknown" where the gateway cannot know, and a message it was told was sent reaches every member that '
    "stayed.",
    "history": "Every message kept in history reaches every member that stayed or resumed, exactly once and in order.",
    "presence": "Presence agrees on every node within presence.node_ttl plus 2 s, and its join and leave events "
    "match it.",
    "health": "/health and /ready tell the truth within a stated bound (broker.probe_interval plus "
    "broker.connect_timeout): 503 from /ready while the broker cannot do its work, 200 once it can.",
    "bounded": "Memory per client stays bounded (websocket.send_queue_bytes), and no task, socket or descriptor "
    "is leaked: once the clients are gone, the node holds none of their sockets.",
    "logged": "Every fault is logged once, with its kind, never per message, and never as a traceback.",
}

OK, NOT_SENT, UNKNOWN = "ok", "not sent", "unknown"


@dataclass
class Verdicts:
    """The violations found in one scenario, by promise."""

    checked: set[str] = field(default_factory=set)
    violations: list[tuple[str, str]] = field(default_factory=list)

    def add(self, promise: str, found: Iterable[str]) -> None:
        assert promise in PROMISES, promise
        self.checked.add(promise)
        self.violations += [(promise, line) for line in found]

    def that(self, promise: str, holds: bool, detail: str) -> None:
        self.add(promise, [] if holds else [detail])

    @property
    def passed(self) -> bool:
        return not self.violations


def told_the_truth(outcomes: Mapping[str, str], seen: Mapping[str, Counter[str]], stayed: Iterable[str]) -> list[str]:
    """`outcomes`: what each publish was told (OK, NOT_SENT, UNKNOWN), by the message's key; `seen`: how often each
    member got each key; `stayed`: the members that were there throughout."""
    found = []
    stayed = list(stayed)
    for key, outcome in outcomes.items():
        copies = {member: seen.get(member, Counter())[key] for member in seen}
        if outcome == NOT_SENT and any(copies.values()):
            found.append(f"{key}: told not sent, but {sorted(m for m, n in copies.items() if n)} got it")
        if outcome == OK:
            missing = [member for member in stayed if copies.get(member, 0) == 0]
            if missing:
                found.append(f"{key}: told sent, but {missing} never got it")
        twice = [member for member, n in copies.items() if n > 1]
        if twice:
            found.append(f"{key}: {twice} got it more than once")
    return found


def exactly_once_in_order(got: Iterable[tuple[str, int]], kept: Iterable[tuple[str, int]], who: str) -> list[str]:
    """`got`: the (epoch, offset) of each kept message a member received, in arrival order; `kept`: every (epoch,
    offset) the room kept while the member was there (or that it resumed from)."""
    got = list(got)
    found = []
    counts = Counter(got)
    twice = sorted(stamp for stamp, n in counts.items() if n > 1)
    if twice:
        found.append(f"{who}: got {len(twice)} messages more than once, e.g. {twice[:3]}")
    missing = sorted(set(kept) - set(got))
    if missing:
        found.append(f"{who}: missed {len(missing)} kept messages, e.g. {missing[:3]}")
    last: dict[str, int] = {}
    for epoch, offset in got:
        if offset <= last.get(epoch, 0):
            found.append(f"{who}: offset {offset} of epoch {epoch} came after {last[epoch]}")
            break
        last[epoch] = offset
    return found


_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} ", re.M)  # where a log record begins (the nodes' text format)


def no_tracebacks(log: str, node: str) -> list[str]:
    """No traceback, but those of the fault model's own plugin failing on purpose (a plugin's bug is logged
    with its traceback, for its author): each traceback runs to the next record, and is judged by itself."""
    found = []
    for start in (m.start() for m in re.finditer(r"Traceback \(most recent call last\)", log)):
        end = next((m.start() for m in _RECORD.finditer(log, start)), len(log))
        block = log[start:end].rstrip()
        if not block.endswith("failed on purpose"):
            found.append(f"{node} logged a traceback: {block.splitlines()[-1]}")
    return found


def logged_at_most(log: str, pattern: str, times: int, node: str) -> list[str]:
    """A fault's line appears at least once and at most `times` times (once per fault, not per message)."""
    n = len(re.findall(pattern, log))
    if n == 0:
        return [f"{node} never logged {pattern!r}"]
    return [f"{node} logged {pattern!r} {n} times (at most {times})"] if n > times else []


def within(value: float, bound: float, what: str) -> list[str]:
    return [] if value <= bound else [f"{what}: {value:.3g} over the bound of {bound:.3g}"]
