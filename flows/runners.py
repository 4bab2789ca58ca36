"""Which task runner the nightly fan-out uses: threads by default, a Dask cluster when configured.

Why this is a function read when `flows/autobill.py` is imported: a Prefect flow's task runner is
fixed when the flow object is created, and a deployment imports the flow module afresh in every
flow-run process. Reading the address there (`AUTOBILL_DASK_ADDRESS`, else `dask_address` in the
config file named by `AUTOBILL_CONFIG`) lets an operator move the per-server fan-out onto a
cluster by changing configuration only. `with_runner(flow, settings)` applies the same choice per
call, for callers that hold a config of their own (the backfill's in-process children, tests).

Addresses:
- unset / empty: `ThreadPoolTaskRunner(max_workers=<CPU count, at least 2>)`: parsing, the
  canonical rows and validation are CPU work in polars (which releases the GIL), so more
  threads than cores only add memory: each server in flight holds its whole batch (about 2-3 KB
  a row while it is extracted and validated, measured on 200k-row drop files and FusionPBX
  tables), so the thread count bounds the night's peak (docs/nightly-scale.md). On 2 cores,
  10 M CDRs took the same 186 s with 2 threads as with 4, and peaked at 2.14 GB instead of 2.6;
- `tcp://host:8786` (or any `distributed` address): a running Dask scheduler, whose workers may be
  on other machines (they need this package installed and the same config/secrets environment);
- `local` or `local:N`: a temporary `LocalCluster` of N worker processes (default 2) per flow
  run, for one big machine.
"""

from __future__ import annotations

import os
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from autobill.config import ConfigError, load_settings

ENV_ADDRESS = "AUTOBILL_DASK_ADDRESS"
DEFAULT_THREADS = max(2, os.cpu_count() or 2)


def task_runner_for(address: str | None, max_workers: int = DEFAULT_THREADS) -> TaskRunner:
    """The task runner for a Dask address (see the module docstring); threads when None/empty."""
    address = (address or "").strip()
    if not address:
        return ThreadPoolTaskRunner(max_workers=max_workers)
    from prefect_dask import DaskTaskRunner

    if address == "local" or address.startswith("local:"):
        workers = int(address.partition(":")[2] or 2)
        if workers < 1:
            raise ValueError(f"dask address {address!r}: need at least one worker")
        kwargs: dict[str, Any] = {"n_workers": workers, "processes": True, "threads_per_worker": 2,
                                  "dashboard_address": None}
        return DaskTaskRunner(cluster_kwargs=kwargs)
    return DaskTaskRunner(address=address)


def configured_address(config_path: str | os.PathLike | None = None) -> str | None:
    """`AUTOBILL_DASK_ADDRESS`, else `dask_address` from the config file (None when unreadable:
    the flow itself reports a broken config when it loads it, with the file and field)."""
    env = os.environ.get(ENV_ADDRESS)
    if env is not None:
        return env.strip() or None
    path = config_path or os.environ.get("AUTOBILL_CONFIG")
    if not path or not os.path.exists(path):
        return None
    try:
        return load_settings(path).dask_address
    except ConfigError:
        return None


def nightly_task_runner() -> TaskRunner:
    """The nightly flow's default task runner, chosen from the environment at import.

    `AUTOBILL_NIGHTLY_THREADS` sets how many servers are extracted / validated at once with
    threads (default: the CPU count, at least 2): fewer bound the peak memory of a night with many
    large servers."""
    raw = os.environ.get("AUTOBILL_NIGHTLY_THREADS", "").strip() or str(DEFAULT_THREADS)
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"AUTOBILL_NIGHTLY_THREADS={raw!r}: expected a positive whole number of threads")
    return task_runner_for(configured_address(), int(raw))


def tasks_run_here() -> bool:
    """True when the current flow run's tasks run in this process's threads (the default
    `ThreadPoolTaskRunner`): then work done here ahead of them (the GX warm-up) is work they need
    not do. False on a Dask cluster, whose workers are other processes, and outside a flow run."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    return ctx is not None and isinstance(ctx.task_runner, ThreadPoolTaskRunner)


def with_runner(flow: Any, settings: Any) -> Any:
    """`flow` with the task runner `settings.dask_address` asks for (env override first)."""
    env = os.environ.get(ENV_ADDRESS)
    address = (env.strip() or None) if env is not None else settings.dask_address
    return flow.with_options(task_runner=task_runner_for(address))
