"""Run bookkeeping in the ledger: one `runs` row per flow run, with its summary and duration.

The history is what lets an operator see the nightly run creeping toward the WHMCS cron time
(`autobill runs`), so every run records when it started and finished, even when it fails.
Nightly, backfill and autosuspend runs all keep their rows here.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

from sqlalchemy import select

from autobill.config import Settings
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import Run
from autobill.timeutil import utc_now


class RunBusy(RuntimeError):
    """Another run of this kind is still running and may not overlap this one."""


def start_run(settings: Settings, kind: str, billing_date: date | None = None, dry_run: bool = False,
              flow_run_id: str | None = None) -> int:
    upgrade(settings.ledger)
    with session_scope(settings.ledger) as session:
        run = Run(kind=kind, billing_date=billing_date, dry_run=dry_run, flow_run_id=flow_run_id, status="running",
                  started_at=utc_now())
        session.add(run)
        session.flush()
        return run.id


def finish_run(settings: Settings, run_id: int, status: str, summary: dict[str, Any] | None = None) -> None:
    with session_scope(settings.ledger) as session:
        run = session.get(Run, run_id)
        run.status = status
        run.finished_at = utc_now()
        if summary is not None:
            run.summary = json.dumps(summary, default=str, sort_keys=True)


def run_summary(settings: Settings, flow_run_id: str | None) -> dict[str, Any] | None:
    """The summary a run stored in the ledger for this Prefect flow run (the source of truth,
    whatever Prefect kept); the latest one when the flow run was retried."""
    if not flow_run_id:
        return None
    with session_scope(settings.ledger) as session:
        run = session.scalars(select(Run).where(Run.flow_run_id == flow_run_id).order_by(Run.id.desc())).first()
        return json.loads(run.summary) if run is not None and run.summary else None


def run_history(settings: Settings, kind: str | None = None, limit: int = 30) -> list[dict[str, Any]]:
    with session_scope(settings.ledger) as session:
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if kind:
            query = query.where(Run.kind == kind)
        out = []
        for r in session.scalars(query):
            seconds = (r.finished_at - r.started_at).total_seconds() if r.finished_at else None
            out.append({
                "id": r.id, "kind": r.kind, "billing_date": r.billing_date, "status": r.status, "dry_run": r.dry_run,
                "started_at": r.started_at, "finished_at": r.finished_at, "seconds": seconds,
                "flow_run_id": r.flow_run_id,
            })
        return out


def start_exclusive_run(settings: Settings, kind: str, stale_after_seconds: float,
                        flow_run_id: str | None = None) -> int:
    """Record a run of `kind`, refusing (RunBusy) while another one started less than
    `stale_after_seconds` ago has not finished (a killed run stops counting once stale)."""
    with session_scope(settings.ledger) as s:
        cutoff = utc_now() - timedelta(seconds=stale_after_seconds)
        busy = s.scalar(
            select(Run.id).where(Run.kind == kind, Run.status == "running", Run.started_at >= cutoff).limit(1)
        )
        if busy is not None:
            raise RunBusy(f"{kind} run {busy} is still running; not starting another cycle")
        run = Run(kind=kind, dry_run=False, status="running", flow_run_id=flow_run_id, started_at=utc_now())
        s.add(run)
        s.flush()
        return run.id
