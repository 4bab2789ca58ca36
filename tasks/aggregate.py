"""Aggregate rated CDRs into charge lines and record them in the ledger, exactly once.

The one transaction in `record_billing` is the heart of invariant 1: the `charges` rows and the
`billed_cdrs` rows that mark their CDRs billed commit together (or not at all), with the
unrated CDRs to rate again and, when given, the extraction batches whose watermarks may now move.
A CDR already final in the ledger is never billed again: it is filtered inside the transaction,
and the primary key on `billed_cdrs.cdr_key` stops a concurrent run that raced past the filter
(its transaction rolls back and is recomputed).

Idempotency key: derived from (client, service, billing date, class, currency, tariff version)
plus a digest of the exact set of CDR keys in the line. The same CDRs always give the same key
(a crashed run recomputed cannot create a second charge), while late CDRs for an already billed
date form a different set and so a new charge line, never an edit of the posted one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

import duckdb
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import sql
from autobill.cdr import CDR_SCHEMA, conform, empty_cdrs
from autobill.config import Settings
from autobill.ledger.bulk import dialect_of, insert_rows, keys_present, utc_text
from autobill.ledger.db import session_scope
from autobill.ledger.models import BilledCDR, Charge, UnratedCDR
from autobill.money import round_minor
from autobill.timeutil import utc_now
from tasks.extract import commit_batch_in

FINAL_OUTCOMES = ("billed", "included", "zero_cost")
OUTCOMES = (*FINAL_OUTCOMES, "unrated")
REQUIRED = (
    "cdr_key", "server", "client_id", "service_id", "outcome", "charge_class", "cost", "currency",
    "tariff_version", "charged_seconds", "billable_seconds", "included_seconds", "billing_date",
)
_CHUNK = 5000


@dataclass(frozen=True)
class ChargeLine:
    client_id: int
    service_id: int
    billing_date: date
    charge_class: str
    currency: str
    tariff_version: str
    exact_amount: Decimal
    amount: Decimal
    charged_seconds: int
    cdr_count: int
    idempotency_key: str
    description: str
    cdr_keys: tuple[str, ...] = field(repr=False)


@dataclass
class BillingRecord:
    """What one `record_billing` call did (or, in a dry run, would do)."""

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


def idempotency_key(
    client_id: int, service_id: int, billing_date: date, charge_class: str, currency: str,
    tariff_version: str, cdr_keys: Iterable[str],
) -> str:
    digest = hashlib.sha256("\n".join(sorted(cdr_keys)).encode()).hexdigest()[:16]
    head = f"{client_id}-{service_id}-{billing_date:%Y%m%d}-{charge_class}-{currency}-{tariff_version[:12]}"
    return f"ab-{head}-{digest}"


def describe(line_class: str, billing_date: date, cdr_count: int, seconds: int, key: str) -> str:
    """The WHMCS invoice line: what, for which period, and the key an operator can search for."""
    minutes = Decimal(seconds) / 60
    return (
        f"VoIP {line_class} calls {billing_date:%Y-%m-%d}: {cdr_count} call(s), "
        f"{minutes.quantize(Decimal('0.1'))} min [{key}]"
    )


def charge_lines(billed: pl.DataFrame) -> list[ChargeLine]:
    """One line per client/service/date/class/currency/tariff version (sql/charge_lines.sql)."""
    if billed.height == 0:
        return []
    rated = billed.select(  # noqa: F841 - read by DuckDB through the replacement scan
        "client_id", "service_id", "billing_date", "charge_class", "currency", "tariff_version",
        pl.col("cost").cast(pl.String), "charged_seconds", "cdr_key",
    )
    con = duckdb.connect()
    try:
        rows = con.execute(sql.load("charge_lines")).fetchall()
    finally:
        con.close()
    lines = []
    for client_id, service_id, day, cls, ccy, version, exact, seconds, count, keys in rows:
        exact = Decimal(exact)
        key = idempotency_key(client_id, service_id, day, cls, ccy, version, keys)
        lines.append(
            ChargeLine(
                client_id=int(client_id), service_id=int(service_id), billing_date=day, charge_class=cls,
                currency=ccy, tariff_version=version, exact_amount=exact, amount=round_minor(exact, ccy),
                charged_seconds=int(seconds), cdr_count=int(count), idempotency_key=key,
                description=describe(cls, day, int(count), int(seconds), key), cdr_keys=tuple(keys),
            )
        )
    return lines


def with_billing_date(cdrs: pl.DataFrame, timezone: str) -> pl.DataFrame:
    """The billing date of a call is the local calendar date of its start in the billing timezone."""
    return cdrs.with_columns(
        pl.col("start_utc").dt.convert_time_zone(timezone).dt.date().alias("billing_date")
    )


def _final_keys(session: Session, keys: pl.Series) -> set[str]:
    return keys_present(session, BilledCDR.__table__, "cdr_key", iter(keys))


def _check(rated: pl.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in rated.columns]
    if missing:
        raise ValueError(f"rated CDRs lack columns {missing}")
    bad = rated.filter(~pl.col("outcome").is_in(OUTCOMES))
    if bad.height:
        raise ValueError(f"unknown outcome(s) {bad['outcome'].unique().to_list()} (known: {OUTCOMES})")
    dup = rated.filter(pl.col("cdr_key").is_duplicated())
    if dup.height:
        raise ValueError(f"{dup.height} rated rows share a cdr_key (e.g. {dup['cdr_key'][0]!r}); dedupe first")


def record_billing(
    settings: Settings,
    rated: pl.DataFrame,
    run_id: int | None = None,
    batch_ids: Iterable[int] = (),
    dry_run: bool = False,
    attempts: int = 3,
) -> BillingRecord:
    """Create the charge lines and mark every final CDR in one ledger transaction."""
    _check(rated)
    batch_ids = list(batch_ids)
    for attempt in range(1, attempts + 1):
        try:
            return _record_once(settings, rated, run_id, batch_ids, dry_run)
        except IntegrityError:
            # A concurrent run marked some of these CDRs first; our transaction rolled back whole.
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def _record_once(
    settings: Settings, rated: pl.DataFrame, run_id: int | None, batch_ids: list[int], dry_run: bool
) -> BillingRecord:
    with session_scope(settings.ledger) as session:
        already = _final_keys(session, rated["cdr_key"])
        todo = rated.filter(~pl.col("cdr_key").is_in(list(already))) if already else rated
        counts = {o: 0 for o in OUTCOMES}
        counts.update(dict(todo.group_by("outcome").len().iter_rows()))
        lines = charge_lines(todo.filter(pl.col("outcome") == "billed"))
        record = BillingRecord(outcomes=counts, lines=lines, already_final_keys=sorted(already), dry_run=dry_run)
        if dry_run:
            session.rollback()
            return record
        dialect = dialect_of(session)
        now = utc_now()
        record.charge_ids = _insert_charges(session, lines, run_id, now)
        charge_of = pl.DataFrame(
            {"cdr_key": [k for ln in lines for k in ln.cdr_keys],
             "charge_id": [cid for ln, cid in zip(lines, record.charge_ids, strict=True) for _ in ln.cdr_keys]},
            schema={"cdr_key": pl.String, "charge_id": pl.Int64},
        )
        final = todo.filter(pl.col("outcome").is_in(FINAL_OUTCOMES))
        rows = (
            final.join(charge_of, on="cdr_key", how="left")
            .select(
                "cdr_key", "server", pl.col("client_id").cast(pl.Int64), pl.col("service_id").cast(pl.Int64),
                pl.col("billing_date").cast(pl.String), "outcome", "charge_id",
                pl.col("cost").cast(pl.String).fill_null("0"),
                pl.col("billable_seconds").fill_null(0).cast(pl.Int64),
                pl.col("included_seconds").fill_null(0).cast(pl.Int64),
                pl.lit(run_id, pl.Int64).alias("run_id"), pl.lit(utc_text(now, dialect)).alias("created_at"),
            )
        )
        insert_rows(session, BilledCDR.__table__, rows.columns, rows.iter_rows(), encoded=True)
        carried = final.filter(pl.col("source") == "unrated") if "source" in final.columns else final
        _resolve_unrated(session, carried["cdr_key"].to_list(), now)
        _upsert_unrated(session, todo.filter(pl.col("outcome") == "unrated"), now)
        for batch_id in batch_ids:
            commit_batch_in(session, batch_id)  # the watermark moves with the billing, never before
        return record


def _insert_charges(session: Session, lines: list[ChargeLine], run_id: int | None, now: datetime) -> list[int]:
    """Insert the charge lines; returns their ids in `lines` order."""
    columns = ("idempotency_key", "client_id", "service_id", "billing_date", "charge_class", "currency", "amount",
               "exact_amount", "billable_seconds", "cdr_count", "tariff_version", "description", "state",
               "attempts", "run_id", "created_at")
    insert_rows(session, Charge.__table__, columns, (
        (ln.idempotency_key, ln.client_id, ln.service_id, ln.billing_date, ln.charge_class, ln.currency, ln.amount,
         ln.exact_amount, ln.charged_seconds, ln.cdr_count, ln.tariff_version, ln.description,
         "pending" if ln.amount != 0 else "zero", 0, run_id, now)
        for ln in lines
    ))
    keys = [ln.idempotency_key for ln in lines]
    ids: dict[str, int] = {}
    for i in range(0, len(keys), _CHUNK):
        ids.update(session.execute(
            select(Charge.idempotency_key, Charge.id).where(Charge.idempotency_key.in_(keys[i : i + _CHUNK]))
        ).tuples().all())
    return [ids[k] for k in keys]


def _resolve_unrated(session: Session, keys: list[str], now: datetime) -> None:
    for i in range(0, len(keys), _CHUNK):
        session.execute(
            update(UnratedCDR)
            .where(UnratedCDR.cdr_key.in_(keys[i : i + _CHUNK]), UnratedCDR.resolved_at.is_(None))
            .values(resolved_at=now)
        )


def _upsert_unrated(session: Session, unrated: pl.DataFrame, now: datetime) -> None:
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


@task(name="aggregate-and-record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def record_billing_task(settings: Settings, rated_path: str, run_id: int | None, batch_ids: list[int],
                        dry_run: bool = False) -> BillingRecord:
    """Charge lines + billed CDRs + watermarks in one ledger transaction (a retry is safe: same keys)."""
    present = pl.read_parquet_schema(rated_path)
    wanted = {*REQUIRED, "source", "rate_number", "unrated_reason", *CDR_SCHEMA}
    rated = pl.read_parquet(rated_path, columns=[c for c in present if c in wanted])
    record = record_billing(settings, rated, run_id, batch_ids, dry_run)
    get_run_logger().info(
        "%s charge line(s) %s; outcomes %s; %s already billed",
        len(record.lines), "previewed" if dry_run else "recorded", record.outcomes, record.already_final,
    )
    return record
