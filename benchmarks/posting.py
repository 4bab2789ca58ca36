"""Posting N charges to the WHMCS sandbox: one charge claimed per worker vs the old claimed batches.

Baseline (measured in the same run, same machine, same N, same workers): the previous posting
loop, which claimed `--batch` charges in one commit, sent them (over the same worker threads)
and settled them in one commit; a crash then left the whole batch `posting` (uncertain). Ours
(`tasks.post.post_pending`) claims one charge per worker and settles it with the claim of the
next in one commit, so a crash leaves at most `workers` uncertain charges. Each variant gets a
fresh ledger and a fresh sandbox, served by `autobill sandbox serve` in its own process (WHMCS
is another machine: its work must not share this process's GIL). Prints both times, throughput, the CPU
a charge took in this process and in the sandbox, the ratio (target <= 1.2x) and peak RSS; every charge is
checked posted exactly once.

    .venv/bin/python benchmarks/posting.py [--charges 10000] [--workers 4] [--batch 20] [--ledger URL]

`--ledger` (e.g. a PostgreSQL URL) is used for both variants, each in its own fresh schema /
file; by default a SQLite file in a temporary directory.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from decimal import Decimal
from pathlib import Path

import psutil

from autobill.config import settings_from_dict
from autobill.ledger.bulk import insert_rows
from autobill.ledger.charges import PostingReport, claim, pending_charge_ids, settle
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import Charge
from connectors.whmcs import WhmcsClient
from tasks.post import _send, post_pending

CLIENTS = 200


def seed(url: str, n: int) -> None:
    cols = ("idempotency_key", "client_id", "service_id", "billing_date", "charge_class", "currency", "amount",
            "exact_amount", "billable_seconds", "cdr_count", "tariff_version", "description", "state", "attempts",
            "created_at")
    from autobill.timeutil import utc_now

    now = utc_now()
    with session_scope(url) as s:
        insert_rows(s, Charge.__table__, cols, (
            (f"ab-bench-{i}", 1 + i % CLIENTS, 1 + i % CLIENTS, date(2026, 11, 19), "outbound", "USD",
             Decimal("1.25"), Decimal("1.25"), 60, 1, "v", f"VoIP outbound calls [ab-bench-{i}]", "pending", 0, now)
            for i in range(n)))


def batched_baseline(settings, factory: Callable[[], WhmcsClient], workers: int, batch: int) -> PostingReport:
    """The previous loop (before #13): claim `batch` in one commit, send them on the pool, settle in one."""
    report = PostingReport()
    ids = pending_charge_ids(settings)
    local = threading.local()

    def send(charge):
        if not hasattr(local, "client"):
            local.client = factory()
        return _send(local.client, charge)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(ids), batch):
            claimed = claim(settings, ids[start : start + batch])
            settle(settings, list(pool.map(send, claimed)), report)
    return report


def run(variant: str, ledger: str | None, n: int, workers: int, batch: int, tmp: Path) -> float:
    url = ledger or f"sqlite:///{tmp / f'{variant}.db'}"
    schema = None
    if ledger and ledger.startswith("postgresql"):
        from sqlalchemy import create_engine, text

        schema = f"bench_post_{variant}_{int(time.time())}"
        with create_engine(ledger).begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = f"{ledger}?options=-csearch_path%3D{schema}"
    upgrade(url)
    seed(url, n)
    settings = settings_from_dict({"ledger_url": url})
    db = tmp / f"{variant}-whmcs.db"
    # The sandbox runs in its own process, as WHMCS runs on its own machine (no shared GIL).
    proc = subprocess.Popen([sys.executable, "-m", "cli", "sandbox", "serve", "--port", "0", "--db", str(db),
                             "--seed-clients", str(CLIENTS)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        api_url = ""
        while not api_url:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the sandbox did not start")
            if line.startswith("WHMCS sandbox at "):
                api_url = line.split(" at ", 1)[1].strip()

        def factory() -> WhmcsClient:
            return WhmcsClient(api_url, "demo", "demo", timeout=30, retries=2)

        sb0, cpu0 = _cpu_of(proc.pid), time.process_time()
        t0 = time.perf_counter()
        if variant == "baseline":
            report = batched_baseline(settings, factory, workers, batch)
        else:
            report = post_pending(settings, factory, workers=workers)
        elapsed = time.perf_counter() - t0
        cpu, sandbox_cpu = time.process_time() - cpu0, _cpu_of(proc.pid) - sb0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        items = [{"description": d} for (d,) in conn.execute("SELECT description FROM billable_items")]
    keys = {i["description"].rsplit("[", 1)[1].rstrip("]") for i in items}
    assert report.posted == n == len(items) == len(keys), (report.posted, len(items), len(keys))
    with session_scope(url) as s:
        assert {c for c in s.scalars(Charge.__table__.select().with_only_columns(Charge.state))} == {"posted"}
    if schema:
        from sqlalchemy import create_engine, text

        with create_engine(ledger).begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    print(f"{variant:>9}: {n} charges in {elapsed:.2f} s ({n / elapsed:.0f} charges/s); CPU a charge: "
          f"{1000 * cpu / n:.2f} ms here, {1000 * sandbox_cpu / n:.2f} ms in the sandbox")
    return elapsed


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--charges", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=20, help="claimed batch size of the baseline")
    parser.add_argument("--ledger", default=None)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-posting-"))
    try:
        base = run("baseline", args.ledger, args.charges, args.workers, args.batch, tmp)
        ours = run("per-worker", args.ledger, args.charges, args.workers, args.batch, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"ratio: {ours / base:.2f}x the baseline time (target <= 1.2x); a crash leaves at most "
          f"{args.workers} uncertain charges instead of up to {args.batch}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
