"""`autobill rate` against a naive DuckDB SQL rater, on the same generated files, in one run.

Generates (seeded) a tariff of 60 000 prefixes (lengths 1-8, 5 % of them with a second,
dated row) and 5 000 000 CDRs (text `start` with offsets, a mix of dialling styles, junk
numbers, unanswered calls, duplicates), writes both as parquet, then times as whole
subprocesses:

(a) `autobill rate --tariff T --cdrs C --out O` (the product), and
(b) the naive baseline: one DuckDB SQL query (sql/rating_naive.sql) that expands every
    number into its prefixes of the tariff's lengths, joins them to the tariff, and keeps the
    longest match in effect, with the same increments and exact cost.

It prints wall time, CDR/s and peak RSS (ru_maxrss of each child, from os.wait4) of both, the
ratio, whether their costs agree, and how long a 200 000-prefix tariff takes to load.
Targets: (a) >= 1.5x faster than (b), < 3 GB peak RSS; a 200 k tariff loads in < 1 s.

    .venv/bin/python benchmarks/rating.py [--cdrs 5000000] [--prefixes 60000] [--seed 7] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sql import load  # noqa: E402


def make_tariff(n: int, rng: np.random.Generator, dated_fraction: float = 0.05) -> pl.DataFrame:
    """n distinct prefixes, lengths 1-8 (mostly 4-7, like a carrier deck), decimal-text rates."""
    lengths = rng.choice([1, 2, 3, 4, 5, 6, 7, 8], size=n * 2, p=[0.001, 0.009, 0.04, 0.15, 0.3, 0.3, 0.15, 0.05])
    values = [str(rng.integers(1, 10)) + "".join(map(str, rng.integers(0, 10, k - 1))) for k in lengths]
    prefixes = list(dict.fromkeys(values))[:n]
    m = len(prefixes)
    rates = rng.integers(1, 2_000_000, m)  # micro-units: 0.000001 .. 2.0 per minute
    incs = rng.choice(4, m)
    first = np.array([1, 6, 30, 60])[incs]
    nxt = np.array([1, 6, 6, 60])[incs]
    fee = np.where(rng.random(m) < 0.2, rng.integers(1, 50_000, m), 0)
    base = pl.DataFrame(
        {
            "prefix": prefixes,
            "rate": [f"{r // 10**6}.{r % 10**6:06d}".rstrip("0").rstrip(".") for r in rates],
            "description": [f"dest {p[:3]}" for p in prefixes],
            "connect_fee": [f"0.{f:06d}" if f else "" for f in fee],
            "first_increment": first.astype(str),
            "next_increment": nxt.astype(str),
            "effective_from": [""] * m,
        }
    )
    dated = base.sample(fraction=dated_fraction, seed=int(rng.integers(1 << 30))).with_columns(
        pl.lit("2024-06-01T00:00:00Z").alias("effective_from"),
        (pl.lit("1") + pl.col("rate")).alias("rate"),
    )
    return pl.concat([base, dated]).sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 30)))


def make_cdrs(n: int, tariff: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    prefixes = tariff.get_column("prefix").unique().sort().to_numpy()
    pick = prefixes[rng.integers(0, len(prefixes), n)]
    total = rng.integers(9, 13, n)
    tails = rng.integers(0, 10**12, n).astype(str)
    e164 = [(p + t.zfill(12))[: max(len(p) + 1, k)] for p, t, k in zip(pick, tails, total, strict=True)]
    style = rng.integers(0, 10, n)
    dst = pl.Series("e164", e164).to_frame().with_columns(pl.Series("style", style)).select(
        pl.when(pl.col("style") < 5)
        .then(pl.lit("+") + pl.col("e164"))
        .when(pl.col("style") < 8)
        .then(pl.lit("011") + pl.col("e164"))
        .when((pl.col("style") == 8) & (pl.col("e164").str.len_chars() == 11) & pl.col("e164").str.starts_with("1"))
        .then(pl.col("e164").str.slice(1))
        .otherwise(pl.lit("9") + pl.col("e164"))  # some land on no prefix
        .alias("dst")
    )
    junk = rng.random(n) < 0.001
    dst = dst.with_columns(pl.when(pl.Series(junk)).then(pl.lit("anonymous")).otherwise(pl.col("dst")).alias("dst"))
    epoch = 1_704_067_200 + rng.integers(0, 365 * 86400, n)  # 2024
    offsets = rng.choice(["Z", "+02:00", "-05:00"], n)
    # local wall time for the offset rows, so each text is the same instant the epoch says
    shift = pl.Series(np.where(offsets == "+02:00", 7200, np.where(offsets == "-05:00", -18000, 0)))
    local = (pl.Series((epoch + shift.to_numpy()) * 1_000_000).cast(pl.Datetime("us"))).dt.strftime("%Y-%m-%dT%H:%M:%S")
    start = local + pl.Series(offsets)
    billsec = np.where(rng.random(n) < 0.3, 0, rng.integers(1, 3600, n))
    ids = np.arange(n).astype(str)
    dup = rng.random(n) < 0.001
    ids = np.where(dup, np.roll(ids, 1), ids)
    return pl.DataFrame({"cdr_id": ids, "start": start, "billsec": billsec, "dst": dst.get_column("dst")})


def generate(work: Path, n_cdrs: int, n_prefixes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    tariff = make_tariff(n_prefixes, rng)
    cdrs = make_cdrs(n_cdrs, tariff, rng)
    tariff.write_parquet(work / "tariff.parquet")
    cdrs.write_parquet(work / "cdrs.parquet")
    print(f"generated {cdrs.height:,} CDRs and a {tariff.height:,}-row tariff in {time.perf_counter() - t0:.1f} s ({work})")


def run_child(cmd: list[str]) -> tuple[float, int, int, float]:
    """(wall seconds, peak RSS bytes, exit status, CPU seconds) of one subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_maxrss * 1024, proc.returncode, usage.ru_utime + usage.ru_stime


def naive_sql(tariff: str, cdrs: str, out: str) -> None:
    """The baseline rater (child process): one DuckDB query, see sql/rating_naive.sql."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {os.cpu_count() or 2}")
    lengths = [r[0] for r in con.execute(f"SELECT DISTINCT length(prefix) FROM read_parquet('{tariff}')").fetchall()]  # noqa: S608
    query = load("rating_naive").replace("{tariff}", tariff).replace("{cdrs}", cdrs)
    query = query.replace("{lengths}", ", ".join(str(x) for x in sorted(lengths)))
    con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cdrs", type=int, default=5_000_000)
    ap.add_argument("--prefixes", type=int, default=60_000)
    ap.add_argument("--big-tariff", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--keep", type=Path, default=None, help="Keep the generated files in this directory.")
    ap.add_argument("--naive-child", nargs=3, metavar=("TARIFF", "CDRS", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--generate-child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.naive_child:
        naive_sql(*args.naive_child)
        return
    if args.generate_child:
        generate(args.generate_child, args.cdrs, args.prefixes, args.seed)
        return

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="autobill-bench-rating-"))
    work.mkdir(parents=True, exist_ok=True)
    # Generate in a child process: a child forked from a big parent would report the parent's
    # pages in its ru_maxrss, so this process stays small until the timed children are done.
    subprocess.run(
        [sys.executable, __file__, "--generate-child", str(work), "--cdrs", str(args.cdrs),
         "--prefixes", str(args.prefixes), "--seed", str(args.seed)],
        check=True,
    )

    exe = str(Path(sys.executable).with_name("autobill"))
    a_out, b_out = work / "out_autobill.parquet", work / "out_naive.parquet"
    a = run_child([exe, "rate", "--tariff", str(work / "tariff.parquet"), "--cdrs", str(work / "cdrs.parquet"), "--out", str(a_out)])
    b = run_child([sys.executable, __file__, "--naive-child", str(work / "tariff.parquet"), str(work / "cdrs.parquet"), str(b_out)])
    n = args.cdrs
    for label, (wall, rss, code, cpu) in (("autobill rate", a), ("naive DuckDB SQL", b)):
        print(
            f"{label:18s} {wall:7.2f} s  {n / wall:12,.0f} CDR/s  peak RSS {rss / 2**20:8.0f} MiB"
            f"  CPU {cpu:7.2f} s  exit {code}"
        )
    print(f"ratio (naive / autobill): {b[0] / a[0]:.2f}x wall, {b[3] / a[3]:.2f}x CPU  (target >= 1.5x; peak RSS < 3072 MiB)")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if a[2] == 0 and b[2] == 0:
        got = pl.read_parquet(a_out, columns=["cdr_id", "status", "cost"])
        ref = pl.read_parquet(b_out, columns=["cdr_id", "status", "cost"])
        same = got.select("status", "cost").equals(ref.select("status", "cost"))
        print(f"outputs agree (status, cost per row): {same}")

    big = make_tariff(args.big_tariff, np.random.default_rng(args.seed + 1), dated_fraction=0.0)
    big.write_parquet(work / "big.parquet")
    big.write_csv(work / "big.csv")
    from autobill.rating.tariff import load_tariff

    load_tariff(work / "big.parquet")  # warm-up: imports, polars thread pool
    for name in ("big.parquet", "big.csv"):
        t0, c0 = time.perf_counter(), time.process_time()
        t = load_tariff(work / name)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"load a {t.rows.height:,}-prefix tariff ({name}): {wall:.3f} s wall, {cpu:.3f} s CPU (target < 1 s)")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
