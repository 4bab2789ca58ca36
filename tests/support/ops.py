"""Shared by the operations tests (deploy, backfill, Dask, demo): a generated billing world on disk.

A `BillingWorld` is a small generated set of clients on drop-folder servers, a config file that
points at a WHMCS sandbox holding the same clients, and helpers to drop a day's CDR files and
to read back what the ledger and WHMCS hold, so each test can assert exactly-once billing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from sqlalchemy import select

from autobill.config import load_settings
from autobill.ledger.billed import BilledRow, billed_rows
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge, QuarantinedRow, UnratedCDR
from autobill.ledger.runs import run_summary
from flows.autobill import nightly
from sandboxes.generate import (
    fusionpbx_server_fields,
    generate_calls,
    generate_config,
    make_world,
    qualified_table,
    tariff_frame,
    write_drop_folder,
    write_fusionpbx,
)

ROOT = Path(__file__).resolve().parents[2]
WHMCS_ENV = {"TEST_WHMCS_ID": "demo", "TEST_WHMCS_SECRET": "demo"}


class BillingWorld:
    def __init__(self, tmp: Path, sandbox: Any, first: date, last: date, clients: int = 6, servers: int = 2,
                 seed: int = 7, ledger_url: str | None = None, calls_per_day: float = 12, kind: str = "file",
                 pg_url: str | None = None, whmcs_timeout: float = 10, **extra: Any) -> None:
        """`kind="fusionpbx"` keeps each server's calls in a `v_xml_cdr_<n>` table of `pg_url`'s schema
        (read by window, like a real PBX database); `"file"` uses drop folders (read whole, once)."""
        self.tmp, self.sandbox, self.kind, self.pg_url = tmp, sandbox, kind, pg_url
        self.world = make_world(clients=clients, servers_per_kind=servers, kinds=(kind,), seed=seed)
        self.calls = generate_calls(self.world, first, last, calls_per_client_day=calls_per_day)
        self.tables: dict[str, str] = {}
        overrides: dict[str, dict[str, Any]] = {}
        if kind == "fusionpbx":
            for i, sid in enumerate(self.server_ids, start=1):
                self.tables[sid] = qualified_table(pg_url, f"v_xml_cdr_{i}")
                overrides[sid] = fusionpbx_server_fields(pg_url, self.tables[sid])
        config = generate_config(self.world, overrides)
        (tmp / "tariffs").mkdir(parents=True, exist_ok=True)
        tariff_frame().write_csv(tmp / "tariffs" / "retail.csv")
        for server in config["servers"]:
            if kind == "file":
                server["settle_seconds"] = 0
            server["retries"] = 0
        config["whmcs"] = {"url": sandbox.url, "identifier": {"env": "TEST_WHMCS_ID"},
                           "secret": {"env": "TEST_WHMCS_SECRET"}, "retries": 3, "timeout_seconds": whmcs_timeout}
        if ledger_url:
            config["ledger_url"] = ledger_url
        config.update(extra)
        self.config_path = tmp / "autobill.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        for _ in range(clients):
            sandbox.add_client()
        self.settings = load_settings(self.config_path)

    @property
    def server_ids(self) -> list[str]:
        return self.world.servers["id"].to_list()

    def calls_of(self, day: date, servers: list[str] | None = None) -> pl.DataFrame:
        local = pl.col("start_utc").dt.convert_time_zone(self.world.timezone).dt.date()
        return self.calls.filter(pl.col("server").is_in(servers or self.server_ids) & (local == day))

    def drop(self, day: date, servers: list[str] | None = None) -> None:
        """Put the calls of `day` (local) where each server's connector reads them, as the PBXs would."""
        for sid in servers or self.server_ids:
            if self.kind == "fusionpbx":
                write_fusionpbx(self.pg_url, self.tables[sid], self.calls_of(day, [sid]), self.world.timezone,
                                seed=self.world.seed)
                continue
            folder = self.tmp / "drop" / sid
            folder.mkdir(parents=True, exist_ok=True)
            write_drop_folder(folder, self.calls_of(day, [sid]), self.world.timezone)

    def drop_late(self, day: date, server: str, seed: int = 99, calls_per_day: float = 4) -> pl.DataFrame:
        """New calls of `day` arriving after it was billed (another file in the drop folder)."""
        late = generate_calls(self.world, day, day, calls_per_client_day=calls_per_day, seed=seed)
        late = late.filter(pl.col("server") == server)
        staging = self.tmp / "staging" / server
        for path in write_drop_folder(staging, late, self.world.timezone):
            target = self.tmp / "drop" / server / f"late-{seed}-{path.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
        return late

    def run(self, day: date, **kw: Any) -> dict[str, Any]:
        """The nightly flow for `day` on this world; its ledger summary, with `_state` (the flow state)."""
        state = nightly(billing_date=day, config_path=str(self.config_path), return_state=True, **kw)
        summary = run_summary(self.settings, str(state.state_details.flow_run_id))
        assert summary is not None, state.message
        summary["_state"] = state.type.value
        return summary

    # -- what the ledger and WHMCS hold ------------------------------------------------------

    def charges(self) -> list[Charge]:
        with session_scope(self.settings.ledger) as s:
            rows = s.scalars(select(Charge).order_by(Charge.id)).all()
            for r in rows:
                s.expunge(r)
            return rows

    def billed(self) -> list[BilledRow]:
        """Every billed CDR (manifests and legacy rows), through the one read API."""
        return billed_rows(self.settings)

    def billed_cost(self) -> dict[int, Decimal]:
        """Exact per-client sum of the billed CDRs' rounded costs, from the ledger."""
        totals: dict[int, Decimal] = {}
        for b in self.billed():
            if b.outcome == "billed":
                totals[b.client_id] = totals.get(b.client_id, Decimal(0)) + b.cost
        return totals

    def ledger_states(self) -> dict[str, int]:
        """cdr_key -> in how many final-or-waiting ledger states it is (billed state, unrated, quarantine)."""
        counts: Counter[str] = Counter(b.cdr_key for b in self.billed())
        with session_scope(self.settings.ledger) as s:
            for model in (UnratedCDR, QuarantinedRow):
                counts.update(k for k in s.scalars(select(model.cdr_key)) if k is not None)
        return dict(counts)

    def charge_signature(self) -> list[tuple]:
        """What was charged, independent of ids and timing: sortable tuples."""
        return sorted((c.idempotency_key, c.client_id, c.service_id, c.billing_date, c.charge_class,
                       c.amount, c.exact_amount, c.cdr_count, c.state) for c in self.charges())

    def assert_exactly_once(self) -> None:
        """Every posted charge is in WHMCS exactly once with its amount; nothing else is there."""
        items = self.sandbox.billable_items()
        posted = [c for c in self.charges() if c.state == "posted"]
        hits = Counter(c.idempotency_key for c in posted for i in items if c.idempotency_key in i["description"])
        assert len(items) == len(posted), (len(items), len(posted))
        assert all(n == 1 for n in hits.values()) and len(hits) == len(posted)
        by_id = {c.whmcs_billable_id: c for c in posted}
        for item in items:
            assert item["amount"] == by_id[item["id"]].amount and item["userid"] == by_id[item["id"]].client_id
        keys = [b.cdr_key for b in self.billed()]
        assert len(keys) == len(set(keys))
        # Each billed CDR's cost is in exactly one charge: per charge, the sum of its CDRs' costs.
        per_charge: dict[int, Decimal] = {}
        for b in self.billed():
            if b.charge_id is not None:
                per_charge[b.charge_id] = per_charge.get(b.charge_id, Decimal(0)) + b.cost
        for c in self.charges():
            assert per_charge.get(c.id, Decimal(0)) == c.exact_amount, c.idempotency_key


def summary_for(settings, flow_run_id: str) -> dict[str, Any] | None:
    return run_summary(settings, flow_run_id)


@contextmanager
def whmcs_world(tmp_path: Path, monkeypatch: Any, first: date, last: date, **kw: Any) -> Iterator[BillingWorld]:
    """A BillingWorld on a fresh WHMCS sandbox, with the WHMCS secrets in the environment (for fixtures)."""
    from sandboxes.whmcs import WhmcsSandbox

    for k, v in WHMCS_ENV.items():
        monkeypatch.setenv(k, v)
    with WhmcsSandbox() as sandbox:
        yield BillingWorld(tmp_path, sandbox, first, last, **kw)


def kill_while_posting(world: BillingWorld, *args: str, what: str = "the run") -> None:
    """Run `autobill ARGS -c <world's config>` in a child process and SIGKILL it as soon as a charge
    is `posting` (the WHMCS sandbox should be slowed first, so that it dies mid-call)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from prefect.settings import PREFECT_API_URL

    cmd = [sys.executable, "-m", "cli", *args, "-c", str(world.config_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(c.state == "posting" for c in world.charges()):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"{what} never started posting")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
