"""Credit control end to end (#18): calls in a FusionPBX `v_xml_cdr` (real PostgreSQL) read
intraday by the autosuspend cycle, the WHMCS sandbox over real HTTP, the ledger on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

import tests.support.fusionpbx_schema as fx
from autobill.config import load_settings
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import FraudHold, IntradayUsage, IntradayWatermark, ServerWatermark, SuspensionLog
from cli import app
from flows.autosuspend import run_cycle
from sandboxes.whmcs import WhmcsSandbox
from tests.support.extract import fusion_server
from tests.support.suspend import WHMCS_IDENT, WHMCS_SECRET, set_whmcs_secrets

pytestmark = pytest.mark.postgres
TZ = ZoneInfo("America/Toronto")
DOMAIN = "acme.example.com"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch) -> None:
    set_whmcs_secrets(monkeypatch)


@pytest.fixture
def sb():
    with WhmcsSandbox(identifier=WHMCS_IDENT, secret=WHMCS_SECRET) as s:
        yield s


def write_config(tmp: Path, ledger_url: str, schema: str, whmcs_url: str, services: list[dict], **extra) -> Path:
    """A config file: one FusionPBX server on the test schema, 1.00/min in whole minutes to NANP,
    5.00/min to 882 (an IRSF range), the services given (module suspend mode)."""
    (tmp / "tariff.csv").write_text(
        "prefix,rate,first_increment,next_increment\n1,1.00,60,60\n882,5.00,60,60\n44,0.10,60,60\n"
    )
    raw = {
        "timezone": "America/Toronto",
        "data_dir": str(tmp / "data"),
        "ledger_url": ledger_url,
        "servers": [fusion_server(schema, overlap_minutes=30, retries=0)],
        "tariffs": [{"name": "t", "path": "tariff.csv"}],
        "plans": [{"name": "p", "tariff": "t"}],
        "services": [{"server": "pbx1", "plan": "p", "tenant": DOMAIN, "suspend_mode": "module", **s} for s in services],
        "whmcs": {"url": whmcs_url, "identifier": {"env": "AUTOBILL_TEST_WHMCS_ID"},
                  "secret": {"env": "AUTOBILL_TEST_WHMCS_SECRET"}, "retries": 1, "timeout_seconds": 5},
        "intraday": {"first_lookback_hours": 48},
        **extra,
    }  # fmt: skip
    path = tmp / "autobill.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    upgrade(ledger_url)
    return path


def calls(schema: str, start: datetime, n: int, to: str = "16135550123", billsec: int = 60, ext: str = "1001",
          domain: str = DOMAIN, every: timedelta = timedelta(minutes=2)) -> None:
    for i in range(n):
        row = fx.cdr_row(start=start + i * every, billsec=billsec, destination=to, caller=ext, domain=domain)
        fx.insert_cdr(schema, "v_xml_cdr", row)


def _today_start(n: int, every: timedelta) -> datetime:
    """The start of `n` one-minute calls `every` apart that all started today (TZ) and ended by now:
    30 minutes ago, or local midnight if today began less than that ago (waiting, for at most
    the calls' span, when it began so recently that they could not have ended yet)."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.astimezone(TZ).date(), datetime.min.time(), TZ).astimezone(UTC)
    start = max(now - timedelta(minutes=30), midnight)
    ends = start + (n - 1) * every + timedelta(seconds=61)
    if ends > now:
        time.sleep((ends - now).total_seconds())
    return start


def logs(url: str, client_id: int) -> list[SuspensionLog]:
    with session_scope(url) as s:
        return list(s.scalars(select(SuspensionLog).where(SuspensionLog.client_id == client_id).order_by(SuspensionLog.id)))


def test_prepaid_client_spending_past_its_credit_today_is_cut_off_within_one_cycle(tmp_path, ledger_url, pg_schema, sb):
    fx.create_cdr_table(pg_schema)
    broke = sb.add_client(credit="10.00")
    ok = sb.add_client(credit="10.00")
    s1, s2 = sb.add_product(broke), sb.add_product(ok)
    path = write_config(tmp_path, ledger_url, pg_schema, sb.url, [
        {"client_id": broke, "service_id": s1},
        {"client_id": ok, "service_id": s2, "tenant": "other.example.com"},
    ], autosuspend={"low_balance_threshold": "2"})  # fmt: skip
    settings = load_settings(path)
    now = datetime.now(UTC)
    calls(pg_schema, now - timedelta(hours=2), 12)  # 12 one-minute calls at 1.00: 12.00 today
    calls(pg_schema, now - timedelta(hours=2), 3, domain="other.example.com")  # 3.00: still covered

    report = run_cycle(settings, workers=2)

    assert report.summary()["usage"]["rows_stored"] == 15 and report.summary()["usage"]["errors"] == []
    by_service = {d.service_id: d for d in report.decisions}
    cut = by_service[s1]
    assert str(cut.action) == "suspend" and cut.unbilled == D("12.00")
    assert "available -2.00 = credit 10.00 - overdue 0.00 - not invoiced 0.00 - unbilled 12.00 < 0" in cut.reason
    assert [m["action"] for m in sb.module_calls()] == ["ModuleSuspend"] and sb.module_calls()[0]["serviceid"] == s1
    assert str(by_service[s2].action) == "none" and by_service[s2].unbilled == D("3.00")
    (entry,) = [e for e in logs(settings.ledger, broke) if e.action == "suspend"]
    assert "unbilled 12.00" in entry.reason
    # the intraday read has a watermark of its own; the nightly's never moved
    with session_scope(settings.ledger) as s:
        assert s.get(IntradayWatermark, "pbx1").watermark_utc is not None
        assert s.get(ServerWatermark, "pbx1") is None

    again = run_cycle(settings, workers=2)  # nothing new read, nothing counted twice
    assert again.summary()["usage"]["rows_stored"] == 0
    assert {d.service_id: d.unbilled for d in again.decisions} == {s1: D("12.00"), s2: D("3.00")}
    assert len(sb.module_calls()) == 1


def test_a_service_with_its_own_included_minutes_counts_today_after_its_allowance(tmp_path, ledger_url, pg_schema,
                                                                                 sb):
    """A service whose included minutes WHMCS overrides is rated with the plan `p+<N>min` (the
    services sync names it so; autobill/services/build.py). Credit control must rate today's calls
    with that plan, as the nightly does: its allowance first, the rest counted against the credit."""
    fx.create_cdr_table(pg_schema)
    client = sb.add_client(credit="10.00")
    service = sb.add_product(client)
    path = write_config(tmp_path, ledger_url, pg_schema, sb.url, [{"client_id": client, "service_id": service}],
                        autosuspend={"low_balance_threshold": "2"})
    base = load_settings(path)
    settings = base.model_copy(update={"services": [base.services[0].model_copy(update={"plan": "p+5min"})]})
    calls(pg_schema, datetime.now(UTC) - timedelta(hours=2), 8)  # 8 one-minute calls: 5 included, 3.00

    report = run_cycle(settings, workers=2)

    assert report.summary()["usage"]["rows_stored"] == 8 and report.summary()["usage"]["errors"] == []
    (decision,) = [d for d in report.decisions if d.service_id == service]
    assert decision.unbilled == D("3.00")
    with session_scope(settings.ledger) as s:
        rows = list(s.scalars(select(IntradayUsage)))
    assert sorted(r.included_seconds for r in rows) == [0, 0, 0, 60, 60, 60, 60, 60]


def test_overdue_only_after_due_date_plus_grace(tmp_path, ledger_url, pg_schema, sb):
    fx.create_cdr_table(pg_schema)
    cid = sb.add_client(credit="10.00")
    sid = sb.add_product(cid)
    today = datetime.now(TZ).date()
    sb.add_invoice(cid, "50.00", duedate=today - timedelta(days=2))  # due 2 days ago, grace 3: not yet
    path = write_config(tmp_path, ledger_url, pg_schema, sb.url, [{"client_id": cid, "service_id": sid}],
                        autosuspend={"overdue_grace_days": 3})  # fmt: skip
    assert str(run_cycle(load_settings(path), workers=1).decisions[0].action) != "suspend"
    sb.add_invoice(cid, "50.00", duedate=today - timedelta(days=4))  # past due + grace: overdue
    d = run_cycle(load_settings(path), workers=1).decisions[0]
    assert str(d.action) == "suspend" and "overdue 50.00" in d.reason


def test_fraud_burst_suspends_alerts_with_evidence_and_the_operator_clears_it(tmp_path, ledger_url, pg_schema, sb):
    fx.create_cdr_table(pg_schema)
    cid = sb.add_client(credit="500.00")
    sid = sb.add_product(cid)
    path = write_config(tmp_path, ledger_url, pg_schema, sb.url, [{"client_id": cid, "service_id": sid}],
                        fraud_guard={"high_risk_prefixes": ["882"], "min_spend": "20.00"})  # fmt: skip
    settings = load_settings(path)
    now = datetime.now(UTC)
    calls(pg_schema, now - timedelta(minutes=40), 2, to="442079460000")  # ordinary: 0.20
    first = run_cycle(settings, workers=1)
    assert str(first.decisions[0].action) == "none" and first.summary()["usage"]["holds"] == []

    # a hijacked extension: 6 calls of 3 minutes to an IRSF range within 20 minutes (90.00)
    calls(pg_schema, now - timedelta(minutes=25), 6, to="88213000000", billsec=180, ext="1009",
          every=timedelta(minutes=3))  # fmt: skip
    report = run_cycle(settings, workers=1)
    d = report.decisions[0]
    assert str(d.action) == "suspend" and d.reason.startswith("toll-fraud guard: spend 90.20 in 60 min > 20.00")
    assert "6 call(s) to high-risk prefixes > 0" in d.reason
    assert len(d.evidence) == 8 and "+88213000000 (international) 180s 15.00" in d.evidence[0]
    (client_mail,) = [e for e in sb.emails() if e["messagename"] == "VoIP Fraud Alert"]
    assert client_mail["relid"] == cid and "88213000000" in client_mail["customvars"]["voip_fraud_calls"]
    (admin,) = [e for e in sb.emails() if e["messagename"].startswith("admin:Toll-fraud guard")]
    assert "88213000000" in admin["customvars"]["message"] and f"fraud clear {sid}" in admin["customvars"]["message"]
    with session_scope(settings.ledger) as s:
        (hold,) = s.scalars(select(FraudHold)).all()
        assert hold.cleared_at is None and len(json.loads(hold.evidence)) == 8
    assert [m["action"] for m in sb.module_calls()] == ["ModuleSuspend"]

    assert str(run_cycle(settings, workers=1).decisions[0].action) == "none"  # stays suspended, no new hold
    runner = CliRunner()
    out = runner.invoke(app, ["fraud", "list", "--config", str(path), "--evidence"])
    assert out.exit_code == 0 and "OPEN" in out.output and "88213000000" in out.output
    out = runner.invoke(app, ["fraud", "clear", str(sid), "--by", "noc-alice", "--reason", "client confirmed", "--config", str(path)])
    assert out.exit_code == 0, out.output
    missing = runner.invoke(app, ["fraud", "clear", str(sid), "--by", "x", "--config", str(path)])
    assert missing.exit_code == 1 and "no open toll-fraud hold" in missing.output

    lifted = run_cycle(settings, workers=1)  # the balance (500 - 90.20) allows it: lifted, not tripped again
    assert str(lifted.decisions[0].action) == "unsuspend" and lifted.summary()["usage"]["holds"] == []
    assert [m["action"] for m in sb.module_calls()] == ["ModuleSuspend", "ModuleUnsuspend"]


@pytest.mark.flow
@pytest.mark.slow
def test_after_the_nightly_bills_the_day_available_credit_is_unchanged(tmp_path, ledger_url, pg_schema, sb,
                                                                       prefect_harness):
    from flows.autobill import nightly

    fx.create_cdr_table(pg_schema)
    cid = sb.add_client(credit="50.00")
    sid = sb.add_product(cid)
    path = write_config(tmp_path, ledger_url, pg_schema, sb.url, [{"client_id": cid, "service_id": sid}])
    settings = load_settings(path)
    yesterday = datetime.now(TZ).date() - timedelta(days=1)
    noon = datetime.combine(yesterday, datetime.min.time().replace(hour=12), TZ).astimezone(UTC)
    calls(pg_schema, noon, 7)  # 7.00 yesterday
    calls(pg_schema, _today_start(5, timedelta(seconds=10)), 5, every=timedelta(seconds=10))  # 5.00 today

    before = run_cycle(settings, workers=1).decisions[0]
    assert (before.unbilled, before.not_invoiced, before.available) == (D("12.00"), D("0"), D("38.00"))

    state = nightly(billing_date=yesterday, config_path=str(path), return_state=True)
    assert state.is_completed(), state.message
    assert [i["amount"] for i in sb.billable_items(cid)] == [D("7.00")]

    after = run_cycle(settings, workers=1).decisions[0]
    assert (after.unbilled, after.not_invoiced, after.available) == (D("5.00"), D("7.00"), D("38.00"))
    with session_scope(settings.ledger) as s:
        assert len(s.scalars(select(IntradayUsage.cdr_key)).all()) == 12  # nothing dropped, nothing twice

    assert nightly(billing_date=yesterday, config_path=str(path), return_state=True).is_completed()  # a rerun
    # a rerun posts nothing new; the WHMCS cron has not run in the sandbox, so the charge is still not invoiced
    assert [i["amount"] for i in sb.billable_items(cid)] == [D("7.00")]
    assert run_cycle(settings, workers=1).decisions[0].available == D("38.00")
