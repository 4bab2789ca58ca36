"""Work-pool setup: what prefect.yaml cannot express (it names a pool, it cannot create one).

`prefect deploy` refuses a deployment whose pool does not exist, and a worker started before
the pool exists creates it with a default template. `ensure_work_pool` makes the pool explicitly
(type `process`: each flow run is a subprocess of the worker, on the worker's machine, with the
worker's environment), idempotently, so `autobill deploy` can be run again at any time.
"""

from __future__ import annotations

DEFAULT_POOL = "autobill-process"


def ensure_work_pool(name: str = DEFAULT_POOL, pool_type: str = "process",
                     concurrency_limit: int | None = None) -> bool:
    """Create the work pool if it is missing; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type, concurrency_limit=concurrency_limit))
        except ObjectAlreadyExists:  # another `autobill deploy` won the race
            return False
        return True
