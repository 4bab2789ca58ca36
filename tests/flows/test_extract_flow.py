"""The Prefect wrapper: per-server retries/timeout, no tags, and one failing server isolated in a flow."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from autobill.ledger.batches import commit_batch
from tasks.extract import extract_task_for
from tests.support import closed_port, make_settings
from tests.support.extract import drop_server

pytestmark = pytest.mark.flow

UNTIL = datetime(2026, 6, 2, tzinfo=UTC)


def test_task_options_follow_the_server(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url, [drop_server(tmp_path, retries=5, timeout_seconds=12)], migrate=False)
    t = extract_task_for(settings, "drop", backoff_factor=3)
    assert t.retries == 5 and t.retry_jitter_factor == 0.5
    assert t.retry_delay_seconds == [3, 6, 12, 24, 48]  # exponential backoff
    assert t.timeout_seconds is None  # network calls carry their own timeouts (see extract_task_for)
    assert not t.tags  # a tagged task run waits for Prefect's slot API before it starts (issue #15)
    assert t.cache_policy.__class__.__name__ == "_None"  # NO_CACHE: ids and paths in, no frame hashing


def test_failing_server_fails_after_retries_while_the_other_completes(
    prefect_harness, tmp_path: Path, sqlite_url: str
) -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client

    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.csv").write_text("call_id,start,billsec,dst,direction,tenant\nc1,2026-06-01T09:00:00Z,10,6135550123,outbound,acme\n")
    down = {"id": "down", "kind": "fusionpbx", "host": "127.0.0.1", "port": closed_port(), "database": "x",
            "user": "x", "sslmode": "disable", "retries": 2, "timeout_seconds": 2}  # fmt: skip
    settings = make_settings(tmp_path, sqlite_url, [drop_server(drop), down])

    @flow(name="extract-isolation-test")
    def tiny() -> dict:
        futures = {
            sid: extract_task_for(settings, sid, backoff_factor=0.01).submit(settings, sid, UNTIL)
            for sid in ("down", "drop")
        }
        for f in futures.values():
            f.wait()
        return {sid: (f.state.type.value, f.task_run_id, f.state.result(raise_on_failure=False))
                for sid, f in futures.items()}  # fmt: skip

    out = tiny()
    assert out["drop"][0] == "COMPLETED" and out["drop"][2].rows == 1
    assert out["down"][0] == "FAILED"
    assert "cannot connect" in str(out["down"][2])

    async def run_count(task_run_id) -> int:
        async with get_client() as client:
            return (await client.read_task_run(task_run_id)).run_count

    import asyncio

    assert asyncio.run(run_count(out["down"][1])) == 3  # first attempt + 2 retries
    commit_batch(settings, out["drop"][2].batch_id)  # the good server's batch is kept as usual
