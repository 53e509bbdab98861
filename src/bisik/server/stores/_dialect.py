"""One definition for each statement whose best form differs between SQLite and PostgreSQL.

A store writes a statement once, as a function of :class:`Dialect` (what
differs between the two databases), and :class:`PerDialect` builds it for each
at import: the hot path picks the built form by the connection's dialect and
never builds a statement per call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Executable,
    String,
    Table,
    bindparam,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

T = TypeVar("T", covariant=True)

# Ids per ``IN (...)`` on PostgreSQL: far below its limit on parameters.
CHUNK = 1000


@dataclass(frozen=True)
class Dialect:
    """What differs between SQLite and PostgreSQL in the statements the stores build.

    Attributes:
        name: SQLAlchemy's dialect name (``conn.dialect.name``).
        insert: the dialect's ``insert`` (it has ``on_conflict_do_nothing``).
        greatest: the larger of two values (SQLite's two-argument ``max``,
            PostgreSQL's ``greatest``).
        ids_as_json: whether a list of ids is bound as one JSON array read with
            ``json_each`` (one statement text whatever the count) rather than
            expanded into one parameter per id (SQLAlchemy compiles each count
            anew, and PostgreSQL limits the parameters: ``CHUNK`` at a time).
    """

    name: str
    insert: Callable[[Table], Any]
    greatest: Callable[..., ColumnElement[Any]]
    ids_as_json: bool

    def in_ids(self, column: Column[Any]) -> ColumnElement[bool]:
        """``column IN`` the list of ids bound as ``ids`` (see :func:`for_ids`)."""
        if self.ids_as_json:
            listed = func.json_each(bindparam("ids", type_=String)).table_valued("value")
            return column.in_(select(listed.c.value))
        return column.in_(bindparam("ids", expanding=True))

    def ids_params(self, ids: Sequence[int]) -> list[dict[str, object]]:
        """The parameters to run an :meth:`in_ids` statement once per entry, for all of ``ids``."""
        if self.ids_as_json:
            return [{"ids": json.dumps(list(ids))}]
        return [{"ids": list(ids[start : start + CHUNK])} for start in range(0, len(ids), CHUNK)]


SQLITE = Dialect("sqlite", sqlite.insert, func.max, ids_as_json=True)
POSTGRESQL = Dialect("postgresql", postgresql.insert, func.greatest, ids_as_json=False)
DIALECTS = {d.name: d for d in (SQLITE, POSTGRESQL)}


class PerDialect(Generic[T]):
    """A statement defined once, built for each dialect.

    Args:
        build: the statement as a function of the :class:`Dialect`.
    """

    __slots__ = ("_forms",)

    def __init__(self, build: Callable[[Dialect], T]) -> None:
        self._forms = {name: build(d) for name, d in DIALECTS.items()}

    def on(self, conn: Connection) -> T:
        """The form for ``conn``'s database."""
        return self._forms[conn.dialect.name]


def for_ids(
    conn: Connection, statement: PerDialect[Executable], ids: Sequence[int]
) -> list[tuple[Any, ...]]:
    """Run ``statement`` (built with :meth:`Dialect.in_ids`) for all of ``ids``;
    the rows it returns, if any. On SQLite one execution; on PostgreSQL one per
    ``CHUNK`` ids."""
    if not ids:
        return []
    dialect = DIALECTS[conn.dialect.name]
    each = statement.on(conn)
    rows: list[tuple[Any, ...]] = []
    for params in dialect.ids_params(ids):
        result = conn.execute(each, params)
        if result.returns_rows:
            rows += [tuple(row) for row in result]
    return rows
