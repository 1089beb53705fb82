"""The users service: a SQLite table behind an async interface.

sqlite3 blocks, so every query runs in a worker thread, one at a time (a single
connection is not safe for concurrent use).
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any, TypedDict


class User(TypedDict):
    id: int
    email: str
    name: str


class UserExists(Exception):
    """`create_user` for an owner that already has a user."""


class UsersService:
    """Reached by handlers and other plugins as `gateway.services["users"]`."""

    def __init__(self, database: str) -> None:
        self.database = database
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the database and create the table (called by the gateway at start-up)."""
        self._db = await asyncio.to_thread(sqlite3.connect, self.database, check_same_thread=False)
        await self._run(
            "CREATE TABLE IF NOT EXISTS users"
            " (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT NOT NULL, owner TEXT)"
        )
        if "owner" not in [row[1] for row in await self._run("PRAGMA table_info(users)")]:  # a table made before owners
            await self._run("ALTER TABLE users ADD COLUMN owner TEXT")
        await self._run("CREATE UNIQUE INDEX IF NOT EXISTS users_owner ON users (owner)")

    async def close(self) -> None:
        """Close the database (called by the gateway at shutdown)."""
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    async def get_user_by_email(self, email: str) -> User | None:
        """The first user registered with `email`, for server-side code: e-mail addresses are not verified,
        so several users may give one (and answering clients by address would tell them who is registered)."""
        rows = await self._run("SELECT id, email, name FROM users WHERE email = ? ORDER BY id LIMIT 1", email)
        return User(id=rows[0][0], email=rows[0][1], name=rows[0][2]) if rows else None

    async def get_user_by_owner(self, owner: str) -> User | None:
        """The user that the signed-in `owner` (a token's `sub`) created, if any."""
        rows = await self._run("SELECT id, email, name FROM users WHERE owner = ?", owner)
        return User(id=rows[0][0], email=rows[0][1], name=rows[0][2]) if rows else None

    async def create_user(self, email: str, name: str, *, owner: str) -> User:
        """A new user owned by `owner`; UserExists when `owner` has one already."""
        try:
            await self._run("INSERT INTO users (email, name, owner) VALUES (?, ?, ?)", email, name, owner)
        except sqlite3.IntegrityError:
            raise UserExists(owner) from None
        user = await self.get_user_by_owner(owner)
        assert user is not None
        return user

    async def _run(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self._db is None:
            raise RuntimeError("the users service is not started")
        db = self._db

        def query() -> list[tuple[Any, ...]]:
            with db:  # one transaction per statement
                return db.execute(sql, params).fetchall()

        async with self._lock:
            return await asyncio.to_thread(query)
