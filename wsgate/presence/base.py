"""What every presence store provides: who is in a room on the other nodes, and which nodes are alive.

Separate from the broker (relay, room interest, history), as centrifuge keeps
`broker.go` and `presence.go` apart: a deployment could keep presence elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import WsgateError


class PresenceError(WsgateError):
    """The store cannot be read (Redis unreachable); one line."""


class PresenceStore(Protocol):
    """Members of presence rooms across nodes, and each live node's dashboard figures."""

    async def start(self) -> None:
        """Begin writing this node's members and proving it alive (never raises: it retries)."""

    def watch_departures(self, departed: Callable[[str, bytes], None], revived: Callable[[], None]) -> None:
        """Call `departed(room, member)` for each member of a dead node that this node reaped (every such member
        is reaped by exactly one surviving node), and `revived()` when this node finds it was taken for dead."""

    def join(self, room: str, client_id: str, member: bytes) -> None:
        """A local client joined a room with presence (`member`: its encoded description); without waiting."""

    def leave(self, room: str, client_id: str) -> None:
        """A local client left a room with presence; without waiting."""

    async def members(self, room: str) -> list[bytes]:
        """The encoded members of `room` on the other live nodes. Raises PresenceError."""

    async def share_figures(self, figures: bytes, *, others: bool = True) -> list[bytes]:
        """Publish this node's figures (encoded JSON); returns every live node's, this one's included, or nothing
        when not asked for the `others` (nobody looks at them: the write alone). Raises PresenceError."""

    async def close(self) -> None:
        """Stop; this node's members vanish from the other nodes' answers."""
