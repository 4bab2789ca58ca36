"""Shared fixtures.

- Prefect gets its own PREFECT_HOME and no telemetry, set before anything imports prefect.
- `pg_url`: a fresh PostgreSQL schema per test on 127.0.0.1:5432 (database `test`); skipped with
  a reason when the server is unreachable, except under CI=true, where it must run.
- `prefect_harness`: one session-scoped `prefect_test_harness` for the flow tests.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

_PREFECT_HOME = Path(tempfile.mkdtemp(prefix="autobill-test-prefect-"))
os.environ["PREFECT_HOME"] = str(_PREFECT_HOME)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

PG_ADMIN_URL = os.environ.get("AUTOBILL_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=3)
        conn.close()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "unreachable"
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    why = _pg_reachable()
    if why is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required under CI=true but unreachable: {why}")
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (database test) unreachable: {why}")
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_admin_url: str):
    """A URL whose search_path is a brand-new schema, dropped after the test."""
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    yield f"{pg_admin_url}?options=-csearch_path%3D{schema}"
    from autobill.ledger import db

    for url in [u for u in db._engines if schema in u]:
        db._engines.pop(url).dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def pg_schema(pg_url: str) -> str:
    return pg_url.rsplit("%3D", 1)[1]


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The ledger on both databases, migrated to head."""
    from autobill.ledger.db import upgrade

    url = f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    upgrade(url)
    return url


def _forget_orphaned_services() -> list[str]:
    """Drop Prefect log/event services whose event loop is gone.

    A service started inside an event loop that has since closed (a Dask worker's, a finished
    `asyncio.run`) can never finish draining: `prefect_test_harness` waits on it forever at the end
    of the session. Their work is lost with their loop anyway; forgetting them lets the harness
    drain the live ones and stop its server."""
    from prefect._internal.concurrency.services import QueueService

    dropped = []
    with QueueService._instance_cache_lock:
        for key, service in list(QueueService._instances.items()):
            loop = service._loop
            if loop is None or loop.is_closed() or not loop.is_running():
                QueueService._instances.pop(key, None)
                dropped.append(type(service).__name__)
    return dropped


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    harness = prefect_test_harness(server_startup_timeout=120)
    harness.__enter__()
    yield
    _forget_orphaned_services()
    # Watchdog: the harness's own drain has been seen to wait forever on a service whose loop is
    # stuck; the session must still end (and CI finish), so the teardown gets a bounded time.
    done = threading.Thread(target=harness.__exit__, args=(None, None, None), daemon=True)
    done.start()
    done.join(HARNESS_TEARDOWN_SECONDS)
    if done.is_alive():
        print(f"\nprefect_test_harness did not stop within {HARNESS_TEARDOWN_SECONDS} s; ending its server",
              file=sys.stderr)
        _kill_children()


HARNESS_TEARDOWN_SECONDS = 120


def _kill_children() -> None:
    """SIGTERM this process's child processes (the harness's API server), read from /proc."""
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            try:
                os.kill(int(stat.parent.name), signal.SIGTERM)
            except OSError:
                pass
