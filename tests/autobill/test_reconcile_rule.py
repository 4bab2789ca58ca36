"""The decision rule for uncertain charges (autobill/reconcile.py), against a simple reference."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autobill.reconcile import (
    PENDING,
    POSTED,
    UNDECIDED,
    Evidence,
    Line,
    assumed_cron_done,
    decide,
    whmcs_date,
    whmcs_time,
)

T0 = datetime(2026, 11, 20, 5, 57, tzinfo=UTC)
KEYS = ["ab-1-2-20261119-outbound-USD-v-aaaa", "ab-1-2-20261119-outbound-USD-v-bbbb", "ab-3-4-x"]


def reference(key: str, since: datetime, ev: Evidence, margin: timedelta) -> str:
    hits = sum(1 for ln in ev.lines if f"[{key}]" in ln.description)
    if hits == 1:
        return POSTED
    if hits > 1 or not ev.complete or ev.as_of is None or ev.as_of <= since + margin:
        return UNDECIDED
    return PENDING


lines = st.lists(
    st.builds(Line, description=st.sampled_from([f"VoIP calls [{k}]" for k in KEYS] + ["Hosting", "[ab-3-4-x2]"]),
              invoice_id=st.integers(1, 50), item_id=st.integers(1, 500), billable_id=st.none() | st.integers(1, 99)),
    max_size=6,
)
evidence = st.builds(
    Evidence, source=st.sampled_from(["invoices", "database"]),
    as_of=st.none() | st.integers(-3 * 3600, 3 * 3600).map(lambda s: T0 + timedelta(seconds=s)),
    as_of_source=st.just("test"), lines=lines.map(tuple), complete=st.booleans(),
)


@given(st.sampled_from(KEYS), evidence, st.integers(0, 600).map(lambda s: timedelta(seconds=s)))
def test_decide_matches_the_reference(key, ev, margin):
    decision = decide(key, T0, ev, margin)
    assert decision.outcome == reference(key, T0, ev, margin)
    assert decision.reason
    if decision.outcome == POSTED:
        assert f"[{key}]" in decision.line.description and decision.line in ev.lines
    else:
        assert decision.line is None


@given(st.sampled_from(KEYS), evidence)
def test_never_pending_unless_a_complete_record_after_the_charge_became_uncertain(key, ev):
    """The safety property: re-posting (pending) only when the item certainly is not in WHMCS."""
    if decide(key, T0, ev).outcome == PENDING:
        assert ev.complete and ev.as_of is not None and ev.as_of > T0
        assert not [ln for ln in ev.lines if f"[{key}]" in ln.description]


def test_a_key_that_is_a_prefix_of_another_is_not_found_in_it():
    ev = Evidence("invoices", T0 + timedelta(hours=1), "cron", (Line("x [ab-3-4-x2]", 1, 1),), (1,))
    assert decide("ab-3-4-x", T0, ev).outcome == PENDING


def test_naive_time_is_refused():
    with pytest.raises(ValueError):
        decide("k", T0.replace(tzinfo=None), Evidence("invoices", None))


def test_whmcs_times_are_local_to_the_whmcs_timezone():
    tz = ZoneInfo("America/Toronto")
    assert whmcs_time("2026-11-20 01:00:00", tz) == datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
    assert whmcs_time("2026-07-20 01:00:00", tz) == datetime(2026, 7, 20, 5, 0, tzinfo=UTC)  # EDT
    assert whmcs_time("", tz) is None and whmcs_time("0000-00-00 00:00:00", tz) is None
    # 23:30 on the 19th in Toronto is the 20th in UTC: the invoice date to look from is the 19th.
    assert whmcs_date(datetime(2026, 11, 20, 4, 30, tzinfo=UTC), tz) == date(2026, 11, 19)


@given(st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)),
       st.sampled_from(["00:00", "01:00", "02:30", "09:00", "23:59"]), st.integers(0, 600),
       st.sampled_from(["America/Toronto", "Europe/Berlin", "UTC", "Australia/Lord_Howe"]))
def test_assumed_cron_done_is_the_latest_configured_time_not_after_now(now, cron_time, margin, zone):
    tz = ZoneInfo(zone)
    done = assumed_cron_done(now, tz, cron_time, margin)
    assert done <= now and done.tzinfo is not None
    start = (done - timedelta(minutes=margin)).astimezone(tz)
    # A real local cron_time (a non-existent DST time is read the way zoneinfo reads it, fold=0).
    hh, mm = (int(x) for x in cron_time.split(":"))
    naive = datetime.combine(start.date(), datetime.min.time()).replace(hour=hh, minute=mm)
    assert start == naive.replace(tzinfo=tz)
    # No later day's cron_time + margin is also <= now.
    nxt = datetime.combine(start.date() + timedelta(days=1), naive.time(), tzinfo=tz).astimezone(UTC)
    assert nxt + timedelta(minutes=margin) > now
