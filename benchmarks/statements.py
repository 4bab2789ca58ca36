"""Statements for a month: N clients, M calls (target: 10,000 clients, 10 M calls in <= 5 min).

What runs is the nightly statement writer's own code for the month-to-date statement of every
client (`tasks.statements.write_statements` without WHMCS names: build from the statement store
and the ledger's charge lines a thousand clients at a time, tie-out check, CSV written by the main
process, PDFs rendered by `--workers` spawned processes). The store (one parquet per billing date,
as `materialize_run` writes it nightly) and the charge lines in a SQLite ledger are generated
directly, so the setup does not dominate the run. The temporary directory is removed at the end
(`--keep` keeps it).

Baseline measured in the same run on the same files: DuckDB reading every call, summing the
costs per charge line and writing one CSV per client (`COPY ... PARTITION_BY client_id`): the
least work any statement writer must do. Ratio = ours / baseline.

    .venv/bin/python benchmarks/statements.py [--clients 10000] [--calls 10000000] [--formats csv,pdf] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

# The heavy imports (polars, DuckDB, Prefect through tasks.statements) are inside the functions: the
# PDF workers are spawned processes, which import this __main__ module again; at the top they would
# cost each worker seconds of start-up that the nightly (whose __main__ is the CLI) does not pay.

FIRST = date(2026, 11, 1)


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ChildPeak:
    """The largest peak RSS (VmHWM) among this process's children, sampled while they live
    (getrusage's RUSAGE_CHILDREN would report the parent's size at fork for a spawned child)."""

    def __init__(self) -> None:
        import threading

        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(0.5):
            for child in me.children(recursive=True):
                try:
                    with open(f"/proc/{child.pid}/status") as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                except OSError:
                    pass

    def __enter__(self) -> ChildPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def make_month(settings, clients: int, calls: int, days: int, seed: int = 1) -> int:
    import numpy as np
    import polars as pl

    from autobill.ledger.bulk import insert_rows
    from autobill.ledger.db import session_scope
    from autobill.ledger.models import Charge
    from autobill.money import round_minor
    from autobill.statement.store import CALL_SCHEMA, calls_root
    from autobill.timeutil import utc_now

    rng = np.random.default_rng(seed)
    per_day = calls // days
    charge_rows, next_id, now = [], 1, utc_now()
    for d in range(days):
        day = FIRST + timedelta(days=d)
        cid = np.sort(rng.integers(1, clients + 1, per_day))
        secs = rng.integers(1, 600, per_day)
        cls = np.where(rng.random(per_day) < 0.8, "outbound", "international")
        rate = np.where(cls == "outbound", 10_000, 170_000)  # micro-units per minute
        cost_micro = (rate * secs + 59) // 60
        start = (np.datetime64(f"{day}T05:00:00") + rng.integers(0, 86_400, per_day).astype("timedelta64[s]")).astype("datetime64[us]")
        frame = pl.DataFrame({
            "cdr_key": [f"s{d}:{i}" for i in range(per_day)], "client_id": cid, "service_id": cid + 1000,
            "billing_date": [day] * per_day, "outcome": "billed", "server": "file-1", "direction": "outbound",
            "src": (cid + 6_042_000_000).astype(str), "dst": rng.integers(2_000_000_000, 9_999_999_999, per_day)
            .astype(str), "rate_number": "1" + rng.integers(2_000_000_000, 9_999_999_999, per_day).astype(str),
            "start_utc": start, "billsec": secs, "charge_class": cls, "matched_prefix": "1",
            "description": np.where(cls == "outbound", "USA/Canada", "Bahamas"), "tariff_name": "retail",
            "tariff_version": "6fd4db89a1b2", "billable_seconds": secs, "included_seconds": 0,
            "charged_seconds": secs, "rate": np.where(cls == "outbound", "0.010000", "0.170000"),
            "connect_fee": "0.000000", "tariff_currency": "USD",
            "cost": [f"{c // 1_000_000}.{c % 1_000_000:06d}" for c in cost_micro], "currency": "USD",
        }).with_columns(pl.col("start_utc").dt.replace_time_zone("UTC"))
        lines = frame.group_by("client_id", "charge_class").agg(pl.col("cost").cast(pl.Decimal(38, 6)).sum(),
                                                               pl.len(), pl.col("charged_seconds").sum())
        lines = lines.sort("client_id", "charge_class").with_columns(
            pl.int_range(next_id, next_id + lines.height).alias("charge_id"))
        next_id += lines.height
        frame = frame.join(lines.select("client_id", "charge_class", "charge_id"), on=["client_id", "charge_class"])
        for c, cl, exact, n, s, chid in lines.iter_rows():
            key = f"ab-{c}-{c + 1000}-{day:%Y%m%d}-{cl}-USD-6fd4db89a1b2-{chid:016x}"
            amount = round_minor(exact, "USD")
            charge_rows.append((chid, key, c, c + 1000, day, cl, "USD", amount, exact, s, n, "6fd4db89a1b2",
                                f"VoIP {cl} calls [{key}]", "posted", 1, now))
        path = calls_root(settings) / f"day={day}" / f"run-{d + 1}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.select([pl.col(c).cast(t) for c, t in CALL_SCHEMA.items()]).sort("client_id", "start_utc") \
            .write_parquet(path)
    with session_scope(settings.ledger) as session:
        insert_rows(session, Charge.__table__, ("id", "idempotency_key", "client_id", "service_id", "billing_date",
                                                "charge_class", "currency", "amount", "exact_amount",
                                                "billable_seconds", "cdr_count", "tariff_version", "description",
                                                "state", "attempts", "created_at"), iter(charge_rows))
    return len(charge_rows)


def baseline(settings, out: Path) -> float:
    import duckdb

    from autobill.statement.store import calls_root

    t = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET threads = 2")
    glob = str(calls_root(settings) / "day=*" / "*.parquet")
    con.execute(f"""COPY (SELECT c.*, sum(cast(cost AS DECIMAL(38, 6))) OVER (PARTITION BY charge_id) AS line_exact
                          FROM read_parquet('{glob}') c)
                    TO '{out}' (FORMAT csv, PARTITION_BY (client_id), OVERWRITE_OR_IGNORE)""")  # noqa: S608 - paths made here
    con.close()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--formats", default="csv,pdf")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()
    from autobill.config import settings_from_dict

    tmp = Path(tempfile.mkdtemp(prefix="autobill-bench-statements-"))
    settings = settings_from_dict({"timezone": "America/Toronto", "data_dir": str(tmp / "data"),
                                   "ledger_url": f"sqlite:///{tmp / 'ledger.db'}",
                                   "statements": {"formats": args.formats.split(","), "workers": args.workers}})
    try:
        run(args, tmp, settings)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path, settings) -> None:
    from autobill.ledger.db import upgrade
    from tasks.statements import write_statements

    upgrade(settings.ledger)
    t = time.perf_counter()
    lines = make_month(settings, args.clients, args.calls, args.days)
    print(f"setup: {args.calls:,} calls, {lines:,} charge lines for {args.clients:,} clients in "
          f"{time.perf_counter() - t:.1f} s")
    base = baseline(settings, tmp / "baseline")
    print(f"baseline (DuckDB read + per-line sums + one CSV per client): {base:.1f} s")
    last = FIRST + timedelta(days=args.days - 1)
    ids = list(range(1, args.clients + 1))
    print("load average before the measured run: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    try:  # the main process's peak RSS from here on, not the setup's (Linux: 5 resets VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    t = time.perf_counter()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with ChildPeak() as children:
        report = write_statements(settings, last, clients=ids, names={}, workers=args.workers, only_month=True)
    wall = time.perf_counter() - t
    cpu1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    main_cpu, pool_cpu = ((b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime) for a, b in zip(cpu0, cpu1, strict=True))
    print(f"statements {FIRST}..{last} ({args.formats}): {wall:.1f} s wall for {report.clients:,} clients, "
          f"{report.calls:,} calls ({report.calls / wall:,.0f} calls/s), {report.files:,} files, "
          f"{len(report.not_tied_out)} line(s) not tied out, {args.workers} PDF worker(s)")
    print(f"CPU: main process {main_cpu:.1f} s (read, shape, CSV), PDF workers {pool_cpu:.1f} s")
    print(f"ratio to baseline: {wall / base:.1f}x; peak RSS main {peak_rss_mb():.0f} MB, "
          f"largest worker {children.peak_kb / 1024:.0f} MB (sampled); target 300 s at 10 M calls")


if __name__ == "__main__":
    main()
