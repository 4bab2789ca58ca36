"""Backfill: the nightly job for a range of past billing dates, one child flow run per date.

Design (DESIGN.md "Backfill"; docs/OPERATING.md has the operator's view):

- Children run one at a time, oldest date first, each waited for before the next starts, so the
  ledger sees the dates in order (a date bills every earlier CDR not billed yet, so order only
  changes which date a late CDR lands on, never whether it is billed).
- When the nightly deployment exists (`autobill/nightly`), each child is a run of that
  deployment (`run_deployment`, linked as a subflow): it runs on a worker like a scheduled run, is
  serialised with the scheduled run by the deployment's concurrency limit, and carries the
  idempotency key `backfill/<this run's id>/<date>`. Without the deployment (a laptop, `autobill
  backfill` against a temporary server) the child is the nightly flow run as a subflow in this
  process. `deployment=""` forces the in-process mode.
- Idempotent by construction: the nightly flow bills only CDRs not yet final in the ledger, so a
  date already billed posts nothing and late CDRs become new charge lines. The key above only
  stops *this* backfill from starting the same date twice: a retry of this backfill run reuses
  the children it already started (a completed child is not run again), and a child that had
  failed before the retry is rescheduled, exactly as the UI's "Retry" button does. A child
  retried from the UI by hand bills only what its first attempt left undone.
- Summary: a progress artifact while it runs, then a markdown artifact across the range
  (`autobill-backfill-summary`) built from the children's summaries in the ledger (the source of
  truth, whatever Prefect kept of their results).
"""

from __future__ import annotations

import time
from datetime import date, datetime
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, Scheduled

from autobill.backfill import DateResult, billing_dates, markdown, result_for, summarise
from autobill.config import Settings, load_settings
from autobill.durations import analyse, publish_artifact
from autobill.ledger.runs import run_history, run_summary
from autobill.timeutil import utc_now
from flows.autobill import nightly
from flows.runners import with_runner

NIGHTLY_DEPLOYMENT = "autobill/nightly"
FINAL_BAD = ("FAILED", "CRASHED", "CANCELLED")


# -- running children --------------------------------------------------------------------------


def deployment_exists(name: str | None) -> bool:
    if not name:
        return False
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
            return True
        except ObjectNotFound:
            return False


def _wait(flow_run_id: UUID, timeout: float | None, poll: float = 2.0):
    deadline = None if timeout is None else time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if deadline is not None and time.monotonic() > deadline:
                return run
            time.sleep(poll)


def run_child_deployment(settings: Settings, deployment: str, day: date, params: dict[str, Any], key: str,
                         attempt_started: datetime, timeout: float | None) -> DateResult:
    """One date through the nightly deployment; an old failed child (a retried backfill) is rescheduled."""
    logger = get_run_logger()
    run = run_deployment(deployment, parameters=params, idempotency_key=key, as_subflow=True, timeout=timeout,
                         tags=["backfill"], flow_run_name=f"autobill-{day.isoformat()}", poll_interval=2)
    state = run.state.type.value if run.state else "UNKNOWN"
    stale = run.end_time is not None and run.end_time < attempt_started
    if state in FINAL_BAD and stale:
        logger.info("date %s: child %s had ended %s before this attempt; rescheduling it", day, run.name, state)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Scheduled(message="Retried by the backfill"), force=True)
        run = _wait(run.id, timeout)
        state = run.state.type.value if run.state else "UNKNOWN"
    message = (run.state.message or "") if run.state else ""
    if not (run.state and run.state.is_final()):
        message = f"did not finish within {timeout} s (is a worker polling the nightly deployment's pool?)"
    return result_for(day, state, str(run.id), run.name, "deployment", run_summary(settings, str(run.id)), message)


def run_child_subflow(settings: Settings, day: date, params: dict[str, Any]) -> DateResult:
    state = with_runner(nightly, settings)(**{**params, "billing_date": day}, return_state=True)
    flow_run_id = str(state.state_details.flow_run_id) if state.state_details.flow_run_id else None
    name = None
    if flow_run_id:
        with get_client(sync_client=True) as client:
            name = client.read_flow_run(UUID(flow_run_id)).name
    return result_for(day, state.type.value, flow_run_id, name, "subflow", run_summary(settings, flow_run_id),
                      state.message or "")


def _durations(settings: Settings, logger) -> None:
    """The nightly duration history (artifact `autobill-run-durations`): a backfill is when runs pile up."""
    report = analyse(run_history(settings, "nightly", 30), settings.nightly_budget_minutes, settings.tz)
    publish_artifact(report)
    for warning in report.warnings:
        logger.warning("run durations: %s", warning)


def backfill_run_name() -> str:
    p = flow_run.parameters or {}
    return f"backfill-{p.get('start_date')}-to-{p.get('end_date')}{'-dry-run' if p.get('dry_run') else ''}"


@flow(name="autobill-backfill", flow_run_name=backfill_run_name, validate_parameters=True, log_prints=False)
def backfill(
    start_date: date,
    end_date: date,
    dry_run: bool = False,
    servers: list[str] | None = None,
    config_path: str | None = None,
    deployment: str | None = NIGHTLY_DEPLOYMENT,
    child_timeout_minutes: float | None = None,
    stop_on_failure: bool = False,
) -> dict[str, Any]:
    """Run the nightly job for every billing date from `start_date` to `end_date`, in order.

    Args:
        start_date: first billing date (inclusive).
        end_date: last billing date (inclusive); at most 366 dates.
        dry_run: preview each date; post nothing, move no watermark (each date then previews as if
            it were the only run).
        servers: only these server ids (default: every enabled server).
        config_path: the config file (default: $AUTOBILL_CONFIG or ./autobill.yaml), passed to children.
        deployment: the nightly deployment to run children on; when it does not exist, or is empty,
            children run as subflows in this process.
        child_timeout_minutes: stop waiting for a child after this long (deployment mode; default: wait).
        stop_on_failure: stop at the first date that does not complete (default: go on; the next
            dates bill whatever an earlier failed date left, and the summary names the failures).
    """
    logger = get_run_logger()
    attempt_started = utc_now()
    days = billing_dates(start_date, end_date)
    settings = load_settings(config_path)
    use_deployment = deployment_exists(deployment)
    logger.info("backfill %s .. %s (%d dates) %s", start_date, end_date, len(days),
                f"on deployment {deployment}" if use_deployment else "as subflows in this process")
    params: dict[str, Any] = {"dry_run": dry_run, "servers": servers, "config_path": config_path}
    timeout = None if child_timeout_minutes is None else child_timeout_minutes * 60
    progress = create_progress_artifact(0.0, description=f"Backfill {start_date} .. {end_date}")
    results: list[DateResult] = []
    for i, day in enumerate(days):
        if use_deployment:
            key = f"backfill/{flow_run.id}/{day.isoformat()}{'/dry-run' if dry_run else ''}"
            child = {**params, "billing_date": day.isoformat()}
            result = run_child_deployment(settings, deployment, day, child, key, attempt_started, timeout)
        else:
            result = run_child_subflow(settings, day, params)
        results.append(result)
        logger.info("date %s: %s / %s, %d billed, %d charge(s) posted", day, result.state, result.status,
                    result.billed, result.charges_posted)
        update_progress_artifact(progress, 100.0 * (i + 1) / len(days), description=f"{i + 1}/{len(days)} dates")
        unfinished = result.state not in ("COMPLETED", *FINAL_BAD)
        if unfinished or (stop_on_failure and not result.ok):
            for rest in days[i + 1 :]:
                results.append(DateResult(rest.isoformat(), "NOT_RUN", "-", message=f"stopped after {day}"))
            logger.warning("stopping after %s (%s): later dates not run", day, result.message or result.state)
            break
    summary = summarise(results)
    summary.update({"start_date": start_date.isoformat(), "end_date": end_date.isoformat(), "dry_run": dry_run})
    create_markdown_artifact(markdown(summary, start_date, end_date, dry_run), key="autobill-backfill-summary",
                             description=f"Backfill {start_date} .. {end_date}")
    _durations(settings, logger)
    if summary["not_completed"]:
        return Failed(message=f"partial: not completed: {', '.join(summary['not_completed'])}", data=summary)
    return Completed(message=f"backfilled {len(days)} date(s)", data=summary)
