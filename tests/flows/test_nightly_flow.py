"""The nightly flow end to end: generated CDRs -> real flow runs -> the WHMCS sandbox over HTTP.

Every test asserts the exactly-once invariants: nothing billed twice, nothing missing, and the
amounts in WHMCS equal the sum of the rated CDRs to the cent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import date
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import select

from autobill.ledger.db import session_scope
from autobill.ledger.models import BilledCDR
from autobill.money import round_minor
from sandboxes.whmcs import WhmcsSandbox
from tests.support.ops import BillingWorld

pytestmark = [pytest.mark.flow]
ROOT = Path(__file__).resolve().parents[2]
D1, D2 = date(2026, 11, 18), date(2026, 11, 19)


@pytest.fixture
def env(tmp_path, prefect_harness, monkeypatch):
    monkeypatch.setenv("TEST_WHMCS_ID", "demo")
    monkeypatch.setenv("TEST_WHMCS_SECRET", "demo")
    with WhmcsSandbox() as sandbox:
        yield BillingWorld(tmp_path, sandbox, D1, D2, calls_per_day=15, whmcs_timeout=5)


def _assert_whmcs_matches_ledger(env: BillingWorld) -> None:
    items = env.sandbox.billable_items()
    charges = [c for c in env.charges() if c.state == "posted"]
    # One item per posted charge, and each charge's key appears in exactly one item.
    keys = Counter(c.idempotency_key for c in charges for i in items if c.idempotency_key in i["description"])
    assert len(items) == len(charges) and all(n == 1 for n in keys.values()) and len(keys) == len(charges)
    by_item = {c.whmcs_billable_id: c for c in charges}
    for item in items:
        charge = by_item[item["id"]]
        assert item["amount"] == charge.amount and item["userid"] == charge.client_id
    # To the cent: what WHMCS holds per client is the sum of its lines, each line the rounded exact sum.
    per_client: dict[int, Decimal] = {}
    for item in items:
        per_client[item["userid"]] = per_client.get(item["userid"], Decimal(0)) + item["amount"]
    exact_lines: dict[int, Decimal] = {}
    for c in charges:
        exact_lines[c.client_id] = exact_lines.get(c.client_id, Decimal(0)) + round_minor(c.exact_amount, c.currency)
    assert per_client == exact_lines
    billed = env.billed_cost()
    assert {k: v for k, v in billed.items() if v} == {
        cid: sum((c.exact_amount for c in charges if c.client_id == cid), Decimal(0)) for cid in per_client
    }


def test_nightly_bills_once_and_a_rerun_posts_nothing(env):
    env.drop(D1)
    first = env.run(D1)
    assert first["_state"] == "COMPLETED", first
    assert first["balanced"] and first["status"] == "completed"
    assert first["extracted"] > 0 and first["billed"] > 0 and first["charges_posted"] == first["charges_created"] > 0
    assert first["unrated"] > 0  # the generated tariff leaves some destinations out on purpose
    _assert_whmcs_matches_ledger(env)
    import json

    from autobill.ledger.models import UnratedCDR

    with session_scope(env.settings.ledger) as s:  # kept whole, with the source row, to rate again
        rows = [json.loads(u.row) for u in s.scalars(select(UnratedCDR))]
    assert len(rows) == first["unrated"] and all(r["source_row"] and r["start_utc"] for r in rows)
    items = len(env.sandbox.billable_items())

    again = env.run(D1)
    assert again["charges_posted"] == 0 and again["charges_created"] == 0 and again["extracted"] == 0
    assert len(env.sandbox.billable_items()) == items
    _assert_whmcs_matches_ledger(env)


def test_dry_run_previews_and_posts_nothing(env):
    env.drop(D1)
    preview = env.run(D1, dry_run=True)
    assert preview["dry_run"] and preview["preview"] and preview["charges_posted"] == 0
    assert env.sandbox.billable_items() == [] and env.charges() == []
    real = env.run(D1)
    assert real["charges_created"] == len(preview["preview"])
    assert sorted(Decimal(p["amount"]) for p in preview["preview"]) == sorted(c.amount for c in env.charges())


def test_whmcs_failing_30_percent_posts_each_charge_once(env):
    env.drop(D1)
    env.sandbox.set_faults(action="AddBillableItem", mode="503", error_rate=0.3, seed=3)
    summary = env.run(D1)
    assert summary["charges_posted"] == summary["charges_created"] > 3
    assert env.sandbox.request_count("AddBillableItem") > summary["charges_created"]  # some were retried
    _assert_whmcs_matches_ledger(env)


def test_lost_answer_becomes_uncertain_and_is_never_reposted(env):
    env.drop(D1)
    env.sandbox.fail_next(1, "drop_after_store", action="AddBillableItem")
    summary = env.run(D1)
    assert summary["status"] == "partial" and len(summary["uncertain"]) == 1
    (key,) = summary["uncertain"]
    items = env.sandbox.billable_items()
    stored = [i for i in items if key in i["description"]]
    assert len(stored) == 1  # the sandbox did store it: the answer was lost
    again = env.run(D1)
    assert again["charges_posted"] == 0 and key in again["uncertain"]
    assert len([i for i in env.sandbox.billable_items() if key in i["description"]]) == 1
    from autobill.ledger.charges import reconcile

    reconcile(env.settings, key, posted=True, billable_id=stored[0]["id"])
    _assert_whmcs_matches_ledger(env)


def test_server_down_one_night_is_billed_in_full_next_night(env):
    down = env.world.servers["id"][0]
    env.drop(D1, [s for s in env.world.servers["id"].to_list() if s != down])
    first = env.run(D1)
    assert first["_state"] == "FAILED" and first["status"] == "partial"
    assert first["servers"][down]["status"] == "failed" and down in first["failed_servers"]
    assert first["billed"] > 0  # the other server was billed
    env.drop(D1, [down])
    env.drop(D2)
    second = env.run(D2)
    assert second["servers"][down]["status"] == "ok"
    with session_scope(env.settings.ledger) as s:
        days = Counter(
            (b.server, b.billing_date) for b in s.scalars(select(BilledCDR).where(BilledCDR.server == down))
        )
    assert days[(down, D1)] > 0 and days[(down, D2)] > 0
    _assert_whmcs_matches_ledger(env)
    # Every generated call of both days ended in exactly one state.
    generated = env.calls.filter(pl.col("start_utc").dt.convert_time_zone(env.world.timezone).dt.date() <= D2)
    assert first["extracted"] + second["extracted"] == generated.height


def test_killed_run_double_bills_nothing_and_surfaces_the_uncertain_charge(env, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    from autobill.ledger.db import upgrade

    env.drop(D1)
    upgrade(env.settings.ledger)
    env.sandbox.set_faults(action="AddBillableItem", mode="slow", delay=3.0)
    cmd = [sys.executable, "-m", "cli", "run", "--date", D1.isoformat(), "-c", str(env.config_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if any(c.state == "posting" for c in env.charges()):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the run never started posting")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    env.sandbox.clear_faults()
    killed = [c for c in env.charges() if c.state == "posting"]
    assert 0 < len(killed) <= env.settings.whmcs.post_batch  # the claimed batch in flight when it died
    rerun = env.run(D1)
    assert {c.idempotency_key for c in killed} <= set(rerun["uncertain"])
    states = Counter(c.state for c in env.charges())
    assert states["uncertain"] == len(killed) and states["posting"] == 0 and states["pending"] == 0
    items = env.sandbox.billable_items()
    for c in killed:  # at most once, never twice: it may or may not have reached WHMCS
        assert len([i for i in items if c.idempotency_key in i["description"]]) <= 1
    for c in env.charges():
        if c.state == "posted":
            assert len([i for i in items if c.idempotency_key in i["description"]]) == 1
