"""Autosuspend cycles end to end: the WHMCS sandbox (real HTTP), the event-socket sandbox (real
TCP), FusionPBX tables in real PostgreSQL, and the ledger on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from sqlalchemy import select

from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import Notification, Run, SuspensionLog, SuspensionState
from connectors.esl import EslClient
from connectors.fusionpbx_switch import FusionPBXSwitch
from flows.autosuspend import run_cycle
from sandboxes.esl import EslSandbox
from sandboxes.whmcs import WhmcsSandbox
from tests.support.suspend import PBX, WHMCS_IDENT, WHMCS_SECRET, set_whmcs_secrets, settings_for

ESL_PW = "esl-cycle-pw"
HOST = "fs-cycle"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch) -> None:
    set_whmcs_secrets(monkeypatch)
    monkeypatch.setenv("AUTOBILL_TEST_ESL_PW", ESL_PW)


@pytest.fixture
def sb():
    with WhmcsSandbox(identifier=WHMCS_IDENT, secret=WHMCS_SECRET) as s:
        yield s


@pytest.fixture
def pbx(pg_schema) -> PBX:
    return PBX(pg_schema, "boolean")


@pytest.fixture
def esl(pbx):
    with EslSandbox(password=ESL_PW, hostname=HOST, rescan_source=pbx.enabled_gateways) as s:
        yield s


def switches(pbx: PBX, esl: EslSandbox):
    def make(server_id: str) -> FusionPBXSwitch:
        assert server_id == "pbx1"
        return FusionPBXSwitch(pbx.connect, lambda: EslClient(esl.host, esl.port, ESL_PW, timeout=2), server_id="pbx1")

    return make


def cycle(settings, pbx=None, esl=None, **kw):
    factory = switches(pbx, esl) if pbx is not None else None
    return run_cycle(settings, switch_factory=factory, **{"workers": 2, **kw})


def state(url: str, service_id: int) -> SuspensionState | None:
    with session_scope(url) as s:
        return s.get(SuspensionState, service_id)


def logs(url: str, client_id: int | None = None) -> list[SuspensionLog]:
    with session_scope(url) as s:
        q = select(SuspensionLog).order_by(SuspensionLog.id)
        if client_id is not None:
            q = q.where(SuspensionLog.client_id == client_id)
        return list(s.scalars(q))


def emails(sb: WhmcsSandbox, template: str | None = None) -> list[dict]:
    return [e for e in sb.emails() if template is None or e["messagename"] == template]


@pytest.mark.postgres
def test_gateway_mode_suspend_then_restore(ledger_url, sb, pbx, esl) -> None:
    cid = sb.add_client(credit="0.00")
    sid = sb.add_product(cid, module=None)
    good = sb.add_client(credit="80.00")
    good_sid = sb.add_product(good, module=None)
    gw, other_gw = pbx.gateway("acme.example"), pbx.gateway("good.example")
    esl.running |= {gw, other_gw}
    settings = settings_for(ledger_url, sb.url, [
        {"client_id": cid, "service_id": sid, "suspend_mode": "gateway", "gateway_uuids": [gw]},
        {"client_id": good, "service_id": good_sid, "suspend_mode": "gateway", "gateway_uuids": [other_gw], "tenant": "good.example"},
    ])  # fmt: skip

    report = cycle(settings, pbx, esl)
    assert report.counts == {"none": 1, "suspend": 1}
    assert [o.status for o in report.outcomes] == ["done"]
    assert not pbx.gw_on(gw) and pbx.gw_on(other_gw)
    assert esl.running == {other_gw}
    st = state(ledger_url, sid)
    assert st.suspended and st.mode == "gateway" and json.loads(st.detail)["gateways"][0]["uuid"] == gw
    assert st.low_balance_alerted  # the zero-balance email stands for this crossing
    (entry,) = logs(ledger_url, cid)
    assert (entry.action, entry.mode, entry.credit, entry.actor) == ("suspend", "gateway", D("0"), "autosuspend")
    assert "credit 0.00 <= 0" in entry.reason and entry.run_id == report.run_id
    assert [e["relid"] for e in emails(sb, "VoIP Zero Balance")] == [cid]

    again = cycle(settings, pbx, esl)  # nothing new: no flapping, no second email
    assert again.outcomes == [] and len(emails(sb)) == 1

    sb.set_credit(cid, "25.00")
    back = cycle(settings, pbx, esl)
    assert [(str(o.decision.action), o.status) for o in back.outcomes] == [("unsuspend", "done")]
    assert pbx.gw_on(gw) and gw in esl.running
    assert not state(ledger_url, sid).suspended
    assert [e.action for e in logs(ledger_url, cid)] == ["suspend", "unsuspend"]
    with session_scope(ledger_url) as s:
        runs = s.scalars(select(Run).where(Run.kind == "autosuspend").order_by(Run.id)).all()
        assert [r.status for r in runs] == ["completed"] * 3
        assert json.loads(runs[0].summary)["decisions"] == {"none": 1, "suspend": 1}


@pytest.mark.postgres
def test_extension_mode_and_the_mode_change_from_the_seeds(pg_url, sb, pbx, esl) -> None:
    """Seed 001: a client suspended in extension mode whose product is then switched to gateway
    mode must get its extensions back on unsuspend, and the gateway must never be touched."""
    upgrade(pg_url)
    cid = sb.add_client(credit="-4.00")
    sid = sb.add_product(cid, module=None)
    pbx.extension("acme.example", "1001")
    pbx.extension("acme.example", "1002")
    pbx.extension("acme.example", "1003")  # someone else's
    gw = pbx.gateway("acme.example")
    esl.running.add(gw)
    svc = {"client_id": cid, "service_id": sid, "extensions": ["1001", "1002"], "gateway_uuids": [gw]}

    cycle(settings_for(pg_url, sb.url, [{**svc, "suspend_mode": "extension"}]), pbx, esl)
    assert not pbx.ext_on("acme.example", "1001") and not pbx.ext_on("acme.example", "1002")
    assert pbx.ext_on("acme.example", "1003") and pbx.gw_on(gw)
    assert state(pg_url, sid).mode == "extension"

    changed = settings_for(pg_url, sb.url, [{**svc, "suspend_mode": "gateway"}])  # the admin changes the mode
    sb.set_credit(cid, "30.00")
    report = cycle(changed, pbx, esl)
    assert [(o.decision.action, o.mode) for o in report.outcomes] == [("unsuspend", "extension")]
    assert pbx.ext_on("acme.example", "1001") and pbx.ext_on("acme.example", "1002")
    assert pbx.gw_on(gw) and gw in esl.running
    assert not any("killgw" in c for c in esl.commands)
    assert [(e.action, e.mode) for e in logs(pg_url, cid)] == [("suspend", "extension"), ("unsuspend", "extension")]

    sb.set_credit(cid, "0")  # and the next suspension uses today's mode
    cycle(changed, pbx, esl)
    assert not pbx.gw_on(gw) and pbx.ext_on("acme.example", "1001")
    assert state(pg_url, sid).mode == "gateway"


def test_low_balance_alert_once_per_crossing_and_per_day(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="4.00", custom_fields={"Low Balance Threshold": "5"})
    sid = sb.add_product(cid)
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "module"}])
    # (local day, credit): alert at 4.00; nothing while <= 6.00 (threshold 5 + hysteresis 1); re-armed at
    # 6.01; crossing again at 4.99 the same day sends nothing (one email per level and day); re-armed at
    # 9.00; the crossing at 3.00 the next day sends the second email
    steps = [(1, "4.00"), (1, "3.50"), (1, "4.90"), (1, "5.50"), (1, "6.00"), (1, "2.00"), (1, "6.01"), (1, "5.10"),
             (1, "4.99"), (1, "4.00"), (1, "1.00"), (1, "9.00"), (2, "3.00"), (2, "2.00")]
    sent_after = []
    for day, credit in steps:
        sb.set_credit(cid, credit)
        at = datetime(2026, 3, day, 17, 0, tzinfo=UTC)
        cycle(settings, now=lambda at=at: at)
        sent_after.append(len(emails(sb, "Low Balance Alert")))
    assert sent_after == [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2]
    with session_scope(sqlite_url) as s:
        keys = s.scalars(select(Notification.dedup_key).order_by(Notification.id)).all()
    assert keys == [f"low:{cid}:5.00:2026-03-01", f"low:{cid}:5.00:2026-03-02"]
    assert [e.action for e in logs(sqlite_url, cid)] == ["alert", "rearm", "alert", "rearm", "alert"]
    assert "already sent" in logs(sqlite_url, cid)[2].reason
    assert sb.module_calls() == []  # credit stayed positive: never suspended


def test_multi_threshold_alerts_one_email_per_level(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="30.00")
    sid = sb.add_product(cid)
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "module"}],
                            low_balance_threshold="5", low_balance_thresholds=["20", "10"])
    sent = []
    for credit in ["30.00", "19.00", "18.00", "9.50", "9.00", "4.00", "12.00", "8.00"]:
        sb.set_credit(cid, credit)
        cycle(settings)
        sent.append([e["customvars"].get("voip_alert_level") for e in emails(sb, "Low Balance Alert")])
    # 19 crosses 20; 9.50 crosses 10; 4 crosses 5; back at 12 re-arms 10 and 5 (not 20: 12 <= 21);
    # 8 crosses 10 again the same day: no second email for that level
    assert sent[-1] == ["20.00", "10.00", "5.00"]
    assert [len(s) for s in sent] == [0, 1, 1, 2, 2, 3, 3, 3]
    assert state(sqlite_url, sid).alerted_levels == '["20", "10"]'


def test_one_alert_for_a_client_with_two_services(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="2.00")
    s1, s2 = sb.add_product(cid), sb.add_product(cid)
    settings = settings_for(sqlite_url, sb.url, [
        {"client_id": cid, "service_id": s1, "suspend_mode": "module"},
        {"client_id": cid, "service_id": s2, "suspend_mode": "module"},
    ])  # fmt: skip
    cycle(settings)
    cycle(settings)
    assert len(emails(sb, "Low Balance Alert")) == 1
    assert state(sqlite_url, s1).low_balance_alerted and state(sqlite_url, s2).low_balance_alerted


def test_api_errors_mid_cycle_change_nothing_and_are_retried(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    a = sb.add_client(credit="0")
    b = sb.add_client(credit="0")
    sa, sbb = sb.add_product(a), sb.add_product(b)
    settings = settings_for(sqlite_url, sb.url, [
        {"client_id": a, "service_id": sa, "suspend_mode": "module"},
        {"client_id": b, "service_id": sbb, "suspend_mode": "module"},
    ])  # fmt: skip

    sb.set_faults("ModuleSuspend", "500")  # retried once by the client, then a transport error
    report = cycle(settings)
    assert {o.status for o in report.outcomes} == {"pending"}  # WHMCS may have run it: completed next cycle
    for sid in (sa, sbb):
        st = state(sqlite_url, sid)
        assert not st.suspended and json.loads(st.detail)["pending"] == "suspend"
    assert emails(sb) == []
    assert {e.action for e in logs(sqlite_url)} == {"error"}

    sb.clear_faults()
    sb.fail_next(2, "500", action="GetClientsDetails")  # client a's details fail this cycle (both tries)
    report = cycle(settings, workers=1)
    # the interrupted suspensions are completed first; then a's read fails and a is skipped
    assert sorted(str(o.decision.action) for o in report.outcomes) == ["suspend", "suspend"]
    assert state(sqlite_url, sa).suspended and state(sqlite_url, sbb).suspended
    assert report.unreadable_clients == 1 and report.counts.get("skip_unreadable") == 1
    assert sb.product(sa)["status"] == "Suspended"
    assert len(emails(sb, "VoIP Zero Balance")) == 2 and emails(sb, "Low Balance Alert") == []


def test_definite_whmcs_refusal_clears_the_intent(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="0")
    sid = sb.add_product(cid, module=None)  # "Service not assigned to a module"
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "module"}])
    report = cycle(settings)
    (o,) = report.outcomes
    assert o.status == "failed" and "not assigned to a module" in o.message
    st = state(sqlite_url, sid)
    assert not st.suspended and st.detail is None
    assert report.status == "partial"


def test_whmcs_sweep_failure_makes_everyone_unreadable(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="0")
    sid = sb.add_product(cid)
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "module"}])
    sb.set_faults("GetInvoices", "500")
    report = cycle(settings)
    assert report.counts == {"skip_unreadable": 1} and report.outcomes == []
    assert "GetInvoices" in report.errors[0]
    assert sb.module_calls() == [] and state(sqlite_url, sid) is None


def test_uncertain_email_is_recorded_and_not_resent(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="3.00")
    sid = sb.add_product(cid)
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "module"}])
    sb.fail_next(1, "drop_after_store", action="SendEmail")
    report = cycle(settings)
    assert "maybe sent" in report.outcomes[0].message
    cycle(settings)
    assert len(emails(sb, "Low Balance Alert")) == 1  # the dropped answer's email, and no second one


def test_failed_email_is_retried_next_cycle(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="3.00")
    sid = sb.add_product(cid)
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "module"}])
    sb.fail_next(2, "503", action="SendEmail")  # certainly not processed, twice (retries=1)
    first = cycle(settings)
    assert first.outcomes[0].status == "failed" and not state(sqlite_url, sid).low_balance_alerted
    assert [e.action for e in logs(sqlite_url, cid)] == ["error"]
    cycle(settings)
    assert len(emails(sb, "Low Balance Alert")) == 1 and state(sqlite_url, sid).low_balance_alerted


@pytest.mark.postgres
def test_switch_down_changes_nothing_then_suspends(sqlite_url, sb, pbx, esl) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="0")
    sid = sb.add_product(cid, module=None)
    gw = pbx.gateway("acme.example")
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "gateway", "gateway_uuids": [gw]}])
    esl.refuse_auth = True
    report = cycle(settings, pbx, esl)
    assert report.outcomes[0].status == "failed" and "nothing changed" in report.outcomes[0].message
    assert pbx.gw_on(gw) and not state(sqlite_url, sid).suspended and emails(sb) == []
    esl.refuse_auth = False
    cycle(settings, pbx, esl)
    assert not pbx.gw_on(gw) and state(sqlite_url, sid).suspended
    assert len(emails(sb, "VoIP Zero Balance")) == 1


@pytest.mark.postgres
def test_crash_between_pbx_and_ledger_is_completed_next_cycle(sqlite_url, sb, pbx, esl) -> None:
    """The process died after the PBX commit and before the ledger write: the intent written
    first lets the next cycle adopt the disabled gateway, so a later unsuspend restores it."""
    upgrade(sqlite_url)
    cid = sb.add_client(credit="0")
    sid = sb.add_product(cid, module=None)
    gw = pbx.gateway("acme.example", on=False)  # what the crashed cycle already did
    with session_scope(sqlite_url) as s:
        s.add(SuspensionState(service_id=sid, client_id=cid, suspended=False, low_balance_alerted=False,
                              detail=json.dumps({"pending": "suspend", "mode": "gateway", "server": "pbx1", "gateway_uuids": [gw],
                                                  "reason": "credit 0.00 <= 0", "notify": "VoIP Zero Balance", "alerted": True})))  # fmt: skip
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "gateway", "gateway_uuids": [gw]}])
    report = cycle(settings, pbx, esl)
    assert [(str(o.decision.action), o.status) for o in report.outcomes] == [("suspend", "done")]
    st = state(sqlite_url, sid)
    assert st.suspended and [g["uuid"] for g in json.loads(st.detail)["gateways"]] == [gw]
    assert len(emails(sb, "VoIP Zero Balance")) == 1  # never sent by the crashed cycle
    assert "completed after an interruption" in logs(sqlite_url, cid)[0].reason
    sb.set_credit(cid, "50")
    cycle(settings, pbx, esl)
    assert pbx.gw_on(gw) and not state(sqlite_url, sid).suspended


def test_module_mode_for_whmcs_voip_clients(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    voip = sb.add_client(credit="0", custom_fields={"Has VoIP Service": "on"})
    plain = sb.add_client(credit="0")  # no "Has VoIP Service": not ours
    hosting = sb.add_client(credit="0", custom_fields={"Has VoIP Service": "on"})
    v_sid = sb.add_product(voip, pid=7)
    p_sid = sb.add_product(plain, pid=7)
    h_sid = sb.add_product(hosting, pid=3, name="Web hosting")  # not a VoIP product
    settings = settings_for(sqlite_url, sb.url, [], voip_product_ids=[7])
    report = cycle(settings)
    assert report.services == 1
    assert [(c["action"], c["serviceid"]) for c in sb.module_calls()] == [("ModuleSuspend", v_sid)]
    assert sb.module_calls()[0]["reason"].startswith("autosuspend: credit 0.00")
    assert sb.product(p_sid)["status"] == sb.product(h_sid)["status"] == "Active"

    sb.set_credit(voip, "12")
    cycle(settings)
    assert [c["action"] for c in sb.module_calls()] == ["ModuleSuspend", "ModuleUnsuspend"]
    assert sb.product(v_sid)["status"] == "Active"


def test_overrides_from_whmcs_fields(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    exempt = sb.add_client(credit="-10", custom_fields={"VoIP Suspended": "No"})
    manual = sb.add_client(credit="100", custom_fields={"Manual VoIP Suspend": "on"})
    e_sid, m_sid = sb.add_product(exempt), sb.add_product(manual)
    o_cid = sb.add_client(credit="-1")
    o_sid = sb.add_product(o_cid, overideautosuspend=True)
    settings = settings_for(sqlite_url, sb.url, [
        {"client_id": exempt, "service_id": e_sid, "suspend_mode": "module"},
        {"client_id": manual, "service_id": m_sid, "suspend_mode": "module"},
        {"client_id": o_cid, "service_id": o_sid, "suspend_mode": "module"},
    ])  # fmt: skip
    cycle(settings)
    assert [c["serviceid"] for c in sb.module_calls()] == [m_sid]
    assert emails(sb, "VoIP Zero Balance") == []  # a manual suspension is not a zero balance
    sb.set_custom_field(manual, "Manual VoIP Suspend", "")
    cycle(settings)
    assert [c["action"] for c in sb.module_calls()] == ["ModuleSuspend", "ModuleUnsuspend"]


def test_suspended_outside_autosuspend_is_left_alone(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="500")
    sid = sb.add_product(cid, status="Suspended")  # suspended by WHMCS's overdue automation
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "module"}])
    report = cycle(settings)
    assert report.outcomes == [] and sb.module_calls() == []
    assert "not ours to lift" in report.decisions[0].reason


def test_dry_run_writes_nothing(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="0")
    sid = sb.add_product(cid)
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "module"}])
    report = cycle(settings, dry_run=True)
    assert report.counts == {"suspend": 1} and report.outcomes == [] and report.run_id is None
    assert sb.module_calls() == [] and emails(sb) == []
    with session_scope(sqlite_url) as s:
        assert s.scalars(select(SuspensionLog)).all() == [] and s.scalars(select(Run)).all() == []
    assert report.to_json()["would_change"][0]["action"] == "suspend"


def test_stale_reads_are_skipped(sqlite_url, sb) -> None:
    upgrade(sqlite_url)
    cid = sb.add_client(credit="0")
    sid = sb.add_product(cid)
    settings = settings_for(sqlite_url, sb.url, [{"client_id": cid, "service_id": sid, "suspend_mode": "module"}])
    ticks = iter([datetime(2025, 1, 1, 12, 0, tzinfo=UTC)] * 2 + [datetime(2025, 1, 1, 13, 0, tzinfo=UTC)] * 10)
    report = cycle(settings, dry_run=True, now=lambda: next(ticks))  # the decision comes an hour after the read
    assert report.counts == {"skip_unreadable": 1} and "stale" in report.decisions[0].reason
