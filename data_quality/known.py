"""What the ledger already knows about a batch's CDR keys (the cross-batch duplicate check).

A key is "known" when it is final (`billed_cdrs`: billed, included, zero-cost), waiting to be
rated again (`unrated_cdrs`), or in quarantine. Re-reads are normal (every extraction overlaps
the previous window), so this runs on every batch: keys are probed in chunks against the
primary key / index of each table rather than loading whole tables, which grow forever.

The quarantine state is kept apart (`quarantine:held|released|requeued`) because the policy
treats a re-read of a HELD row as still bad (a rejected batch extracted again must not pass
just because its bad rows are now "known"), and because requeued rows are validated again
without seeing their own quarantine record (`include_requeued=False`).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
from sqlalchemy import select

from autobill.ledger.db import session_scope
from autobill.ledger.models import BilledCDR, QuarantinedRow, UnratedCDR

CHUNK = 5000
# Priority when a key is in several places: final beats unrated beats quarantine.
_PRIORITY = {"billed": 0, "unrated": 1, "quarantine:held": 2, "quarantine:released": 3, "quarantine:requeued": 4}


def load_known_keys(
    ledger_url: str,
    keys: Sequence[str] | pl.Series,
    include_quarantine: bool = True,
    include_requeued: bool = True,
) -> pl.DataFrame:
    """(cdr_key, state) for those of `keys` the ledger knows; one row per key."""
    wanted = pl.Series("cdr_key", keys, dtype=pl.String).drop_nulls().unique().sort().to_list()
    found: list[tuple[str, str]] = []
    with session_scope(ledger_url) as session:
        for i in range(0, len(wanted), CHUNK):
            chunk = wanted[i : i + CHUNK]
            found.extend((k, "billed") for k in session.scalars(
                select(BilledCDR.cdr_key).where(BilledCDR.cdr_key.in_(chunk))))
            found.extend((k, "unrated") for k in session.scalars(
                select(UnratedCDR.cdr_key).where(UnratedCDR.cdr_key.in_(chunk))))
            if include_quarantine:
                statuses = ["held", "released"] + (["requeued"] if include_requeued else [])
                found.extend((k, f"quarantine:{st}") for k, st in session.execute(
                    select(QuarantinedRow.cdr_key, QuarantinedRow.status)
                    .where(QuarantinedRow.cdr_key.in_(chunk), QuarantinedRow.status.in_(statuses))))
    frame = pl.DataFrame(found, schema={"cdr_key": pl.String(), "state": pl.String()}, orient="row")
    return (
        frame.with_columns(pl.col("state").replace_strict(_PRIORITY, return_dtype=pl.Int32).alias("_p"))
        .sort("cdr_key", "_p")
        .unique("cdr_key", keep="first", maintain_order=True)
        .drop("_p")
    )
