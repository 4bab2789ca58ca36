"""Unrated CDRs in the ledger: kept with their canonical row, rated again every run (a tariff fix
bills them), resolved when they finally become final."""

from __future__ import annotations

import json
from datetime import date, datetime

import polars as pl
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from autobill.cdr import CDR_SCHEMA, conform, empty_cdrs
from autobill.config import Settings
from autobill.ledger.bulk import insert_rows, keys_present, stamp_waiting
from autobill.ledger.db import session_scope
from autobill.ledger.models import UnratedCDR

_CHUNK = 5000


def resolve_unrated(session: Session, keys: list[str], now: datetime) -> int:
    """Mark the unrated rows of these (now final) keys resolved; a row resolved before keeps its time.
    Returns how many were resolved now."""
    return stamp_waiting(session, UnratedCDR.cdr_key, UnratedCDR.resolved_at, keys, now)


def upsert_unrated(session: Session, unrated: pl.DataFrame, now: datetime) -> None:
    """New unrated CDRs are inserted with their canonical row; known ones count another attempt."""
    if unrated.height == 0:
        return
    known = sorted(keys_present(session, UnratedCDR.__table__, "cdr_key", iter(unrated["cdr_key"])))
    for i in range(0, len(known), _CHUNK):
        session.execute(
            update(UnratedCDR).where(UnratedCDR.cdr_key.in_(known[i : i + _CHUNK]))
            .values(attempts=UnratedCDR.attempts + 1, last_seen=now)
        )
    new = unrated.filter(~pl.col("cdr_key").is_in(list(known)))
    if new.height == 0:
        return
    row_cols = [c for c in CDR_SCHEMA if c in new.columns]
    reason = pl.col("unrated_reason").fill_null("no_rate") if "unrated_reason" in new.columns else pl.lit("no_rate")
    insert_rows(session, UnratedCDR.__table__,
                ("cdr_key", "server", "billing_date", "rate_number", "reason", "row", "attempts", "first_seen",
                 "last_seen"),
                (
                    (r["cdr_key"], r["server"], r["billing_date"], r.get("rate_number"), r["_reason"],
                     _row_json(r, row_cols), 1, now, now)
                    for r in new.with_columns(reason.alias("_reason")).iter_rows(named=True)
                ))


def _row_json(row: dict, columns: list[str]) -> str:
    return json.dumps({c: row[c].isoformat() if isinstance(row[c], datetime) else row[c] for c in columns})


def unrated_rows(settings: Settings, billing_date: date) -> pl.DataFrame:
    """Canonical rows of still-unrated CDRs up to `billing_date`, to rate again (a tariff fix bills them)."""
    with session_scope(settings.ledger) as session:
        rows = session.scalars(
            select(UnratedCDR.row).where(
                UnratedCDR.resolved_at.is_(None), UnratedCDR.billing_date <= billing_date,
                UnratedCDR.row.is_not(None),
            )
        ).all()
    if not rows:
        return empty_cdrs()
    frame = pl.DataFrame([json.loads(r) for r in rows], schema={c: pl.String for c in CDR_SCHEMA})
    return conform(
        frame.with_columns(
            [pl.col(c).str.to_datetime(time_zone="UTC") for c in ("start_utc", "answer_utc", "end_utc")]
            + [pl.col("billsec").cast(pl.Int64)]
        )
    )
