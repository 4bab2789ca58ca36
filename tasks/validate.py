"""Validation step: every extracted batch is checked before it may be rated (issue #5).

`validate_batch` reads one extraction batch, runs the row rules (`data_quality.rules`) and
the batch suite (`data_quality.suites`, GX + volume), then:

- writes the good rows to `<data>/validated/batch-<id>.parquet` (atomically), for rating,
  without `source_row`: the file's footer points at the batch's raw lake files, which hold it
  (`lake.write_without_source_rows`; the rate step fetches it for the few rows it cannot rate);
- records every quarantined row in the ledger in ONE transaction (also when rejecting: the
  operator must see why);
- writes the report (`<data>/reports/validation/batch-<id>.{json,md}`);
- when the policy (`data_quality.policy`) rejects the batch: `tasks.extract.reject_batch`
  (files aside, watermark unchanged) and raises `BatchRejected`, so that server's task fails
  visibly while the flow carries on with the other servers.

It does not commit the batch: the watermark moves with the billing transaction
(`tasks.aggregate.record_billing(batch_ids=...)`) or `tasks.extract.commit_batch`.

Every row ends in exactly one of good / quarantined / duplicate (checked here, not assumed).
Re-running it on the same batch is safe: its own quarantined rows are then "held" duplicates
(no second record), and they still count as bad, so the decision does not change.

Released quarantine rows come back through `validate_requeued` (row rules only: there is no
"batch" to judge, and the operator already decided). `before_lookback` is not applied to them:
releasing an old row is the operator saying "bill it anyway".
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from autobill import lake
from autobill.config import Settings
from autobill.ledger.batches import batch_paths, reject_batch
from autobill.ledger.db import session_scope
from autobill.ledger.models import ExtractionBatch
from autobill.memory import release_free_memory
from autobill.timeutil import as_utc, utc_now
from data_quality.known import load_known_keys
from data_quality.policy import Decision, decide
from data_quality.quarantine import record_quarantine, requeue_released
from data_quality.report import render_markdown, write_report
from data_quality.rules import DUPLICATE_COLUMN, RowCheck, check_rows
from data_quality.suites import BatchReport, batch_report, warm_up
from data_quality.volume import Sample, is_rerun, volume_check, volume_history

__all__ = [
    "BatchRejected", "ValidationOutcome", "validate_batch", "validate_requeued", "requeue_released",
    "validated_path", "validate_batch_task", "validate_requeued_task", "warm_up",
]


class BatchRejected(Exception):
    """A server's batch failed the batch policy: not billed, watermark unchanged."""

    def __init__(self, server: str, reasons: list[str], outcome: ValidationOutcome | None = None) -> None:
        self.server = server
        self.reasons = reasons
        self.outcome = outcome
        super().__init__(f"{server}: batch rejected: " + "; ".join(reasons))


@dataclass
class ValidationOutcome:
    label: str  # batch-<id> | requeue-run-<id>
    server: str | None
    batch_id: int | None
    rows: int
    good: int
    quarantined: int
    duplicates: int
    accepted: bool
    bad_fraction: float
    reasons: list[str]
    warnings: list[str]
    quarantined_by_rule: dict[str, int]
    duplicates_by: dict[str, int]
    validated_path: Path | None  # parquet of the good rows (None when rejected)
    report_path: Path  # JSON
    markdown_path: Path
    markdown: str = field(repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    rerun: bool = False  # an empty batch of a date this server already billed: not judged

    def summary(self) -> dict:
        out = asdict(self)
        out.pop("markdown")
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


def validated_path(settings: Settings, label: str) -> Path:
    return settings.data_path / "validated" / f"{label}.parquet"


def _check_balance(rows_in: int, check: RowCheck) -> None:
    """Invariant 2 at this step: nothing disappears, nothing is counted twice."""
    total = check.good.height + check.quarantined.height + check.duplicates.height
    if total != rows_in:
        raise RuntimeError(f"validation lost or doubled rows: {rows_in} in, {total} out ({check.counts})")


def _finish(
    settings: Settings, label: str, title: str, server: str | None, batch_id: int | None, cdrs: pl.DataFrame,
    check: RowCheck, report: BatchReport | None, decision: Decision, run_id: int | None,
    seconds: dict[str, float], sources: list[str] | None = None,
) -> ValidationOutcome:
    """Write the good rows (if accepted), the quarantine (always) and the report. With `sources`
    (the batch's raw lake files, which hold every row's `source_row`), the good rows are written
    without `source_row`, pointing at them (`lake.write_without_source_rows`)."""
    t0 = time.perf_counter()
    path = validated_path(settings, label)
    if decision.accepted and sources:
        lake.write_without_source_rows(check.good, path, sources)
    elif decision.accepted:
        lake.write_parquet_atomic(check.good, path)
    else:
        path.unlink(missing_ok=True)  # a stale file from an earlier, accepted attempt must not be rated
    record_quarantine(settings, check.quarantined, run_id=run_id, default_server=server)
    seconds["write"] = time.perf_counter() - t0
    counts = {"rows": cdrs.height, **check.counts}
    by_rule = check.by_rule()
    dup_by = dict(sorted(check.duplicates.group_by(DUPLICATE_COLUMN).len().iter_rows()))
    markdown = render_markdown(title, counts, by_rule, dup_by, decision, report, check.quarantined.drop("row"))
    outcome = ValidationOutcome(
        label=label, server=server, batch_id=batch_id, rows=cdrs.height, good=check.good.height,
        quarantined=check.quarantined.height, duplicates=check.duplicates.height, accepted=decision.accepted,
        bad_fraction=decision.bad_fraction, reasons=decision.reasons, warnings=decision.warnings,
        quarantined_by_rule=by_rule, duplicates_by=dup_by, validated_path=path if decision.accepted else None,
        report_path=Path(), markdown_path=Path(), markdown=markdown, seconds=seconds,
    )
    payload = {"outcome": outcome.summary(), "batch": report.to_dict() if report else None}
    outcome.report_path, outcome.markdown_path = write_report(settings.data_path, label, payload, markdown)
    return outcome


def validate_batch(settings: Settings, batch_id: int, run_id: int | None = None,
                   now: datetime | None = None) -> ValidationOutcome:
    """Validate one extraction batch (see the module docstring). Raises BatchRejected."""
    now = as_utc(now) if now else utc_now()
    with session_scope(settings.ledger) as session:
        batch = session.get(ExtractionBatch, batch_id)
        if batch is None:
            raise KeyError(f"no extraction batch {batch_id}")
        server, window = batch.server, (batch.window_start, batch.window_end)
        sources = batch_paths(batch)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    cdrs = lake.read_paths(sources)
    seconds["read"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    known = load_known_keys(settings.ledger, cdrs["cdr_key"], starts=cdrs["start_utc"], servers=cdrs["server"])
    seconds["known_keys"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    check = check_rows(cdrs, settings, now, known, server=server)
    _check_balance(cdrs.height, check)
    seconds["rules"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rerun = cdrs.height == 0 and is_rerun(settings.ledger, batch_id)
    report = None  # a rerun with nothing new is not judged: no "empty night" warning
    if not rerun:
        history = volume_history(settings.ledger, server, now, settings.validation.volume_history_days, batch_id)
        volume = volume_check(Sample(cdrs.height, *window), history, settings.validation.volume_drop_fraction)
        report = batch_report(cdrs, settings, server, batch_id, volume)
    seconds["suite"] = time.perf_counter() - t0

    decision = decide(check, report, settings)
    title = f"{server} batch {batch_id}" + (" (rerun of a billed date: no new CDRs)" if rerun else "")
    outcome = _finish(settings, f"batch-{batch_id}", title, server, batch_id, cdrs, check, report, decision, run_id,
                      seconds, sources)
    outcome.rerun = rerun
    if not decision.accepted:
        reject_batch(settings, batch_id, "validation: " + "; ".join(decision.reasons))
        raise BatchRejected(server, decision.reasons, outcome)
    return outcome


def validate_requeued(settings: Settings, run_id: int | None = None, now: datetime | None = None) -> ValidationOutcome:
    """Take back released quarantine rows (`requeue_released`) and validate them again:
    good rows go to `<data>/validated/requeue-run-<run>.parquet`, failures to a new held record."""
    now = as_utc(now) if now else utc_now()
    label = f"requeue-run-{run_id}" if run_id is not None else f"requeue-{now:%Y%m%dT%H%M%S}"
    t0 = time.perf_counter()
    cdrs = requeue_released(settings, run_id)
    known = load_known_keys(settings.ledger, cdrs["cdr_key"], include_requeued=False, starts=cdrs["start_utc"],
                            servers=cdrs["server"])
    check = check_rows(cdrs, settings, now, known, skip_rules=("before_lookback",))
    _check_balance(cdrs.height, check)
    seconds = {"rules": time.perf_counter() - t0}
    decision = Decision(accepted=True, bad_rows=check.quarantined.height,
                        judged_rows=check.good.height + check.quarantined.height)
    return _finish(settings, label, f"released rows (run {run_id})", None, None, cdrs, check, None, decision,
                   run_id, seconds)


# -- Prefect wrappers (thin) ----------------------------------------------------------------


def _artifact_key(text: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")


def publish(outcome: ValidationOutcome) -> None:
    """The report as one markdown artifact of tables (versioned per server). No file:// link: a
    browser on another machine cannot open the worker's disk; the files' paths are given as text."""
    from prefect.artifacts import create_markdown_artifact

    key = _artifact_key(f"validation-{outcome.server or 'requeued'}")
    state = "accepted" if outcome.accepted else "REJECTED"
    where = (f"\n_Files on the worker: `{outcome.markdown_path.absolute()}` and "
             f"`{outcome.report_path.absolute()}` (JSON)._\n")
    create_markdown_artifact(outcome.markdown + where, key=key,
                             description=f"{outcome.label}: {state}, {outcome.quarantined} quarantined")


@task(name="validate-batch", cache_policy=NO_CACHE, retries=0)
def validate_batch_task(settings: Settings, batch_id: int, run_id: int | None = None,
                        now: datetime | None = None) -> ValidationOutcome:
    """Fails (BatchRejected) when the batch is rejected; the artifacts are published either way."""
    logger = get_run_logger()
    try:
        outcome = validate_batch(settings, batch_id, run_id, now)
    except BatchRejected as exc:
        if exc.outcome is not None:
            publish(exc.outcome)
        logger.error("%s", exc)
        raise
    finally:
        release_free_memory()  # the batch's frames (and GX's pandas copy) are gone: give the pages back
    publish(outcome)
    if outcome.rerun:
        logger.info("%s: %s: no new CDRs since this date was billed", outcome.label, outcome.server)
        return outcome
    logger.info("%s: %s rows, %s good, %s quarantined, %s duplicates", outcome.label, outcome.rows,
                outcome.good, outcome.quarantined, outcome.duplicates)
    for warning in outcome.warnings:
        logger.warning("%s: %s", outcome.label, warning)
    return outcome


@task(name="validate-requeued", cache_policy=NO_CACHE, retries=0)
def validate_requeued_task(settings: Settings, run_id: int | None = None,
                           now: datetime | None = None) -> ValidationOutcome:
    outcome = validate_requeued(settings, run_id, now)
    if outcome.rows:
        publish(outcome)
    return outcome
