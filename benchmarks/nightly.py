"""Nightly end-to-end benchmark: N CDRs across S servers (drop folders, and K of them FusionPBX
`v_xml_cdr` tables in PostgreSQL), extract -> ... -> posted to the WHMCS sandbox, on this machine.

Four processes, so each figure means one thing:
- `prepare` generates the calls, drop folders, FusionPBX tables (one PostgreSQL schema per server,
  `bench_<pid>_<server>`, dropped at the end), tariff and config (not timed);
- the WHMCS sandbox runs in its own process (`autobill sandbox serve`), as WHMCS would;
- `run` executes the real nightly flow once (a warm-up flow first starts the temporary Prefect
  server, so its ~10 s start-up is not billed to the pipeline) and reports the flow's wall time,
  each step's share (from the task runs Prefect recorded), and the process's peak RSS.
Baseline in the same run, in its own process: reading the same sources with polars alone
(`pl.read_csv` of every drop file, `COPY ... TO STDOUT` of every FusionPBX table into
`pl.read_csv`), one source at a time - the floor any pipeline pays to touch the data. Its wall time
and its peak RSS are the denominators of the ratios printed (the flow's and each step's).

    .venv/bin/python benchmarks/nightly.py                      # 1 M CDRs, 20 servers
    .venv/bin/python benchmarks/nightly.py --cdrs 100000 --servers 4
    .venv/bin/python benchmarks/nightly.py --cdrs 10000000 --servers 50 --fusionpbx 10 --clients 10000
    .venv/bin/python benchmarks/nightly.py --nights 31 --no-statements   # growth (issue #15, target 3)

`--nights N` (drop folders only): N billing dates in a row, each night a fresh process running the
nightly flow for its date, as a scheduled deployment would, on one ledger, lake, Prefect database
and WHMCS sandbox that keep everything earlier nights wrote. Each night's folder gets its date's
calls; from night 2 it also gets 1 % of the previous date's calls held back until then (late
CDRs, billed on the night they arrive) and 2 % of the previous night's calls delivered again (an
export window that overlaps; already billed, must not be billed twice). Printed: each night's
wall time and rate + record steps, night N against night 1 and the means of the first and last three
nights (the target: at most 1.2x after 30 nights of 1 M), and the exactly-once check (every
final call in the billed state once, as many as the nights reported billed, included or free).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

from sandboxes.loopback import free_port

ROOT = Path(__file__).resolve().parents[1]
DAY = date(2026, 11, 18)
LATE, RESENT = 0.01, 0.02  # --nights: share of a date's calls held back to the next night / sent again


def first_day(nights: int) -> date:
    """DAY, or early enough that every night's calls are in the past (calls far in the future
    are quarantined, not billed)."""
    return min(DAY, date.today() - timedelta(days=nights + 2))
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def bench_world(clients: int, servers: int, fusionpbx: int, seed: int = 11):
    """`servers` servers, the first `fusionpbx` of them FusionPBX (`fusionpbx-<i>`), the rest drop
    folders (`file-<i>`); clients round-robin over all of them (sandboxes.generate.make_world)."""
    import polars as pl

    from sandboxes.generate import World, make_world

    if not 0 <= fusionpbx <= servers:
        raise SystemExit(f"--fusionpbx {fusionpbx}: must be between 0 and --servers {servers}")
    world = make_world(clients=clients, servers_per_kind=servers, kinds=("file",), seed=seed)
    rename = {f"file-{i}": f"fusionpbx-{i}" for i in range(1, fusionpbx + 1)}
    kind = pl.when(pl.col("server").is_in(list(rename))).then(pl.lit("fusionpbx")).otherwise(pl.col("kind"))
    clients_df = world.clients.with_columns(kind.alias("kind"), pl.col("server").replace(rename))
    servers_df = world.servers.with_columns(
        pl.when(pl.col("id").is_in(list(rename))).then(pl.lit("fusionpbx")).otherwise(pl.col("kind")).alias("kind"),
        pl.col("id").replace(rename))
    return World(servers_df, clients_df, world.timezone, world.seed)


def prepare(workdir: Path, cdrs: int, servers: int, port: int, clients: int | None, fusionpbx: int,
            pg_url: str, tag: str, statements: bool = True, nights: int = 1) -> dict:
    """Calls, sources, tariff and config. Drop-folder files are staged per night
    (`staged/night-<i>/<server>/`) and moved into the drop folders by that night's run."""
    import polars as pl
    import psycopg2
    import yaml

    from sandboxes.generate import (
        fusionpbx_server_fields,
        generate_calls,
        generate_config,
        tariff_frame,
        write_drop_folder,
        write_fusionpbx,
    )

    def stage(night: int, sid: str, part: pl.DataFrame, suffix: str) -> None:
        if night >= nights or part.is_empty():
            return  # held back past the last night: never delivered
        folder = workdir / "staged" / f"night-{night}" / sid
        for path in write_drop_folder(folder / suffix, part, world.timezone):
            path.rename(folder / f"{path.stem}-{suffix}{path.suffix}")
        (folder / suffix).rmdir()

    clients = clients or max(servers, cdrs // 1000)
    world = bench_world(clients, servers, fusionpbx)
    overrides: dict[str, dict] = {}
    answered = total = pg_rows = late = resent = 0
    # One slice of clients at a time: 10 M calls are not held in memory at once.
    per_slice = max(1, 2_000_000 * clients // max(cdrs, 1))
    for night in range(nights):
        day = first_day(nights) + timedelta(days=night)
        for lo in range(0, clients, per_slice):
            seed = world.seed + lo + night * 1_000_003  # call ids differ from night to night
            part_world = type(world)(world.servers, world.clients.slice(lo, per_slice), world.timezone, seed)
            # the generator draws 0.4x the calls on weekends: every night of --nights gets --cdrs
            per_day = cdrs / clients / (0.4 if nights > 1 and day.weekday() >= 5 else 1.0)
            calls = generate_calls(part_world, day, day, calls_per_client_day=per_day)
            total += calls.height
            answered += calls.filter(pl.col("billsec") > 0).height
            for (sid,), part in calls.partition_by("server", as_dict=True).items():
                if sid.startswith("fusionpbx-"):
                    schema = f"{tag}_{sid.replace('-', '_')}"
                    if sid not in overrides:
                        with psycopg2.connect(pg_url) as conn, conn.cursor() as cur:
                            cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                        conn.close()
                        overrides[sid] = fusionpbx_server_fields(pg_url, f"{schema}.v_xml_cdr")
                    pg_rows += write_fusionpbx(pg_url, f"{schema}.v_xml_cdr", part, world.timezone, seed=seed)
                    continue
                # a slice is a file of its own: a drop folder may hold several files a day
                held = pl.col("call_id").hash(night) % 100 < round(LATE * 100) if nights > 1 else pl.lit(False)
                on_time = part.filter(~held)
                stage(night, sid, on_time, f"s{lo}")
                stage(night + 1, sid, part.filter(held), f"s{lo}-late")
                again = on_time.sample(fraction=RESENT, seed=seed) if nights > 1 else on_time.clear()
                stage(night + 1, sid, again, f"s{lo}-resent")
                if night + 1 < nights:
                    late += part.height - on_time.height
                    resent += again.height
            del calls
    config = generate_config(world, overrides)
    if nights > 1:  # an allowance no night runs out of: every night does the same work (night 1
        # would otherwise be the only one with unused minutes); the allowance read still runs
        for plan in config["plans"]:
            if plan.get("included_minutes"):
                plan["included_minutes"] = 10_000_000
    for s in config["servers"]:
        if s["kind"] == "file":
            s["settle_seconds"] = 0
    (workdir / "tariffs").mkdir(parents=True, exist_ok=True)
    tariff_frame().write_csv(workdir / "tariffs" / "retail.csv")
    config["whmcs"] = {"url": f"http://127.0.0.1:{port}/includes/api.php", "identifier": {"env": "BENCH_WHMCS_ID"},
                       "secret": {"env": "BENCH_WHMCS_SECRET"}}
    if not statements:
        config["statements"] = {"nightly": False}
    (workdir / "autobill.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    csvs = list((workdir / "staged" / "night-0").rglob("*.csv"))
    return {"cdrs": total, "clients": clients, "servers": world.servers.height, "fusionpbx": len(overrides),
            "schemas": [f["table"].split(".")[0] for f in overrides.values()], "pg_rows": pg_rows,
            "files": len(csvs), "bytes": sum(p.stat().st_size for p in csvs), "answered": answered,
            "late": late, "resent": resent}


def drop_schemas(pg_url: str, schemas: list[str]) -> None:
    import psycopg2

    if not schemas:
        return
    conn = psycopg2.connect(pg_url)
    try:
        with conn, conn.cursor() as cur:
            for schema in schemas:
                cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        conn.close()


def baseline(workdir: Path, pg_url: str, schemas: list[str]) -> dict:
    """Runs inside its own process: every source read into polars once, one at a time."""
    import io

    import polars as pl
    import psycopg2

    t0 = time.perf_counter()
    total = sum(pl.read_csv(p, infer_schema=False).height for p in (workdir / "staged" / "night-0").rglob("*.csv"))
    if schemas:
        conn = psycopg2.connect(pg_url)
        try:
            with conn.cursor() as cur:
                for schema in schemas:
                    buf = io.BytesIO()
                    cur.copy_expert(f'COPY "{schema}".v_xml_cdr TO STDOUT WITH (FORMAT csv, HEADER true)', buf)
                    buf.seek(0)
                    total += pl.read_csv(buf, infer_schema=False).height
                    del buf
        finally:
            conn.close()
    assert total > 0
    return {"wall": time.perf_counter() - t0, "rows": total,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def deliver(workdir: Path, night: int) -> None:
    """Night `night`'s staged files into the drop folders, as the PBXs' exports would arrive."""
    staged = workdir / "staged" / f"night-{night}"
    if not staged.is_dir():
        return
    for path in sorted(staged.rglob("*.csv")):
        target = workdir / "drop" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)


def run(workdir: Path, night: int = 0, nights: int = 1) -> dict:
    """Runs inside its own process: the flow, then its task runs' timings from the Prefect API."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.autobill import nightly

    @flow
    def warm_up() -> None:
        pass

    warm_up()
    import threading

    import psutil

    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:  # RSS every 0.2 s, to say which step the peak belongs to
        me = psutil.Process()
        while not stop.is_set():
            samples.append((time.time(), me.memory_info().rss))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    deliver(workdir, night)
    t0, started = time.perf_counter(), time.time()
    state = nightly(billing_date=first_day(nights) + timedelta(days=night), config_path=str(workdir / "autobill.yaml"), return_state=True)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    steps: dict[str, list[float]] = {}
    for tr in runs:
        if tr.start_time and tr.end_time:
            name = tr.name.rsplit("-", 1)[0]
            span = steps.setdefault(name, [tr.start_time.timestamp(), tr.end_time.timestamp(), 0.0])
            span[0] = min(span[0], tr.start_time.timestamp())
            span[1] = max(span[1], tr.end_time.timestamp())
            span[2] += (tr.end_time - tr.start_time).total_seconds()
    peak_at, peak_rss = max(samples, key=lambda x: x[1]) if samples else (0.0, 0)
    during = [name for name, (a, b, _) in steps.items() if a <= peak_at <= b] or ["(between steps)"]
    step_peak = {name: max((rss for t, rss in samples if a <= t <= b), default=0) / 2**20
                 for name, (a, b, _) in steps.items()}
    summary = state.result(raise_on_failure=False) if state.is_completed() else None
    return {"state": state.type.value, "message": state.message, "wall": wall,
            "steps": {k: {"span": v[1] - v[0], "busy": v[2], "peak_mb": step_peak[k], "from": v[0] - started}
                      for k, v in steps.items()},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "sampled_peak": {"mb": peak_rss / 2**20, "during": during,
                             "before_flow_mb": samples[0][1] / 2**20 if samples else 0},
            "summary": summary if isinstance(summary, dict) else None}


def check(workdir: Path) -> dict:
    """Runs inside its own process after the last night: the billed state's final calls, and
    how many distinct ones (each must be there once)."""
    from autobill.config import load_settings
    from autobill.ledger.billed import billed_frame

    keys = billed_frame(load_settings(workdir / "autobill.yaml"), columns=("cdr_key",))["cdr_key"]
    return {"final": keys.len(), "distinct": keys.n_unique()}


def _phase(env: dict, *args: str) -> dict:
    """Run this script's `--phase ...` in a child process; its last stdout line is JSON."""
    out = subprocess.run([sys.executable, __file__, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        sys.exit(f"benchmark phase {args[:2]} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cdrs", type=int, default=1_000_000)
    ap.add_argument("--servers", type=int, default=20)
    ap.add_argument("--fusionpbx", type=int, default=0, metavar="K",
                    help="K of the servers are FusionPBX v_xml_cdr tables in PostgreSQL (default 0)")
    ap.add_argument("--clients", type=int, default=None, help="clients (default: cdrs / 1000, at least one a server)")
    ap.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", PG_URL),
                    help=f"PostgreSQL for the FusionPBX tables (default {PG_URL}; one schema per server)")
    ap.add_argument("--no-statements", action="store_true",
                    help="statements.nightly: false (measure billing without the statements step)")
    ap.add_argument("--nights", type=int, default=1,
                    help="N billing dates in a row, one process a night (drop folders only; see above)")
    ap.add_argument("--night", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (the PostgreSQL schemas are dropped)")
    ap.add_argument("--phase", choices=["all", "prepare", "baseline", "run", "check"], default="all", help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tag", help=argparse.SUPPRESS)
    ap.add_argument("--schemas", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cdrs < 1 or args.servers < 1 or (args.clients is not None and args.clients < args.servers):
        sys.exit("need --cdrs >= 1, --servers >= 1 and --clients >= --servers")
    if args.nights < 1 or (args.nights > 1 and args.fusionpbx):
        sys.exit("--nights: at least 1, and more than 1 only with drop folders (--fusionpbx 0)")
    schemas = [x for x in args.schemas.split(",") if x]
    if args.phase == "prepare":
        print(json.dumps(prepare(args.dir, args.cdrs, args.servers, args.port, args.clients, args.fusionpbx,
                                 args.pg_url, args.tag, not args.no_statements, args.nights)))
        return
    if args.phase == "baseline":
        print(json.dumps(baseline(args.dir, args.pg_url, schemas)))
        return
    if args.phase == "run":
        print(json.dumps(run(args.dir, args.night, args.nights), default=str))
        return
    if args.phase == "check":
        print(json.dumps(check(args.dir)))
        return
    workdir = Path(tempfile.mkdtemp(prefix="autobill-bench-nightly-"))
    tag = f"bench_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "BENCH_WHMCS_ID": "bench", "BENCH_WHMCS_SECRET": "bench",
           "PREFECT_HOME": str(workdir / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    # A new PREFECT_HOME migrates its database on the first start; on a slow VM that took more
    # than Prefect's default 20 s to answer, and the warm-up flow failed (session 14).
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    env.pop("PREFECT_API_URL", None)
    port = free_port()
    sandbox = None
    info: dict = {"schemas": []}
    try:
        t0 = time.perf_counter()
        common = ["--cdrs", str(args.cdrs), "--servers", str(args.servers), "--fusionpbx", str(args.fusionpbx),
                  "--pg-url", args.pg_url, "--dir", str(workdir)]
        if args.clients:
            common += ["--clients", str(args.clients)]
        if args.no_statements:
            common.append("--no-statements")
        common += ["--nights", str(args.nights)]
        try:
            info = _phase(env, "--phase", "prepare", *common, "--port", str(port), "--tag", tag)
        except SystemExit:  # a half-prepared run may have created some schemas
            info = {"schemas": [f"{tag}_fusionpbx_{i}" for i in range(1, args.fusionpbx + 1)]}
            raise
        print(f"prepared {info['cdrs']:,} CDRs ({info['answered']:,} answered) for {info['clients']:,} clients on "
              f"{info['servers']} servers ({info['fusionpbx']} FusionPBX: {info['pg_rows']:,} v_xml_cdr rows incl. "
              f"B-legs; {info['servers'] - info['fusionpbx']} drop folders: {info['files']} files, "
              f"{info['bytes'] / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s (not timed below)"
              + ("; statements.nightly OFF" if args.no_statements else ""))
        print(f"load average before the baseline: {_load()}")
        base = _phase(env, "--phase", "baseline", *common, "--schemas", ",".join(info["schemas"]))
        sandbox = subprocess.Popen(
            [str(Path(sys.executable).parent / "autobill"), "sandbox", "serve", "--port", str(port),
             "--db", str(workdir / "whmcs.db"), "--seed-clients", str(info["clients"]), "--identifier", "bench"],
            env={**env, "AUTOBILL_SANDBOX_SECRET": "bench"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        print(f"load average before the flow: {_load()}")
        results = []
        for night in range(args.nights):
            results.append(_phase(env, "--phase", "run", *common, "--night", str(night)))
            if args.nights > 1:
                report_night(night, results[-1])
        result = results[0]
        final = _phase(env, "--phase", "check", *common) if args.nights > 1 else None
    finally:
        if sandbox is not None:
            sandbox.terminate()
            sandbox.wait(timeout=10)
        drop_schemas(args.pg_url, info.get("schemas") or [])
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report(info, base, result)
    if args.nights > 1:
        sys.exit(report_growth(info, results, final))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _rate_record_s(result: dict) -> float:
    """The rate and record steps' spans: a night of several chunks records each chunk's rated rows
    inside the rate step (tasks/aggregate.py `ChunkRecorder`), so the record step alone no longer
    holds the recording."""
    return sum(s["span"] for name, s in result["steps"].items() if name == "rate" or "record" in name)


def report_night(night: int, result: dict) -> None:
    summary = result.get("summary") or {}
    print(f"  night {night + 1:>3}: {result['wall']:7.2f} s  rate + record {_rate_record_s(result):5.2f} s  "
          f"peak RSS {result['peak_rss_mb']:5.0f} MB  {result['state']}  extracted {summary.get('extracted', 0):,}  "
          f"billed {summary.get('billed', 0):,}  already billed {summary.get('already_billed', 0):,}  "
          f"duplicates {summary.get('duplicates', 0):,}  charges posted {summary.get('charges_posted', 0):,}  "
          f"balanced={summary.get('balanced')}", flush=True)
    steps = sorted(result["steps"].items(), key=lambda kv: -kv[1]["span"])[:7]
    print("             " + ", ".join(f"{name} {s['span']:.1f}" for name, s in steps), flush=True)


def report_growth(info: dict, results: list[dict], final: dict) -> int:
    """Night N against night 1 (issue #15, target 3), and the exactly-once check; the exit code."""
    walls = [r["wall"] for r in results]
    records = [_rate_record_s(r) for r in results]
    n = len(walls)
    first3, last3 = sum(walls[:3]) / min(3, n), sum(walls[-3:]) / min(3, n)
    print(f"\ngrowth over {n} nights ({info['late']:,} late and {info['resent']:,} re-sent calls delivered):")
    print(f"  night 1 {walls[0]:.2f} s, night {n} {walls[-1]:.2f} s: ratio {walls[-1] / walls[0]:.2f} "
          f"(target <= 1.20); means of the first and last three nights {first3:.2f} s / {last3:.2f} s: "
          f"ratio {last3 / first3:.2f}")
    print(f"  rate + record steps: night 1 {records[0]:.2f} s, night {n} {records[-1]:.2f} s")
    summaries = [r.get("summary") or {} for r in results]
    if n > 2:
        # Night 1 is the only night without late and re-sent calls (about 40 % fewer charges to
        # post): from night 2 on every night does the same work, so this ratio is the state's growth.
        posted = [s.get("charges_posted", 0) for s in summaries]
        print(f"  from night 2 (the first night with late and re-sent calls; charges posted night 1 {posted[0]:,}, "
              f"night 2 {posted[1]:,}, night {n} {posted[-1]:,}): night 2 {walls[1]:.2f} s, night {n} "
              f"{walls[-1]:.2f} s: ratio {walls[-1] / walls[1]:.2f}")
    made_final = sum(s.get("billed", 0) + s.get("included", 0) + s.get("zero_cost", 0) for s in summaries)
    ok = (all(r["state"] == "COMPLETED" and (r.get("summary") or {}).get("balanced") for r in results)
          and final["final"] == final["distinct"] == made_final)
    print(f"  exactly once: {final['final']:,} final calls in the billed state, {final['distinct']:,} distinct; "
          f"the nights made {made_final:,} final: {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def report(info: dict, base: dict, result: dict) -> None:
    wall = result["wall"]
    print(f"\nnightly flow: {result['state']} in {wall:.1f} s wall; peak RSS {result['peak_rss_mb']:.0f} MB")
    peak = result["sampled_peak"]
    print(f"  RSS before the flow {peak['before_flow_mb']:.0f} MB; sampled peak {peak['mb']:.0f} MB during "
          f"{', '.join(peak['during'])}")
    if result["state"] != "COMPLETED":
        print(f"  message: {result['message']}")
    print(f"  throughput {info['cdrs'] / wall:,.0f} CDR/s")
    print(f"  baseline (polars reads every source once, nothing else): {base['wall']:.2f} s, peak RSS "
          f"{base['peak_rss_mb']:.0f} MB -> flow/baseline = {wall / base['wall']:.1f}x time, "
          f"{result['peak_rss_mb'] / base['peak_rss_mb']:.1f}x memory")
    print(f"  {'step':<28}{'from s':>8}{'span s':>9}{'share':>8}{'busy s':>9}{'peak MB':>9}{'x base':>8}")
    for name, s in sorted(result["steps"].items(), key=lambda kv: -kv[1]["span"]):
        print(f"  {name:<28}{s['from']:>8.1f}{s['span']:>9.2f}{100 * s['span'] / wall:>7.0f}%{s['busy']:>9.2f}"
              f"{s['peak_mb']:>9.0f}{s['peak_mb'] / base['peak_rss_mb']:>8.1f}")
    summary = result.get("summary") or {}
    if summary:
        print(f"  extracted {summary['extracted']:,}, billed {summary['billed']:,}, charges posted "
              f"{summary['charges_posted']:,} {summary['amount_posted']}, balanced={summary['balanced']}")
    ok = wall <= 180 and result["peak_rss_mb"] <= 4096
    print(f"\ntarget (issue #15, 10 M CDRs): <= 180 s and <= 4096 MB: {'MET' if ok else 'NOT MET'} at this size")


if __name__ == "__main__":
    main()
