"""Command line for the scheduled jobs (issue #7): ``nats-iam-resolver jobs``.

Imported by ``resolver.cli`` to register its commands. It reads what every replica
recorded (``job_runs``) and, on PostgreSQL, who holds the jobs lock now; the intervals and
next runs live in the serving processes (``GET /admin/v1/jobs``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from resolver.cli import cli, cli_session, config_option, run, settings_from
from resolver.config import Settings

#: Columns of the table: (key, width); the last one takes what is left.
TABLE_COLUMNS = (
    ("name", 26),
    ("started_at", 26),
    ("result", 8),
    ("duration_ms", 11),
    ("replica", 24),
    ("summary", 0),
)


@cli.command("jobs")
@config_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table: for people; json: one object with the leader and every job's last run.",
)
def jobs(config: Path | None, fmt: str) -> None:
    """Each scheduled job's last run on any replica, and which replica leads the jobs."""
    found = run(_read(settings_from(config)))
    if fmt == "json":
        click.echo(json.dumps(found, indent=2))
        return
    leader = found["leader"]
    click.echo(f"leader: {leader or 'none (no replica holds the jobs lock)'}")
    click.echo("  ".join(key.ljust(width) for key, width in TABLE_COLUMNS).rstrip())
    for name, last in found["jobs"].items():
        values = {**last, "name": name, "result": "ok" if last["ok"] else last["error"]}
        cells = [str(values.get(key) or "-") for key, _ in TABLE_COLUMNS]
        click.echo(
            "  ".join(
                cell.ljust(width) if width else cell
                for cell, (_, width) in zip(cells, TABLE_COLUMNS, strict=True)
            ).rstrip()
        )


async def _read(settings: Settings) -> dict[str, Any]:
    from resolver.jobs.leader import lock_holder
    from resolver.jobs.runs import load_runs, row_json

    async with cli_session(settings) as session:
        rows = await load_runs(session)
        if settings.database_url.startswith("postgresql"):
            leader = await lock_holder(session)
        else:
            leader = "the serving process (SQLite: one process, always the leader)"
    return {"leader": leader, "jobs": {name: row_json(rows[name]) for name in sorted(rows)}}
