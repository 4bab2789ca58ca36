"""One autosuspend cycle for N clients against the WHMCS sandbox (target: 10 000 clients <= 20 s).

With `--servers N` (#18): the same clients as configured services spread over N Vodia PBX
sandboxes (real loopback HTTP, one domain each, services mapped by extension), each holding
`--calls` calls per service in the last hour; the cycle then also extracts them intraday (on
its own watermark), rates them with the nightly engine and decides on the available balance.
Target: 10 000 services and 50 servers <= 60 s per cycle. Baseline in the same run: the same
cycle with intraday off (WHMCS reads only), so the ratio is what intraday usage costs.

What runs is the real cycle (`flows.autosuspend.run_cycle`): paginated GetClientsProducts, GetClients
and GetInvoices(Unpaid), one GetClientsDetails per VoIP client on a thread pool, decisions, and
every change applied (ModuleSuspend, emails, ledger writes in a SQLite ledger). The sandbox's
`bulk_seed` gives every client "Has VoIP Service" = on, credit 0.00-99.99 and every 5th an unpaid
invoice, so the first cycle suspends and alerts a few hundred clients; the second cycle is the
steady state (nothing changes). Baseline measured in the same run: the same reads with one worker
(sequential), as a dry run, so the ratio shows what batching + the pool buy.

    .venv/bin/python benchmarks/autosuspend.py [--clients 10000] [--workers 8] [--no-baseline] [--ledger URL]
    .venv/bin/python benchmarks/autosuspend.py --clients 10000 --servers 50 [--calls 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from autobill.config import settings_from_dict
from autobill.ledger.db import upgrade
from flows.autosuspend import run_cycle
from sandboxes.vodia import VodiaSandbox
from sandboxes.whmcs import WhmcsSandbox

BUDGET_SECONDS = 20.0
INTRADAY_BUDGET_SECONDS = 60.0  # 10 000 services, 50 servers


def settings_for(sb: WhmcsSandbox, ledger: str):
    os.environ["AUTOBILL_BENCH_WHMCS_ID"] = "demo"
    os.environ["AUTOBILL_BENCH_WHMCS_SECRET"] = "demo"
    return settings_from_dict(
        {
            "ledger_url": ledger,
            "whmcs": {
                "url": sb.url,
                "identifier": {"env": "AUTOBILL_BENCH_WHMCS_ID"},
                "secret": {"env": "AUTOBILL_BENCH_WHMCS_SECRET"},
                "page_size": 1000,
                "custom_field_ids": dict(sb.custom_field_ids),
            },
            "autosuspend": {"voip_product_ids": [1]},
        }
    )


def timed(sb: WhmcsSandbox, label: str, **kw):
    before = sb.request_count()
    t0 = time.perf_counter()
    report = run_cycle(**kw)
    elapsed = time.perf_counter() - t0
    requests = sb.request_count() - before
    applied = sum(1 for o in report.outcomes if o.status == "done")
    print(
        f"{label}: {elapsed:6.2f} s  {requests} requests ({requests / elapsed:,.0f} req/s)  "
        f"services {report.services}  decisions {report.counts}  applied {applied}  failed {report.failed}"
    )
    return elapsed, report


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def intraday_world(sb: WhmcsSandbox, tmp: Path, ledger: str, servers: int, calls_per_service: int):
    """N Vodia sandboxes with the calls of the last hour, and settings mapping every WHMCS service."""
    products = sb.store.rows("SELECT id, clientid FROM products ORDER BY id")
    now = datetime.now(UTC)
    (tmp / "tariff.csv").write_text("prefix,rate,first_increment,next_increment\n1,0.02,6,6\n44,0.05,6,6\n")
    per = -(-len(products) // servers)
    pbxs, server_cfg, services = [], [], []
    for n in range(servers):
        chunk = products[n * per : (n + 1) * per]
        domain = f"d{n}.example"
        rows = []
        for k, p in enumerate(chunk):
            ext = str(1000 + k)
            services.append({"client_id": p["clientid"], "service_id": p["id"], "server": f"v{n}", "tenant": domain,
                             "extensions": [ext], "plan": "p", "suspend_mode": "module"})
            for c in range(calls_per_service):
                start = now - timedelta(minutes=55 - (c * 7 + k) % 50)
                rows.append({"cdr_key": f"v{n}:{p['id']}-{c}", "tenant": domain, "direction": "outbound", "src": ext,
                             "dst": "16135550123" if c % 3 else "442079460000", "extension": ext,
                             "start_utc": start, "answer_utc": start + timedelta(seconds=3),
                             "end_utc": start + timedelta(seconds=3 + 30 + c), "billsec": 30 + c})
        frame = pl.DataFrame(rows, schema_overrides={"start_utc": pl.Datetime("us", "UTC"), "answer_utc": pl.Datetime("us", "UTC"),
                                                     "end_utc": pl.Datetime("us", "UTC")}) if rows else None
        pbx = VodiaSandbox(frame, password="bench-pw", domains=[domain]).start() if frame is not None else None
        if pbx is None:
            continue
        pbxs.append(pbx)
        server_cfg.append({"id": f"v{n}", "kind": "vodia", "url": pbx.url, "username": "admin",
                           "password": {"env": "AUTOBILL_BENCH_VODIA_PW"}, "domains": [domain], "verify_tls": False,
                           "page_size": 1000, "overlap_minutes": 10, "timeout_seconds": 30})
    os.environ["AUTOBILL_BENCH_VODIA_PW"] = "bench-pw"
    base = settings_for(sb, ledger)
    raw = base.model_dump(mode="json", exclude={"base_dir"})
    raw.update({"servers": server_cfg, "tariffs": [{"name": "t", "path": str(tmp / "tariff.csv")}],
                "plans": [{"name": "p", "tariff": "t"}], "services": services, "data_dir": str(tmp / "data")})
    raw["whmcs"]["identifier"] = {"env": "AUTOBILL_BENCH_WHMCS_ID"}
    raw["whmcs"]["secret"] = {"env": "AUTOBILL_BENCH_WHMCS_SECRET"}
    return pbxs, settings_from_dict(raw)


def main_intraday(args) -> None:
    with tempfile.TemporaryDirectory(prefix="autosuspend-bench-") as tmp, WhmcsSandbox() as sb:
        ledger = args.ledger or f"sqlite:///{Path(tmp) / 'ledger.db'}"
        upgrade(ledger)
        sb.bulk_seed(args.clients)
        t0 = time.perf_counter()
        pbxs, settings = intraday_world(sb, Path(tmp), ledger, args.servers, args.calls)
        print(f"seeded {args.clients} clients, {args.servers} Vodia sandboxes, {args.calls} calls/service "
              f"in {time.perf_counter() - t0:.2f} s; workers={args.workers}")
        try:
            off = settings.model_copy(update={"intraday": settings.intraday.model_copy(update={"enabled": False})})
            base = None
            if not args.no_baseline:
                base, _ = timed(sb, "baseline  (dry run, intraday off)  ", settings=off, dry_run=True, workers=args.workers)
            first, r1 = timed(sb, "cycle 1   (intraday + applies)     ", settings=settings, workers=args.workers)
            print(f"          intraday: {r1.usage}")
            second, r2 = timed(sb, "cycle 2   (intraday, steady state) ", settings=settings, workers=args.workers)
            print(f"          intraday: {r2.usage}")
            rows = r1.usage.get("rows_read", 0)
            print(f"throughput: {rows / max(r1.usage.get('seconds') or 1e-9, 1e-9):,.0f} CDRs/s extracted+rated+stored "
                  f"in the intraday step; peak RSS {peak_rss_mb():.0f} MB")
            if base is not None:
                print(f"ratio: cycle 1 with intraday takes {first / base:.2f}x the baseline, steady state {second / base:.2f}x")
            worst = max(first, second)
            verdict = "within" if worst <= INTRADAY_BUDGET_SECONDS else "OVER"
            print(f"budget: {INTRADAY_BUDGET_SECONDS:.0f} s for {args.clients} services / {args.servers} servers -> "
                  f"worst cycle {worst:.2f} s is {verdict} budget")
        finally:
            for p in pbxs:
                p.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--ledger", help="ledger URL (default: a temporary SQLite file)")
    parser.add_argument("--servers", type=int, default=0, help="Vodia sandboxes read intraday (#18); 0: off")
    parser.add_argument("--calls", type=int, default=3, help="calls per service in the last hour (with --servers)")
    args = parser.parse_args()
    if args.servers:
        main_intraday(args)
        return
    with tempfile.TemporaryDirectory(prefix="autosuspend-bench-") as tmp, WhmcsSandbox() as sb:
        ledger = args.ledger or f"sqlite:///{Path(tmp) / 'ledger.db'}"
        upgrade(ledger)
        t0 = time.perf_counter()
        sb.bulk_seed(args.clients)
        print(f"seeded {args.clients} clients in {time.perf_counter() - t0:.2f} s; workers={args.workers}")
        settings = settings_for(sb, ledger)
        base = None
        if not args.no_baseline:
            base, _ = timed(sb, "baseline  (dry run, 1 worker)", settings=settings, dry_run=True, workers=1)
        dry, _ = timed(sb, f"dry run   ({args.workers} workers) ", settings=settings, dry_run=True, workers=args.workers)
        first, _ = timed(sb, "cycle 1   (applies changes)   ", settings=settings, workers=args.workers)
        second, _ = timed(sb, "cycle 2   (steady state)      ", settings=settings, workers=args.workers)
        if base is not None:
            print(f"ratio: dry run with the pool takes {dry / base:.2f}x the sequential baseline")
        worst = max(first, second)
        verdict = "within" if worst <= BUDGET_SECONDS * args.clients / 10_000 else "OVER"
        print(f"budget: {BUDGET_SECONDS:.0f} s per 10 000 clients -> worst cycle {worst:.2f} s is {verdict} budget")


if __name__ == "__main__":
    main()
