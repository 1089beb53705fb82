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
    """`create_user` for an email that already has a user."""


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
            "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, email TEXT UNIQUE NOT NULL, name TEXT NOT NULL)"
        )

    async def close(self) -> None:
        """Close the database (called by the gateway at shutdown)."""
        if self._db is not None:
            db, self._db = self._db, None
            await asyncio.to_thread(db.close)

    async def get_user_by_email(self, email: str) -> User | None:
        rows = await self._run("SELECT id, email, name FROM users WHERE email = ?", email)
        return User(id=rows[0][0], email=rows[0][1], name=rows[0][2]) if rows else None

    async def create_user(self, email: str, name: str) -> User:
        try:
            await self._run("INSERT INTO users (email, name) VALUES (?, ?)", email, name)
        except sqlite3.IntegrityError:
            raise UserExists(email) from None
        user = await self.get_user_by_email(email)
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
