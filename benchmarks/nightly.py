"""Nightly end-to-end benchmark: N CDRs across S file-drop servers, extract -> ... -> posted to the
WHMCS sandbox, on this machine.

Three processes, so each figure means one thing:
- `prepare` generates the calls, drop folders, tariff and config (not timed);
- the WHMCS sandbox runs in its own process (`autobill sandbox serve`), as WHMCS would;
- `run` executes the real nightly flow once (a warm-up flow first starts the temporary Prefect
  server, so its ~10 s start-up is not billed to the pipeline) and reports the flow's wall time,
  each step's share (from the task runs Prefect recorded), and the process's peak RSS.
Baseline in the same run: reading the same drop folders with polars alone (`pl.read_csv` of every
file), the floor any pipeline pays to touch the data; the ratio says how far above it we are.

    .venv/bin/python benchmarks/nightly.py                      # 1 M CDRs, 20 servers
    .venv/bin/python benchmarks/nightly.py --cdrs 100000 --servers 4
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
from datetime import date
from pathlib import Path

from sandboxes.loopback import free_port

ROOT = Path(__file__).resolve().parents[1]
DAY = date(2026, 11, 18)


def prepare(workdir: Path, cdrs: int, servers: int, port: int) -> dict:
    import polars as pl
    import yaml

    from sandboxes.generate import (
        generate_calls,
        generate_config,
        make_world,
        tariff_frame,
        write_drop_folder,
    )

    clients = max(servers, cdrs // 1000)
    world = make_world(clients=clients, servers_per_kind=servers, kinds=("file",), seed=11)
    calls = generate_calls(world, DAY, DAY, calls_per_client_day=cdrs / clients)
    for (sid,), part in calls.partition_by("server", as_dict=True).items():
        write_drop_folder(workdir / "drop" / sid, part)
    config = generate_config(world)
    for s in config["servers"]:
        s["settle_seconds"] = 0
    (workdir / "tariffs").mkdir(parents=True, exist_ok=True)
    tariff_frame().write_csv(workdir / "tariffs" / "retail.csv")
    config["whmcs"] = {"url": f"http://127.0.0.1:{port}/includes/api.php", "identifier": {"env": "BENCH_WHMCS_ID"},
                       "secret": {"env": "BENCH_WHMCS_SECRET"}}
    (workdir / "autobill.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return {"cdrs": calls.height, "clients": clients, "servers": world.servers.height,
            "files": sum(1 for _ in (workdir / "drop").rglob("*.csv")),
            "bytes": sum(p.stat().st_size for p in (workdir / "drop").rglob("*.csv")),
            "answered": calls.filter(pl.col("billsec") > 0).height}


def baseline(workdir: Path) -> float:
    import polars as pl

    t0 = time.perf_counter()
    total = sum(pl.read_csv(p, infer_schema=False).height for p in (workdir / "drop").rglob("*.csv"))
    assert total > 0
    return time.perf_counter() - t0


def run(workdir: Path) -> dict:
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
    t0 = time.perf_counter()
    state = nightly(billing_date=DAY, config_path=str(workdir / "autobill.yaml"), return_state=True)
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
    summary = state.result(raise_on_failure=False) if state.is_completed() else None
    return {"state": state.type.value, "message": state.message, "wall": wall,
            "steps": {k: {"span": v[1] - v[0], "busy": v[2]} for k, v in steps.items()},
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "sampled_peak": {"mb": peak_rss / 2**20, "during": during,
                             "before_flow_mb": samples[0][1] / 2**20 if samples else 0},
            "summary": summary if isinstance(summary, dict) else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cdrs", type=int, default=1_000_000)
    ap.add_argument("--servers", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--phase", choices=["all", "run"], default="all", help=argparse.SUPPRESS)
    ap.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase == "run":
        print(json.dumps(run(args.dir), default=str))
        return
    workdir = Path(tempfile.mkdtemp(prefix="autobill-bench-nightly-"))
    env = {**os.environ, "BENCH_WHMCS_ID": "bench", "BENCH_WHMCS_SECRET": "bench",
           "PREFECT_HOME": str(workdir / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    env.pop("PREFECT_API_URL", None)
    port = free_port()
    sandbox = None
    try:
        t0 = time.perf_counter()
        info = prepare(workdir, args.cdrs, args.servers, port)
        print(f"prepared {info['cdrs']:,} CDRs ({info['answered']:,} answered) for {info['clients']} clients on "
              f"{info['servers']} servers: {info['files']} files, {info['bytes'] / 1e6:.0f} MB "
              f"in {time.perf_counter() - t0:.1f} s (not timed below)")
        base = baseline(workdir)
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
        out = subprocess.run([sys.executable, __file__, "--phase", "run", "--dir", str(workdir)], env=env,
                             cwd=ROOT, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            sys.exit(f"benchmark run failed:\n{out.stderr[-4000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        if sandbox is not None:
            sandbox.terminate()
            sandbox.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    wall = result["wall"]
    print(f"\nnightly flow: {result['state']} in {wall:.1f} s wall; peak RSS {result['peak_rss_mb']:.0f} MB")
    peak = result["sampled_peak"]
    print(f"  RSS before the flow {peak['before_flow_mb']:.0f} MB; sampled peak {peak['mb']:.0f} MB during "
          f"{', '.join(peak['during'])}")
    if result["state"] != "COMPLETED":
        print(f"  message: {result['message']}")
    print(f"  throughput {info['cdrs'] / wall:,.0f} CDR/s")
    print(f"  baseline (polars reads the drop files, nothing else): {base:.2f} s -> flow/baseline = {wall / base:.1f}x")
    print(f"  {'step':<28}{'span s':>9}{'share':>8}{'busy s':>9}")
    for name, s in sorted(result["steps"].items(), key=lambda kv: -kv[1]["span"]):
        print(f"  {name:<28}{s['span']:>9.2f}{100 * s['span'] / wall:>7.0f}%{s['busy']:>9.2f}")
    summary = result.get("summary") or {}
    if summary:
        print(f"  extracted {summary['extracted']:,}, billed {summary['billed']:,}, charges posted "
              f"{summary['charges_posted']:,} {summary['amount_posted']}, balanced={summary['balanced']}")
    print(f"\ntarget: <= 60 s and <= 2048 MB: {'MET' if wall <= 60 and result['peak_rss_mb'] <= 2048 else 'NOT MET'}")


if __name__ == "__main__":
    main()
