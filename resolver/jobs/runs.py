"""Each job's last run and result, in ``job_runs`` so every replica (and the CLI) sees it.

The scheduler writes a row after each run of a shared job (in its own transaction, after
the job's). A job may return a summary of what it did: a string is kept as it is, a
mapping as ``key: value`` pairs, a collection as its size; anything else is left out. The
summary is shown to admins, so jobs put counts in it, never a secret; a failure keeps only
the exception's class name.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from resolver.db.models import JobRun

SUMMARY_MAX = 500
ERROR_MAX = 200


@dataclass(frozen=True)
class RunRecord:
    """One finished run (plain values: kept in memory too, for per-process jobs)."""

    name: str
    started_at: datetime
    finished_at: datetime
    ok: bool
    duration_ms: int
    summary: str | None
    error: str | None
    replica: str
    #: When a run of this job last succeeded here (this run, if it did).
    last_ok_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "ok": self.ok,
            "duration_ms": self.duration_ms,
            "summary": self.summary,
            "error": self.error,
            "replica": self.replica,
            "last_ok_at": self.last_ok_at.isoformat() if self.last_ok_at else None,
        }


def summarize(result: object) -> str | None:
    """A short, one-line account of what a job returned."""
    if result is None or isinstance(result, bool):
        return None
    if isinstance(result, str):
        text = result
    elif isinstance(result, int | float):
        text = str(result)
    elif isinstance(result, Mapping):
        text = ", ".join(f"{key}: {value}" for key, value in result.items())
    elif isinstance(result, Collection):
        text = f"{len(result)} item(s)"
    else:
        return None
    text = " ".join(text.split())
    if not text:
        return None
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1] + "…"


def error_name(exc: BaseException) -> str:
    """What a failed run records: the class, never the message (it may quote a secret)."""
    return type(exc).__name__[:ERROR_MAX]


async def save_run(session: AsyncSession, run: RunRecord) -> None:
    """Upsert the job's row with ``run`` (the caller commits)."""
    values: dict[str, Any] = {
        "name": run.name,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "ok": run.ok,
        "duration_ms": run.duration_ms,
        "summary": run.summary,
        "error": run.error,
        "replica": run.replica,
    }
    if run.ok:
        values["last_ok_at"] = run.finished_at
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(JobRun).values(**values)
    # One statement, so two replicas racing for a first row cannot fail on the key.
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=[JobRun.name],
            set_={key: statement.excluded[key] for key in values if key != "name"},
        )
    )


async def load_runs(session: AsyncSession) -> dict[str, JobRun]:
    """Every recorded job's row, by job name."""
    rows = await session.scalars(select(JobRun))
    return {row.name: row for row in rows}


def row_json(row: JobRun) -> dict[str, Any]:
    return {
        "started_at": row.started_at.isoformat(),
        "finished_at": row.finished_at.isoformat(),
        "ok": row.ok,
        "duration_ms": row.duration_ms,
        "summary": row.summary,
        "error": row.error,
        "replica": row.replica,
        "last_ok_at": row.last_ok_at.isoformat() if row.last_ok_at else None,
    }
