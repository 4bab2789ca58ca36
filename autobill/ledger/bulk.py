"""Bulk writes for the hot path (a million billed CDRs a night), inside the caller's transaction.

The ORM's per-row parameter processing costs ~50 µs a row; here rows are tuples already in the
database's own form, written with the driver's fastest batch call (`executemany` on SQLite,
`execute_values` on PostgreSQL). The column types stay those of `models.py`: this module only
encodes values the way `autobill.ledger.types` would (decimal text on SQLite, naive UTC times).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Table
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

PAGE = 5000


def encode(value: Any, dialect: str) -> Any:
    """A Python value as the driver should receive it for our column types."""
    if isinstance(value, float):
        raise TypeError("refusing a binary float in the ledger; use Decimal or decimal text")
    if isinstance(value, Decimal):
        return str(value) if dialect == "sqlite" else value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: ledger timestamps must carry an offset")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None).isoformat(sep=" ") if dialect == "sqlite" else value
    if isinstance(value, date) and dialect == "sqlite":
        return value.isoformat()
    return value


def insert_rows(session: Session, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                encoded: bool = False) -> int:
    """INSERT many rows (each a tuple in `columns` order); returns how many.

    `encoded=True`: the rows are already in database form (text for decimals and times, see `utc_text`), skip `encode`."""
    conn = session.connection()
    dialect = conn.dialect.name
    raw = conn.connection.dbapi_connection
    cols = ", ".join(columns)
    count = 0
    batch: list[tuple] = []

    def flush() -> None:
        cur = raw.cursor()
        try:
            _write(cur)
        except conn.dialect.dbapi.IntegrityError as exc:
            # Same exception type as the ORM raises, so callers handle one kind of conflict.
            raise IntegrityError(f"INSERT INTO {table.name}", None, exc) from exc
        finally:
            cur.close()

    def _write(cur) -> None:
        if dialect == "postgresql":
            from psycopg2.extras import execute_values

            execute_values(cur, f"INSERT INTO {table.name} ({cols}) VALUES %s", batch, page_size=PAGE)  # noqa: S608
        else:
            marks = ", ".join("?" for _ in columns)
            cur.executemany(f"INSERT INTO {table.name} ({cols}) VALUES ({marks})", batch)  # noqa: S608

    for row in rows:
        batch.append(tuple(row) if encoded else tuple(encode(v, dialect) for v in row))
        if len(batch) >= PAGE:
            flush()
            count += len(batch)
            batch = []
    if batch:
        flush()
        count += len(batch)
    return count


def utc_text(moment: datetime, dialect: str) -> str:
    """A timestamp as text both databases store correctly in our UTCDateTime columns."""
    moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(sep=" ") if dialect == "sqlite" else moment.isoformat(sep=" ")


def dialect_of(session: Session) -> str:
    return session.connection().dialect.name


def keys_present(session: Session, table: Table, column: str, keys: Iterable[str]) -> set[str]:
    """Which of `keys` exist in `table.column`: one temporary-table join instead of thousands of
    IN-list queries (their compilation alone costs seconds per million keys)."""
    conn = session.connection()
    dialect = conn.dialect.name
    raw = conn.connection.dbapi_connection
    cur = raw.cursor()
    try:
        if dialect == "postgresql":
            from psycopg2.extras import execute_values

            cur.execute("CREATE TEMP TABLE IF NOT EXISTS _autobill_keys (k text PRIMARY KEY) ON COMMIT DROP")
            cur.execute("TRUNCATE _autobill_keys")
            execute_values(cur, "INSERT INTO _autobill_keys (k) VALUES %s ON CONFLICT DO NOTHING",
                           ((k,) for k in keys), page_size=PAGE)
        else:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS _autobill_keys (k TEXT PRIMARY KEY)")
            cur.execute("DELETE FROM _autobill_keys")
            cur.executemany("INSERT OR IGNORE INTO _autobill_keys (k) VALUES (?)", ((k,) for k in keys))
        cur.execute(f"SELECT t.{column} FROM {table.name} t JOIN _autobill_keys k ON k.k = t.{column}")  # noqa: S608
        found = {row[0] for row in cur.fetchall()}
        cur.execute("DELETE FROM _autobill_keys")
        return found
    finally:
        cur.close()
