"""`autobill charges reconcile`: the evidence, several keys at once, one-line errors, no migration run."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from autobill.config import load_settings
from autobill.ledger import db as ledger_db
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import Charge
from autobill.ledger.reconciliation import record_decision, uncertain_charges
from autobill.reconcile import UNDECIDED, Decision, Evidence
from cli import app

runner = CliRunner()


@pytest.fixture
def ledger(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    cfg = tmp_path / "autobill.yaml"
    cfg.write_text(f"ledger_url: {url}\n")
    at = datetime(2026, 11, 20, 5, 57, tzinfo=UTC)
    with session_scope(url) as s:
        for i, state in enumerate(["uncertain", "uncertain", "uncertain", "posted"]):
            s.add(Charge(idempotency_key=f"ab-c{i}", client_id=1, service_id=1, billing_date=date(2026, 11, 19),
                         charge_class="outbound", currency="USD", amount=Decimal("3.00"), exact_amount=Decimal(3),
                         tariff_version="v", description=f"calls [ab-c{i}]", state=state, posting_started_at=at,
                         uncertain_at=at, last_error="answer lost"))
    return str(cfg), url


def _states(url: str) -> dict[str, tuple[str, int | None]]:
    with session_scope(url) as s:
        return {c.idempotency_key: (c.state, c.whmcs_billable_id) for c in s.scalars(select(Charge))}


def test_list_shows_why_each_is_still_uncertain(ledger):
    cfg, url = ledger
    settings = load_settings(cfg)
    first = uncertain_charges(settings)[0]
    record_decision(settings, first, Decision(UNDECIDED, "not in 2 invoice(s) since the post, but the last record "
                                              "is not after the charge became uncertain"),
                    Evidence("invoices", None, "cron", scanned=(41, 42)))
    out = runner.invoke(app, ["charges", "reconcile", "-c", cfg])
    assert out.exit_code == 0, out.output
    assert "3 uncertain charge(s)" in out.output
    assert "is not after the charge became uncertain" in out.output and "invoices read: 41, 42" in out.output
    assert "not checked yet" in out.output  # the other two


def test_settles_several_keys_in_one_call_and_keeps_the_decisions(ledger):
    cfg, url = ledger
    out = runner.invoke(app, ["charges", "reconcile", "ab-c0", "ab-c1", "--posted", "--billable-id", "501",
                              "--billable-id", "502", "-c", cfg])
    assert out.exit_code == 0, out.output
    assert _states(url)["ab-c0"] == ("posted", 501) and _states(url)["ab-c1"] == ("posted", 502)
    out = runner.invoke(app, ["charges", "reconcile", "ab-c2", "--not-posted", "-c", cfg])
    assert out.exit_code == 0 and _states(url)["ab-c2"] == ("pending", None)
    from autobill.ledger.models import ChargeReconciliation

    with session_scope(url) as s:
        assert [r.outcome for r in s.scalars(select(ChargeReconciliation).order_by(ChargeReconciliation.id))] == [
            "posted", "posted", "pending"]


@pytest.mark.parametrize("args, code, message", [
    (["ab-c0", "ab-c1", "--posted", "--billable-id", "1"], 2, "one --billable-id per billable-item charge"),
    (["ab-c0", "--posted"], 2, "one --billable-id per billable-item charge"),
    (["ab-c0", "--not-posted", "--billable-id", "1"], 2, "--billable-id goes with --posted"),
    (["ab-c0", "ab-c3", "--not-posted"], 1, "ab-c3 is posted, not uncertain"),
    (["ab-c0", "nope", "--not-posted"], 2, "no charge with id or idempotency key 'nope'"),
    (["nope"], 2, "no charge with id or idempotency key 'nope'"),  # unknown before "say what you found"
    (["999999", "--posted", "--billable-id", "1"], 2, "no charge with id or idempotency key '999999'"),
    (["ab-c0"], 2, "say what you found"),
])
def test_bad_arguments_are_one_line_and_settle_nothing(ledger, args, code, message):
    cfg, url = ledger
    before = _states(url)
    out = runner.invoke(app, ["charges", "reconcile", *args, "-c", cfg])
    assert out.exit_code == code and message in out.output and "Traceback" not in out.output
    assert len(out.output.strip().splitlines()) == 1
    assert _states(url) == before  # all checked before any was settled


def _credit(url: str, key: str = "rc-cr") -> None:
    """An uncertain correction that lowers a line: it was an AddCredit, it has no billable item id."""
    at = datetime(2026, 11, 20, 5, 57, tzinfo=UTC)
    with session_scope(url) as s:
        s.add(Charge(idempotency_key=key, client_id=1, service_id=1, billing_date=date(2026, 11, 19),
                     charge_class="outbound", currency="USD", amount=Decimal("-1.25"), exact_amount=Decimal("-1.25"),
                     tariff_version="v", description=f"Correction [{key}]", state="uncertain", posting_started_at=at,
                     uncertain_at=at, last_error="answer lost", kind="correction"))


def test_a_credit_is_settled_posted_without_a_billable_id_beside_items_that_need_one(ledger):
    cfg, url = ledger
    _credit(url)
    out = runner.invoke(app, ["charges", "reconcile", "ab-c0", "rc-cr", "ab-c1", "--posted", "--billable-id", "501",
                              "--billable-id", "502", "--note", "seen in Billing > Credit", "-c", cfg])
    assert out.exit_code == 0, out.output
    states = _states(url)
    assert states["ab-c0"] == ("posted", 501) and states["ab-c1"] == ("posted", 502)
    assert states["rc-cr"] == ("posted", None)
    from autobill.ledger.models import ChargeReconciliation

    with session_scope(url) as s:
        (kept,) = s.scalars(select(ChargeReconciliation).join(Charge, Charge.id == ChargeReconciliation.charge_id)
                            .where(Charge.idempotency_key == "rc-cr")).all()
    assert kept.outcome == "posted" and kept.source == "operator" and kept.billable_id is None
    assert "credit log" in kept.reason and "seen in Billing > Credit" in kept.reason


@pytest.mark.parametrize("args, message", [
    (["rc-cr", "--posted", "--billable-id", "9"], "0 billable-item charge(s), 1 credit(s), 1 id(s)"),
    (["rc-cr", "ab-c0", "--posted"], "1 billable-item charge(s), 1 credit(s), 0 id(s)"),
])
def test_a_credit_takes_no_billable_id_and_an_item_still_needs_one(ledger, args, message):
    cfg, url = ledger
    _credit(url)
    before = _states(url)
    out = runner.invoke(app, ["charges", "reconcile", *args, "-c", cfg])
    assert out.exit_code == 2 and message in out.output and len(out.output.strip().splitlines()) == 1
    assert _states(url) == before


def test_a_credit_found_by_hand_through_the_ledger_api_refuses_a_billable_id(ledger):
    from autobill.ledger.charges import ReconcileError, reconcile

    cfg, url = ledger
    _credit(url)
    settings = load_settings(cfg)
    with pytest.raises(ReconcileError, match="credit"):
        reconcile(settings, "rc-cr", posted=True, billable_id=7)
    with pytest.raises(ReconcileError, match="billable item id"):
        reconcile(settings, "ab-c0", posted=True)
    assert reconcile(settings, "rc-cr", posted=True).state == "posted"


def test_an_up_to_date_ledger_is_not_migrated_again(ledger, monkeypatch):
    cfg, _ = ledger

    def no_upgrade(*a, **k):
        raise AssertionError("alembic upgrade run on a ledger already at head")

    monkeypatch.setattr(ledger_db, "upgrade", no_upgrade)
    assert runner.invoke(app, ["charges", "reconcile", "-c", cfg]).exit_code == 0
    assert runner.invoke(app, ["charges", "list", "-c", cfg]).exit_code == 0


def test_a_fresh_ledger_is_still_migrated(tmp_path):
    cfg = tmp_path / "autobill.yaml"
    cfg.write_text(f"ledger_url: sqlite:///{tmp_path / 'new.db'}\n")
    out = runner.invoke(app, ["charges", "reconcile", "-c", str(cfg)])
    assert out.exit_code == 0 and "0 uncertain charge(s)" in out.output
    assert ledger_db.current_revision(f"sqlite:///{tmp_path / 'new.db'}") == ledger_db.head_revision()
