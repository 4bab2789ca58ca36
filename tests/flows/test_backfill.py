"""Backfill: one child run per date, in order, idempotent; late CDRs become new lines; summary.

Flow tests run the real flows under the session harness, children as subflows (no deployment on
the harness server); the deployment mode with a worker and a UI-style retry is in test_deploy.py.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from autobill.backfill import DateResult, billing_dates, markdown, summarise
from sandboxes.whmcs import WhmcsSandbox
from tests.support.ops import WHMCS_ENV, BillingWorld

D1, D2, D3 = date(2026, 11, 16), date(2026, 11, 17), date(2026, 11, 18)

# -- plain functions -----------------------------------------------------------------------------


@given(st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 1, 1)), st.integers(0, 400))
def test_billing_dates_are_every_date_in_order(first, span):
    last = first + timedelta(days=span)
    if span + 1 > 366:
        with pytest.raises(ValueError, match="more than the 366"):
            billing_dates(first, last)
        return
    days = billing_dates(first, last)
    assert days[0] == first and days[-1] == last and len(days) == span + 1
    assert all(b - a == timedelta(days=1) for a, b in zip(days, days[1:], strict=False))


def test_billing_dates_refuses_a_backward_range():
    with pytest.raises(ValueError, match="before start date"):
        billing_dates(D2, D1)


amounts = st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False, allow_infinity=False)
results = st.lists(st.builds(
    DateResult, billing_date=st.dates().map(str), state=st.sampled_from(["COMPLETED", "FAILED", "NOT_RUN"]),
    status=st.sampled_from(["completed", "partial", "-"]), extracted=st.integers(0, 10**6),
    billed=st.integers(0, 10**6), charges_created=st.integers(0, 1000), charges_posted=st.integers(0, 1000),
    amount_posted=st.dictionaries(st.sampled_from(["USD", "CAD", "EUR"]), amounts.map(str), max_size=3),
    uncertain=st.integers(0, 5)), max_size=20)  # fmt: skip


@given(results)
def test_summary_totals_are_exact_sums(rows):
    s = summarise(rows)
    assert s["dates"] == len(rows) and s["billed"] == sum(r.billed for r in rows)
    assert s["charges_posted"] == sum(r.charges_posted for r in rows)
    for ccy, total in s["amount_posted"].items():
        assert Decimal(total) == sum((Decimal(r.amount_posted.get(ccy, "0")) for r in rows), Decimal(0))
    ok = [r for r in rows if r.state == "COMPLETED" and r.status == "completed"]
    assert s["completed"] == len(ok) and len(s["not_completed"]) == len(rows) - len(ok)
    text = markdown(s, D1, D3, False)
    assert all(r.billing_date in text for r in rows)
    json.dumps(s)  # plain JSON: artifacts and the CLI's --json


# -- the flow ------------------------------------------------------------------------------------


@pytest.fixture
def sandbox(prefect_harness, monkeypatch):
    for k, v in WHMCS_ENV.items():
        monkeypatch.setenv(k, v)
    with WhmcsSandbox() as sb:
        yield sb


@pytest.fixture
def world(tmp_path, sandbox):
    return BillingWorld(tmp_path, sandbox, D1, D3)


def _run(world: BillingWorld, first: date, last: date, **kw) -> dict:
    from flows.backfill import backfill

    state = backfill(start_date=first, end_date=last, config_path=str(world.config_path), deployment="",
                     return_state=True, **kw)
    summary = state.result(raise_on_failure=False)
    assert isinstance(summary, dict), state
    summary["_state"] = state.type.value
    return summary


@pytest.mark.flow
@pytest.mark.slow
@pytest.mark.postgres
def test_backfill_bills_each_date_by_its_own_child_in_order_and_a_rerun_posts_nothing(tmp_path, sandbox, pg_url):
    """PBX databases keep their history: a backfill after an outage bills day by day, in order."""
    world = BillingWorld(tmp_path, sandbox, D1, D3, kind="fusionpbx", pg_url=pg_url)
    for day in (D1, D2, D3):
        world.drop(day)
    first = _run(world, D1, D3)
    assert first["_state"] == "COMPLETED" and first["completed"] == 3 and not first["not_completed"], first
    assert [r["billing_date"] for r in first["results"]] == [str(D1), str(D2), str(D3)]
    assert [r["flow_run_name"] for r in first["results"]] == [f"autobill-{d}" for d in (D1, D2, D3)]
    assert all(r["billed"] > 0 and r["charges_posted"] > 0 for r in first["results"])
    # Each child billed its own date: the charge lines' and billed CDRs' dates follow the children.
    dates_by_run: dict[int, set] = {}
    for b in world.billed():
        dates_by_run.setdefault(b.run_id, set()).add(b.billing_date)
    assert sorted(dates_by_run.values(), key=min) == [{D1}, {D2}, {D3}]
    generated = set(world.calls["cdr_key"].to_list())
    assert {b.cdr_key for b in world.billed()} <= generated
    world.assert_exactly_once()
    items = len(world.sandbox.billable_items())

    again = _run(world, D1, D3)
    assert again["_state"] == "COMPLETED" and again["charges_posted"] == 0 and again["charges_created"] == 0
    assert len(world.sandbox.billable_items()) == items


@pytest.mark.flow
@pytest.mark.slow
def test_backfill_of_billed_dates_bills_late_cdrs_as_new_lines_only(world):
    world.drop(D1)
    first = _run(world, D1, D2)
    assert first["_state"] == "COMPLETED", first
    assert first["results"][0]["charges_posted"] > 0 and first["results"][1]["charges_created"] == 0
    assert first["extracted"] == world.calls_of(D1).height
    world.assert_exactly_once()
    before = {c.idempotency_key: c.amount for c in world.charges()}

    late = world.drop_late(D1, world.server_ids[0])
    assert late.height > 0
    second = _run(world, D1, D2)
    assert second["_state"] == "COMPLETED", second
    new = [c for c in world.charges() if c.idempotency_key not in before]
    assert new and all(c.billing_date == D1 for c in new)  # late calls of D1 bill on D1, as new lines
    assert {c.idempotency_key: c.amount for c in world.charges() if c.idempotency_key in before} == before
    assert second["results"][0]["charges_created"] == len(new) and second["results"][1]["charges_created"] == 0
    assert second["extracted"] == late.height
    world.assert_exactly_once()


@pytest.mark.flow
@pytest.mark.slow
def test_backfill_over_drop_folders_with_every_file_present_bills_each_date_in_turn(world):
    """A drop folder is read by file: a file holding calls of later dates waits for their run."""
    for day in (D1, D2, D3):
        world.drop(day)
    summary = _run(world, D1, D3)
    assert summary["_state"] == "COMPLETED" and not summary["not_completed"], summary["results"]
    assert all(r["billed"] > 0 for r in summary["results"])
    assert summary["extracted"] == world.calls.height
    assert world.ledger_states() == dict.fromkeys(world.calls["cdr_key"].to_list(), 1)
    world.assert_exactly_once()


@pytest.mark.flow
@pytest.mark.slow
def test_backfill_cli_dry_run_posts_nothing_and_exits_zero(world):
    from cli import app

    world.drop(D1)
    result = CliRunner().invoke(app, ["backfill", "--from", str(D1), "--to", str(D2), "--dry-run",
                                      "-c", str(world.config_path), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["dry_run"] and summary["dates"] == 2 and summary["charges_posted"] == 0
    assert summary["completed"] == 2 and all(r["billed"] > 0 for r in summary["results"])  # each previews D1
    assert [r["billing_date"] for r in summary["results"]] == [str(D1), str(D2)]
    assert world.sandbox.billable_items() == [] and world.charges() == []


@pytest.mark.flow
@pytest.mark.slow
def test_backfill_with_a_server_down_is_partial_and_a_rerun_completes_it(world):
    down = world.server_ids[1]
    up = [s for s in world.server_ids if s != down]
    world.drop(D1, up)
    world.drop(D2, up)
    first = _run(world, D1, D2)
    assert first["_state"] == "FAILED" and first["not_completed"] == [str(D1), str(D2)]
    assert all(r["status"] == "partial" for r in first["results"]) and first["billed"] > 0
    world.drop(D1, [down])
    world.drop(D2, [down])
    second = _run(world, D1, D2)
    assert second["_state"] == "COMPLETED", second
    billed_down = [b for b in world.billed() if b.server == down]
    assert {b.billing_date for b in billed_down} == {D1, D2}
    world.assert_exactly_once()


def test_backfill_cli_rejects_a_backward_range(tmp_path):
    from cli import app

    cfg = tmp_path / "autobill.yaml"
    cfg.write_text("timezone: UTC\n")
    result = CliRunner().invoke(app, ["backfill", "--from", "2026-11-20", "--to", "2026-11-19", "-c", str(cfg)])
    # bad usage: one line, exit 2, before any flow run (issue #12)
    assert result.exit_code == 2 and "--from 2026-11-20 is after --to 2026-11-19 (a reversed range)" in result.output
