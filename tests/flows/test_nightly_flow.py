"""The nightly flow end to end: generated CDRs -> real flow runs -> the WHMCS sandbox over HTTP.

Every test asserts the exactly-once invariants: nothing billed twice, nothing missing, and the
amounts in WHMCS equal the sum of the rated CDRs to the cent.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import date
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import select

from autobill.ledger.billed import billed_rows
from autobill.ledger.db import session_scope
from autobill.ledger.models import ChargeReconciliation
from autobill.money import round_minor
from sandboxes.whmcs import WhmcsSandbox
from tests.support.ops import BillingWorld, kill_while_posting

pytestmark = [pytest.mark.flow]
ROOT = Path(__file__).resolve().parents[2]
D1, D2 = date(2026, 11, 18), date(2026, 11, 19)


@pytest.fixture
def env(tmp_path, prefect_harness, monkeypatch):
    monkeypatch.setenv("TEST_WHMCS_ID", "demo")
    monkeypatch.setenv("TEST_WHMCS_SECRET", "demo")
    with WhmcsSandbox(timezone="America/Toronto") as sandbox:  # the generated world's billing timezone
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


def test_a_night_rated_in_chunks_is_recorded_chunk_by_chunk_while_rated_and_bills_once(env, monkeypatch):
    """A night of several rating chunks (tasks/rate.py): each chunk's rated rows are recorded in the
    recorder's thread while the rate step goes on (tasks/aggregate.py `ChunkRecorder`), the rest
    with the batches in the record step; the preview of a dry run and the real run agree, every
    charge is posted once and a rerun posts nothing."""
    import threading

    import tasks.aggregate as aggregate

    monkeypatch.setenv("AUTOBILL_RATE_CHUNK_ROWS", "25")
    real, seen = aggregate.record_billing, []

    def spy(settings, rated, run_id, batch_ids, dry_run):
        seen.append((threading.current_thread().name, bool(batch_ids), dry_run))
        return real(settings, rated, run_id, batch_ids, dry_run)

    monkeypatch.setattr(aggregate, "record_billing", spy)
    env.drop(D1)
    preview = env.run(D1, dry_run=True)
    assert preview["charges_posted"] == 0 and env.charges() == []
    first = env.run(D1)
    assert first["_state"] == "COMPLETED", first
    assert first["balanced"] and first["unrated"] > 0 and first["charges_posted"] == first["charges_created"] > 0
    assert sorted(Decimal(p["amount"]) for p in preview["preview"]) == sorted(c.amount for c in env.charges())
    rated = pl.read_parquet(max((env.settings.data_path / "rated").glob("run-*.parquet"), key=lambda p: p.stat().st_mtime))
    chunks = rated.filter(pl.col("outcome") != "unrated")["chunk"].n_unique()
    assert chunks >= 2
    # Per run: one transaction per chunk with rated rows in the recorder's thread, without the
    # batches; then one in the record step (the flow's task thread) with them.
    real_run = seen[len(seen) // 2:]
    assert [s for s in real_run if s[0].startswith("record-chunk")] == [(real_run[0][0], False, False)] * chunks
    assert [s[1:] for s in real_run if not s[0].startswith("record-chunk")] == [(True, False)]
    assert [s[2] for s in seen[:len(seen) // 2]] == [True] * (chunks + 1)
    _assert_whmcs_matches_ledger(env)
    from autobill.ledger.models import UnratedCDR

    with session_scope(env.settings.ledger) as s:  # the unrated rows kept whole, with their source row
        rows = [json.loads(u.row) for u in s.scalars(select(UnratedCDR))]
    assert len(rows) == first["unrated"] and all(r["source_row"] for r in rows)
    items = len(env.sandbox.billable_items())
    again = env.run(D1)
    assert again["charges_posted"] == 0 and again["charges_created"] == 0 and again["extracted"] == 0
    assert len(env.sandbox.billable_items()) == items


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
    days = Counter((b.server, b.billing_date) for b in billed_rows(env.settings) if b.server == down)
    assert days[(down, D1)] > 0 and days[(down, D2)] > 0
    _assert_whmcs_matches_ledger(env)
    # Every generated call of both days ended in exactly one state.
    generated = env.calls.filter(pl.col("start_utc").dt.convert_time_zone(env.world.timezone).dt.date() <= D2)
    assert first["extracted"] + second["extracted"] == generated.height


def test_killed_run_double_bills_nothing_and_surfaces_the_uncertain_charge(env, prefect_harness):
    from autobill.ledger.db import upgrade

    env.drop(D1)
    upgrade(env.settings.ledger)
    env.sandbox.set_faults(action="AddBillableItem", mode="slow", delay=3.0)
    kill_while_posting(env, "run", "--date", D1.isoformat())
    env.sandbox.clear_faults()
    killed = [c for c in env.charges() if c.state == "posting"]
    # Only the charges in flight, one per posting worker, not a whole claimed batch.
    assert 0 < len(killed) <= env.settings.whmcs.post_workers
    assert len(env.charges()) > env.settings.whmcs.post_workers  # so the bound is not trivially met
    rerun = env.run(D1)
    assert {c.idempotency_key for c in killed} <= set(rerun["uncertain"])
    assert rerun["reconcile_undecided"] == len(killed)  # WHMCS's cron has not run since: left alone
    states = Counter(c.state for c in env.charges())
    assert states["uncertain"] == len(killed) and states["posting"] == 0 and states["pending"] == 0
    items = env.sandbox.billable_items()
    for c in killed:  # at most once, never twice: it may or may not have reached WHMCS
        assert len([i for i in items if c.idempotency_key in i["description"]]) <= 1
    for c in env.charges():
        if c.state == "posted":
            assert len([i for i in items if c.idempotency_key in i["description"]]) == 1
    # WHMCS's daily cron invoices what it holds; the next run settles the rest with no manual step.
    assert env.sandbox.wait_idle(10.0)
    env.sandbox.run_daily_cron()
    last = env.run(D1)
    assert last["status"] == "completed" and last["uncertain"] == [], last
    assert last["reconciled_posted"] + last["reconciled_pending"] == len(killed)
    assert not [c for c in env.charges() if c.state != "posted"]
    env.sandbox.run_daily_cron()  # what was posted again is invoiced by the next cron
    _assert_invoiced_once(env)
    _assert_whmcs_matches_ledger(env)


def _assert_invoiced_once(env: BillingWorld) -> None:
    """After WHMCS's cron: every posted charge is on exactly one invoice line, the one made from its
    billable item; no invoice line carries a key twice or a key the ledger does not know."""
    lines = env.sandbox.invoice_items()
    charges = {c.idempotency_key: c for c in env.charges() if c.state == "posted"}
    per_key = Counter(k for ln in lines for k in charges if f"[{k}]" in ln["description"])
    assert set(per_key) == set(charges) and set(per_key.values()) == {1}
    assert len(lines) == len(charges)
    by_key = {k: ln for ln in lines for k in charges if f"[{k}]" in ln["description"]}
    for key, charge in charges.items():
        assert by_key[key]["relid"] == charge.whmcs_billable_id and by_key[key]["amount"] == charge.amount


@pytest.mark.parametrize("mode", ["drop_after_store", "500_after_store", "garbage_after_store"])
def test_answer_lost_after_the_effect_is_settled_by_the_run_after_whmcs_cron(env, mode):
    env.drop(D1)
    env.sandbox.fail_next(2, mode, action="AddBillableItem")
    first = env.run(D1)
    assert first["status"] == "partial" and len(first["uncertain"]) == 2
    stored = [i for i in env.sandbox.billable_items() if any(k in i["description"] for k in first["uncertain"])]
    assert len(stored) == 2  # WHMCS did store them: only the answers were lost

    again = env.run(D1)  # no cron yet: nothing can be known, nothing is re-posted
    assert sorted(again["uncertain"]) == sorted(first["uncertain"]) and again["reconcile_undecided"] == 2
    assert again["charges_posted"] == 0 and len(env.sandbox.billable_items()) == len(env.charges())

    env.sandbox.run_daily_cron()
    settled = env.run(D1)
    assert settled["status"] == "completed" and settled["uncertain"] == []
    assert settled["reconciled_posted"] == 2 and settled["reconciled_pending"] == 0 and settled["charges_posted"] == 0
    _assert_whmcs_matches_ledger(env)
    _assert_invoiced_once(env)
    with session_scope(env.settings.ledger) as s:  # every decision kept, with the invoices it read
        decisions = s.scalars(select(ChargeReconciliation).order_by(ChargeReconciliation.id)).all()
        assert [d.outcome for d in decisions] == ["undecided", "undecided", "posted", "posted"]
        for d in decisions[2:]:
            assert d.source == "invoices" and d.invoice_id in json.loads(d.invoices_scanned)
            assert d.billable_id in {i["id"] for i in stored}


def test_uncertain_charge_never_stored_is_posted_again_after_the_cron(env):
    env.drop(D1)
    env.sandbox.fail_next(1, "500", action="AddBillableItem")  # 500 before storing: uncertain, not in WHMCS
    first = env.run(D1)
    (key,) = first["uncertain"]
    assert not [i for i in env.sandbox.billable_items() if key in i["description"]]
    env.sandbox.run_daily_cron()
    second = env.run(D1)
    assert second["reconciled_pending"] == 1 and second["charges_posted"] == 1 and second["uncertain"] == []
    assert len([i for i in env.sandbox.billable_items() if key in i["description"]]) == 1
    env.sandbox.run_daily_cron()
    _assert_whmcs_matches_ledger(env)
    _assert_invoiced_once(env)


def test_cron_that_ran_before_the_charge_became_uncertain_decides_nothing(env):
    env.drop(D1)
    env.sandbox.run_daily_cron()  # a cron run, but before the post
    env.sandbox.fail_next(1, "500", action="AddBillableItem")
    first = env.run(D1)
    (key,) = first["uncertain"]
    second = env.run(D1)
    assert second["uncertain"] == [key] and second["reconcile_undecided"] == 1 and second["charges_posted"] == 0
    assert not [i for i in env.sandbox.billable_items() if key in i["description"]]  # not re-posted


def _artifacts(flow_run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in artifacts}


def test_summary_artifact_and_a_quiet_rerun(env):
    from flows.autobill import nightly

    env.drop(D1)
    first = nightly(billing_date=D1, config_path=str(env.config_path), return_state=True)
    arts = _artifacts(str(first.state_details.flow_run_id))
    summary = arts["autobill-run-summary"].data
    posted = sum((c.amount for c in env.charges() if c.state == "posted"), Decimal(0))
    # Totals first, money as "1.73 USD", the charts inline (PNG data URIs), no Python reprs.
    assert summary.splitlines()[4] == f"| **Posted to WHMCS** | **{posted:.2f} USD** |"
    assert "![Nightly trend" in summary and "](data:image/png;base64," in summary
    assert "![Volume per server](data:image/png;base64," in summary
    assert "Decimal(" not in summary
    clients = arts["autobill-client-totals"].data
    assert '"client": "Test Client"' in clients and f'"amount": "{posted:.2f} USD"' in clients  # WHMCS names; total

    again = nightly(billing_date=D1, config_path=str(env.config_path), return_state=True)
    arts = _artifacts(str(again.state_details.flow_run_id))
    for server in ("file-1", "file-2"):  # a rerun with no new calls is not judged as an "empty night"
        report = arts[f"validation-{server}"].data
        assert "rerun of a billed date: no new CDRs" in report and "## Warnings" not in report
        assert "volume" not in report.lower()
    assert len(env.sandbox.billable_items()) == len([c for c in env.charges() if c.state == "posted"])
