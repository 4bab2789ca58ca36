"""The nightly autobill flow: extract -> validate -> rate -> aggregate -> reconcile -> post -> report.

Orchestration only; every step is a task over a plain function in `tasks/`. Servers are
extracted and validated in parallel, each in its own tasks: a server that fails (down, or its
batch rejected) is reported and left for the next run (its watermark did not move) while the
others are billed, and the run then ends Failed with a "partial" message so the UI shows it.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.utilities.annotations import opaque

from autobill.billing_day import billing_cutoff, choose_servers, default_billing_date
from autobill.config import load_settings
from autobill.ledger.lock import ledger_lock
from flows.runners import nightly_task_runner, tasks_run_here
from tasks.aggregate import ChunkRecorder, record_billing_task
from tasks.extract import extract_task_for
from tasks.post import outstanding_uncertain_task, post_pending_task, surface_interrupted_task
from tasks.preflight import PreflightFailed, preflight_task
from tasks.rate import rate_run_task
from tasks.reconcile import reconcile_task
from tasks.report import RunSummary, ServerLine, report_task
from tasks.runs import finish_run_task, start_run_task
from tasks.services import sync_services_task
from tasks.statements import statements_task
from tasks.validate import BatchRejected, validate_batch_task, validate_requeued_task, warm_up


def run_name() -> str:
    """`autobill-2026-11-20` (or `autobill-2026-11-20-dry-run`) in the UI."""
    params = flow_run.parameters or {}
    day = params.get("billing_date") or "scheduled"
    return f"autobill-{day}{'-dry-run' if params.get('dry_run') else ''}"


@flow(name="autobill", flow_run_name=run_name, task_runner=nightly_task_runner(),
      validate_parameters=True)
def nightly(
    billing_date: date | None = None,
    servers: list[str] | None = None,
    dry_run: bool = False,
    config_path: str | None = None,
) -> dict[str, Any]:
    """Bill one billing date (default: yesterday in the configured timezone).

    Args:
        billing_date: the local calendar date to bill; CDRs of earlier dates not billed yet
            (a server that was down, late CDRs, fixed tariffs) are billed with it.
        servers: server ids to extract (default: every enabled server).
        dry_run: compute everything and show the preview; post nothing, move no watermark.
        config_path: the config file (default: $AUTOBILL_CONFIG or ./autobill.yaml).
    """
    settings = load_settings(config_path)
    day = billing_date or default_billing_date(settings)
    # One nightly run at a time on a ledger, whoever started it (see autobill/ledger/lock.py).
    with ledger_lock(settings.ledger, "nightly"):
        return _bill(settings, day, servers, dry_run)


def _bill(settings, day: date, servers: list[str] | None, dry_run: bool):
    logger = get_run_logger()
    chosen = choose_servers(settings, servers)
    run_id = start_run_task(settings, "nightly", day, dry_run)
    # Before any ledger change: every secret resolves and WHMCS answers, or the run stops here.
    try:
        preflight_task(settings, chosen, dry_run)
    except PreflightFailed as exc:
        data = {"billing_date": day.isoformat(), "dry_run": dry_run, "status": "failed", "balanced": True,
                "error": str(exc)}
        finish_run_task(settings, run_id, "failed", data)
        logger.error("%s", exc)
        return Failed(message=str(exc), data=data)
    if chosen and tasks_run_here():  # on a Dask cluster the batches are validated in other processes
        warm_up(settings)  # GX's import and the batch suite, built while services sync and servers are read
    services = sync_services_task(settings, "nightly")  # who owns which number, before anything is rated
    if not dry_run:
        surface_interrupted_task(settings)
    until = billing_cutoff(settings, day)

    lines: dict[str, ServerLine] = {sid: ServerLine(sid) for sid in chosen}
    extracting = {sid: extract_task_for(settings, sid).submit(settings, sid, until, run_id) for sid in lines}
    validating = {}
    for sid, future in extracting.items():
        future.wait()
        if future.state.is_failed():
            lines[sid].status, lines[sid].error = "failed", _error(_exception(future))
            continue
        extracted = future.result()
        lines[sid].extracted = extracted.rows
        lines[sid].files_quarantined = len(extracted.bad_files)
        validating[sid] = (extracted.batch_id, validate_batch_task.submit(settings, extracted.batch_id, run_id))
    good_paths, batch_ids = [], []
    for sid, (batch_id, future) in validating.items():
        future.wait()
        if future.state.is_failed():
            exc = _exception(future)
            line = lines[sid]
            if isinstance(exc, BatchRejected) and exc.outcome is not None:
                line.status, line.error = "rejected", "; ".join(exc.reasons)
                line.quarantined, line.duplicates = exc.outcome.quarantined, exc.outcome.duplicates
                line.deferred = exc.outcome.rows - exc.outcome.quarantined - exc.outcome.duplicates
            else:
                line.status, line.error = "failed", _error(exc)
                line.deferred = line.extracted
            continue
        outcome = future.result()
        lines[sid].quarantined, lines[sid].duplicates = outcome.quarantined, outcome.duplicates
        good_paths.append(str(outcome.validated_path))
        batch_ids.append(batch_id)
    requeued = None if dry_run else validate_requeued_task(settings, run_id)

    # A night rated in chunks is recorded chunk by chunk while the next chunk is rated (in this
    # process's threads only: a Dask worker records the whole file in the record step).
    recorder = ChunkRecorder(settings, run_id, dry_run) if tasks_run_here() else None
    try:
        rated_path = rate_run_task(settings, day, good_paths, requeued, run_id, opaque(recorder))
        record = record_billing_task(settings, rated_path, run_id, batch_ids, dry_run, opaque(recorder))
    finally:
        if recorder is not None:
            recorder.close()
    reconciled = None if dry_run else reconcile_task(settings, run_id)
    posting = None if dry_run else post_pending_task(settings)
    if not dry_run and settings.statements.nightly:
        statements_task(settings, day, run_id, return_state=True)  # a failure is logged; the billing stands
    uncertain = outstanding_uncertain_task(settings)
    # opaque: the record (one ChargeLine per charge, 23 k at 10 M calls) is linked to this task in
    # the run graph but not walked field by field for task inputs (0.7 s each walk; issue #15).
    summary: RunSummary = report_task(day, dry_run, lines, rated_path, requeued, opaque(record), posting, uncertain,
                                      reconciled, services=services.to_json() if services.enabled else None,
                                      settings=settings, run_id=run_id)
    data = summary.to_json()
    finish_run_task(settings, run_id, summary.status, data)
    logger.info("billing date %s: %s", day, summary.status)
    if summary.status == "completed":
        return Completed(message=f"billed {day}", data=data)
    return Failed(message=_partial_message(summary), data=data)


def _exception(future) -> BaseException | None:
    try:
        future.result()
    except BaseException as exc:  # noqa: BLE001 - we want whatever the task raised
        return exc
    return None


def _error(exc: BaseException | None) -> str:
    return f"{type(exc).__name__}: {exc}"[:500] if exc else "failed"


def _partial_message(summary: RunSummary) -> str:
    parts = []
    if not summary.balanced:
        parts.append("summary does not balance")
    if summary.failed_servers:
        parts.append(f"servers not billed: {', '.join(summary.failed_servers)}")
    if summary.uncertain:
        parts.append(f"{len(summary.uncertain)} uncertain charge(s) to reconcile")
    if summary.failed_posts:
        parts.append(f"{len(summary.failed_posts)} charge(s) not posted (retried next run)")
    if summary.files_quarantined:
        parts.append(f"{summary.files_quarantined} file(s) quarantined whole (ledger table quarantined_files)")
    return "partial: " + "; ".join(parts)
