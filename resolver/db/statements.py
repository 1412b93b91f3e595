"""Core statements run for a hot path: through SQLAlchemy, or on SQLite straight on sqlite3.

The credentials batch (resolver.credentials.exchange) runs five small statements and a
commit per request that arrives alone. Through SQLAlchemy's execution layer each statement
costs more CPU than SQLite spends on it: the execution context, the parameter processing
(re-rendering every expanding IN list as text, each time), the result wrapping and the
greenlet switches. Measured on a batch of one (bench/credentials.py and its
``bare exchange`` reference rows): two inserts and a commit through an SQLAlchemy session
cost 1.2-1.8 ms more CPU than the same on sqlite3, and the batch's latency target cannot be
met with that cost on every request.

``statements_on(conn)`` gives the hot path one interface with two implementations:

- ``CoreStatements``: ``conn.execute`` (PostgreSQL, and any connection that is not this
  project's SQLite driver);
- ``SqliteStatements``: the same statement objects, compiled once by SQLAlchemy for the
  engine's own dialect, then run on the driver connection under ``conn`` (same sqlite3
  connection, same transaction, same writer queue: see resolver.db.sqlite_driver). The SQL
  text, the bind and result conversions are SQLAlchemy's (types' processors, taken once).
  An expanding IN list is laid out as ``(?, ?, ...)`` as SQLAlchemy does, but the text is
  made once per list length and kept, not re-rendered on every execution. (A single
  ``json_each(?)`` parameter per list would keep one text, but SQLite then builds a
  temporary index per list: the keys read under the lock took 2.5 times as long.)

Statements are the same objects on both, so there is one definition of each query; the
tests run each one both ways on the same database and compare the rows.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement

from resolver.db.sqlite_driver import OneTripConnection, one_trip_connection

Row = Sequence[Any]


class Statements(Protocol):
    """What the hot path asks of the database (one implementation per kind of connection)."""

    async def rows(self, statement: ClauseElement, params: Mapping[str, Any]) -> list[Row]:
        """The rows of a SELECT or of a statement with RETURNING."""
        ...

    async def execute_many(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        """One statement (an INSERT) for each of ``rows``."""
        ...

    async def inserted_ids(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> list[Any]:
        """An INSERT ... RETURNING id for each of ``rows``: the ids, in the rows' order."""
        ...

    def data_version(self) -> int | None:
        """SQLite's ``PRAGMA data_version`` (see resolver.db.sqlite_driver); None elsewhere."""
        ...


class CoreStatements:
    """Through SQLAlchemy Core, on ``conn``."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def rows(self, statement: ClauseElement, params: Mapping[str, Any]) -> list[Row]:
        return list(await self._conn.execute(statement, params))  # type: ignore[call-overload]

    async def execute_many(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        await self._conn.execute(statement, list(rows))  # type: ignore[call-overload]

    async def inserted_ids(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> list[Any]:
        # Needs ``returning(..., sort_by_parameter_order=True)``: SQLAlchemy's
        # insertmanyvalues then keeps the rows' order.
        return list(await self._conn.scalars(statement, list(rows)))  # type: ignore[call-overload]

    def data_version(self) -> int | None:
        return None


_EXPANDING = re.compile(r"\(__\[POSTCOMPILE_(\w+)\]\)")


@dataclass
class _Compiled:
    """A statement as sqlite3 takes it: the SQL and, per ``?``, how to make its value."""

    sql: str
    #: Per ``?`` (or IN list) in order: (parameter name, fixed value if the statement
    #: carries one, is an IN list, the bind processor or None).
    binds: tuple[tuple[str, Any, bool, Callable[[Any], Any] | None], ...]
    #: Per result column: its result processor or None.
    results: tuple[Callable[[Any], Any] | None, ...]
    #: The SQL per length of each IN list, in order (made on first use).
    expanded: dict[tuple[int, ...], str] = field(default_factory=dict)

    def parameters(self, values: Mapping[str, Any]) -> tuple[str, list[Any]]:
        """The SQL for ``values`` (IN lists laid out as ``(?, ?, ...)``) and its parameters."""
        out: list[Any] = []
        lengths = []
        for name, fixed, expanding, process in self.binds:
            value = values[name] if name in values else fixed
            if value is _NO_VALUE:
                raise KeyError(f"no value for the statement's parameter {name!r}")
            if expanding:
                lengths.append(len(value))
                out.extend(value if process is None else [process(item) for item in value])
            else:
                out.append(value if process is None else process(value))
        if not lengths:
            return self.sql, out
        shape = tuple(lengths)
        sql = self.expanded.get(shape)
        if sql is None:
            each = iter(shape)
            # SQLite takes an empty list, ``IN ()``, as matching nothing.
            sql = _EXPANDING.sub(lambda _m: "(" + ", ".join("?" * next(each)) + ")", self.sql)
            if len(self.expanded) >= _MAX_SHAPES:
                self.expanded.clear()  # odd batches: start over rather than grow
            self.expanded[shape] = sql
        return sql, out

    def convert(self, rows: list[Any]) -> list[Row]:
        if not any(self.results):
            return rows
        pairs = list(enumerate(self.results))
        return [
            tuple(row[i] if process is None else process(row[i]) for i, process in pairs)
            for row in rows
        ]


_NO_VALUE = object()
#: Texts kept per statement (one per combination of IN-list lengths seen).
_MAX_SHAPES = 256


def _compile(
    statement: ClauseElement, dialect: Dialect, column_keys: tuple[str, ...] | None
) -> _Compiled:
    compiled = statement.compile(
        dialect=dialect, column_keys=list(column_keys) if column_keys is not None else None
    )
    if getattr(compiled, "insert_prefetch", None):
        # A Python-side column default SQLAlchemy would compute at execution: not done here.
        missing = [column.key for column in compiled.insert_prefetch]  # type: ignore[attr-defined]
        raise ValueError(f"give a value for {missing}: column defaults are not applied here")
    binds = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        fixed = _NO_VALUE if bind.required else bind.effective_value
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        binds.append((name, fixed, bool(bind.expanding), process))
    # Each IN list's placeholder stands where its name is in positiontup.
    placeholders = [m.group(1) for m in _EXPANDING.finditer(compiled.string)]
    if placeholders != [name for name, _f, expanding, _p in binds if expanding] or (
        compiled.string.count("?") != len(binds) - len(placeholders)
    ):
        raise ValueError("the statement's parameters could not be laid out for sqlite3")
    columns = getattr(statement, "selected_columns", None)
    if columns is None:
        columns = getattr(statement, "exported_columns", ())  # RETURNING
    results = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
    )
    return _Compiled(compiled.string, tuple(binds), results)


#: Per engine's dialect: (statement id, insert column keys) → (statement, compiled). The hot
#: path's statements are module constants, so each dict holds a handful of entries.
_CACHE: weakref.WeakKeyDictionary[
    Dialect, dict[tuple[int, tuple[str, ...] | None], tuple[ClauseElement, _Compiled]]
] = weakref.WeakKeyDictionary()


class SqliteStatements:
    """Straight on the sqlite3 connection under an SQLAlchemy connection (see module doc)."""

    def __init__(self, driver: OneTripConnection, dialect: Dialect) -> None:
        self._driver = driver
        self._dialect = dialect
        self._cache = _CACHE.setdefault(dialect, {})

    def _compiled(
        self, statement: ClauseElement, column_keys: tuple[str, ...] | None = None
    ) -> _Compiled:
        key = (id(statement), column_keys)
        found = self._cache.get(key)
        if found is None or found[0] is not statement:
            # The entry keeps the statement alive, so its id cannot be reused meanwhile.
            found = (statement, _compile(statement, self._dialect, column_keys))
            self._cache[key] = found
        return found[1]

    async def rows(self, statement: ClauseElement, params: Mapping[str, Any]) -> list[Row]:
        compiled = self._compiled(statement)
        done = await self._driver.run(*compiled.parameters(params))
        return compiled.convert(done[3])

    async def execute_many(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        if not rows:
            return
        compiled = self._compiled(statement, tuple(rows[0]))
        values = [compiled.parameters(row)[1] for row in rows]  # an INSERT: no IN lists
        await self._driver.run(compiled.sql, values, many=True)

    async def inserted_ids(
        self, statement: ClauseElement, rows: Sequence[Mapping[str, Any]]
    ) -> list[Any]:
        # One INSERT ... RETURNING per row: SQLite does not promise a multi-row INSERT
        # returns its rows in the VALUES order.
        ids = []
        for row in rows:
            compiled = self._compiled(statement, tuple(row))
            done = await self._driver.run(*compiled.parameters(row))
            ids.append(done[3][0][0])
        return ids

    def data_version(self) -> int | None:
        return self._driver.data_version()


async def statements_on(conn: AsyncConnection) -> Statements:
    """The fastest way to run the hot path's statements on ``conn`` (see module doc)."""
    driver = await one_trip_connection(conn)
    if driver is None:
        return CoreStatements(conn)
    return SqliteStatements(driver, conn.dialect)
