"""Growth of the billed state: does night N cost more than night 1 as history piles up? (issue #15, target 3)

N nights of M rated CDRs each go through the real record path, `tasks.aggregate.record_billing`
(the one ledger transaction: "already billed?" check, charge lines, billed state, unrated rows),
on one ledger that keeps everything earlier nights wrote. Each night's frame looks like the rate
step's output: FusionPBX-like keys (`<server>:<uuid4>`, 20 servers), ~M/100 clients with one
service each, 85 % billed / 5 % included / 10 % zero-cost; from night 2 on, 2 % of the rows are
calls re-sent from one of the last `--resend-window` nights (default 3: extraction windows overlap
by a night or two; already billed, must be skipped) and 1 % are new late calls of the previous two
billing dates. `--resend-window 0` re-sends from ANY earlier night: the billed-state check then
reads every night's partition, which is what a re-send from a month ago costs. After the last night, one earlier night is recorded again
whole (a rerun: nothing new may be billed). Frames are generated before the clock starts.

Printed: each night's seconds (every `--every` nights), night 1 vs night N as a ratio (the target:
at most 1.2 after 30 nights of 1 M), the means of the first and last three nights (steadier on a
shared machine), rows/s, the rerun's seconds, peak RSS and the ledger's size on disk. Also, on the
printed nights: the allowance read the next night's rate step does before rating (included seconds
used this month, per service), against reading every billed row of the month (the same-run
baseline), and that the two agree.

    .venv/bin/python benchmarks/billed_growth.py [--nights 31] [--rows 1000000] [--db sqlite|postgresql]

PostgreSQL: `--db postgresql` uses a fresh schema in `--pg-url` (default the test database),
dropped at the end. The checks that make the figures mean something (the rerun bills nothing,
every night bills exactly its new rows) fail the run with exit code 1.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import autobill  # noqa: E402, F401 - before polars, as in the CLI and flows: its allocator setting applies

# isort: split
import polars as pl  # noqa: E402

from autobill.config import settings_from_dict  # noqa: E402
from autobill.ledger.billed import billed_frame  # noqa: E402
from autobill.ledger.corrections import included_by_period  # noqa: E402
from autobill.ledger.db import session_scope, upgrade  # noqa: E402
from autobill.timeutil import period_bounds  # noqa: E402
from tasks.aggregate import record_billing  # noqa: E402

FIRST = date(2026, 10, 1)
SERVERS = 20
RESENT, LATE = 0.02, 0.01


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def held_mb(history: list[pl.DataFrame], replay: pl.DataFrame | None) -> float:
    """What the benchmark itself keeps (re-send samples, the night to rerun), not the record path's."""
    return (sum(h.estimated_size() for h in history) + (replay.estimated_size() if replay is not None else 0)) / 2**20


def compact(frame: pl.DataFrame) -> pl.DataFrame:
    """A copy that owns only its own rows' bytes. A sample's long strings (the 43-character keys)
    are views into the whole night's string buffers: kept as they are, each night's 5 % sample
    held ~40 MB of the night alive, which this process's RSS then counted as growth."""
    buffer = io.BytesIO()
    frame.write_ipc(buffer)
    buffer.seek(0)
    return pl.read_ipc(buffer)


def _keys(rng: random.Random, n: int) -> list[str]:
    return [f"fpbx{rng.randrange(SERVERS):02d}:{uuid.UUID(int=rng.getrandbits(128), version=4)}" for _ in range(n)]


def night_frame(rng: random.Random, night: int, rows: int, history: list[pl.DataFrame], window: int = 3
                ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Night `night` (0-based): fresh calls of its billing date, plus re-sent and late calls.
    Returns (the night's frame, its new rows)."""
    day = FIRST + timedelta(days=night)
    resent = int(rows * RESENT) if history else 0
    late = int(rows * LATE) if history else 0
    fresh = rows - resent - late
    keys = _keys(rng, fresh + late)
    days = [day] * fresh + [day - timedelta(days=1 + (i % 2)) for i in range(late)]
    clients = max(1, rows // 100)
    client = [rng.randrange(clients) + 1 for _ in range(fresh + late)]
    roll = [rng.random() for _ in range(fresh + late)]
    frame = pl.DataFrame({"cdr_key": keys, "billing_date": days, "client_id": client, "_roll": roll},
                         schema={"cdr_key": pl.String, "billing_date": pl.Date, "client_id": pl.Int64,
                                 "_roll": pl.Float64})
    frame = frame.with_columns(
        pl.col("cdr_key").str.slice(0, 6).alias("server"),
        (pl.col("client_id") * 10).alias("service_id"),
        pl.when(pl.col("_roll") < 0.85).then(pl.lit("billed"))
        .when(pl.col("_roll") < 0.90).then(pl.lit("included")).otherwise(pl.lit("zero_cost")).alias("outcome"),
        pl.when(pl.col("_roll") < 0.70).then(pl.lit("outbound")).otherwise(pl.lit("international"))
        .alias("charge_class"),
        (pl.col("_roll") * 1e6).cast(pl.Int64).mod(97).alias("_secs"),
    ).with_columns(
        pl.lit("USD").alias("currency"), pl.lit("v1").alias("tariff_version"),
        (pl.col("_secs") * 6 + 6).alias("charged_seconds"), (pl.col("_secs") * 6 + 3).alias("billable_seconds"),
        pl.when(pl.col("outcome") == "included").then(pl.col("_secs") * 6 + 6).otherwise(0)
        .alias("included_seconds"),
    ).with_columns(
        # decimal text, 6 places, as the rate step writes it; zero unless billed
        pl.when(pl.col("outcome") == "billed")
        .then(pl.format("0.{}", (pl.col("charged_seconds") * 167 % 1_000_000).cast(pl.String).str.zfill(6)))
        .otherwise(pl.lit("0.000000")).alias("cost"),
        pl.lit(None, pl.String).alias("unrated_reason"),
        pl.lit("batch").alias("source"),  # as tasks/rate.py marks rows extracted this run
    ).drop("_roll", "_secs")
    new = frame
    if resent:
        old = pl.concat(history[-window:] if window else history).sample(resent, seed=rng.randrange(1 << 30))
        frame = pl.concat([frame, old.select(frame.columns)])
    return frame.sample(fraction=1.0, shuffle=True, seed=rng.randrange(1 << 30)), new


def ledger_bytes(settings, db: str, tmp: Path) -> int:
    if db == "sqlite":
        return sum(p.stat().st_size for p in tmp.glob("ledger.db*"))
    from sqlalchemy import text

    from autobill.ledger.db import engine_for

    with engine_for(settings.ledger).connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar()
        return int(conn.execute(text(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relkind IN ('r', 'm')"
        ), {"s": schema}).scalar())


def lake_bytes(tmp: Path) -> int:
    billed = tmp / "data" / "billed"
    return sum(p.stat().st_size for p in billed.rglob("*") if p.is_file()) if billed.exists() else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=31)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rated CDRs per night")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default=os.environ.get("AUTOBILL_TEST_PG",
                                                            "postgresql+psycopg2://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--every", type=int, default=5, help="print every k-th night's time")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--resend-window", type=int, default=3, help="re-send from the last k nights (0: any)")
    args = parser.parse_args()
    if args.nights < 2 or args.rows < 100:
        parser.error("need at least 2 nights of 100 rows")

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="autobill-bench-billed-") as tmpdir:
        tmp = Path(tmpdir)
        schema = None
        if args.db == "postgresql":
            from sqlalchemy import create_engine, text

            schema = f"bench_{uuid.uuid4().hex[:10]}"
            admin = create_engine(args.pg_url)
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            url = f"{args.pg_url}?options=-csearch_path%3D{schema}"
        else:
            url = f"sqlite:///{tmp / 'ledger.db'}"
        settings = settings_from_dict({"ledger_url": url, "timezone": "America/Toronto",
                                       "data_dir": str(tmp / "data")}, base_dir=tmp)
        upgrade(settings.ledger)
        try:
            return run(settings, args, rng, tmp)
        finally:
            if schema is not None:
                from autobill.ledger import db

                for u in [u for u in db._engines if schema in u]:
                    db._engines.pop(u).dispose()
                with admin.begin() as conn:
                    conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()


def allowance_read(settings, services: list[int], day: date) -> tuple[float, float, bool]:
    """What the next night's rate step reads before rating: the included seconds each service
    has used this month (`included_by_period`, rows that used some allowance only), and, as the
    same-run baseline, every billed row of the month for those services (how it read before
    issue #15's last round). (seconds, baseline seconds, whether the two agree for every service)."""
    start, end = period_bounds(day, 1)
    wanted = {(int(s), start): end for s in services}
    with session_scope(settings.ledger) as session:
        t0 = time.perf_counter()
        used = included_by_period(session, wanted)
        took = time.perf_counter() - t0
        t0 = time.perf_counter()
        every = billed_frame(session=session, first=start, last=end - timedelta(days=1), service_ids=services,
                             columns=("cdr_key", "service_id", "billing_date", "included_seconds"))
        sums = dict(every.group_by("service_id").agg(pl.col("included_seconds").sum()).iter_rows())
        base = time.perf_counter() - t0
    return took, base, all(seconds == sums.get(sid, 0) for (sid, _), seconds in used.items())


def run(settings, args, rng: random.Random, tmp: Path) -> int:
    history: list[pl.DataFrame] = []  # a 5 % sample of each night's new rows: what gets re-sent
    replay = None  # the whole frame of the night recorded again at the end
    seconds: list[float] = []
    cpu: list[float] = []  # CPU seconds of all threads: steadier than wall on a shared machine
    ok = True
    total_rows = 0
    allowance: list[tuple[int, float, float]] = []  # (night, allowance read s, baseline s)
    print(f"billed growth: {args.nights} nights x {args.rows} rated CDRs, ledger {args.db}; "
          f"{RESENT:.0%} re-sent (from the last {args.resend_window or 'any'} nights) + {LATE:.0%} late from night 2",
          flush=True)
    # warm-up (imports, DuckDB's first connection) on a far-away date, so night 1 is not inflated
    warm, _ = night_frame(random.Random(0), -400, 100, [])
    record_billing(settings, warm, run_id=None)
    for night in range(args.nights):
        frame, new_rows = night_frame(rng, night, args.rows, history, args.resend_window)
        t0, c0 = time.perf_counter(), time.process_time()
        record = record_billing(settings, frame, run_id=None)
        took, cpu_took = time.perf_counter() - t0, time.process_time() - c0
        seconds.append(took)
        cpu.append(cpu_took)
        total_rows += frame.height
        new = sum(record.outcomes.values())
        if new != new_rows.height or record.already_final != frame.height - new_rows.height:
            print(f"  night {night + 1}: recorded {new} new rows, expected {new_rows.height}: FAIL")
            ok = False
        history.append(compact(new_rows.sample(fraction=0.05, seed=night)))
        services = new_rows["service_id"].unique().to_list()
        if night == args.nights // 2:
            replay = frame
        del frame, new_rows
        if night == 0 or (night + 1) % args.every == 0 or night == args.nights - 1:
            read_s, read_base, same = allowance_read(settings, services, FIRST + timedelta(days=night))
            allowance.append((night + 1, read_s, read_base))
            if not same:
                print(f"  night {night + 1}: the allowance read disagrees with the sum of every billed row: FAIL")
                ok = False
            print(f"  night {night + 1:>3}: {took:7.2f} s (cpu {cpu_took:6.2f})  {(new + record.already_final) / took:>9,.0f} rows/s  "
                  f"{len(record.lines):>7} lines  ledger {ledger_bytes(settings, args.db, tmp) / 2**20:8.1f} MB"
                  f"  billed lake {lake_bytes(tmp) / 2**20:7.1f} MB  RSS {rss_now_mb():5.0f} MB (peak {peak_rss_mb():5.0f}; "
                  f"held by this script {held_mb(history, replay):4.0f}); allowance read {read_s:5.2f} s "
                  f"(every billed row of the month: {read_base:5.2f} s)",
                  flush=True)
    again = replay
    t0 = time.perf_counter()
    rerun = record_billing(settings, again, run_id=None)
    rerun_s = time.perf_counter() - t0
    if sum(rerun.outcomes.values()) != 0 or rerun.lines or rerun.already_final != again.height:
        print(f"  rerun of night {args.nights // 2 + 1}: billed something again: FAIL")
        ok = False
    first3, last3 = sum(seconds[:3]) / 3, sum(seconds[-3:]) / 3
    print(f"night 1: {seconds[0]:.2f} s, night {args.nights}: {seconds[-1]:.2f} s, "
          f"ratio {seconds[-1] / seconds[0]:.2f} (target <= 1.20)")
    print(f"mean of nights 1-3: {first3:.2f} s, of the last 3: {last3:.2f} s, ratio {last3 / first3:.2f}")
    c1, c3 = sum(cpu[:3]) / 3, sum(cpu[-3:]) / 3
    print(f"cpu: night 1 {cpu[0]:.2f} s, night {args.nights} {cpu[-1]:.2f} s, ratio {cpu[-1] / cpu[0]:.2f}; "
          f"mean of nights 1-3 {c1:.2f} s, of the last 3 {c3:.2f} s, ratio {c3 / c1:.2f}")
    print(f"rerun of night {args.nights // 2 + 1} ({again.height} rows, all already billed): {rerun_s:.2f} s")
    print(f"throughput: {total_rows / sum(seconds):,.0f} rows/s over {total_rows} rows; "
          f"peak RSS {peak_rss_mb():.0f} MB; ledger {ledger_bytes(settings, args.db, tmp) / 2**20:.1f} MB; "
          f"billed lake {lake_bytes(tmp) / 2**20:.1f} MB")
    (n1, a1, b1), (nn, an, bn) = allowance[0], allowance[-1]
    print(f"allowance read before rating (month to date, {len(services)} services): night {n1} {a1:.2f} s, "
          f"night {nn} {an:.2f} s, ratio {an / a1:.2f}; reading every billed row of the month: {b1:.2f} s -> "
          f"{bn:.2f} s (ratio {bn / b1:.2f}); on night {nn} the filtered read is {bn / an:.1f}x faster")
    print("checks:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
