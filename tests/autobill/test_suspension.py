"""The autosuspend decision table (autobill.suspension.decide), one row per rule, plus properties."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autobill.suspension import (
    LOW_BALANCE_TEMPLATE,
    ZERO_BALANCE_TEMPLATE,
    Action,
    Decision,
    Policy,
    Snapshot,
    State,
    decide,
    resolve_threshold,
)

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
POLICY = Policy(now=NOW, unsuspend_margin=D("1.00"), low_balance_hysteresis=D("1.00"), stale_after_seconds=600)


def snap(**kw) -> Snapshot:
    base = dict(
        client_id=7,
        service_id=70,
        read_at=NOW - timedelta(seconds=5),
        credit=D("50.00"),
        unpaid=D("0"),
        mode="gateway",
        low_balance_threshold=D("5.00"),
    )
    base.update(kw)
    return Snapshot(**base)


OURS = State(suspended=True, mode="extension", low_balance_alerted=True)
OURS_ARMED = State(suspended=True, mode="extension", low_balance_alerted=False)
ALERTED = State(low_balance_alerted=True)
FRESH = State()

# (id, snapshot overrides, state, expected action, expected mode, reason fragment, notify)
TABLE = [
    # -- unreadable / stale: nothing changes, whatever the balance says
    ("unreadable", dict(error="GetClientsDetails: timeout", credit=None), FRESH, Action.SKIP_UNREADABLE, None, "timeout", None),
    ("unreadable-suspended", dict(error="boom", credit=D("-5")), OURS, Action.SKIP_UNREADABLE, None, "boom", None),
    ("no-balance", dict(credit=None), FRESH, Action.SKIP_UNREADABLE, None, "no balance", None),
    ("stale", dict(read_at=NOW - timedelta(seconds=601), credit=D("-1")), FRESH, Action.SKIP_UNREADABLE, None, "stale", None),
    # -- services WHMCS does not consider live
    ("terminated", dict(service_status="Terminated", credit=D("-1")), FRESH, Action.NONE, None, "not managed", None),
    # -- prepaid balance rules
    ("credit-zero", dict(credit=D("0.00")), FRESH, Action.SUSPEND, "gateway", "credit 0.00 <= 0", ZERO_BALANCE_TEMPLATE),
    ("credit-negative", dict(credit=D("-3.50")), FRESH, Action.SUSPEND, "gateway", "<= 0", ZERO_BALANCE_TEMPLATE),
    ("unpaid-over-credit", dict(credit=D("10"), unpaid=D("10.01")), FRESH, Action.SUSPEND, "gateway", "available -0.01 = credit 10.00 - overdue 10.01 - not invoiced 0.00 - unbilled 0.00 < 0", ZERO_BALANCE_TEMPLATE),
    ("unpaid-equal-credit", dict(credit=D("10"), unpaid=D("10")), ALERTED, Action.NONE, None, "outstanding", None),
    ("unpaid-equal-credit-alerts", dict(credit=D("10"), unpaid=D("10")), FRESH, Action.ALERT_LOW_BALANCE, None, "available 0.00 <= low-balance threshold 5.00", LOW_BALANCE_TEMPLATE),
    ("extension-mode", dict(credit=D("0"), mode="extension"), FRESH, Action.SUSPEND, "extension", "<= 0", ZERO_BALANCE_TEMPLATE),
    ("module-mode", dict(credit=D("0"), mode="module"), FRESH, Action.SUSPEND, "module", "<= 0", ZERO_BALANCE_TEMPLATE),
    ("mode-none", dict(credit=D("0"), mode="none"), ALERTED, Action.NONE, None, "suspend_mode is none", None),
    ("already-suspended", dict(credit=D("-1")), OURS, Action.NONE, None, "already suspended by autosuspend", None),
    # -- unsuspend: positive credit, nothing outstanding, margin; recorded mode, not today's
    ("topped-up", dict(credit=D("20")), OURS, Action.UNSUSPEND, "extension", "nothing overdue", None),
    ("mode-changed-while-suspended", dict(credit=D("20"), mode="gateway"), OURS, Action.UNSUSPEND, "extension", "", None),
    ("topped-up-but-unpaid", dict(credit=D("20"), unpaid=D("5")), OURS_ARMED, Action.NONE, None, "outstanding", None),
    ("hysteresis-band", dict(credit=D("0.50")), OURS, Action.NONE, None, "below the unsuspend margin", None),
    ("hysteresis-band-not-suspended", dict(credit=D("0.50")), ALERTED, Action.NONE, None, "margin", None),
    ("exactly-margin", dict(credit=D("1.00")), OURS, Action.UNSUSPEND, "extension", "", None),
    ("no-recorded-mode", dict(credit=D("20")), State(suspended=True), Action.NONE, None, "no recorded mode", None),
    # -- suspended by WHMCS / an operator: not ours, hands off both ways
    ("external-not-lifted", dict(credit=D("20"), service_status="Suspended"), FRESH, Action.NONE, None, "not ours to lift", None),
    ("external-not-resuspended", dict(credit=D("-1"), service_status="Suspended"), ALERTED, Action.NONE, None, "outside autosuspend", None),
    ("ours-whmcs-suspended", dict(credit=D("20"), service_status="Suspended", mode="module"), State(True, "module", True), Action.UNSUSPEND, "module", "", None),
    # -- postpaid: the credit limit
    ("postpaid-over-limit", dict(postpaid=True, credit=D("0"), unpaid=D("100.01"), credit_limit=D("100")), FRESH, Action.SUSPEND, "gateway", "owed 100.01 = overdue 100.01 + not invoiced 0.00 + unbilled 0.00 - credit 0.00 > credit limit 100.00", ZERO_BALANCE_TEMPLATE),
    ("postpaid-at-limit", dict(postpaid=True, credit=D("0"), unpaid=D("100"), credit_limit=D("100")), FRESH, Action.NONE, None, "", None),
    ("postpaid-zero-credit-ok", dict(postpaid=True, credit=D("0"), unpaid=D("0"), credit_limit=D("0")), FRESH, Action.NONE, None, "", None),
    ("postpaid-band", dict(postpaid=True, credit=D("0"), unpaid=D("99.50"), credit_limit=D("100")), OURS, Action.NONE, None, "hysteresis", None),
    ("postpaid-paid", dict(postpaid=True, credit=D("0"), unpaid=D("10"), credit_limit=D("100")), OURS, Action.UNSUSPEND, "extension", "", None),
    # -- manual suspend and overrides
    ("manual-suspend", dict(manual_suspend=True, credit=D("500")), FRESH, Action.SUSPEND, "gateway", "Manual VoIP Suspend", None),
    ("manual-keeps-suspended", dict(manual_suspend=True, credit=D("500")), OURS_ARMED, Action.NONE, None, "Manual VoIP Suspend", None),
    ("manual-beats-override-no", dict(manual_suspend=True, suspended_override=False), FRESH, Action.SUSPEND, "gateway", "Manual", None),
    ("override-yes", dict(suspended_override=True, credit=D("500")), FRESH, Action.SUSPEND, "gateway", "VoIP Suspended override = Yes", None),
    ("override-no-keeps-active", dict(suspended_override=False, credit=D("-50")), ALERTED, Action.NONE, None, "override = No", None),
    ("override-no-lifts-ours", dict(suspended_override=False, credit=D("-50")), OURS, Action.UNSUSPEND, "extension", "override = No", None),
    ("override-no-not-external", dict(suspended_override=False, credit=D("-50"), service_status="Suspended"), ALERTED, Action.NONE, None, "not ours to lift", None),
    ("overideautosuspend", dict(override_autosuspend=True, credit=D("-50")), ALERTED, Action.NONE, None, "exempt", None),
    ("overideautosuspend-until-future", dict(override_autosuspend=True, override_until=date(2025, 3, 10), credit=D("-5")), ALERTED, Action.NONE, None, "until 2025-03-10", None),
    ("overideautosuspend-expired", dict(override_autosuspend=True, override_until=date(2025, 3, 9), credit=D("-5")), FRESH, Action.SUSPEND, "gateway", "<= 0", ZERO_BALANCE_TEMPLATE),
    ("overideautosuspend-lifts-ours", dict(override_autosuspend=True, credit=D("-50")), OURS, Action.UNSUSPEND, "extension", "exempt", None),
    # -- low-balance alerts: once per crossing, re-armed above threshold + hysteresis
    ("low-balance-crossing", dict(credit=D("5.00")), FRESH, Action.ALERT_LOW_BALANCE, None, "<= low-balance threshold 5.00", LOW_BALANCE_TEMPLATE),
    ("low-balance-already-alerted", dict(credit=D("3.00")), ALERTED, Action.NONE, None, "", None),
    ("low-balance-above", dict(credit=D("5.01")), FRESH, Action.NONE, None, "", None),
    ("rearm-inside-band", dict(credit=D("6.00")), ALERTED, Action.NONE, None, "", None),
    ("rearm", dict(credit=D("6.01")), ALERTED, Action.REARM_ALERT, None, "hysteresis 1.00", None),
    ("rearm-while-suspended", dict(credit=D("20"), unpaid=D("5")), OURS, Action.REARM_ALERT, None, "", None),
    ("alerts-disabled", dict(credit=D("1.50"), low_balance_threshold=None), FRESH, Action.NONE, None, "", None),
    ("postpaid-no-low-alert", dict(postpaid=True, credit=D("0"), unpaid=D("0"), credit_limit=D("50")), FRESH, Action.NONE, None, "", None),
    ("alert-while-external", dict(credit=D("2"), service_status="Suspended"), FRESH, Action.ALERT_LOW_BALANCE, None, "threshold", LOW_BALANCE_TEMPLATE),
    ("state-change-wins-over-alert", dict(credit=D("3")), OURS, Action.UNSUSPEND, "extension", "", None),
]


@pytest.mark.parametrize(
    ("overrides", "state", "action", "mode", "reason", "notify"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_decision_table(overrides, state, action, mode, reason, notify) -> None:
    d = decide(snap(**overrides), state, POLICY)
    assert d.action == action, d.reason
    assert d.mode == mode
    assert reason in d.reason
    assert d.notify == notify
    assert (d.client_id, d.service_id) == (7, 70)
    assert d.changes == (action not in (Action.NONE, Action.SKIP_UNREADABLE))


def test_balance_seen_is_carried_for_the_log() -> None:
    d = decide(snap(credit=D("-2.25"), unpaid=D("7.10")), None, POLICY)
    assert (d.credit, d.unpaid) == (D("-2.25"), D("7.10"))


def test_alert_flag_transitions() -> None:
    assert decide(snap(credit=D("0")), FRESH, POLICY).low_balance_alerted is True  # zero-balance covers it
    # overdue invoices bring the available balance (-10) below the threshold: the zero-balance email counts
    assert decide(snap(credit=D("20"), unpaid=D("30")), FRESH, POLICY).low_balance_alerted is True
    assert decide(snap(credit=D("0"), manual_suspend=True), FRESH, POLICY).low_balance_alerted is None
    assert decide(snap(credit=D("4")), FRESH, POLICY).low_balance_alerted is True
    assert decide(snap(credit=D("40")), ALERTED, POLICY).low_balance_alerted is False
    assert decide(snap(credit=D("40")), OURS, POLICY).low_balance_alerted is None  # unsuspend first


def test_none_state_means_never_seen() -> None:
    assert decide(snap(credit=D("0")), None, POLICY).action == Action.SUSPEND


def test_resolve_threshold_precedence() -> None:
    assert resolve_threshold(D("2"), D("3"), D("5")) == D("2")
    assert resolve_threshold(None, D("3"), D("5")) == D("3")
    assert resolve_threshold(None, None, D("5")) == D("5")
    assert resolve_threshold(None, None, None) is None


# -- properties over many cycles --------------------------------------------------------------

money = st.decimals(min_value=D("-20"), max_value=D("40"), places=2, allow_nan=False, allow_infinity=False)


def _step(snapshot: Snapshot, state: State) -> tuple[Decision, State]:
    d = decide(snapshot, state, POLICY)
    if d.action == Action.SUSPEND:
        state = replace(state, suspended=True, mode=d.mode)
    elif d.action == Action.UNSUSPEND:
        state = replace(state, suspended=False, mode=None)
    if d.low_balance_alerted is not None:
        state = replace(state, low_balance_alerted=d.low_balance_alerted)
    return d, state


@settings(max_examples=200, deadline=None)
@given(st.lists(money, min_size=1, max_size=60), st.booleans())
def test_no_flapping_inside_the_band(credits, start_suspended) -> None:
    """Credits that stay inside [0.01, margin) never change the suspension state."""
    state = State(suspended=start_suspended, mode="gateway" if start_suspended else None)
    for c in credits:
        c = min(max(c, D("0.01")), D("0.99"))
        d, state = _step(snap(credit=c), state)
        assert d.action not in (Action.SUSPEND, Action.UNSUSPEND)
        assert state.suspended == start_suspended


@settings(max_examples=200, deadline=None)
@given(st.lists(money, min_size=1, max_size=80))
def test_alerts_once_per_crossing(credits) -> None:
    """Between two low-balance alerts the credit must have risen above threshold + hysteresis,
    and a state change only happens when the balance rule asks for it."""
    state = State()
    rose = True  # the credit has been above threshold + hysteresis since the last alert
    for c in credits:
        d, state = _step(snap(credit=c), state)
        if d.notify is not None:  # a low-balance alert, or a zero-balance suspension (which counts as one)
            assert rose or d.notify == ZERO_BALANCE_TEMPLATE, "low-balance alert twice in one crossing"
            rose = False
        if c > D("6.00"):
            rose = True
        if d.action == Action.SUSPEND:
            assert c <= 0
        if d.action == Action.UNSUSPEND:
            assert c >= D("1.00")


@settings(max_examples=100, deadline=None)
@given(money, money, st.booleans(), st.sampled_from(["Active", "Suspended"]))
def test_never_lifts_what_we_did_not_suspend(credit, unpaid, override_no, status) -> None:
    d = decide(
        snap(credit=credit, unpaid=abs(unpaid), suspended_override=False if override_no else None, service_status=status),
        State(suspended=False),
        POLICY,
    )
    assert d.action != Action.UNSUSPEND
    if status == "Suspended":
        assert d.action != Action.SUSPEND


@settings(max_examples=100, deadline=None)
@given(money, money, st.sampled_from(["gateway", "extension", "module"]))
def test_errors_always_skip(credit, unpaid, mode) -> None:
    d = decide(snap(credit=credit, unpaid=unpaid, error="x", mode=mode), State(True, "gateway"), POLICY)
    assert d.action == Action.SKIP_UNREADABLE and not d.changes
