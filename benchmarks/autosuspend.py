"""One autosuspend cycle for N clients against the WHMCS sandbox (target: 10 000 clients <= 20 s).

What runs is the real cycle (`flows.autosuspend.run_cycle`): paginated GetClientsProducts, GetClients
and GetInvoices(Unpaid), one GetClientsDetails per VoIP client on a thread pool, decisions, and
every change applied (ModuleSuspend, emails, ledger writes in a SQLite ledger). The sandbox's
`bulk_seed` gives every client "Has VoIP Service" = on, credit 0.00-99.99 and every 5th an unpaid
invoice, so the first cycle suspends and alerts a few hundred clients; the second cycle is the
steady state (nothing changes). Baseline measured in the same run: the same reads with one worker
(sequential), as a dry run, so the ratio shows what batching + the pool buy.

    .venv/bin/python benchmarks/autosuspend.py [--clients 10000] [--workers 8] [--no-baseline] [--ledger URL]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from autobill.config import settings_from_dict
from autobill.ledger.db import upgrade
from flows.autosuspend import run_cycle
from sandboxes.whmcs import WhmcsSandbox

BUDGET_SECONDS = 20.0


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--ledger", help="ledger URL (default: a temporary SQLite file)")
    args = parser.parse_args()
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
