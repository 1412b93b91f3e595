"""Command line for the audit log (issue #7): ``nats-iam-resolver audit export``.

Imported by ``resolver.cli`` to register its commands. The export streams: one page of rows
in memory at a time (``resolver.audit.query.iter_entries``), written as it is read.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import click

from resolver.cli import cli, config_option, run, settings_from
from resolver.errors import ValidationError

#: Columns of ``--format table``: (key, width); the last one takes what is left.
TABLE_COLUMNS = (
    ("at", 32),
    ("actor", 20),
    ("action", 28),
    ("user", 20),
    ("account", 14),
    ("target", 0),
)
#: Show progress on a terminal only once an export is this long (short ones just finish).
PROGRESS_EVERY = 10_000


@cli.group()
def audit() -> None:
    """The audit log: every change, credential, revocation and push, under who did it."""


def _cell(value: Any, width: int) -> str:
    text = "-" if value is None else str(value)
    if width and len(text) > width:
        text = text[: width - 1] + "…"
    return text.ljust(width) if width else text


def table_line(item: dict[str, Any]) -> str:
    values = dict(item)
    account = values.get("account")
    if isinstance(account, str) and len(account) > 14:
        values["account"] = account[:13] + "…"  # a key prefix is enough to tell them apart
    return "  ".join(_cell(values.get(key), width) for key, width in TABLE_COLUMNS).rstrip()


def jsonl_line(item: dict[str, Any]) -> str:
    # Compact, one object a line, keys in entry_json's order, non-ASCII kept readable.
    return json.dumps(item, ensure_ascii=False, separators=(",", ":"), default=str)


@audit.command("export")
@config_option
@click.option("--since", default=None, help="From this time (RFC 3339, or a date: UTC midnight).")
@click.option("--until", default=None, help="Before this time (RFC 3339, or a date).")
@click.option("--actor", default=None, help="Token name, admin, an IdP subject, or system.")
@click.option("--user", default=None, help="The person's userName or the workload's name.")
@click.option("--account", default=None, help="Account name or public key.")
@click.option("--action", default=None, help="Exact action, or a prefix like scim.user.*")
@click.option("--target", default=None, help="Exact target (an id or public key).")
@click.option(
    "--after",
    "after_id",
    type=click.IntRange(min=0),
    default=None,
    help="Only rows with an id above this (resume a shipped export).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "table"]),
    default="jsonl",
    show_default=True,
    help="jsonl: one JSON object a line (for a SIEM); table: for people.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path, dir_okay=False, writable=True),
    default=None,
    help="Write here instead of stdout.",
)
def audit_export(
    config: Path | None,
    since: str | None,
    until: str | None,
    actor: str | None,
    user: str | None,
    account: str | None,
    action: str | None,
    target: str | None,
    after_id: int | None,
    fmt: str,
    output: Path | None,
) -> None:
    """Write matching audit rows, oldest first; the count goes to stderr at the end."""
    from resolver.audit.query import build_filter

    settings = settings_from(config)
    found = build_filter(
        since=since,
        until=until,
        actor=actor,
        user=user,
        account=account,
        action=action,
        target=target,
    )
    if output is None:
        try:
            written = run(_export(settings, found, after_id, fmt, sys.stdout))
        except BrokenPipeError:
            # The reader went away (``| head``): stop quietly, like other Unix tools.
            # Python's recipe: point stdout at /dev/null so the flush at exit cannot fail.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(0) from None
    else:
        try:
            with output.open("w", encoding="utf-8") as sink:
                written = run(_export(settings, found, after_id, fmt, sink))
        except OSError as exc:
            raise ValidationError(f"cannot write {output}: {exc}") from None
    where = f" to {output}" if output is not None else ""
    click.echo(f"exported {written} audit row(s){where}", err=True)


async def _export(settings: Any, found: Any, after_id: int | None, fmt: str, sink: IO[str]) -> int:
    from resolver.audit.query import count, iter_entries
    from resolver.db.engine import create_engine, create_sessionmaker

    progress = sys.stderr.isatty()
    engine = create_engine(settings.database_url)
    try:
        sessions = create_sessionmaker(engine)
        total = None
        if progress:
            async with sessions() as session:
                total = await count(session, found, after=after_id)
        if fmt == "table":
            sink.write(table_line({key: key for key, _ in TABLE_COLUMNS}) + "\n")
        line = table_line if fmt == "table" else jsonl_line
        written = 0
        async for item in iter_entries(sessions, found, after=after_id):
            sink.write(line(item) + "\n")
            written += 1
            if progress and written % PROGRESS_EVERY == 0:
                shown = f"{written}/{total}" if total is not None else str(written)
                click.echo(f"\rexported {shown} row(s)…", err=True, nl=False)
        if progress and written >= PROGRESS_EVERY:
            click.echo("", err=True)
        sink.flush()
        return written
    finally:
        await engine.dispose()
