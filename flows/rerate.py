"""The `rerate` flow: re-rate past billing dates and post only the difference (issue 16).

Orchestration only: settle uncertain charges from WHMCS (tasks/reconcile.py: a credit whose
answer was lost is found in the client's credit log) -> plan (tasks/rerate.py) -> preview
artifact -> record -> post the pending corrections (tasks/post.py, the nightly's state machine) -> run summary. It holds the nightly's
ledger lock for the whole run: a re-rate never interleaves with a nightly (or another re-rate),
so the prices it compares with are the prices billed, and a correction is made once.
"""

from __future__ import annotations

import getpass
import socket
from datetime import date
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed

from autobill.config import load_settings
from autobill.ledger.corrections import RerateRequest
from autobill.ledger.lock import ledger_lock
from tasks.post import outstanding_uncertain_task, post_pending_task, surface_interrupted_task
from tasks.reconcile import reconcile_task
from tasks.rerate import plan_rerate_task, publish_preview_task, record_rerate_task
from tasks.runs import finish_run_task, start_run_task


def run_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters or {}
    return f"rerate-{p.get('start_date')}-{p.get('end_date')}{'-dry-run' if p.get('dry_run') else ''}"


def default_requester() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def check_request(start_date: date, end_date: date, reason: str) -> None:
    """The argument errors, one line each, before anything runs."""
    if end_date < start_date:
        raise ValueError(f"end_date {end_date} is before start_date {start_date}")
    if not reason or not reason.strip():
        raise ValueError("reason: required (why are these dates re-rated? it is kept with every correction)")


@flow(name="rerate", flow_run_name=run_name, validate_parameters=True)
def rerate(
    start_date: date,
    end_date: date,
    reason: str,
    client_id: int | None = None,
    tariff: list[str] | None = None,
    dry_run: bool = False,
    requested_by: str | None = None,
    config_path: str | None = None,
) -> dict[str, Any]:
    """Re-rate every call billed on [start_date, end_date] and post only the difference.

    Args:
        start_date: first billing date (local, inclusive).
        end_date: last billing date (inclusive).
        reason: why (required; kept in the ledger with every correction).
        client_id: only this WHMCS client.
        tariff: `NAME@VERSION` to rate with an archived tariff version instead of today's file.
        dry_run: the preview only: nothing recorded, nothing posted.
        requested_by: who asks (default: the user and host running the flow).
        config_path: the config file (default: $AUTOBILL_CONFIG or ./autobill.yaml).
    """
    check_request(start_date, end_date, reason)
    settings = load_settings(config_path)
    request = RerateRequest(date_from=start_date, date_to=end_date, reason=reason.strip(),
                            requested_by=(requested_by or "").strip() or default_requester(), client_id=client_id)
    with ledger_lock(settings.ledger, "nightly"):
        return _rerate(settings, request, tariff, dry_run)


def _rerate(settings, request: RerateRequest, tariff: list[str] | None, dry_run: bool):
    from prefect.runtime import flow_run

    logger = get_run_logger()
    request.flow_run_id = str(flow_run.id) if flow_run.id else None
    run_id = start_run_task(settings, "rerate", None, dry_run)
    if not dry_run:
        surface_interrupted_task(settings)
        reconcile_task(settings, run_id)  # as the nightly does, before anything is posted
    plan = plan_rerate_task(settings, request, tariff)
    if not dry_run:
        plan = record_rerate_task(settings, plan, run_id)
    summary = plan.summary()
    publish_preview_task(summary, dry_run)
    posting = None
    if not dry_run:  # this re-rate's corrections, and any an earlier one left pending
        posting = post_pending_task(settings, kind="correction")
    uncertain = outstanding_uncertain_task(settings)
    summary.update(dry_run=dry_run, posted=posting.posted if posting else 0,
                   amount_posted={k: str(v) for k, v in (posting.amount_posted if posting else {}).items()},
                   uncertain=uncertain, failed_posts=[k for k, _ in posting.failed] if posting else [])
    status = "completed" if not uncertain and not summary["failed_posts"] else "partial"
    summary["status"] = status
    finish_run_task(settings, run_id, status, summary)
    logger.info("re-rate %s..%s: %s correction line(s), %s posted, status %s", request.date_from, request.date_to,
                summary["corrections"], summary["posted"], status)
    if status == "completed":
        return Completed(message=f"{summary['corrections']} correction line(s)", data=summary)
    parts = []
    if uncertain:
        parts.append(f"{len(uncertain)} uncertain charge(s) to reconcile")
    if summary["failed_posts"]:
        parts.append(f"{len(summary['failed_posts'])} correction(s) not posted (posted by the next run)")
    return Failed(message="partial: " + "; ".join(parts), data=summary)
