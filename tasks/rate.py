"""The rate step of a nightly run: everything not yet billed, rated with the nightly rules.

What is rated together, each row tagged with its `source`:
- `batch`: the validated rows of this run's extraction batches;
- `unrated`: rows still unrated from earlier runs (a tariff or mapping fix bills them now);
- `requeued`: rows an operator released from quarantine, validated again this run.
Each row keeps its own billing date (the local date of its start); the allowance of included minutes already
consumed in each billing period is read from the ledger, so a period's minutes are shared
across runs in call-start order.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from autobill import lake
from autobill.billing_day import with_billing_date
from autobill.cdr import CDR_SCHEMA, conform
from autobill.config import Settings
from autobill.ledger.corrections import included_by_period
from autobill.ledger.db import session_scope
from autobill.ledger.disputes import held_as_unrated, held_keys, split_held
from autobill.ledger.unrated import unrated_rows
from autobill.mapping import ISSUE_COLUMN, assign_services
from autobill.rating.archive import archive as archive_tariffs
from autobill.rating.billing import OUTPUT_SCHEMA, load_tariffs, rate_for_billing
from autobill.services.build import derived_plans
from autobill.timeutil import period_bounds

_LEAN = [c for c in CDR_SCHEMA if c != "source_row"]


def _lean(path: str) -> pl.DataFrame:
    """A validated parquet without `source_row` (the audit copy of the source row, the widest
    column by far): only unrated rows need it, and `_source_rows` fetches it for them alone."""
    return conform(pl.read_parquet(path, columns=_LEAN).with_columns(pl.lit(None, pl.String).alias("source_row")))


def gather(settings: Settings, day: date, validated: list[str], requeued_path: str | None) -> pl.DataFrame:
    """Canonical rows to rate, tagged with `source`, de-duplicated by key (first source wins).
    `source_row` is null for parquet-backed rows (see `_lean`)."""
    parts = [_lean(p).with_columns(pl.lit("batch").alias("source")) for p in validated]
    if requeued_path:
        parts.append(_lean(requeued_path).with_columns(pl.lit("requeued").alias("source")))
    parts.append(unrated_rows(settings, day).with_columns(pl.lit("unrated").alias("source")))
    frame = pl.concat(parts, how="vertical") if parts else pl.DataFrame(schema={**CDR_SCHEMA, "source": pl.String})
    # No filter on the billing date here: a row dropped now would be lost once its batch commits.
    # Rows of later dates (released quarantine rows, a file holding the next day's first calls)
    # are billed with their own billing date on their charge line.
    return with_billing_date(frame.unique("cdr_key", keep="first", maintain_order=True), settings.timezone)


def _source_rows(paths: list[str], keys: pl.Series) -> pl.DataFrame:
    """(cdr_key, source_row) of these keys, read back from the validated parquet files."""
    if not paths or keys.is_empty():
        return pl.DataFrame(schema={"cdr_key": pl.String, "source_row": pl.String})
    return (
        pl.scan_parquet(paths).select("cdr_key", "source_row")
        .filter(pl.col("cdr_key").is_in(keys.implode())).unique("cdr_key").collect()
    )


def included_used(settings: Settings, cdrs: pl.DataFrame) -> dict[tuple[int, date], int]:
    """Included seconds already consumed per (service, period start) for the periods these CDRs fall in."""
    anchors = {p.name: p.period_anchor_day for p in settings.plans}
    wanted: dict[tuple[int, date], date] = {}
    mapped = cdrs.filter(pl.col("service_id").is_not_null()).select("service_id", "plan", "billing_date").unique()
    for service_id, plan, day in mapped.iter_rows():
        start, end = period_bounds(day, anchors.get(plan, 1))
        wanted[(int(service_id), start)] = end
    with session_scope(settings.ledger) as session:
        used = included_by_period(session, wanted)  # billed + what re-rates moved, one read
    return dict(used)


def with_service_issue(rated: pl.DataFrame, cdrs: pl.DataFrame) -> pl.DataFrame:
    """`no_service` becomes `service_conflict` / `service_unconfirmed` where the mapping knows why
    (autobill/mapping.py): those calls wait, unrated, for the conflict to be fixed or a sync."""
    issues = cdrs.filter(pl.col(ISSUE_COLUMN).is_not_null()).select("cdr_key", ISSUE_COLUMN)
    if issues.is_empty():
        return rated
    return rated.join(issues, on="cdr_key", how="left", maintain_order="left").with_columns(
        pl.when((pl.col("unrated_reason") == "no_service") & pl.col(ISSUE_COLUMN).is_not_null())
        .then(pl.lit("service_") + pl.col(ISSUE_COLUMN)).otherwise(pl.col("unrated_reason")).alias("unrated_reason")
    ).drop(ISSUE_COLUMN)


def rate_run(settings: Settings, day: date, validated: list[str], requeued_path: str | None,
             run_id: int | None = None) -> Path:
    """Rate what this run bills; writes `<data>/rated/run-<id>.parquet` and returns its path."""
    cdrs = assign_services(gather(settings, day, validated, requeued_path), settings)
    settings = derived_plans(settings, cdrs["plan"].unique().to_list())  # per-service included minutes
    # Calls held by an open dispute are not rated: they stay unrated ("disputed") until it is resolved.
    to_rate, held = split_held(cdrs, held_keys(settings))
    tariffs = load_tariffs(settings)
    archive_tariffs(settings, tariffs)  # every version billed with can be named later (NAME@VERSION)
    rated = rate_for_billing(to_rate, settings, tariffs, included_used(settings, to_rate))
    if held.height:
        rated = pl.concat([rated, held_as_unrated(held, OUTPUT_SCHEMA)], how="vertical")
    del to_rate
    if rated.height != cdrs.height:
        raise RuntimeError(f"rating returned {rated.height} rows for {cdrs.height} CDRs")
    rated = with_service_issue(rated, cdrs)
    extra = [c for c in ("server", "billing_date", "source", "rate_number", "start_utc") if c not in rated.columns]
    rated = rated.join(cdrs.select("cdr_key", *extra), on="cdr_key", how="left") if extra else rated
    # Only rows to rate again later keep their whole canonical row (unrated_cdrs.row); carrying
    # `source_row` for a million billed calls would triple the step's memory.
    keep = [c for c in CDR_SCHEMA if c not in rated.columns]
    unrated = rated.filter(pl.col("outcome") == "unrated").join(cdrs.select("cdr_key", *keep), on="cdr_key",
                                                               how="left")
    del cdrs
    if "source_row" in keep:  # parquet-backed unrated rows get their audit copy back
        found = _source_rows(validated + ([requeued_path] if requeued_path else []),
                             unrated.filter(pl.col("source_row").is_null())["cdr_key"])
        unrated = unrated.join(found.rename({"source_row": "_src"}), on="cdr_key", how="left").with_columns(
            pl.coalesce("source_row", "_src").alias("source_row")).drop("_src")
    rated = pl.concat([rated.filter(pl.col("outcome") != "unrated"), unrated], how="diagonal_relaxed")
    path = settings.data_path / "rated" / f"run-{run_id if run_id is not None else 'adhoc'}.parquet"
    lake.write_parquet_atomic(rated, path)
    return path


@task(name="rate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def rate_run_task(settings: Settings, day: date, validated: list[str], requeued: Any | None,
                  run_id: int | None = None) -> str:
    requeued_path = str(requeued.validated_path) if requeued is not None and requeued.validated_path else None
    path = rate_run(settings, day, validated, requeued_path, run_id)
    get_run_logger().info("rated %s CDR(s) -> %s", pl.scan_parquet(path).select(pl.len()).collect().item(), path)
    return str(path)
