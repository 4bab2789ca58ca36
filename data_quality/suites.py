"""Batch expectations: Great Expectations 1.x on a pandas copy of one extracted batch.

Row rules (`data_quality.rules`) judge rows one by one; this suite judges the batch as a whole
and keeps a standard, inspectable result (GX's JSON) next to a markdown report. GX has no
polars source and is broken on DuckDB (ecosystem.md §6.2), so it runs on `to_pandas()` of the
columns the suite reads; `source_row` (the biggest column) is left out. GX is imported lazily
(~2.7 s): `autobill --help` and the CLI never pay for it.

Severity decides the policy (see `data_quality.policy`):
- `critical` (stops the server's batch): columns present with their canonical types; the null
  fraction of the key columns, the direction value set, billsec >= 0 and end >= start hold for
  at least `1 - max_bad_row_fraction` of the rows. These mirror the row rules at the batch
  level, so a batch GX rejects is one whose data is broken as a whole.
- `warning` (reported, does not stop billing): empty tenants, an empty batch, and the volume
  check (unless `validation.volume_drop_blocks`).

Not in the suite on purpose: key uniqueness. The row rules judge repeated keys exactly
(identical -> duplicate, different -> quarantined) and GX's uniqueness check was more than
half of the suite's CPU time on a million rows.

A check that crashed (GX returns `success=False` with `exception_info`, it does not raise) is
reported as an error, distinct from "the data is bad", and counts as a critical failure: a
batch we could not check is not a batch we may bill.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from autobill.cdr import CDR_SCHEMA, DIRECTIONS
from autobill.config import Settings
from data_quality.volume import VolumeCheck

SUITE_COLUMNS = [c for c in CDR_SCHEMA if c != "source_row"]
# pandas dtype names of the canonical columns in the copy GX sees (pandas 3: `str` strings).
PANDAS_TYPES = {
    **{c: "str" for c, t in CDR_SCHEMA.items() if t == pl.String() and c in SUITE_COLUMNS},
    **{c: "datetime64[us, UTC]" for c, t in CDR_SCHEMA.items() if isinstance(t, pl.Datetime)},
}
# billsec: numpy int64 when the batch has no null billsec (the usual night), nullable Int64 when
# it has. GX compares a numpy int/float column with its bounds in one vectorised step, but a
# nullable Int64 one value at a time in Python: that per-row path was 30-40 % of the suite's time.
BILLSEC_TYPES = ["int64", "Int64Dtype"]  # GX names the nullable one by its pandas class

# BASIC: counts, percentages and up to 20 unexpected values per expectation (the report shows 5).
# SUMMARY added value counts and row indexes of the unexpected values, which nothing reads, for
# about a quarter of the suite's time.
RESULT_FORMAT = "BASIC"

_lock = threading.RLock()  # one GX context per process; GX is not documented as thread-safe
_context: dict[str, Any] = {}


@dataclass
class CheckResult:
    name: str  # GX expectation type, or "volume"
    column: str | None
    success: bool
    severity: str  # critical | warning
    observed: Any = None
    detail: str = ""
    error: str | None = None  # the check itself crashed

    @property
    def label(self) -> str:
        return f"{self.name}({self.column})" if self.column else self.name


@dataclass
class BatchReport:
    server: str
    batch_id: int | str
    rows: int
    checks: list[CheckResult] = field(default_factory=list)
    volume: VolumeCheck | None = None
    gx_result: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def hard_failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.severity == "critical"]

    @property
    def warnings(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.success and c.severity != "critical"]

    @property
    def success(self) -> bool:
        return not self.hard_failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server, "batch_id": self.batch_id, "rows": self.rows, "success": self.success,
            "seconds": round(self.seconds, 3), "checks": [asdict(c) for c in self.checks],
            "volume": asdict(self.volume) if self.volume else None, "great_expectations": self.gx_result,
        }


def _expectations(settings: Settings) -> list[Any]:
    import great_expectations.expectations as gxe

    mostly = round(1.0 - settings.validation.max_bad_row_fraction, 6)
    crit, warn = "critical", "warning"
    exps: list[Any] = [gxe.ExpectTableColumnsToMatchSet(column_set=SUITE_COLUMNS, exact_match=False, severity=crit)]
    exps += [gxe.ExpectColumnTypeToBe(column=c, type_=t, severity=crit) for c, t in PANDAS_TYPES.items()]
    exps.append(gxe.ExpectColumnValuesToBeInTypeList(column="billsec", type_list=BILLSEC_TYPES, severity=crit))
    for column in ("cdr_key", "server", "start_utc", "end_utc", "billsec", "direction"):
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=mostly, severity=crit))
    exps += [
        gxe.ExpectColumnValuesToBeInSet(column="direction", value_set=list(DIRECTIONS), mostly=mostly, severity=crit),
        gxe.ExpectColumnValuesToBeBetween(column="billsec", min_value=0, mostly=mostly, severity=crit),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A="end_utc", column_B="start_utc", or_equal=True, mostly=mostly, ignore_row_if="either_value_is_missing",
            severity=crit),
        gxe.ExpectColumnValuesToNotBeNull(column="tenant", mostly=mostly, severity=warn),
        gxe.ExpectTableRowCountToBeBetween(min_value=1, severity=warn),
    ]
    return exps


def _skip_batch_fingerprint() -> None:
    """GX md5-hashes every pandas batch under 1 GB (`HASH_THRESHOLD`) for a batch marker we never
    read: ~1.2 s of the ~1.5 s CPU the whole suite takes on a million rows. A threshold of 0 turns
    that marker off and nothing else. If a GX upgrade drops the constant, this does nothing."""
    from great_expectations.execution_engine import pandas_execution_engine

    if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
        pandas_execution_engine.HASH_THRESHOLD = 0


def _validation_definition(settings: Settings):
    """The (cached) GX validation definition for these thresholds, in an ephemeral context.
    Call with `_lock` held: two servers' tasks in threads would race to create it."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if "ctx" not in _context:
        _skip_batch_fingerprint()
        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        _context["ctx"] = ctx
        _context["batch"] = (
            ctx.data_sources.add_pandas("autobill").add_dataframe_asset("cdr_batch")
            .add_batch_definition_whole_dataframe("whole_batch")
        )
    ctx = _context["ctx"]
    name = f"cdr_batch_{settings.validation.max_bad_row_fraction}".replace(".", "_")
    if name not in _context:
        suite = ctx.suites.add(gx.ExpectationSuite(name=name, expectations=_expectations(settings)))
        _context[name] = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=_context["batch"], suite=suite)
        )
    return _context[name]


def warm_up(settings: Settings) -> threading.Thread:
    """Import GX and build the suite in a background thread, so the night's first batch does not
    wait for it: ~2.4 s (mostly the import), during which `_lock` is held and every other
    server's validation waits too. Started when the night starts, it overlaps the extraction.
    A failure here is left for the first real run of the suite to raise, where it is reported."""

    def build() -> None:
        try:
            with _lock:
                _validation_definition(settings)
        except Exception:  # noqa: BLE001 - run_suite builds it again and reports what failed
            pass

    thread = threading.Thread(target=build, name="gx-warm-up", daemon=True)
    thread.start()
    return thread


def to_pandas(cdrs: pl.DataFrame):
    """The pandas copy GX validates: suite columns only. billsec is numpy int64, or nullable
    Int64 when it holds a null, so that a null does not turn the column into floats."""
    import pandas as pd
    import pyarrow as pa

    columns = [c for c in cdrs.columns if c != "source_row"]
    nullable = "billsec" in cdrs.columns and cdrs["billsec"].null_count() > 0
    return cdrs.select(columns).to_pandas(
        types_mapper=lambda t: pd.Int64Dtype() if nullable and t == pa.int64() else None)


def _error_text(exception_info: Any) -> str | None:
    """GX reports crashes in `exception_info`, flat or keyed by metric; None when nothing raised."""
    if not exception_info:
        return None
    infos = [exception_info] if "raised_exception" in exception_info else list(exception_info.values())
    messages = [str(i.get("exception_message")) for i in infos if isinstance(i, dict) and i.get("raised_exception")]
    return "; ".join(messages) or None


def _observed(result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        return result["observed_value"]
    if "unexpected_percent" in result:
        return {"unexpected_count": result.get("unexpected_count"),
                "unexpected_percent": result.get("unexpected_percent"),
                "sample": result.get("partial_unexpected_list", [])[:5]}
    return None


def _detail(kind: str, kwargs: dict[str, Any]) -> str:
    shown = {k: v for k, v in kwargs.items() if k not in ("batch_id", "column") and v is not None}
    return ", ".join(f"{k}={v}" for k, v in sorted(shown.items()))


def run_suite(cdrs: pl.DataFrame, settings: Settings) -> tuple[list[CheckResult], dict[str, Any]]:
    """Run the batch suite on a pandas copy; (one result per expectation, GX's result as a dict)."""
    return run_suite_pandas(to_pandas(cdrs), settings)


def run_suite_pandas(frame: Any, settings: Settings) -> tuple[list[CheckResult], dict[str, Any]]:
    """The suite on a pandas frame as given (tests feed it frames polars could not produce)."""
    import warnings

    with _lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vd = _validation_definition(settings)
        res = vd.run(batch_parameters={"dataframe": frame}, result_format={"result_format": RESULT_FORMAT})
    checks = []
    for r in res.results:
        config = r.expectation_config
        severity = getattr(config.severity, "value", str(config.severity or "critical"))
        error = _error_text(r.exception_info)
        checks.append(CheckResult(
            name=config.type, column=config.kwargs.get("column") or config.kwargs.get("column_A"),
            success=bool(r.success) and error is None, severity="critical" if error else severity,
            observed=_observed(r.result or {}), detail=_detail(config.type, dict(config.kwargs)), error=error,
        ))
    return checks, _jsonable(res.describe_dict())


def _jsonable(value: Any) -> Any:
    """GX's describe_dict may hold numpy scalars and timestamps; keep JSON-safe text."""
    import json

    return json.loads(json.dumps(value, default=str))


def batch_report(
    cdrs: pl.DataFrame, settings: Settings, server: str, batch_id: int | str, volume: VolumeCheck | None
) -> BatchReport:
    """GX checks plus the volume check (a plain function, reported as one more check)."""
    import time

    t0 = time.perf_counter()
    checks, gx_result = run_suite(cdrs, settings)
    report = BatchReport(server=server, batch_id=batch_id, rows=cdrs.height, checks=checks, volume=volume,
                         gx_result=gx_result)
    if volume is not None:
        report.checks.append(CheckResult(
            name="volume", column=None, success=volume.status != "drop",
            severity="critical" if settings.validation.volume_drop_blocks else "warning",
            observed={"rows": volume.rows, "per_hour": volume.rate_per_hour, "usual_per_hour": volume.usual_per_hour},
            detail=volume.detail,
        ))
    report.seconds = time.perf_counter() - t0
    return report
