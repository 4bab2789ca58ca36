"""How long the services sync takes for N services read from the WHMCS sandbox (target: 10 000 in 30 s).

Baseline, measured in the same run: the bare paginated GetClientsProducts sweep through
WhmcsClient (HTTP + JSON only), i.e. what reading WHMCS costs at least. The ratio shows what
the sync adds on top (normalising, per-kind parsing, conflict detection, the history diff and
the ledger transaction). Three syncs are timed: the first (every claim opens), an unchanged
one (the nightly/autosuspend case), and one after 1 % of the DIDs moved to another service.
Prints throughput and the process's peak RSS.

    .venv/bin/python benchmarks/services_sync.py [--services 10000] [--page-size 250] [--ledger URL]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from autobill.config import settings_from_dict
from autobill.ledger.db import upgrade
from connectors.whmcs import WhmcsClient
from sandboxes.generate import generate_config, make_world, seed_whmcs_services, service_sync_section
from sandboxes.whmcs import WhmcsSandbox
from tasks.services import sync_services

TARGET_SECONDS = 30.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=250)
    parser.add_argument("--ledger", default=None, help="ledger URL (default: a SQLite file in a temp dir)")
    args = parser.parse_args()
    os.environ.setdefault("BENCH_WHMCS_ID", "demo")
    os.environ.setdefault("BENCH_WHMCS_SECRET", "demo")
    tmp = Path(tempfile.mkdtemp(prefix="services-bench-"))
    world = make_world(clients=args.services, servers_per_kind=3, kinds=("file", "vodia", "fusionpbx"), seed=1)
    with WhmcsSandbox() as sb:
        t0 = time.perf_counter()
        sb.bulk_seed(args.services, products_per_client=0, unpaid_every=0)
        seed_whmcs_services(sb, world)
        print(f"seed {args.services} clients and services: {time.perf_counter() - t0:.2f} s")
        config = generate_config(world)
        config.pop("services")
        config.update(ledger_url=args.ledger or f"sqlite:///{tmp / 'ledger.db'}", service_sync=service_sync_section(),
                      whmcs={"url": sb.url, "identifier": {"env": "BENCH_WHMCS_ID"},
                             "secret": {"env": "BENCH_WHMCS_SECRET"}, "page_size": args.page_size})
        settings = settings_from_dict(config)
        upgrade(settings.ledger)

        with WhmcsClient.from_settings(settings.whmcs) as c:
            t0 = time.perf_counter()
            read = sum(1 for _ in c.iter_clients_products())
            base = time.perf_counter() - t0
        print(f"baseline: bare paginated GetClientsProducts, {read} services in {base:.2f} s "
              f"({read / base:.0f} services/s)")

        timings = []
        for label in ("first sync", "unchanged sync", "1% DIDs moved"):
            if label == "1% DIDs moved":
                rows = world.clients.filter(world.clients["kind"] == "vodia").head(max(1, args.services // 100))
                for r in rows.iter_rows(named=True):
                    sb.set_service(r["service_id"], domain=f"{r['tenant']} | 1555{r['client_id']:07d}")
            t0 = time.perf_counter()
            result = sync_services(settings, origin="benchmark")
            elapsed = time.perf_counter() - t0
            timings.append(elapsed)
            assert result.ok, result.error
            print(f"{label}: {result.services} services, {result.claims} claims, {result.changes} changes, "
                  f"{len(result.conflicts)} conflicts in {elapsed:.2f} s ({result.services / elapsed:.0f} services/s; "
                  f"ratio {elapsed / base:.2f}x the baseline)")
        worst = max(timings)
        print(f"target: {args.services} services in {TARGET_SECONDS:.0f} s -> slowest sync {worst:.2f} s "
              f"({worst / TARGET_SECONDS:.0%} of target); peak RSS {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
