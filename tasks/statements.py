"""The statements step of a nightly run: each billed client's statement for the billing date and
for the month to date, written under the data directory after posting.

    <statements dir>/client-<id>/<YYYY-MM-DD>.<fmt>           the billing date
    <statements dir>/client-<id>/<YYYY-MM>-to-date.<fmt>      the calendar month up to the billing date

(default dir `<data_dir>/statements/out`, formats `statements.formats`). The client's name comes
from WHMCS (GetClientsDetails); a client WHMCS cannot name gets "Client #<id>" and a warning, never
a missing statement. A failure here never un-bills anything: the next run rebuilds whatever is
missing (autobill/statement/store.py `ensure_calls`).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select

from autobill.config import Settings
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge
from autobill.statement import render
from autobill.statement.build import Statement, build_statements
from autobill.statement.store import materialize_run
from connectors.whmcs import WhmcsClient, WhmcsError


@dataclass
class StatementsReport:
    clients: int = 0
    files: int = 0
    calls: int = 0
    not_tied_out: list[str] = field(default_factory=list)  # "client 12 ST-XXXX": should never happen
    unnamed: list[int] = field(default_factory=list)


def out_dir(settings: Settings) -> Path:
    configured = settings.statements.dir
    return settings.resolve_path(configured) if configured else settings.data_path / "statements" / "out"


def statement_paths(settings: Settings, client_id: int, first: date, last: date, fmt: str) -> Path:
    folder = out_dir(settings) / f"client-{client_id}"
    if first == last:
        return folder / f"{last.isoformat()}.{fmt}"
    if first == last.replace(day=1):
        return folder / f"{last:%Y-%m}-to-date.{fmt}"
    return folder / f"{first.isoformat()}_{last.isoformat()}.{fmt}"


def client_name(details: dict) -> str:
    c = details.get("client") or {}
    person = f"{c.get('firstname') or ''} {c.get('lastname') or ''}".strip()
    company = (c.get("companyname") or "").strip()
    return f"{company} ({person})" if company and person else company or person


def client_names(settings: Settings, client_ids: list[int], workers: int = 4) -> dict[int, str]:
    """Names from WHMCS GetClientsDetails; a client that cannot be read is left out (not fatal)."""
    if settings.whmcs is None or not client_ids:
        return {}
    clients: list[WhmcsClient] = []

    def one(cid: int) -> tuple[int, str]:
        if not hasattr(_local, "client"):
            _local.client = WhmcsClient.from_settings(settings.whmcs)
            clients.append(_local.client)
        try:
            return cid, client_name(_local.client.get_clients_details(cid))
        except WhmcsError:
            return cid, ""

    _local = threading.local()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return {cid: name for cid, name in pool.map(one, client_ids) if name}
    finally:
        for c in clients:
            c.close()


def billed_clients(settings: Settings, day: date) -> list[int]:
    """Clients with a charge line dated `day`."""
    with session_scope(settings.ledger) as session:
        return sorted(session.scalars(select(Charge.client_id).where(Charge.billing_date == day).distinct()))


def _render(job: tuple[Statement, list[tuple[str, Path]]]) -> int:
    st, targets = job
    for fmt, path in targets:
        render.write(st, fmt, path)
    return len(targets)


def write_statements(settings: Settings, day: date, run_id: int | None = None, names: dict[int, str] | None = None,
                     clients: list[int] | None = None, workers: int | None = None,
                     log: Callable[[str], None] = lambda _m: None, only_month: bool = False) -> StatementsReport:
    """Statements for the billing date and the month to date of every client billed that day
    (`only_month`: the month to date alone, as the benchmark measures)."""
    if run_id is not None:
        materialize_run(settings, run_id)
    report = StatementsReport()
    ids = billed_clients(settings, day) if clients is None else clients
    report.clients = len(ids)
    if not ids:
        return report
    if names is None:
        names = client_names(settings, ids)
    report.unnamed = [cid for cid in ids if not names.get(cid)]
    formats = list(settings.statements.formats)
    workers = workers or settings.statements.workers
    # spawn, not fork: forking a process that runs polars' thread pool can deadlock the child
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) \
        if workers > 1 else None
    try:
        for first in sorted({day.replace(day=1)} if only_month else {day, day.replace(day=1)}):
            jobs = []
            for st in build_statements(settings, first, day, ids, names):
                report.calls += st.calls.height
                report.not_tied_out += [f"client {st.client_id} {ln.ref}" for ln in st.lines if not ln.tied_out]
                jobs.append((st, [(f, statement_paths(settings, st.client_id, first, day, f)) for f in formats]))
                if len(jobs) >= 200:
                    report.files += sum(pool.map(_render, jobs, chunksize=8) if pool else map(_render, jobs))
                    jobs = []
            report.files += sum(pool.map(_render, jobs, chunksize=8) if pool else map(_render, jobs))
            log(f"statements {first}..{day}: {len(ids)} client(s)")
    finally:
        if pool is not None:
            pool.shutdown()
    return report


@task(name="statements", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def statements_task(settings: Settings, day: date, run_id: int | None) -> StatementsReport:
    logger = get_run_logger()
    report = write_statements(settings, day, run_id, log=logger.info)
    logger.info("wrote %s statement file(s) for %s client(s) (%s calls) under %s", report.files, report.clients,
                report.calls, out_dir(settings))
    if report.unnamed:
        logger.warning("WHMCS could not name %s client(s) (shown as 'Client #id'): %s", len(report.unnamed),
                       report.unnamed[:20])
    if report.not_tied_out:
        logger.error("charge lines whose calls do not add up to the ledger amount: %s", report.not_tied_out[:20])
    return report
