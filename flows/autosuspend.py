"""The autosuspend flow: every 5 minutes, suspend / unsuspend / alert VoIP clients.

Orchestration only; the rules and planning are in autobill.suspension, the steps in
tasks.suspend and tasks.intraday. Intraday usage (#18) is a step of THIS sequence rather than a
deployment of its own: every decision then sees the calls read in the same cycle (no race
between two schedules), the one concurrency limit covers both, and a slow PBX is bounded by its
`timeout_seconds` and isolated (its usage is read next cycle). `cycle` is THE sequence of a cycle: the flow runs it with the steps as Prefect
tasks, `autobill suspend-check` (`run_cycle`) with the same steps as plain functions.
Deploy it with `concurrency_limit: 1` and `collision_strategy: CANCEL_NEW` (prefect.yaml): a
cycle that is still running when the next one is due makes the new one cancel, never overlap.
A failed step changes nothing that is not recorded; the next cycle completes or retries it.

Artifacts: `autosuspend-changes` (a table of the decisions that changed something, or would
have in a dry run) and `autosuspend-summary` (markdown: counts, failures, unreadable clients).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from autobill.config import ConfigError, Settings, load_settings
from autobill.ledger.db import upgrade
from autobill.ledger.runs import RunBusy
from autobill.suspension.planning import CycleReport
from autobill.timeutil import utc_now
from tasks.intraday import intraday, intraday_task
from tasks.services import refresh_services, refresh_services_task
from tasks.suspend import (
    CycleContext,
    apply_cycle,
    apply_task,
    begin,
    decide_cycle,
    decide_task,
    fail_run,
    finish,
    finish_task,
    publish_task,
    read,
    read_task,
    recover,
    recover_task,
    usage,
    usage_task,
)

PLAIN_STEPS = SimpleNamespace(services=refresh_services, recover=recover, intraday=intraday, read=read, usage=usage, decide=decide_cycle,
                              apply=apply_cycle, finish=finish)
TASK_STEPS = SimpleNamespace(services=refresh_services_task, recover=recover_task, intraday=intraday_task, read=read_task, usage=usage_task,
                             decide=decide_task, apply=apply_task, finish=finish_task)


def cycle(ctx: CycleContext, steps: SimpleNamespace) -> CycleReport:
    """services from WHMCS -> recover -> intraday usage -> read WHMCS -> usage terms + fraud guard ->
    decide -> apply -> record; a failure records the run as failed."""
    try:
        ctx.settings = steps.services(ctx.settings, "autosuspend")  # who owns what, as WHMCS says now
        outcomes = steps.recover(ctx)
        today = steps.intraday(ctx.settings, ctx.now)
        result = steps.read(ctx)
        found = steps.usage(ctx, result)
        decisions, states = steps.decide(ctx, found.result)
        outcomes = outcomes + steps.apply(ctx, found.result, decisions, states)
        return steps.finish(ctx, found.result, decisions, outcomes, usage_summary(today, found))
    except BaseException as exc:
        fail_run(ctx.settings, ctx.run_id, exc)
        raise


def usage_summary(today, found) -> dict[str, Any]:
    """What the cycle's intraday read and fraud guard did, for the run summary and the artifact."""
    return {
        "servers": today.servers, "rows_read": today.rows_read, "rows_stored": today.rows_stored,
        "unrated": today.unrated, "errors": today.errors[:10], "seconds": today.seconds,
        "unbilled_clients": found.unbilled_clients,
        "not_invoiced_since": found.cron,  # the WHMCS daily cron that ends "not invoiced" (#18)
        "holds": [{"service": h.service_id, "client": h.client_id, "hold": h.hold_id, "reason": h.reason,
                   "calls": [c.line() for c in h.evidence[:20]]} for h in found.new_holds],
    }  # fmt: skip


def run_cycle(settings: Settings, dry_run: bool = False, *, flow_run_id: str | None = None, **context: Any) -> CycleReport:
    """One cycle with plain functions (the CLI's `suspend-check`). `context`: CycleContext fields
    (factories, clock, actor, workers) for tests."""
    return cycle(begin(CycleContext(settings, dry_run, **context), flow_run_id), PLAIN_STEPS)


def run_name() -> str:
    """`autosuspend-2026-11-26-0905` in the UI: the cycle's scheduled time in the billing timezone
    (UTC when the configuration cannot be read; the flow then fails with the reason)."""
    params = flow_run.parameters or {}
    when = flow_run.scheduled_start_time or utc_now()
    try:
        when = when.astimezone(load_settings(params.get("config_path")).tz)
    except ConfigError:
        pass
    return f"autosuspend-{when:%Y-%m-%d-%H%M}{'-dry-run' if params.get('dry_run') else ''}"


@flow(name="autosuspend", flow_run_name=run_name, timeout_seconds=270, log_prints=True)
def autosuspend(dry_run: bool = False, config_path: str | None = None) -> dict[str, Any]:
    """One cycle: read WHMCS, decide, apply, notify, record. `config_path`: default $AUTOBILL_CONFIG."""
    logger = get_run_logger()
    settings = load_settings(config_path)
    if not settings.autosuspend.enabled:
        logger.info("autosuspend is disabled in the configuration")
        return {"status": "disabled"}
    upgrade(settings.ledger)
    try:
        ctx = begin(CycleContext(settings, dry_run), flow_run_id=str(flow_run.get_id() or "") or None)
    except RunBusy as exc:
        logger.warning("%s", exc)
        return {"status": "busy", "message": str(exc)}
    report = cycle(ctx, TASK_STEPS)
    publish_task(report)
    logger.info("autosuspend %s", report.log_line())
    return report.summary()


if __name__ == "__main__":
    autosuspend()
