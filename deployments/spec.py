"""prefect.yaml as data: the one place the deployments (schedules, limits, tags) are declared.

`prefect deploy --all` reads prefect.yaml itself; `deployments/serve.py` (one machine, no work
pool) builds the same deployments from it here, so the two ways of running never disagree on a
schedule or a concurrency limit. `check_timezone` is what `autobill deploy` runs first: the YAML
must carry a literal timezone (Prefect cannot read autobill.yaml), and it must be the billing one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str  # path/to/file.py:flow, relative to the project root
    description: str = ""
    tags: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    concurrency_limit: dict[str, Any] | None = None
    work_pool: str | None = None
    enforce_parameter_schema: bool = True


def load_specs(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    out = []
    for d in doc.get("deployments") or []:
        limit = d.get("concurrency_limit")
        if isinstance(limit, int):
            limit = {"limit": limit}
        out.append(DeploymentSpec(
            name=d["name"], entrypoint=d["entrypoint"], description=(d.get("description") or "").strip(),
            tags=list(d.get("tags") or []), parameters=dict(d.get("parameters") or {}),
            schedules=[dict(s) for s in d.get("schedules") or []], concurrency_limit=limit,
            work_pool=(d.get("work_pool") or {}).get("name"),
            enforce_parameter_schema=bool(d.get("enforce_parameter_schema", True)),
        ))  # fmt: skip
    return out


def work_pool_names(specs: list[DeploymentSpec]) -> list[str]:
    return sorted({s.work_pool for s in specs if s.work_pool})


def check_timezone(specs: list[DeploymentSpec], timezone: str) -> list[str]:
    """Problems (empty when fine): a schedule without a timezone, or with another one."""
    problems = []
    for s in specs:
        for sched in s.schedules:
            tz = sched.get("timezone")
            if tz is None:
                problems.append(f"deployment {s.name}: schedule {sched.get('slug') or sched} has no timezone "
                                f"(Prefect would use UTC; the billing timezone is {timezone})")
            elif tz != timezone:
                problems.append(f"deployment {s.name}: schedule timezone {tz} differs from the configured "
                                f"timezone {timezone} (edit `definitions.timezone` in prefect.yaml)")
    return problems


def load_flow(entrypoint: str, root: Path = PROJECT_ROOT):
    """The flow object behind `path/to/file.py:name` (imported as a module of this package)."""
    import importlib

    path, _, name = entrypoint.partition(":")
    module = ".".join(Path(path).with_suffix("").parts)
    return getattr(importlib.import_module(module), name)


def runner_deployments(specs: list[DeploymentSpec], timezone: str | None = None) -> list[Any]:
    """`RunnerDeployment`s for `prefect.serve` with the same schedules and limits as prefect.yaml;
    `timezone` overrides the YAML's (serve reads the billing timezone from autobill.yaml)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron, Interval

    out = []
    for s in specs:
        schedules = []
        for sched in s.schedules:
            tz = timezone or sched.get("timezone") or "UTC"
            if "cron" in sched:
                schedules.append(Cron(sched["cron"], timezone=tz, active=sched.get("active", True),
                                      slug=sched.get("slug")))
            elif "interval" in sched:
                schedules.append(Interval(sched["interval"], timezone=tz, active=sched.get("active", True),
                                          slug=sched.get("slug")))
            else:
                raise ValueError(f"deployment {s.name}: unsupported schedule {sched} (cron or interval)")
        limit = ConcurrencyLimitConfig(**s.concurrency_limit) if s.concurrency_limit else None
        flow = load_flow(s.entrypoint)
        out.append(flow.to_deployment(
            name=s.name, schedules=schedules, concurrency_limit=limit, parameters=s.parameters or None,
            description=s.description or None, tags=s.tags, enforce_parameter_schema=s.enforce_parameter_schema,
        ))  # fmt: skip
    return out
