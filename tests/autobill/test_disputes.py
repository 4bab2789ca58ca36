"""Disputes: billed calls credited by a correction line for exactly those calls (posted to the WHMCS
sandbox like any charge), calls not billed yet held out of billing until the dispute is resolved."""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_UP, Decimal

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from autobill.ledger.billed import billed_rows
from autobill.ledger.db import session_scope
from autobill.ledger.disputes import DisputeError, credit_amount, list_disputes, open_dispute, resolve_dispute
from autobill.ledger.models import Charge, UnratedCDR
from autobill.statement.build import build_statement
from autobill.timeutil import local_today
from connectors.whmcs import WhmcsClient
from sandboxes.generate import tariff_frame
from tasks.post import post_pending
from tasks.reconcile import reconcile_uncertain
from tests.support.statements import StatementWorld

D1, D2, D3 = date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)
CENT = Decimal("0.01")


def _rows(settings, model, *where):
    with session_scope(settings.ledger) as s:
        rows = s.scalars(select(model).where(*where)).all()
        for r in rows:
            s.expunge(r)
        return rows


def _post(w):
    with WhmcsClient.from_settings(w.settings.whmcs) as client:
        return post_pending(w.settings, client)


@given(costs=st.lists(st.decimals(0, 5, places=6), min_size=1, max_size=30), data=st.data())
def test_credits_telescope_to_the_line_without_the_credited_calls(costs, data):
    """However the calls are credited over several disputes, line + credits = the line without them."""
    n = len(costs)
    credited = data.draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(credited)), max_size=3)))
    total, earlier, credits = sum(costs, Decimal(0)), Decimal(0), Decimal(0)
    for a, b in zip([0, *cuts], [*cuts, len(credited)], strict=True):
        now = sum((costs[i] for i in credited[a:b]), Decimal(0))
        credits += credit_amount(total, earlier, now, "USD")
        earlier += now
    line = total.quantize(CENT, rounding=ROUND_HALF_UP)
    remaining = (total - earlier).quantize(CENT, rounding=ROUND_HALF_UP)
    assert line + credits == remaining and credits <= 0


def test_credit_posts_a_correction_for_exactly_the_disputed_calls(tmp_path, sandbox, ledger_url):
    w = StatementWorld(tmp_path, sandbox, ledger_url=ledger_url)
    w.bill(D1, w.calls(D1, D1, per_day=30))
    charge = max(_rows(w.settings, Charge), key=lambda c: c.cdr_count)
    calls = sorted(billed_rows(w.settings, charge_ids=[charge.id]), key=lambda b: b.cdr_key)
    disputed = [calls[0].cdr_key, calls[-1].cdr_key]
    with pytest.raises(DisputeError, match="billed to client"):
        open_dispute(w.settings, charge.client_id + 1, disputed, "not ours", "ops")
    with pytest.raises(DisputeError, match="unknown to the ledger"):
        open_dispute(w.settings, charge.client_id, ["nope:1"], "typo", "ops")
    dispute_id = open_dispute(w.settings, charge.client_id, disputed, "client says these were never made", "alice")
    with pytest.raises(DisputeError, match="already in an open dispute"):
        open_dispute(w.settings, charge.client_id, disputed[:1], "again", "bob")
    [credit_id] = resolve_dispute(w.settings, dispute_id, credit=True, who="bob", note="goodwill")
    with pytest.raises(DisputeError, match="already credited"):
        resolve_dispute(w.settings, dispute_id, credit=True, who="bob")
    [credit] = _rows(w.settings, Charge, Charge.id == credit_id)
    cost = calls[0].cost + calls[-1].cost
    total = sum((c.cost for c in calls), Decimal(0))
    assert credit.amount == (total - cost).quantize(CENT, ROUND_HALF_UP) - charge.amount
    assert credit.exact_amount == -cost and credit.cdr_count == 2 and credit.charge_class == "correction"
    assert credit.state in ("pending", "zero") and credit.client_id == charge.client_id
    report = _post(w)
    items = {i["id"]: i for i in sandbox.billable_items(charge.client_id)}
    [after] = _rows(w.settings, Charge, Charge.id == credit_id)
    # A credit lowers what the client owes: a WHMCS credit (AddCredit), as a re-rate's decrease is.
    credits = [c for c in sandbox.credits(charge.client_id) if f"[{after.idempotency_key}]" in c["description"]]
    if credit.amount != 0:
        assert report.posted == 1 and after.state == "posted"
        assert [c["amount"] for c in credits] == [-credit.amount]
    assert _post(w).posted == 0  # exactly once
    # the original line was never edited
    [orig] = _rows(w.settings, Charge, Charge.id == charge.id)
    assert (orig.amount, orig.state, orig.description) == (charge.amount, charge.state, charge.description)
    # the statement shows the correction as its own line, and its totals equal WHMCS's items
    stmt = build_statement(w.settings, charge.client_id, D1, local_today(w.settings.tz))
    [line] = [ln for ln in stmt.lines if ln.charge_id == credit_id]
    assert line.kind == "correction" and line.amount == credit.amount and "dispute #" in line.note
    assert line.tied_out and stmt.tied_out
    whmcs_total = sum((i["amount"] for i in items.values()), Decimal(0)) - sum((c["amount"] for c in credits), Decimal(0))
    assert sum((t["total"] for t in stmt.totals().values()), Decimal(0)) == whmcs_total
    [view] = list_disputes(w.settings, charge.client_id)
    assert (view.status, view.opened_by, view.resolved_by, view.note) == ("credited", "alice", "bob", "goodwill")
    assert {i["status"] for i in view.items} == {"credited"}


def test_dispute_credit_with_a_lost_answer_is_found_in_the_credit_log(tmp_path, sandbox, ledger_url):
    """A dispute credit is an AddCredit like a re-rate decrease: settled from GetCredits, credited once."""
    w = StatementWorld(tmp_path, sandbox, ledger_url=ledger_url)
    w.bill(D1, w.calls(D1, D1, per_day=30))
    costly = max(billed_rows(w.settings, outcomes=["billed"]), key=lambda b: b.cost)
    dispute_id = open_dispute(w.settings, costly.client_id, [costly.cdr_key], "never made", "alice")
    [credit_id] = resolve_dispute(w.settings, dispute_id, credit=True, who="bob")
    [credit] = _rows(w.settings, Charge, Charge.id == credit_id)
    assert credit.amount < 0 and credit.state == "pending"
    sandbox.fail_next(1, "drop_after_store", action="AddCredit")
    assert _post(w).uncertain == [credit.idempotency_key]
    with WhmcsClient.from_settings(w.settings.whmcs) as client:
        report = reconcile_uncertain(w.settings, client)
    assert report.posted == [credit.idempotency_key]
    assert _post(w).posted == 0
    [after] = _rows(w.settings, Charge, Charge.id == credit_id)
    found = [c for c in sandbox.credits(credit.client_id) if f"[{credit.idempotency_key}]" in c["description"]]
    assert after.state == "posted" and [c["amount"] for c in found] == [-credit.amount]


def _with_missing_tariff(w: StatementWorld) -> None:
    """Fix the tariff: the generator's missing destinations get a rate (unrated calls bill next run)."""
    fixed = pl.concat([tariff_frame(), pl.DataFrame(
        [("998", "0.5", "Uzbekistan", "0", "1", "1"), ("880", "0.4", "Bangladesh", "0", "1", "1"),
         ("263", "0.3", "Zimbabwe", "0", "1", "1")], schema=tariff_frame().columns, orient="row")],
        how="vertical_relaxed")
    fixed.write_csv(w.tmp / "tariffs" / "retail.csv")


def test_held_calls_stay_out_of_billing_until_released(tmp_path, sandbox):
    w = StatementWorld(tmp_path, sandbox)
    w.bill(D1, w.calls(D1, D1, per_day=30))
    unrated = _rows(w.settings, UnratedCDR, UnratedCDR.resolved_at.is_(None))
    assert len(unrated) >= 2
    held, other = unrated[0].cdr_key, unrated[1].cdr_key
    dispute_id = open_dispute(w.settings, 1, [held], "not our call", "alice")
    _with_missing_tariff(w)
    run = w.bill(D2, w.calls(D2, D2, per_day=3, seed=5))
    billed = {b.cdr_key: b for b in billed_rows(w.settings)}
    assert other in billed and held not in billed  # the tariff fix billed the others, not the held call
    [still] = _rows(w.settings, UnratedCDR, UnratedCDR.cdr_key == held)
    assert still.resolved_at is None  # still waiting, rated again next run: nothing lost
    rated = pl.read_parquet(w.settings.data_path / "rated" / f"run-{run}.parquet")
    assert rated.filter(pl.col("cdr_key") == held)["unrated_reason"].to_list() == ["disputed"]
    resolve_dispute(w.settings, dispute_id, credit=False, who="bob", note="call was made")
    w.bill(D3, w.calls(D3, D3, per_day=3, seed=6))
    [now] = billed_rows(w.settings, keys=[held])
    assert now.outcome in ("billed", "included")  # final now: billed (or covered by included minutes)
    keys = [b.cdr_key for b in billed_rows(w.settings)]
    assert len(keys) == len(set(keys))


def test_crediting_a_held_call_means_it_is_never_billed(tmp_path, sandbox):
    w = StatementWorld(tmp_path, sandbox)
    w.bill(D1, w.calls(D1, D1, per_day=30))
    held = _rows(w.settings, UnratedCDR, UnratedCDR.resolved_at.is_(None))[0].cdr_key
    dispute_id = open_dispute(w.settings, 1, [held], "fraud on the trunk", "alice")
    assert resolve_dispute(w.settings, dispute_id, credit=True, who="bob") == []
    _with_missing_tariff(w)
    w.bill(D2, w.calls(D2, D2, per_day=3, seed=5))
    [row] = billed_rows(w.settings, keys=[held])
    assert row.outcome == "credited" and row.charge_id is None and row.cost == 0
