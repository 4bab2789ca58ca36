"""Validation of one nightly batch of N generated CDRs (target: under 20 % of the nightly run).

What runs is the real step, `tasks.validate.validate_batch`, on a batch stored in the lake with
its ledger row: read the batch, look up its keys in the ledger (SQLite, with earlier nights
already billed), row rules, the GX suite on a pandas copy, the volume check, writing the good
rows and the quarantine. The batch has realistic faults: ~1 % broken rows (negative billsec,
unknown direction, no key, a start in the future) and ~2 % re-reads of calls billed last night.

Baseline measured in the same run, on the same rows (the "nightly core" without the network
parts): the lake write of the batch (extraction I/O), rating (`tasks.rate.rate_run`) and the
billing transaction (`tasks.aggregate.record_billing`, 1 M billed CDRs made final). Validation's
share of that core is an UPPER bound of its share of the real nightly run, which also waits
for PBXs and WHMCS.

    .venv/bin/python benchmarks/validation.py [--rows 1000000] [--no-baseline]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autobill import lake  # noqa: E402
from autobill.cdr import conform  # noqa: E402
from autobill.config import settings_from_dict  # noqa: E402
from autobill.ledger.billed import lock_billed_state, record_final, without_charge  # noqa: E402
from autobill.ledger.db import session_scope, upgrade  # noqa: E402
from autobill.ledger.models import ExtractionBatch  # noqa: E402
from sandboxes.generate import generate_calls, generate_config, make_world, tariff_frame  # noqa: E402

TARGET_SHARE = 0.20
DAY = date(2026, 11, 18)
NOW = datetime(2026, 11, 19, 6, 0, tzinfo=UTC)  # 01:00 Toronto, the night after DAY


class Clock:
    """Wall and CPU seconds (all threads) of a block: on a shared, busy machine the CPU figure
    is the steadier one, so both are printed."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f} s (cpu {self.cpu:.2f} s)"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(tmp: Path, rows: int):
    clients = max(1, rows // 200)
    world = make_world(clients, kinds=("file",), seed=7)
    calls = generate_calls(world, DAY, DAY, calls_per_client_day=rows / clients)
    calls = calls.head(rows)
    n = calls.height
    idx = pl.int_range(0, n, eager=True)
    cdrs = conform(calls.with_columns(
        pl.format('{{"call_id":"{}","kind":"{}"}}', pl.col("cdr_key"), pl.col("category")).alias("source_row")))
    # ~1 % broken rows, four kinds of faults
    cdrs = cdrs.with_columns(
        pl.when(idx % 400 == 1).then(-1).otherwise(pl.col("billsec")).alias("billsec"),
        pl.when(idx % 400 == 2).then(pl.lit("sideways")).otherwise(pl.col("direction")).alias("direction"),
        pl.when(idx % 400 == 3).then(None).otherwise(pl.col("cdr_key")).alias("cdr_key"),
    ).with_columns(
        [pl.when(idx % 400 == 4).then(pl.col(c) + timedelta(days=3)).otherwise(pl.col(c)).alias(c)
         for c in ("start_utc", "answer_utc", "end_utc")]
    )
    raw = generate_config(world, tariff_path=str(tmp / "retail.csv"))
    tariff_frame().write_csv(tmp / "retail.csv")
    raw.update({"data_dir": str(tmp / "data"), "ledger_url": f"sqlite:///{tmp / 'ledger.db'}"})
    raw["servers"][0]["path"] = str(tmp / "drop")
    return cdrs, settings_from_dict(raw, base_dir=tmp)


def seed_ledger(settings, cdrs: pl.DataFrame) -> int:
    """Earlier nights: 200 000 billed keys of older calls plus 2 % of tonight's keys (re-reads),
    made final the way the nightly does (lake manifests registered in the ledger)."""
    upgrade(settings.ledger)
    server = cdrs["server"][0]
    overlap = cdrs.filter(pl.int_range(0, pl.len()) % 50 == 7)["cdr_key"].drop_nulls().to_list()
    keys = [f"{server}:older-{i}" for i in range(200_000)] + overlap
    rows = without_charge([(k, server, DAY - timedelta(days=1), "billed", "0.010000") for k in keys], NOW)
    with session_scope(settings.ledger) as s:
        lock_billed_state(s)
        record_final(s, settings.data_path, rows, None, [], NOW)
    return len(overlap)


def store_batch(settings, cdrs: pl.DataFrame) -> int:
    server = cdrs["server"][0]
    with session_scope(settings.ledger) as s:
        batch = ExtractionBatch(server=server, window_start=NOW - timedelta(hours=26), window_end=NOW, rows=0,
                                status="extracting", created_at=NOW)
        s.add(batch)
        s.flush()
        batch_id = batch.id
    paths = [str(p) for p in lake.write_batch(settings.data_path, server, batch_id, cdrs)]
    with session_scope(settings.ledger) as s:
        batch = s.get(ExtractionBatch, batch_id)
        batch.rows, batch.path, batch.status, batch.proposed_watermark = cdrs.height, json.dumps(paths), "extracted", NOW
    return batch_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-baseline", action="store_true", help="skip rating + billing (the baseline)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="autobill-bench-validation-") as tmpdir:
        tmp = Path(tmpdir)
        t0 = time.perf_counter()
        cdrs, settings = build(tmp, args.rows)
        overlap = seed_ledger(settings, cdrs)
        print(f"setup: {cdrs.height} CDRs generated, {overlap} already billed, in {time.perf_counter() - t0:.1f} s"
              f" (peak RSS {peak_rss_mb():.0f} MB)")

        with Clock() as lake_write:
            batch_id = store_batch(settings, cdrs)
        del cdrs

        import prefect  # noqa: F401 - the nightly flow imports it anyway: not a validation cost

        with Clock() as imports:
            import great_expectations  # noqa: F401 - validation's one-off import, once per worker process
        from tasks.validate import validate_batch

        with Clock() as validate:
            out = validate_batch(settings, batch_id, now=NOW)
        rss_validate = peak_rss_mb()
        s = out.seconds
        print(f"validate_batch: {out.rows} rows -> {out.good} good, {out.quarantined} quarantined "
              f"{out.quarantined_by_rule}, {out.duplicates} duplicates; accepted={out.accepted}")
        print(f"  read {s['read']:.2f} s | ledger key lookup {s['known_keys']:.2f} s | row rules {s['rules']:.2f} s"
              f" | GX suite + volume {s['suite']:.2f} s | write good rows + quarantine {s['write']:.2f} s")
        print(f"  total {validate} (GX import, once per process: {imports});"
              f" peak RSS {rss_validate:.0f} MB")

        if args.no_baseline:
            return 0
        try:
            import autobill.rating.billing  # noqa: F401 - rate_run imports it lazily; fail early here
            from tasks.aggregate import record_billing
            from tasks.rate import rate_run
        except ImportError as exc:
            print(f"baseline unavailable ({exc}); validation alone: {validate}")
            return 0
        with Clock() as rate:
            rated_path = rate_run(settings, DAY, [str(out.validated_path)], None, run_id=None)
        with Clock() as bill:
            record = record_billing(settings, pl.read_parquet(rated_path), batch_ids=[batch_id])
        print(f"baseline: lake write {lake_write} | rate {rate} | billing transaction {bill} "
              f"({sum(record.outcomes.values())} CDRs, {len(record.lines)} charge lines)")
        steps = (lake_write, validate, rate, bill)
        for what in ("wall", "cpu"):
            core = sum(getattr(c, what) for c in steps)
            mine, once = getattr(validate, what), getattr(imports, what)
            print(f"validation share of the nightly core ({what}): {mine:.2f} / {core:.2f} s = {mine / core:.1%} "
                  f"(target < {TARGET_SHARE:.0%}; counting the GX import: {(mine + once) / (core + once):.1%})")
        print(f"peak RSS {peak_rss_mb():.0f} MB")
        return 0 if validate.wall / sum(c.wall for c in steps) < TARGET_SHARE else 1


if __name__ == "__main__":
    raise SystemExit(main())
