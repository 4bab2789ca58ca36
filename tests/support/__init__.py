"""Shared builders for the tests (one place each: reuse them, never write a twin)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autobill.config import Settings, settings_from_dict
from autobill.ledger.db import upgrade
from sandboxes.loopback import free_port


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    return free_port()


def make_settings(tmp_path: Path, ledger_url: str | None = None, servers: list[dict[str, Any]] | None = None,
                  migrate: bool = True, **extra: Any) -> Settings:
    """Settings for a test: America/Toronto, data and ledger (SQLite unless `ledger_url`) under
    `tmp_path`, these servers and any other config keys; the ledger migrated unless `migrate=False`."""
    raw: dict[str, Any] = {
        "timezone": "America/Toronto",
        "data_dir": str(tmp_path / "data"),
        "ledger_url": ledger_url or f"sqlite:///{tmp_path / 'ledger.db'}",
        "servers": servers or [],
        **extra,
    }
    if migrate:
        upgrade(raw["ledger_url"])
    return settings_from_dict(raw, base_dir=tmp_path)


def at_once(func, inputs: list) -> tuple[list, list[Exception]]:
    """Call `func` on every input in its own thread, all released together by a barrier:
    (results, errors) — what a test of concurrent writers asserts on."""
    import threading

    barrier = threading.Barrier(len(inputs))
    results, errors = [], []

    def run(arg):
        try:
            barrier.wait()
            results.append(func(arg))
        except Exception as exc:  # noqa: BLE001 - collected for the test to assert on
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(a,)) for a in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def make_final(ledger_url: str, data_path: Path, rows: list[tuple[str, str, Any, str, str]]) -> None:
    """Mark CDRs final the way the nightly does (a billed manifest registered in the ledger, under the
    billed-state lock): rows of (cdr_key, server, billing_date, outcome, cost as 6-decimal text)."""
    from datetime import UTC, datetime

    from autobill.ledger.billed import lock_billed_state, record_final, without_charge
    from autobill.ledger.db import session_scope

    now = datetime.now(UTC)
    frame = without_charge(rows, now)
    with session_scope(ledger_url) as session:
        lock_billed_state(session)
        record_final(session, data_path, frame, None, (), now)
