"""What the ledger already knows about a batch's CDR keys (the cross-batch duplicate check).

A key is "known" when it is final (`billed_cdrs`: billed, included, zero-cost), waiting to be
rated again (`unrated_cdrs`), or in quarantine. Re-reads are normal (every extraction overlaps
the previous window), so this runs on every batch.

How: the batch's keys go into a connection-local TEMP table (SQLite `executemany`, PostgreSQL
`COPY`) and one UNION ALL query joins it with the three tables on their key indexes. A
million keys probed with `IN (...)` lists cost 10-30 s (statement building and parameter
binding dominate); the temp table costs a few seconds. The tables themselves are never read
whole: they grow forever.

The quarantine state is kept apart (`quarantine:held|released|requeued`) because the policy
treats a re-read of a HELD row as still bad (a rejected batch extracted again must not pass
just because its bad rows are now "known"), and because requeued rows are validated again
without seeing their own quarantine record (`include_requeued=False`).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import polars as pl
from sqlalchemy import text

from autobill.ledger.db import engine_for

# Priority when a key is in several places: final beats unrated beats quarantine.
_PRIORITY = {"billed": 0, "unrated": 1, "quarantine:held": 2, "quarantine:released": 3, "quarantine:requeued": 4}
MAX_KEY_LENGTH = 200  # longer keys cannot be in the ledger (column width)

_CREATE = "CREATE TEMP TABLE IF NOT EXISTS dq_probe_keys (cdr_key VARCHAR(200) PRIMARY KEY)"
_QUERY = """
SELECT k.cdr_key, 'billed' FROM dq_probe_keys k JOIN billed_cdrs b ON b.cdr_key = k.cdr_key
UNION ALL
SELECT k.cdr_key, 'unrated' FROM dq_probe_keys k JOIN unrated_cdrs u ON u.cdr_key = k.cdr_key
"""
_QUARANTINE = """
UNION ALL
SELECT k.cdr_key, 'quarantine:' || q.status FROM dq_probe_keys k JOIN quarantine q ON q.cdr_key = k.cdr_key
WHERE q.status IN ('held', 'released'{requeued})
"""


def _probe_keys(keys: Sequence[str] | pl.Series) -> list[str]:
    """Distinct keys that could be in the ledger (no whitespace/control characters, <= 200 chars):
    the others are malformed, quarantined before the duplicate check looks at them."""
    series = pl.Series("cdr_key", keys, dtype=pl.String).drop_nulls()
    ok = (series.str.len_chars() <= MAX_KEY_LENGTH) & ~series.str.contains(r"[\s\x00-\x1f]")
    return series.filter(ok).unique().sort().to_list()  # sorted: B-tree inserts append, 10x faster


def _fill(conn, keys: list[str]) -> None:
    if conn.dialect.name == "postgresql":
        raw = conn.connection.dbapi_connection
        data = io.StringIO("".join(k.replace("\\", "\\\\") + "\n" for k in keys))
        with raw.cursor() as cur:
            cur.copy_expert("COPY dq_probe_keys (cdr_key) FROM STDIN", data)
            cur.execute("ANALYZE dq_probe_keys")  # real row counts: index probes, not a scan of billed_cdrs
    else:
        conn.exec_driver_sql("INSERT INTO dq_probe_keys (cdr_key) VALUES (?)", [(k,) for k in keys])


def load_known_keys(
    ledger_url: str,
    keys: Sequence[str] | pl.Series,
    include_quarantine: bool = True,
    include_requeued: bool = True,
) -> pl.DataFrame:
    """(cdr_key, state) for those of `keys` the ledger knows; one row per key."""
    schema = {"cdr_key": pl.String(), "state": pl.String()}
    wanted = _probe_keys(keys)
    if not wanted:
        return pl.DataFrame(schema=schema)
    query = _QUERY
    if include_quarantine:
        query += _QUARANTINE.format(requeued=", 'requeued'" if include_requeued else "")
    with engine_for(ledger_url).connect() as conn:
        try:
            conn.execute(text(_CREATE))
            conn.execute(text("DELETE FROM dq_probe_keys"))
            _fill(conn, wanted)
            found = conn.execute(text(query)).all()
        finally:
            conn.rollback()  # the temp table's rows go with the transaction
            conn.execute(text("DROP TABLE IF EXISTS dq_probe_keys"))
            conn.commit()
    frame = pl.DataFrame([tuple(r) for r in found], schema=schema, orient="row")
    return (
        frame.with_columns(pl.col("state").replace_strict(_PRIORITY, return_dtype=pl.Int32).alias("_p"))
        .sort("cdr_key", "_p")
        .unique("cdr_key", keep="first", maintain_order=True)
        .drop("_p")
    )
