"""Run Autobill on one machine without a work pool: `python deployments/serve.py`.

This process registers the three deployments of prefect.yaml (same schedules, limits and tags,
built by deployments/spec.py) with the Prefect server at `PREFECT_API_URL` and executes their
runs itself, each in a subprocess. The schedules' timezone comes from autobill.yaml
(`AUTOBILL_CONFIG`), so it is always the billing timezone. Stopping it (Ctrl-C, SIGTERM) pauses
the schedules until it is started again: no run is lost, the scheduler simply stops creating
them, and the next start bills everything not yet billed.

Serve needs a real server (`prefect server start`): a temporary server has no scheduler.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployments.spec import PREFECT_YAML, load_specs, runner_deployments  # noqa: E402


def build(config: str | None = None, only: list[str] | None = None) -> list:
    from autobill.config import load_settings

    settings = load_settings(config)
    specs = [s for s in load_specs(PREFECT_YAML) if not only or s.name in only]
    return runner_deployments(specs, timezone=settings.timezone)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", help="autobill.yaml (default: $AUTOBILL_CONFIG or ./autobill.yaml)")
    parser.add_argument("--only", action="append", help="serve only this deployment name (repeatable)")
    parser.add_argument("--limit", type=int, default=4, help="runs executed at once by this process")
    args = parser.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        parser.error("PREFECT_API_URL is not set: serve needs a running `prefect server start` (or Prefect Cloud)")
    if args.config:
        os.environ["AUTOBILL_CONFIG"] = str(Path(args.config).absolute())  # the flow-run subprocesses read it
    from prefect import serve

    serve(*build(args.config, args.only), limit=args.limit)


if __name__ == "__main__":
    main()
