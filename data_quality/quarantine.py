"""The quarantine in the ledger: record bad rows, list/show/release them, re-queue released ones.

Life of a quarantined row (`quarantine.status`)::

    held      written by validation, with the rule, the reason and the whole canonical row
    released  an operator fixed the cause (e.g. mapped the extension) and released it
    requeued  the next nightly run took it back (`requeue_released`) to validate and rate again

A requeued row that fails again gets a NEW held record (the old one stays as history). No
prefect or GX import here: the CLI uses this module and must start fast.

Crash safety of the re-queue: `requeue_released` marks rows requeued and hands them to the
run. If that run dies before they reach a final state, they would be stranded; so it also
returns every requeued row whose key is still nowhere final (not in the billed state, not in
`unrated_cdrs`, no newer held/released record). Call it once per run, before validation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

import polars as pl
from sqlalchemy import func, select, update

from autobill.config import Settings
from autobill.ledger.billed import billed_frame, billed_keys
from autobill.ledger.db import session_scope
from autobill.ledger.models import QuarantinedRow, UnratedCDR
from autobill.timeutil import utc_now
from data_quality.rules import MAX_KEY_LENGTH, decode_rows

STATUSES = ("held", "released", "requeued")
CHUNK = 5000
_SERVER_WIDTH = 64


@dataclass
class QuarantineEntry:
    id: int
    cdr_key: str | None
    server: str
    billing_date: date | None
    rule: str
    reason: str
    status: str
    run_id: int | None
    created_at: datetime
    released_at: datetime | None
    released_by: str | None
    row: str | None = None

    def to_dict(self, with_row: bool = False) -> dict:
        out = {k: getattr(self, k) for k in ("id", "cdr_key", "server", "billing_date", "rule", "reason", "status",
                                             "run_id", "created_at", "released_at", "released_by")}
        out = {k: (v.isoformat() if isinstance(v, date | datetime) else v) for k, v in out.items()}
        if with_row:
            out["row"] = json.loads(self.row) if self.row else None
        return out


def _entry(q: QuarantinedRow, with_row: bool = False) -> QuarantineEntry:
    return QuarantineEntry(q.id, q.cdr_key, q.server, q.billing_date, q.rule, q.reason, q.status, q.run_id,
                           q.created_at, q.released_at, q.released_by, q.row if with_row else None)


def record_quarantine(settings: Settings, quarantined: pl.DataFrame, run_id: int | None = None,
                      default_server: str | None = None) -> int:
    """Insert the quarantine records of one batch in ONE transaction; returns how many."""
    if quarantined.height == 0:
        return 0
    now = utc_now()
    rows = [
        {
            # A key too long for the column is kept whole in `row`; the column gets NULL.
            "cdr_key": r["cdr_key"] if r["cdr_key"] and len(r["cdr_key"]) <= MAX_KEY_LENGTH else None,
            "server": (r["server"] or default_server or "?")[:_SERVER_WIDTH],
            "billing_date": r["billing_date"], "rule": r["rule"], "reason": r["reason"], "row": r["row"],
            "run_id": run_id, "status": "held", "created_at": now,
        }
        for r in quarantined.iter_rows(named=True)
    ]
    with session_scope(settings.ledger) as session:
        for i in range(0, len(rows), CHUNK):
            session.execute(QuarantinedRow.__table__.insert(), rows[i : i + CHUNK])
    return len(rows)


def list_quarantine(settings: Settings, server: str | None = None, rule: str | None = None,
                    status: str | None = None, limit: int | None = 200) -> list[QuarantineEntry]:
    with session_scope(settings.ledger) as session:
        query = select(QuarantinedRow).order_by(QuarantinedRow.id)
        if server:
            query = query.where(QuarantinedRow.server == server)
        if rule:
            query = query.where(QuarantinedRow.rule == rule)
        if status:
            query = query.where(QuarantinedRow.status == status)
        if limit:
            query = query.limit(limit)
        return [_entry(q) for q in session.scalars(query)]


def count_by(settings: Settings, status: str | None = "held") -> dict[tuple[str, str], int]:
    """(server, rule) -> rows, for a summary line."""
    with session_scope(settings.ledger) as session:
        query = select(QuarantinedRow.server, QuarantinedRow.rule, func.count()).group_by(
            QuarantinedRow.server, QuarantinedRow.rule)
        if status:
            query = query.where(QuarantinedRow.status == status)
        return {(s, r): n for s, r, n in session.execute(query)}


def get_entry(settings: Settings, entry_id: int) -> QuarantineEntry | None:
    with session_scope(settings.ledger) as session:
        q = session.get(QuarantinedRow, entry_id)
        return _entry(q, with_row=True) if q else None


def release(settings: Settings, ids: Sequence[int] = (), rule: str | None = None, server: str | None = None,
            by: str | None = None) -> int:
    """Mark held rows released (by ids, or all held rows of a rule, optionally of one server)."""
    if not ids and not rule:
        raise ValueError("release what? give ids or a rule")
    query = update(QuarantinedRow).where(QuarantinedRow.status == "held")
    if ids:
        query = query.where(QuarantinedRow.id.in_(list(ids)))
    if rule:
        query = query.where(QuarantinedRow.rule == rule)
    if server:
        query = query.where(QuarantinedRow.server == server)
    with session_scope(settings.ledger) as session:
        result = session.execute(query.values(status="released", released_at=utc_now(), released_by=by))
        return result.rowcount or 0


def _stranded(session, requeued: list[QuarantinedRow]) -> list[QuarantinedRow]:
    """Requeued rows whose key reached no final state and has no newer held/released record."""
    keys = sorted({q.cdr_key for q in requeued if q.cdr_key})
    done: set[str] = set()
    newest: dict[str, int] = {}
    for i in range(0, len(keys), CHUNK):
        chunk = keys[i : i + CHUNK]
        done.update(session.scalars(select(UnratedCDR.cdr_key).where(UnratedCDR.cdr_key.in_(chunk))))
        for key, newest_id in session.execute(
            select(QuarantinedRow.cdr_key, func.max(QuarantinedRow.id))
            .where(QuarantinedRow.cdr_key.in_(chunk), QuarantinedRow.status.in_(("held", "released")))
            .group_by(QuarantinedRow.cdr_key)
        ):
            newest[key] = newest_id
    if keys:  # final in the billed state: looked up by the rows' billing dates (+-1 day); no date: every manifest
        days = {q.billing_date for q in requeued if q.cdr_key}
        if None in days:
            done.update(billed_frame(session=session, keys=keys, columns=("cdr_key",))["cdr_key"].to_list())
        else:
            done.update(billed_keys(session, keys, days))
    return [q for q in requeued if q.cdr_key and q.cdr_key not in done and newest.get(q.cdr_key, 0) < q.id]


def requeue_released(settings: Settings, run_id: int | None = None) -> pl.DataFrame:
    """Canonical rows of released quarantine records (plus stranded requeued ones), now marked
    requeued, for this run to validate and rate again. One row per key (the newest record)."""
    with session_scope(settings.ledger) as session:
        released = list(session.scalars(
            select(QuarantinedRow).where(QuarantinedRow.status == "released").order_by(QuarantinedRow.id)))
        requeued = list(session.scalars(
            select(QuarantinedRow).where(QuarantinedRow.status == "requeued").order_by(QuarantinedRow.id)))
        taken = released + _stranded(session, requeued)
        for q in released:
            q.status = "requeued"
        texts = [q.row for q in sorted(taken, key=lambda q: q.id)]
    rows = decode_rows(texts)
    # A key released twice (two records) comes back once; the newest record wins. Keyless rows
    # (quarantined as missing_key) are each their own row.
    keyed = rows.filter(pl.col("cdr_key").is_not_null())
    keyed = keyed.reverse().unique("cdr_key", keep="first", maintain_order=True).reverse()
    return pl.concat([keyed, rows.filter(pl.col("cdr_key").is_null())])


def run_reasons(settings: Settings, run_id: int, top: int = 5) -> list[dict]:
    """The most frequent (rule, server) pairs quarantined by run `run_id`, with one example
    reason each, most rows first: the "why" of a run's quarantine at a glance."""
    with session_scope(settings.ledger) as session:
        query = (
            select(QuarantinedRow.rule, QuarantinedRow.server, func.count(), func.min(QuarantinedRow.reason))
            .where(QuarantinedRow.run_id == run_id)
            .group_by(QuarantinedRow.rule, QuarantinedRow.server)
            .order_by(func.count().desc(), QuarantinedRow.rule, QuarantinedRow.server)
            .limit(top)
        )
        return [{"rule": r, "server": s, "rows": n, "example": reason} for r, s, n, reason in session.execute(query)]
