"""The statement store: one row per billed or included call with everything a statement shows.

Where the details live: the billed state (`autobill/ledger/billed.py`: lake manifests registered in
the ledger) says which calls a run billed, on which charge line, at what cost (the authority); the
run's rated parquet (`<data>/rated/run-<id>.parquet`, written by the rate step) has the rating
details (matched prefix, destination, tariff version, rate, connect fee, billable seconds); the
raw lake has the numbers as the PBX wrote them (src, dst). `materialize_run` joins the three once per run into

    <data>/statements/calls/day=<billing date>/run-<id>.parquet   sorted by client, start

and then writes `<data>/statements/calls/_runs/run-<id>.done`. It is idempotent (same names,
atomic writes), so a crash half-way is finished by running it again, and `ensure_calls` builds
whatever a period needs that is missing (runs from before statements existed, a crash between
the billing commit and the statement step). Zero-cost calls (unanswered, unbilled inbound) are
not kept: they neither cost money nor use included minutes.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl

from autobill import lake
from autobill.config import Settings
from autobill.ledger.billed import billed_frame, billed_runs
from autobill.ledger.db import session_scope
from autobill.rating.billing import OUTPUT_SCHEMA

KEPT_OUTCOMES = ("billed", "included")
# The rating columns keep the rate step's types (autobill.rating.billing.OUTPUT_SCHEMA); the store
# adds where each call was billed and the numbers as the PBX wrote them.
_STORE_OWN: dict[str, pl.DataType] = {"billing_date": pl.Date(), "charge_id": pl.Int64(), "src": pl.String(),
                                      "dst": pl.String()}
CALL_SCHEMA: dict[str, pl.DataType] = {
    c: _STORE_OWN[c] if c in _STORE_OWN else OUTPUT_SCHEMA[c]
    for c in ("cdr_key", "client_id", "service_id", "billing_date", "charge_id", "outcome", "server", "direction",
              "src", "dst", "rate_number", "start_utc", "billsec", "charge_class", "matched_prefix", "description",
              "tariff_name", "tariff_version", "billable_seconds", "included_seconds", "charged_seconds", "rate",
              "connect_fee", "tariff_currency", "cost", "currency")
}  # cost: 6 decimals, exactly as billed (the billed state's cost)
_RATED = ("cdr_key", "server", "direction", "rate_number", "start_utc", "billsec", "charge_class", "matched_prefix",
          "description", "tariff_name", "tariff_version", "charged_seconds", "rate", "connect_fee", "tariff_currency",
          "currency")


class StatementDataError(RuntimeError):
    """The details of billed calls cannot be found (e.g. a run's rated parquet was deleted)."""


def calls_root(settings: Settings) -> Path:
    return settings.data_path / "statements" / "calls"


def _marker(settings: Settings, run_id: int) -> Path:
    return calls_root(settings) / "_runs" / f"run-{run_id}.done"


def rated_path(settings: Settings, run_id: int) -> Path:
    """Where the rate step of run `run_id` wrote its rated rows (tasks/rate.py)."""
    return settings.data_path / "rated" / f"run-{run_id}.parquet"


def _billed_of_run(settings: Settings, run_id: int) -> pl.DataFrame:
    return billed_frame(settings, run_id=run_id, outcomes=KEPT_OUTCOMES, columns=(
        "cdr_key", "client_id", "service_id", "billing_date", "charge_id", "outcome", "cost", "billable_seconds",
        "included_seconds"))


def _numbers(settings: Settings, rated: pl.DataFrame) -> pl.DataFrame:
    """(cdr_key, src, dst) from the raw lake partitions these calls were stored in."""
    parts = rated.select("server", pl.col("start_utc").dt.date().cast(pl.String).alias("day")).unique()
    files: list[str] = []
    for server, day in parts.iter_rows():
        files.extend(str(p) for p in sorted(lake.partition_dir(lake.cdr_root(settings.data_path), server, day)
                                            .glob("*.parquet")))
    if not files:
        return pl.DataFrame(schema={"cdr_key": pl.String, "src": pl.String, "dst": pl.String})
    return (pl.scan_parquet(files).select("cdr_key", "src", "dst")
            .filter(pl.col("cdr_key").is_in(rated["cdr_key"].implode()))
            .unique("cdr_key", keep="first").collect())


def materialize_run(settings: Settings, run_id: int) -> int:
    """Build the statement rows of the calls run `run_id` billed; returns how many."""
    billed = _billed_of_run(settings, run_id)
    if billed.height:
        path = rated_path(settings, run_id)
        if not path.exists():
            raise StatementDataError(
                f"run {run_id} billed {billed.height} call(s) but its rated details {path} are missing: "
                "statements for its dates cannot show rates and prefixes")
        present = pl.read_parquet_schema(path)
        rated = (pl.scan_parquet(path).select([c for c in _RATED if c in present])
                 .filter(pl.col("cdr_key").is_in(billed["cdr_key"].implode())).collect())
        calls = billed.join(rated, on="cdr_key", how="left").join(_numbers(settings, rated), on="cdr_key", how="left")
        calls = lake.shaped(calls, CALL_SCHEMA)
        for (day,), part in calls.partition_by("billing_date", as_dict=True).items():
            target = calls_root(settings) / f"day={day.isoformat()}" / f"run-{run_id}.parquet"
            lake.write_parquet_atomic(part.sort("client_id", "start_utc", "cdr_key"), target)
    marker = _marker(settings, run_id)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{billed.height}\n")
    return billed.height


def runs_billing(settings: Settings, first: date, last: date) -> list[int]:
    """The runs that billed calls of billing dates in [first, last] (the ledger's billed_manifests registry)."""
    with session_scope(settings.ledger) as session:
        return billed_runs(session, first, last)


def ensure_calls(settings: Settings, first: date, last: date) -> list[int]:
    """Materialise every run that billed the period and is not in the store yet; returns those runs."""
    built = []
    for run_id in runs_billing(settings, first, last):
        if not _marker(settings, run_id).exists():
            materialize_run(settings, run_id)
            built.append(run_id)
    return built


def scan_calls(settings: Settings, first: date, last: date, client_ids: list[int] | None = None) -> pl.LazyFrame:
    """The stored calls of billing dates [first, last] (call `ensure_calls` first), optionally of some clients."""
    files = []
    for folder in sorted(calls_root(settings).glob("day=*")):
        day = date.fromisoformat(folder.name[4:])
        if first <= day <= last:
            files.extend(str(p) for p in sorted(folder.glob("*.parquet")))
    if not files:
        return pl.LazyFrame(schema=CALL_SCHEMA)
    frame = pl.scan_parquet(files)
    if client_ids is not None:
        frame = frame.filter(pl.col("client_id").is_in(client_ids))
    return frame
