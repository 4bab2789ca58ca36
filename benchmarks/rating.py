"""`autobill rate` against a naive DuckDB SQL rater, on the same generated files, in one run.

Generates (seeded) a tariff of 60 000 prefixes (lengths 1-8, 5 % of them with a second,
dated row) and 5 000 000 CDRs (text `start` with offsets, a mix of dialling styles, junk
numbers, unanswered calls, duplicates), writes both as parquet, then times as whole
subprocesses, alternately, `--repeat` times each:

(a) `autobill rate --tariff T --cdrs C --out O.parquet` (the product), and
(b) the naive baseline: one DuckDB SQL query (sql/rating_naive.sql) that normalises to digits,
    expands every number into its prefixes of the tariff's lengths, joins them to the tariff,
    keeps the longest match in effect with arg_max, and writes the same parquet columns
    (DECIMAL(18,6) money, exact half-up cost). Its process imports nothing but DuckDB.

Both outputs are compressed parquet. Ours holds the input's columns as the input's own column
chunks, copied (zstd, as polars wrote the generated file; autobill/rating/passthrough.py), and the
output columns in LZ4_RAW (autobill/rating/io.py); the baseline's are DuckDB's default (snappy).
The codecs and sizes of the two files are printed, and our input columns are checked equal to the
input file's.

It prints wall time, CPU time, CDR/s and peak RSS (ru_maxrss of each child, from os.wait4) of
both, the ratio, whether the two outputs agree row by row (status, e164, matched_prefix,
billable_seconds, rate, connect_fee, cost), the load average before each timed run, the share
of each step of ours (one extra in-process run, untimed), and how long a 200 000-prefix tariff
takes to load. Targets (issue #15): (a) >= 3x faster than (b), <= 2 GB peak RSS for 5 M rows.

    .venv/bin/python benchmarks/rating.py [--cdrs 5000000] [--prefixes 60000] [--repeat 2] [--keep DIR]
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
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    import numpy as np
    import polars as pl


def make_tariff(n: int, rng: np.random.Generator, dated_fraction: float = 0.05) -> pl.DataFrame:
    """n distinct prefixes, lengths 1-8 (mostly 4-7, like a carrier deck), decimal-text rates."""
    import numpy as np
    import polars as pl

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
    import numpy as np
    import polars as pl

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
    import numpy as np

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
    query = (ROOT / "sql" / "rating_naive.sql").read_text().replace("{tariff}", tariff).replace("{cdrs}", cdrs)
    query = query.replace("{lengths}", ", ".join(str(x) for x in sorted(lengths)))
    con.execute(f"COPY ({query}) TO '{out}' (FORMAT parquet)")


COMPARED = ("status", "e164", "matched_prefix", "billable_seconds", "rate", "connect_fee", "cost")


def compare(a_out: Path, b_out: Path) -> str:
    """Row-by-row agreement of the two outputs, and the first difference."""
    import polars as pl

    got = pl.read_parquet(a_out, columns=["cdr_id", *COMPARED])
    ref = pl.read_parquet(b_out, columns=["cdr_id", *COMPARED])
    if got.height != ref.height:
        return f"False (rows {got.height} vs {ref.height})"
    for column in ["cdr_id", *COMPARED]:
        a, b = got.get_column(column), ref.get_column(column)
        if a.dtype != b.dtype:
            b = b.cast(a.dtype)
        same = a.eq_missing(b)
        if not same.all():
            i = int((~same).arg_true()[0])
            return f"False (row {i}, {column}: ours {a[i]!r}, naive {b[i]!r})"
    return f"True ({got.height:,} rows x {len(COMPARED) + 1} columns)"


def inputs_kept(a_out: Path, cdrs: Path) -> bool:
    """Our OUT repeats the input file's columns exactly (RATING.md: every input column, unchanged)."""
    import polars as pl

    source = pl.read_parquet(cdrs)
    return pl.read_parquet(a_out, columns=source.columns).equals(source)


def codecs(path: Path) -> str:
    """The compression codecs of a parquet file's column chunks, and its size."""
    import duckdb

    names = duckdb.execute("SELECT DISTINCT compression FROM parquet_metadata(?) ORDER BY 1", [str(path)]).fetchall()
    return f"{'/'.join(n for (n,) in names)}, {path.stat().st_size / 1e6:.0f} MB"


def steps(tariff: Path, cdrs: Path, out: Path) -> None:
    """Share of each step of ours: one extra in-process `rate_files` run that records the wall and
    CPU (all threads) seconds of each step. CPU shares hold on a busy machine; wall ones do not.
    Here the steps run one after another (the command overlaps the independent ones in threads),
    so that each one's CPU is its own; this run's wall time is therefore above the timed ones."""
    from autobill.rating.engine import Steps, rate_files

    recorded = Steps()
    wall, cpu = time.perf_counter(), time.process_time()
    rate_files(tariff, cdrs, out, steps=recorded)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"steps of ours (one in-process run: {wall:.2f} s wall, {cpu:.2f} s CPU):")
    for name, (w, c) in recorded.seconds.items():
        print(f"  {name:34s} {w:6.2f} s wall {100 * w / wall:5.1f} %   {c:6.2f} s CPU {100 * c / cpu:5.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cdrs", type=int, default=5_000_000)
    ap.add_argument("--prefixes", type=int, default=60_000)
    ap.add_argument("--big-tariff", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=2, help="Timed runs of each rater (alternating).")
    ap.add_argument("--no-steps", action="store_true", help="Skip the untimed step-share run.")
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
    tariff, cdrs = work / "tariff.parquet", work / "cdrs.parquet"
    if not (args.keep and tariff.exists() and cdrs.exists()):
        # Generate in a child process: a child forked from a big parent would report the parent's
        # pages in its ru_maxrss, so this process stays small until the timed children are done.
        subprocess.run(
            [sys.executable, __file__, "--generate-child", str(work), "--cdrs", str(args.cdrs),
             "--prefixes", str(args.prefixes), "--seed", str(args.seed)],
            check=True,
        )
    else:
        print(f"reusing {cdrs} and {tariff}")

    exe = str(Path(sys.executable).with_name("autobill"))
    a_out, b_out = work / "out_autobill.parquet", work / "out_naive.parquet"
    ours = [exe, "rate", "--tariff", str(tariff), "--cdrs", str(cdrs), "--out", str(a_out)]
    naive = [sys.executable, __file__, "--naive-child", str(tariff), str(cdrs), str(b_out)]
    n = args.cdrs
    results: dict[str, list[tuple[float, int, int, float]]] = {"autobill rate": [], "naive DuckDB SQL": []}
    for i in range(args.repeat):
        for label, cmd in (("autobill rate", ours), ("naive DuckDB SQL", naive)):
            load = os.getloadavg()[0]
            wall, rss, code, cpu = run_child(cmd)
            results[label].append((wall, rss, code, cpu))
            print(
                f"run {i + 1} {label:18s} {wall:7.2f} s  {n / wall:12,.0f} CDR/s  peak RSS {rss / 2**20:6.0f} MiB"
                f"  CPU {cpu:6.2f} s  exit {code}  (load average before: {load:.2f})",
                flush=True,
            )
    failed = [label for label, runs in results.items() if any(r[2] != 0 for r in runs)]
    if failed:
        raise SystemExit(f"a timed run failed: {', '.join(failed)}")
    best_a = min(results["autobill rate"])
    best_b = min(results["naive DuckDB SQL"])
    ratios = [b[0] / a[0] for a, b in zip(results["autobill rate"], results["naive DuckDB SQL"], strict=True)]
    print(
        f"ratio (naive / autobill) per run: {', '.join(f'{r:.2f}x' for r in ratios)}; best times: "
        f"{best_b[0]:.2f} s / {best_a[0]:.2f} s = {best_b[0] / best_a[0]:.2f}x  (target >= 3x)"
    )
    cpu_a = min(r[3] for r in results["autobill rate"])
    cpu_b = min(r[3] for r in results["naive DuckDB SQL"])
    print(f"CPU seconds (least of the runs, all threads): naive {cpu_b:.2f} / autobill {cpu_a:.2f} = {cpu_b / cpu_a:.2f}x")
    print(
        f"peak RSS: autobill {max(r[1] for r in results['autobill rate']) / 2**20:.0f} MiB (target <= 2048), "
        f"naive {max(r[1] for r in results['naive DuckDB SQL']) / 2**20:.0f} MiB"
    )
    print(f"load average after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if best_a[2] == 0 and best_b[2] == 0:
        print(f"outputs agree (every compared column, row by row): {compare(a_out, b_out)}")
        print(f"our input columns equal the input file's: {inputs_kept(a_out, cdrs)}")
        print(f"output files: autobill {codecs(a_out)}; naive {codecs(b_out)}")
    if not args.no_steps:
        steps(tariff, cdrs, work / "out_steps.parquet")

    import numpy as np

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
