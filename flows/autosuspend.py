"""The autosuspend flow: every 5 minutes, suspend / unsuspend / alert VoIP clients (issue #7).

Orchestration only; the rules are in autobill.suspension, the steps in tasks.suspend.
Deploy it with `concurrency_limit: 1` and `collision_strategy: CANCEL_NEW` (prefect.yaml): a
cycle that is still running when the next one is due makes the new one cancel, never overlap.
A failed step changes nothing that is not recorded; the next cycle completes or retries it.

Artifacts: `autosuspend-changes` (a table of the decisions that changed something, or would
have in a dry run) and `autosuspend-summary` (markdown: counts, failures, unreadable clients).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from autobill.config import load_settings
from autobill.ledger.db import upgrade
from autobill.ledger.runs import RunBusy
from tasks.suspend import CycleContext, CycleReport, begin, fail_run, prefect_tasks


def summary_markdown(report: CycleReport) -> str:
    s = report.summary()
    lines = [
        f"# Autosuspend cycle{' (dry run)' if report.dry_run else ''}: {s['status']}",
        "",
        f"- services checked: **{s['services']}** ({s['clients_read']} clients read, "
        f"{s['unreadable_clients']} unreadable: left unchanged)",
        f"- decisions: {', '.join(f'{k} {v}' for k, v in s['decisions'].items()) or 'none'}",
        f"- applied: **{s['applied']}**, failed or pending: **{s['failed']}**",
        f"- took {s['seconds']} s",
    ]
    if s["errors"]:
        lines += ["", "## Read errors (first 10)", *[f"- {e}" for e in s["errors"]]]
    failed = [o for o in report.outcomes if o.status != "done"]
    if failed:
        lines += ["", "## Not done (retried next cycle)", *[f"- service {o.decision.service_id}: {o.message}" for o in failed[:20]]]
    return "\n".join(lines)


def change_rows(report: CycleReport) -> list[dict[str, Any]]:
    if report.dry_run:
        return [r for r in report.to_json()["would_change"]][:500]
    return report.changed_rows()[:500]


@flow(name="autosuspend", timeout_seconds=270, log_prints=True)
def autosuspend(dry_run: bool = False, config_path: str | None = None) -> dict[str, Any]:
    """One cycle: read WHMCS, decide, apply, notify, record. `config_path`: default $AUTOBILL_CONFIG."""
    logger = get_run_logger()
    settings = load_settings(config_path)
    if not settings.autosuspend.enabled:
        logger.info("autosuspend is disabled in the configuration")
        return {"status": "disabled"}
    upgrade(settings.ledger)
    t = prefect_tasks()
    try:
        ctx = begin(CycleContext(settings, dry_run), flow_run_id=str(flow_run.get_id() or "") or None)
    except RunBusy as exc:
        logger.warning("%s", exc)
        return {"status": "busy", "message": str(exc)}
    try:
        outcomes = t.recover(ctx)
        result = t.read(ctx)
        decisions, states = t.decide(ctx, result)
        outcomes = outcomes + t.apply(ctx, result, decisions, states)
        report = t.finish(ctx, result, decisions, outcomes)
    except BaseException as exc:
        fail_run(settings, ctx.run_id, exc)
        raise
    rows = change_rows(report)
    if rows:
        create_table_artifact(rows, key="autosuspend-changes", description="Decisions that changed something")
    create_markdown_artifact(summary_markdown(report), key="autosuspend-summary", description="Autosuspend cycle")
    logger.info("autosuspend: %s", report.summary())
    return report.summary()


if __name__ == "__main__":
    autosuspend()
