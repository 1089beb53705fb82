"""Keepalive verdicts, sans I/O: when to ping a client, and when its silence closes it.

Events in, actions out, no asyncio and no clock of its own: the driver (`wsgate.connection.Connection`)
passes the event loop's time and carries out the `Verdict` (DESIGN.md "Pure cores, thin drivers").

The rules (docs/protocol.md, "Keepalive"):

- A ping is due every `ping_interval` seconds.
- A client is *silent* when nothing was heard from it for `pong_wait` seconds **and** it has had
  `pong_wait - ping_interval` seconds to answer a ping that was actually sent after it was last heard.
  A ping the server sent late (its event loop was stalled, by a handler that blocked it) moves the
  deadline with it: the server's own lateness never counts as the client's silence.
- What has arrived counts before any verdict. A silence is first only *suspected*: the driver lets the
  reader take what is buffered (two loop turns: the socket's bytes are parsed in one, the reader runs in
  the next) and asks again. Only a silence that lasts through that turn closes the client. After a
  stall, the frames that piled up in the socket are read before anyone is judged.
- While the reader is handling one of the client's own messages (`busy`), the client is not judged:
  its next frames may be waiting behind that message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

TIMER_SLACK: Final = 0.005
"""Seconds: asyncio may run a timer this early (clock resolution); never reschedule for a few microseconds."""


class Action(enum.Enum):
    WAIT = "wait"  # nothing to do: ask again at `Verdict.at`
    PING = "ping"  # send a ping now, then ask again at `Verdict.at`
    CONFIRM = "confirm"  # silence suspected: ask again once the reader has had its turn (not at a time)
    CLOSE = "close"  # silent: close the client (1001 "keepalive timeout")


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    at: float  # loop time (seconds) of the next question, for WAIT and PING; meaningless otherwise


class Keepalive:
    """One client's keepalive state. Times are the event loop's clock, in seconds.

    `ping_interval < pong_wait` (the settings refuse anything else); `pong_wait - ping_interval` is how
    long a client has to answer a ping.
    """

    __slots__ = ("_interval", "_wait", "_answer", "_next_ping", "_pinged", "_suspect")

    def __init__(self, now: float, ping_interval: float, pong_wait: float) -> None:
        if not 0 < ping_interval < pong_wait:
            raise ValueError(f"expected 0 < ping_interval < pong_wait, got {ping_interval} and {pong_wait}")
        self._interval = ping_interval
        self._wait = pong_wait
        self._answer = pong_wait - ping_interval
        self._next_ping = now + ping_interval
        self._pinged = float("-inf")  # when the first ping after the latest sign of life was sent
        self._suspect = False  # a silence was suspected; the reader has been given its turn since

    @property
    def next_ping(self) -> float:
        """When the next ping is due."""
        return self._next_ping

    def check(self, now: float, heard: float, *, busy: bool = False) -> Verdict:
        """The verdict at `now`, for a client last heard at `heard` (the last bytes read from it).

        `busy`: the reader is handling one of this client's messages (frames may be waiting behind it).
        """
        pinged = self._pinged if self._pinged >= heard else None  # the first ping since the client was heard
        silent = (
            pinged is not None
            and now - heard >= self._wait - TIMER_SLACK
            and now - pinged >= self._answer - TIMER_SLACK
        )
        if silent and not busy:
            if self._suspect:
                return Verdict(Action.CLOSE, now)
            self._suspect = True
            return Verdict(Action.CONFIRM, now)
        self._suspect = False
        action = Action.WAIT
        if now >= self._next_ping - TIMER_SLACK:
            action = Action.PING
            if pinged is None:
                self._pinged = pinged = now
            self._next_ping = now + self._interval
        at = self._next_ping
        if pinged is not None:  # the silence deadline; before any ping it lies past the next ping
            at = min(at, max(heard + self._wait, pinged + self._answer))
        if busy:  # judged once the reader is free again: ask again after an answer window
            at = min(self._next_ping, max(at, now + self._answer))
        return Verdict(action, at)
