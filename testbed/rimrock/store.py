"""Rimrock's job table (its `Job` entity and `JobRepository` queries), in SQLite.

Rimrock keeps every submitted job in a database until DELETE: the status it last saw, where
stdout/stderr went, the user, the host and the tag, plus the accounting "history" (nodes,
cores, times) filled once the job ended. The status update polls only the jobs that still
need it: not FINISHED/ABORTED, or no history yet (`cores IS NULL`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path

TERMINAL = ("FINISHED", "ABORTED")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    status TEXT NOT NULL,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL,
    user_login TEXT NOT NULL,
    host TEXT NOT NULL,
    tag TEXT,
    nodes TEXT, cores TEXT, wall_time TEXT, queue_time TEXT, start_time TEXT, end_time TEXT
);
CREATE INDEX IF NOT EXISTS job_user ON job (user_login, host);
CREATE INDEX IF NOT EXISTS job_id ON job (job_id);
"""


@dataclass
class Job:
    id: int | None
    job_id: str
    status: str
    stdout: str
    stderr: str
    user_login: str
    host: str
    tag: str | None = None
    nodes: str | None = None
    cores: str | None = None
    wall_time: str | None = None
    queue_time: str | None = None
    start_time: str | None = None
    end_time: str | None = None


_COLUMNS = [f.name for f in fields(Job)]


class Store:
    """One SQLite file; a connection per operation (the server answers from several threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # one transaction
                yield db
        finally:
            db.close()

    def _select(self, where: str, args: Sequence[object]) -> list[Job]:
        with self._db() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM job WHERE {where} ORDER BY id",  # noqa: S608
                              tuple(args)).fetchall()
        return [Job(*row) for row in rows]

    def save(self, job: Job) -> Job:
        values = [getattr(job, c) for c in _COLUMNS[1:]]
        with self._db() as db:
            if job.id is None:
                cur = db.execute(f"INSERT INTO job ({', '.join(_COLUMNS[1:])}) "  # noqa: S608
                                 f"VALUES ({', '.join('?' * len(values))})", values)
                job.id = cur.lastrowid
            else:
                db.execute(f"UPDATE job SET {', '.join(f'{c} = ?' for c in _COLUMNS[1:])} "  # noqa: S608
                           "WHERE id = ?", [*values, job.id])
        return job

    def delete(self, job: Job) -> None:
        with self._db() as db:
            db.execute("DELETE FROM job WHERE id = ?", (job.id,))

    def hosts(self, login: str) -> list[str]:
        with self._db() as db:
            rows = db.execute("SELECT DISTINCT host FROM job WHERE user_login = ? ORDER BY host",
                              (login,)).fetchall()
        return [r[0] for r in rows]

    def by_job_id(self, job_id: str) -> Job | None:
        """Any user's job (Rimrock's abort and delete look jobs up without the user)."""
        found = self._select("job_id = ?", (job_id,))
        return found[0] if found else None

    def by_job_id_and_user(self, job_id: str, login: str) -> Job | None:
        found = self._select("job_id = ? AND user_login = ?", (job_id, login))
        return found[0] if found else None

    def on_hosts(self, login: str, hosts: Sequence[str], tag: str | None = None) -> list[Job]:
        marks = ", ".join("?" * len(hosts))
        if tag is None:
            return self._select(f"user_login = ? AND host IN ({marks})", (login, *hosts))
        return self._select(f"user_login = ? AND tag = ? AND host IN ({marks})",
                            (login, tag, *hosts))

    def polled_ids(self, login: str, host: str) -> list[str]:
        """Jobs whose status still needs asking: not terminal, or no history yet."""
        jobs = self._select("user_login = ? AND host = ? AND "
                            "(status NOT IN ('FINISHED', 'ABORTED') OR cores IS NULL)",
                            (login, host))
        return [j.job_id for j in jobs]
