"""The pure credit-control rules (#18) against simple references kept here: overdue with grace,
the last WHMCS cron, the spend-velocity guard, and `decide` on the available balance."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal as D
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from autobill.suspension import Action, Policy, Snapshot, State, decide
from autobill.suspension.credit import (
    Baseline,
    Call,
    ChargeFacts,
    GuardPolicy,
    daily_cron,
    guard,
    is_overdue,
    not_invoiced,
    overdue_amount,
)

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
POLICY = Policy(now=NOW, unsuspend_margin=D("1.00"), low_balance_hysteresis=D("1.00"))
TZS = st.sampled_from(["America/Toronto", "UTC", "Pacific/Auckland", "Asia/Kolkata", "America/Los_Angeles"])
moments = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC))
money = st.decimals(min_value=D("-50"), max_value=D("100"), places=2, allow_nan=False, allow_infinity=False)
usage = st.decimals(min_value=D("0"), max_value=D("60"), places=2, allow_nan=False, allow_infinity=False)


def ref_overdue(due: date, now: datetime, grace: int, tz: str) -> bool:
    local_day = now.astimezone(ZoneInfo(tz)).date()
    return (local_day - due).days > grace


@settings(max_examples=300, deadline=None)
@given(moments, st.integers(-40, 40), st.integers(0, 30), TZS)
def test_overdue_matches_the_reference(now, offset, grace, tz) -> None:
    due = now.astimezone(ZoneInfo(tz)).date() + timedelta(days=offset)
    assert is_overdue(due.isoformat(), now, grace, ZoneInfo(tz)) == ref_overdue(due, now, grace, tz)


def test_overdue_edges() -> None:
    tz = ZoneInfo("America/Toronto")
    late_evening = datetime(2025, 3, 11, 3, 30, tzinfo=UTC)  # 23:30 on the 10th in Toronto
    assert not is_overdue("2025-03-10", late_evening, 0, tz)  # still its due day in WHMCS time
    assert is_overdue("2025-03-10", late_evening + timedelta(hours=1), 0, tz)
    assert not is_overdue("2025-03-08", late_evening + timedelta(hours=1), 3, tz)
    assert is_overdue("0000-00-00", NOW, 30, tz)  # no due date: counts
    assert overdue_amount([(D("5.00"), "2025-03-01"), (D("7.00"), "2025-03-09")], NOW, 3, tz) == D("5.00")


@settings(max_examples=300, deadline=None)
@given(moments, st.sampled_from(["00:00", "01:30", "09:00", "23:59", None]), st.integers(0, 180), TZS)
def test_without_the_automation_log_the_cron_is_the_latest_configured_one_assumed_finished(now, cron, margin, tz):
    zone = ZoneInfo(tz)
    got = daily_cron("2020-01-01 01:00:00", "HTTP 500", now, zone, cron, margin)
    hh, mm = (int(x) for x in (cron or "09:00").split(":"))
    # reference: walk the local days back from tomorrow, the first configured start finished by now
    day = now.astimezone(zone).date() + timedelta(days=1)
    while True:
        start = datetime.combine(day, time(hh, mm), zone).astimezone(UTC)
        if start + timedelta(minutes=margin) <= now:
            break
        day -= timedelta(days=1)
    assert got.started == start and "GetAutomationLog failed: HTTP 500" in got.source


def test_the_automation_log_is_read_in_the_whmcs_timezone() -> None:
    tz = ZoneInfo("America/Toronto")
    got = daily_cron("2025-03-10 01:00:07", None, NOW, tz, "09:00", 90)
    assert got.started == datetime(2025, 3, 10, 5, 0, 7, tzinfo=UTC) and "2025-03-10 01:00:07" in got.source
    assert daily_cron("", None, NOW, tz, "09:00", 90).started is None  # no cron has run: nothing invoiced
    # a cron "in the future" means the WHMCS timezone is wrong: the configured time decides, and says why
    future = daily_cron("2025-03-10 12:00:00", None, NOW, tz, "01:00", 90)
    assert future.started == datetime(2025, 3, 10, 5, 0, tzinfo=UTC) and "check whmcs.timezone" in future.source


CRON = datetime(2025, 3, 10, 6, 0, tzinfo=UTC)
states = st.sampled_from(["pending", "posting", "uncertain", "posted", "posted", "posted", "other"])
facts = st.builds(
    ChargeFacts,
    state=states,
    amount=st.decimals(min_value=D("-20"), max_value=D("20"), places=2, allow_nan=False, allow_infinity=False),
    kind=st.sampled_from(["charge", "correction"]),
    posted_at=st.none() | st.integers(-7200, 7200).map(lambda s: CRON + timedelta(seconds=s)),
    uncertain_at=st.none() | st.integers(-7200, 7200).map(lambda s: CRON + timedelta(seconds=s)),
    on_invoice=st.booleans(),
)


def ref_not_invoiced(c: ChargeFacts, cron: datetime | None, margin: timedelta) -> bool:
    """The rule as a table walk: where is the charge's money as far as WHMCS shows it?"""
    if c.kind == "correction" and c.amount < 0:
        return False  # an AddCredit: WHMCS's credit already has it
    if c.state != "posted":
        return c.state in ("pending", "posting", "uncertain")
    if c.on_invoice:
        return False
    reached = c.posted_at if c.uncertain_at is None else c.uncertain_at
    if cron is None or reached is None:
        return True
    return cron - margin <= reached


@settings(max_examples=500, deadline=None)
@given(facts, st.none() | st.just(CRON), st.integers(0, 600).map(lambda s: timedelta(seconds=s)))
def test_not_invoiced_matches_the_reference(c, cron, margin) -> None:
    assert not_invoiced(c, cron, margin) == ref_not_invoiced(c, cron, margin)


def test_not_invoiced_edges() -> None:
    before, after = CRON - timedelta(seconds=1), CRON + timedelta(microseconds=1)
    assert not not_invoiced(ChargeFacts("posted", D("7"), posted_at=before), CRON)  # the cron picked it up
    assert not_invoiced(ChargeFacts("posted", D("7"), posted_at=CRON), CRON)  # same instant: not proven
    assert not_invoiced(ChargeFacts("posted", D("7"), posted_at=after), CRON)
    assert not_invoiced(ChargeFacts("posted", D("7"), posted_at=before), CRON, timedelta(seconds=5))  # margin
    assert not_invoiced(ChargeFacts("posted", D("7"), posted_at=before), None)  # no cron has run yet
    # reconciled after the cron (posted_at = reconciliation time), but it reached WHMCS before it
    assert not not_invoiced(ChargeFacts("posted", D("7"), posted_at=after, uncertain_at=before), CRON)
    assert not not_invoiced(ChargeFacts("posted", D("7"), posted_at=after, on_invoice=True), CRON)
    assert not_invoiced(ChargeFacts("uncertain", D("7"), posted_at=None), CRON)
    assert not not_invoiced(ChargeFacts("pending", D("-2"), kind="correction"), CRON)  # an AddCredit
    assert not_invoiced(ChargeFacts("pending", D("2"), kind="correction"), CRON)  # a re-rate increase: an item


call_st = st.builds(
    Call,
    cdr_key=st.uuids().map(str),
    start_utc=st.just(NOW),
    number=st.sampled_from(["16135550123", "442079460000", "88213000000", "882", None]),
    charge_class=st.sampled_from(["outbound", "international"]),
    billsec=st.integers(0, 3600),
    cost=st.decimals(min_value=D("0"), max_value=D("30"), places=6, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(call_st, max_size=30, unique_by=lambda c: c.cdr_key),
       st.decimals(min_value=D("0"), max_value=D("20"), places=2), st.integers(0, 7200), st.integers(0, 3))
def test_guard_matches_the_reference(calls, base_spend, base_intl, risky_allowed) -> None:
    p = GuardPolicy(multiplier=D("10"), min_spend=D("25"), min_international_minutes=60,
                    high_risk_prefixes=("882",), high_risk_calls=risky_allowed)
    spend = sum((c.cost for c in calls), D(0))
    intl_min = D(sum(c.billsec for c in calls if c.charge_class == "international")) / 60
    risky = sum(1 for c in calls if c.billsec > 0 and c.number and c.number.startswith("882"))
    expect = (spend > max(D(25), base_spend * 10) or intl_min > max(D(60), D(base_intl) / 60 * 10)
              or risky > risky_allowed)  # fmt: skip
    found = guard(calls, Baseline(base_spend, base_intl), p)
    assert (found is not None) == expect
    if found is not None:
        assert sorted(c.cdr_key for c in found[1]) == sorted(c.cdr_key for c in calls)  # every call is evidence


def snap(**kw) -> Snapshot:
    base = dict(client_id=7, service_id=70, read_at=NOW, credit=D("50"), unpaid=D("0"), mode="gateway",
                low_balance_threshold=D("5.00"))  # fmt: skip
    return Snapshot(**{**base, **kw})


@settings(max_examples=400, deadline=None)
@given(money, usage, usage, usage, st.booleans())
def test_prepaid_decision_on_the_available_balance(credit, overdue, not_invoiced, unbilled, suspended) -> None:
    s = snap(credit=credit, unpaid=overdue, not_invoiced=not_invoiced, unbilled=unbilled)
    st_ = State(suspended=suspended, mode="gateway" if suspended else None, low_balance_alerted=True)
    d = decide(s, st_, POLICY)
    available = credit - overdue - not_invoiced - unbilled
    assert d.available == available
    if d.action == Action.SUSPEND:
        assert credit <= 0 or available < 0
    if d.action == Action.UNSUSPEND:
        assert available >= D("1.00") and overdue <= 0 and credit > 0
    if not suspended and (credit <= 0 or available < 0):
        assert d.action == Action.SUSPEND
    if d.action in (Action.SUSPEND, Action.UNSUSPEND):  # the reason shows every term
        for term in (f"credit {credit:.2f}", f"overdue {overdue:.2f}", f"not invoiced {not_invoiced:.2f}",
                     f"unbilled {unbilled:.2f}", f"available {available:.2f}"):
            assert term in d.reason


@settings(max_examples=200, deadline=None)
@given(money, usage, usage)
def test_moving_usage_between_terms_changes_nothing(credit, unbilled, shift) -> None:
    """What the nightly does: calls leave `unbilled` and become `not invoiced`; the decision stays."""
    shift = min(shift, unbilled)
    before = decide(snap(credit=credit, unbilled=unbilled), State(), POLICY)
    after = decide(snap(credit=credit, unbilled=unbilled - shift, not_invoiced=shift), State(), POLICY)
    assert (before.action, before.available, before.low_balance_alerted) == (after.action, after.available, after.low_balance_alerted)


def test_fraud_hold_suspends_whatever_the_balance_and_exemptions() -> None:
    s = snap(credit=D("900"), fraud="spend 90.00 in 60 min > 25.00", fraud_evidence=("call a",), override_autosuspend=True)
    d = decide(s, State(), POLICY)
    assert d.action == Action.SUSPEND and d.notify == "VoIP Fraud Alert" and d.evidence == ("call a",)
    assert decide(replace(s, fraud=None), State(True, "gateway"), POLICY).action == Action.UNSUSPEND


LEVELS = (D("20"), D("10"), D("5"))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.decimals(min_value=D("-5"), max_value=D("40"), places=2), min_size=1, max_size=60))
def test_one_alert_per_level_crossing(availables) -> None:
    """Reference: a level may alert again only after available rose above it + hysteresis; each
    alert is for the lowest newly crossed level; the flags follow."""
    state = State()
    armed = dict.fromkeys(LEVELS, True)
    for a in availables:
        d = decide(snap(credit=D("100"), unbilled=D("100") - a, low_balance_threshold=None, low_balance_levels=LEVELS),
                   state, POLICY)  # fmt: skip
        newly = [lv for lv in LEVELS if a <= lv and armed[lv]]
        due = [lv for lv in LEVELS if a > lv + 1 and not armed[lv]]
        if d.action == Action.ALERT_LOW_BALANCE:
            assert newly and d.alert_level == min(newly)
        elif d.action == Action.REARM_ALERT:
            assert due and not newly
            for lv in due:
                armed[lv] = True
        elif d.action == Action.NONE:
            assert not newly and not due  # nothing owed to the client this cycle
        if d.action in (Action.ALERT_LOW_BALANCE, Action.SUSPEND):
            for lv in LEVELS:
                if a <= lv:
                    armed[lv] = False
        if d.alerted_levels is not None:
            state = replace(state, alerted_levels=frozenset(d.alerted_levels), low_balance_alerted=bool(d.alerted_levels))
        if d.action == Action.SUSPEND:
            state = replace(state, suspended=True, mode=d.mode)
        if d.action == Action.UNSUSPEND:
            state = replace(state, suspended=False, mode=None)
        assert state.alerted_levels is None or state.alerted_levels == frozenset(lv for lv in LEVELS if not armed[lv])
