"""Record a night's rated CDRs in the ledger, exactly once.

The one transaction in `record_rated` is the heart of invariant 1: the `charges` rows and the
`billed_manifests` rows that register the lake files marking their CDRs final commit together (or
not at all), with the unrated CDRs to rate again and, when given, the extraction batches whose
watermarks may now move. The files are written durably before the commit; unregistered they do
not count (autobill/ledger/billed.py, docs/billed-state.md).
A CDR already final is never billed again: the transaction first takes the billed-state lock
(`lock_billed_state`: writers of billed state run one at a time), then filters what is final, so
no concurrent run can mark the same CDR between the check and the commit.

How rated rows become charge lines (the DuckDB query in sql/charge_lines.sql) is the aggregate
step's: it passes `lines_of` in, so the core never reads SQL files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal

import polars as pl
from sqlalchemy.exc import IntegrityError, OperationalError

from autobill.config import Settings
from autobill.ledger.batches import commit_batch_in
from autobill.ledger.billed import (
    BILLED_SCHEMA,
    around,
    billed_keys,
    lock_billed_state,
    record_final,
    sweep_orphans,
)
from autobill.ledger.charges import ChargeLine, insert_charges
from autobill.ledger.db import session_scope
from autobill.ledger.unrated import resolve_unrated, upsert_unrated
from autobill.timeutil import utc_now

FINAL_OUTCOMES = ("billed", "included", "zero_cost")
OUTCOMES = (*FINAL_OUTCOMES, "unrated")
REQUIRED = (
    "cdr_key", "server", "client_id", "service_id", "outcome", "charge_class", "cost", "currency",
    "tariff_version", "charged_seconds", "billable_seconds", "included_seconds", "billing_date",
)

# The billed rows -> (their charge lines, each row's position in that list).
LinesOf = Callable[[pl.DataFrame], tuple[list[ChargeLine], pl.Series]]


@dataclass
class BillingRecord:
    """What one `record_rated` call did (or, in a dry run, would do)."""

    outcomes: dict[str, int]
    lines: list[ChargeLine]
    already_final_keys: list[str] = field(default_factory=list, repr=False)  # normally empty
    charge_ids: list[int] = field(default_factory=list)
    dry_run: bool = False

    @property
    def already_final(self) -> int:
        """Rows rated again that were already final in the ledger (counted once, earlier)."""
        return len(self.already_final_keys)

    @property
    def amount_by_currency(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for line in self.lines:
            totals[line.currency] = totals.get(line.currency, Decimal(0)) + line.amount
        return totals


def _check(rated: pl.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in rated.columns]
    if missing:
        raise ValueError(f"rated CDRs lack columns {missing}")
    bad = rated.filter(~pl.col("outcome").is_in(OUTCOMES))
    if bad.height:
        raise ValueError(f"unknown outcome(s) {bad['outcome'].unique().to_list()} (known: {OUTCOMES})")
    fine = rated.filter(pl.col("cost").cast(pl.String).str.contains(r"\.\d{7,}"))
    if fine.height:
        raise ValueError(f"{fine.height} rated rows have a cost with more than 6 decimals "
                         f"(e.g. {fine['cost'][0]!r} for {fine['cdr_key'][0]!r}): rate rounds per call first")
    dup = rated.filter(pl.col("cdr_key").is_duplicated())
    if dup.height:
        raise ValueError(f"{dup.height} rated rows share a cdr_key (e.g. {dup['cdr_key'][0]!r}); dedupe first")


def record_rated(
    settings: Settings,
    rated: pl.DataFrame,
    run_id: int | None = None,
    batch_ids: Iterable[int] = (),
    dry_run: bool = False,
    attempts: int = 3,
    *,
    lines_of: LinesOf,
) -> BillingRecord:
    """Create the charge lines and mark every final CDR in one ledger transaction."""
    _check(rated)
    batch_ids = list(batch_ids)
    for attempt in range(1, attempts + 1):
        try:
            return _record_once(settings, rated, run_id, batch_ids, dry_run, lines_of)
        except (IntegrityError, OperationalError):
            # A conflict with a concurrent writer (a duplicate charge key, SQLite busy past its
            # timeout): our transaction rolled back whole; recomputed under the lock.
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _record_once(
    settings: Settings, rated: pl.DataFrame, run_id: int | None, batch_ids: list[int], dry_run: bool,
    lines_of: LinesOf,
) -> BillingRecord:
    with session_scope(settings.ledger) as session:
        lock_billed_state(session)  # first: every read below sees all earlier writers' commits
        days = rated["billing_date"].unique().to_list()
        already = billed_keys(session, rated["cdr_key"], days, servers=rated["server"])
        todo = rated.filter(~pl.col("cdr_key").is_in(list(already))) if already else rated
        counts = {o: 0 for o in OUTCOMES}
        counts.update(dict(todo.group_by("outcome").len().iter_rows()))
        billed = todo.filter(pl.col("outcome") == "billed")
        lines, member = lines_of(billed)
        record = BillingRecord(outcomes=counts, lines=lines, already_final_keys=sorted(already), dry_run=dry_run)
        if dry_run:
            session.rollback()
            return record
        now = utc_now()
        record.charge_ids = insert_charges(session, lines, run_id, now)
        charge_of = pl.DataFrame({"cdr_key": billed["cdr_key"],
                                  "charge_id": pl.Series(record.charge_ids, dtype=pl.Int64).gather(member)})
        final = todo.filter(pl.col("outcome").is_in(FINAL_OUTCOMES))
        rows = (
            final.join(charge_of, on="cdr_key", how="left")
            .select(
                "cdr_key", "server", pl.col("client_id").cast(pl.Int64), pl.col("service_id").cast(pl.Int64),
                pl.col("billing_date").cast(pl.Date), "outcome", "charge_id",
                pl.col("cost").cast(pl.String).cast(pl.Decimal(24, 6)).cast(pl.String).fill_null("0.000000"),
                pl.col("billable_seconds").fill_null(0).cast(pl.Int64),
                pl.col("included_seconds").fill_null(0).cast(pl.Int64),
                pl.lit(run_id, pl.Int64).alias("run_id"), pl.lit(now).cast(BILLED_SCHEMA["created_at"]).alias("created_at"),
            )
        )
        sweep_orphans(session, settings.data_path, around(rows["billing_date"].unique().to_list()))
        record_final(session, settings.data_path, rows, run_id, record.charge_ids, now)
        carried = final.filter(pl.col("source") == "unrated") if "source" in final.columns else final
        resolve_unrated(session, carried["cdr_key"].to_list(), now)
        upsert_unrated(session, todo.filter(pl.col("outcome") == "unrated"), now)
        for batch_id in batch_ids:
            commit_batch_in(session, batch_id)  # the watermark moves with the billing, never before
        return record
