"""Run bookkeeping in the ledger: one `runs` row per flow run, with its summary and duration.

The history is what lets an operator see the nightly run creeping toward the WHMCS cron time
(`autobill runs`), so every run records when it started and finished, even when it fails.
Nightly, backfill and autosuspend runs all keep their rows here.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from autobill.config import Settings
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import Run
from autobill.timeutil import utc_now

HOST = socket.gethostname()


def process_alive(pid: int, started_at: datetime | None = None) -> bool:
    """Is `pid` a live process on this host (and, when /proc says so, one started before the run
    row, so a recycled pid does not pass for the run's process)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    began = _process_start(pid)
    return began is None or started_at is None or began <= started_at.timestamp() + 5


def _process_start(pid: int) -> float | None:
    """Epoch seconds the process started (Linux /proc), or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after "(comm)"
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def shown_status(status: str, host: str | None, pid: int | None, started_at: datetime | None) -> str:
    """`interrupted` for a run still `running` whose process on this host is gone; a run on another
    host (or from before runs recorded their process) keeps its stored status."""
    if status == "running" and pid is not None and host == HOST and not process_alive(pid, started_at):
        return "interrupted"
    return status


class RunBusy(RuntimeError):
    """Another run of this kind is still running and may not overlap this one."""


def start_run(settings: Settings, kind: str, billing_date: date | None = None, dry_run: bool = False,
              flow_run_id: str | None = None) -> int:
    upgrade(settings.ledger)
    with session_scope(settings.ledger) as session:
        run = Run(kind=kind, billing_date=billing_date, dry_run=dry_run, flow_run_id=flow_run_id, status="running",
                  started_at=utc_now(), host=HOST, pid=os.getpid())
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


def count_runs(settings: Settings, kind: str | None = None) -> int:
    with session_scope(settings.ledger) as session:
        query = select(func.count()).select_from(Run)
        if kind:
            query = query.where(Run.kind == kind)
        return session.scalar(query) or 0


def run_history(settings: Settings, kind: str | None = None, limit: int | None = 30) -> list[dict[str, Any]]:
    with session_scope(settings.ledger) as session:
        query = select(Run).order_by(Run.id.desc()).limit(limit)
        if kind:
            query = query.where(Run.kind == kind)
        out = []
        for r in session.scalars(query):
            seconds = (r.finished_at - r.started_at).total_seconds() if r.finished_at else None
            out.append({
                "id": r.id, "kind": r.kind, "billing_date": r.billing_date, "dry_run": r.dry_run,
                "started_at": r.started_at, "finished_at": r.finished_at, "seconds": seconds,
                "flow_run_id": r.flow_run_id,
                "status": shown_status(r.status, r.host, r.pid, r.started_at),
                "host": r.host, "pid": r.pid,
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
        run = Run(kind=kind, dry_run=False, status="running", flow_run_id=flow_run_id, started_at=utc_now(),
                  host=HOST, pid=os.getpid())
        s.add(run)
        s.flush()
        return run.id


def run_started_at(settings: Settings, run_id: int):
    with session_scope(settings.ledger) as session:
        run = session.get(Run, run_id)
        return run.started_at if run is not None else None


def nightly_nights(settings: Settings, nights: int = 30) -> list[dict[str, Any]]:
    """One entry per billing date of the last `nights` billed dates (its latest finished, non-dry
    nightly run), oldest first: billing_date, status, minutes, summary (the stored JSON)."""
    with session_scope(settings.ledger) as session:
        query = (select(Run).where(Run.kind == "nightly", Run.dry_run.is_(False), Run.finished_at.is_not(None),
                                   Run.billing_date.is_not(None))
                 .order_by(Run.id.desc()).limit(nights * 4))
        by_date: dict[date, dict[str, Any]] = {}
        for r in session.scalars(query):
            if r.billing_date in by_date:
                continue
            by_date[r.billing_date] = {
                "billing_date": r.billing_date, "status": r.status,
                "minutes": (r.finished_at - r.started_at).total_seconds() / 60,
                "summary": json.loads(r.summary) if r.summary else {},
            }
    return [by_date[d] for d in sorted(by_date)[-nights:]]
