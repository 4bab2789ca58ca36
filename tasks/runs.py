"""Run bookkeeping as tasks (the ledger side is autobill/ledger/runs.py)."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from autobill.config import Settings
from autobill.ledger.runs import finish_run, start_run


@task(name="start-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def start_run_task(settings: Settings, kind: str, billing_date: date | None = None, dry_run: bool = False) -> int:
    return start_run(settings, kind, billing_date, dry_run, flow_run_id=str(flow_run.id) if flow_run.id else None)


@task(name="finish-run", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def finish_run_task(settings: Settings, run_id: int, status: str, summary: dict[str, Any] | None = None) -> None:
    finish_run(settings, run_id, status, summary)
