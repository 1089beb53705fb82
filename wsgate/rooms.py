"""Room-name patterns: which rooms a feature (history, presence) applies to, answered fast."""

from __future__ import annotations

import fnmatch


class RoomPatterns:
    """Rooms matching any of some glob patterns; free to ask when there are none."""

    CACHE_LIMIT = 10_000  # answers remembered; the cache is emptied when full (room names are unbounded)

    def __init__(self, patterns: tuple[str, ...]) -> None:
        self._patterns = patterns
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
            answer = self._known[room] = any(fnmatch.fnmatchcase(room, p) for p in self._patterns)
        return answer
