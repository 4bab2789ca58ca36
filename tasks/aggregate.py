"""Aggregate rated CDRs into charge lines (sql/charge_lines.sql) and record them in the ledger.

The exactly-once transaction is ledger logic (autobill/ledger/billing.py); this step supplies
how lines are formed and wraps it as a task.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

import duckdb
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import sql
from autobill.cdr import CDR_SCHEMA
from autobill.config import Settings
from autobill.ledger.billing import REQUIRED, BillingRecord, record_rated
from autobill.ledger.charges import ChargeLine, describe, idempotency_key
from autobill.money import round_minor


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


def record_billing(settings: Settings, rated: pl.DataFrame, run_id: int | None = None, batch_ids: Iterable[int] = (),
                   dry_run: bool = False, attempts: int = 3) -> BillingRecord:
    """Charge lines (sql/charge_lines.sql) + billed CDRs + watermarks in one ledger transaction."""
    return record_rated(settings, rated, run_id, batch_ids, dry_run, attempts, lines_of=charge_lines)


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
