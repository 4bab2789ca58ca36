"""Batch expectations (GX), the volume check and the policy: bad batches, each with its verdict."""

from __future__ import annotations

import threading
from datetime import timedelta

import polars as pl
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from data_quality import suites
from data_quality.policy import decide
from data_quality.rules import RowCheck, check_rows
from data_quality.suites import BatchReport, CheckResult, batch_report, run_suite, run_suite_pandas, to_pandas
from data_quality.volume import MIN_HISTORY, Sample, volume_check
from tests.support.dq import NOW, START, cdr, dq_settings, frame, good_rows


def _failed(checks: list[CheckResult]) -> set[tuple[str, str]]:
    return {(c.label, c.severity) for c in checks if not c.success}


def _spoil(count: int, bad_every: int, **overrides) -> pl.DataFrame:
    rows = good_rows(count)
    for i in range(0, count, bad_every):
        rows[i] = {**rows[i], **overrides}
    return frame(rows)


BAD_BATCHES = [
    # (id, batch, {(failed check, severity)})
    ("a_third_negative_billsec", lambda: _spoil(30, 3, billsec=-1),
     {("expect_column_values_to_be_between(billsec)", "critical")}),
    ("half_null_direction", lambda: _spoil(30, 2, direction=None),
     {("expect_column_values_to_not_be_null(direction)", "critical")}),
    ("a_third_unknown_direction", lambda: _spoil(30, 3, direction="sideways"),
     {("expect_column_values_to_be_in_set(direction)", "critical")}),
    ("a_third_end_before_start", lambda: _spoil(30, 3, end_utc=START - timedelta(hours=1)),
     {("expect_column_pair_values_a_to_be_greater_than_b(end_utc)", "critical")}),
    ("a_third_null_start", lambda: _spoil(30, 3, start_utc=None),
     {("expect_column_values_to_not_be_null(start_utc)", "critical")}),
    ("a_third_null_key", lambda: _spoil(30, 3, cdr_key=None),
     {("expect_column_values_to_not_be_null(cdr_key)", "critical")}),
    ("a_third_null_billsec", lambda: _spoil(30, 3, billsec=None),
     {("expect_column_values_to_not_be_null(billsec)", "critical")}),
    ("a_third_null_tenant_is_a_warning", lambda: _spoil(30, 3, tenant=None),
     {("expect_column_values_to_not_be_null(tenant)", "warning")}),
    # repeated keys are the row rules' business (duplicate / conflicting_duplicate), not the suite's
    ("repeated_keys_pass_the_batch_checks", lambda: _spoil(30, 3, cdr_key="pbx:same"), set()),
    ("empty_batch_is_a_warning", lambda: frame([]), {("expect_table_row_count_to_be_between", "warning")}),
    ("a_few_bad_rows_pass_the_batch_checks", lambda: _spoil(30, 10, billsec=-1, direction=None), set()),
]


@pytest.mark.parametrize(("make", "expected"), [b[1:] for b in BAD_BATCHES], ids=[b[0] for b in BAD_BATCHES])
def test_bad_batches(tmp_path, make, expected):
    settings = dq_settings(tmp_path)  # max_bad_row_fraction 0.2: "mostly" 0.8
    checks, gx_result = run_suite(make(), settings)
    assert _failed(checks) == expected
    assert all(c.error is None for c in checks)
    assert gx_result["success"] is (not expected)  # GX's own verdict: every expectation met
    assert len(gx_result["expectations"]) == len(checks)


def test_threshold_follows_config(tmp_path):
    batch = _spoil(30, 3, billsec=-1)  # 10 of 30 bad
    assert _failed(run_suite(batch, dq_settings(tmp_path, max_bad_row_fraction=0.5))[0]) == set()
    assert _failed(run_suite(batch, dq_settings(tmp_path, max_bad_row_fraction=0.1))[0]) == {
        ("expect_column_values_to_be_between(billsec)", "critical")}


def test_warm_up_builds_the_suite_the_batches_then_use(tmp_path):
    settings = dq_settings(tmp_path, max_bad_row_fraction=0.37)  # a threshold no other test builds
    name = "cdr_batch_0_37"
    assert name not in suites._context
    thread = suites.warm_up(settings)
    thread.join(timeout=120)
    assert not thread.is_alive()
    built = suites._context[name]
    batch = _spoil(100, 3, billsec=-1)  # 34 of 100 bad: within 37 %
    assert _failed(run_suite(batch, settings)[0]) == set()
    assert suites._context[name] is built  # the batch used the warm suite, not a second one


def test_warm_up_that_fails_leaves_the_error_to_the_batch(tmp_path, monkeypatch):
    def broken(settings):
        raise RuntimeError("GX could not start")

    escaped: list = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)  # what a thread leaves unhandled
    monkeypatch.setattr(suites, "_validation_definition", broken)
    thread = suites.warm_up(dq_settings(tmp_path))
    thread.join(timeout=10)
    assert not thread.is_alive() and escaped == []  # swallowed in the thread; the batch raises it
    with pytest.raises(RuntimeError, match="GX could not start"):
        run_suite(frame(good_rows(3)), dq_settings(tmp_path))


def test_missing_column_and_wrong_type_are_critical(tmp_path):
    settings = dq_settings(tmp_path)
    pdf = to_pandas(frame(good_rows(5))).drop(columns=["tenant"])
    pdf["billsec"] = pdf["billsec"].astype(str)
    checks, _ = run_suite_pandas(pdf, settings)
    failed = _failed(checks)
    assert ("expect_table_columns_to_match_set", "critical") in failed
    assert ("expect_column_type_to_be(tenant)", "critical") in failed
    assert ("expect_column_values_to_be_in_type_list(billsec)", "critical") in failed
    # "between" cannot even compare strings with 0: a crashed check, reported as such, critical.
    crashed = {c.label: c for c in checks if c.error}
    assert "expect_column_values_to_be_between(billsec)" in crashed
    assert crashed["expect_column_values_to_be_between(billsec)"].severity == "critical"
    report = BatchReport(server="pbx", batch_id=1, rows=5, checks=checks)
    assert not report.success


def test_null_billsec_keeps_an_integer_column_for_gx(tmp_path):
    pdf = to_pandas(_spoil(10, 5, billsec=None))
    assert str(pdf["billsec"].dtype) == "Int64"
    assert "source_row" not in pdf.columns
    # without a null, numpy int64: GX compares it with its bounds vectorised, not row by row
    assert str(to_pandas(frame(good_rows(5)))["billsec"].dtype) == "int64"


@pytest.mark.parametrize("null_too", [False, True], ids=["int64", "nullable_Int64"])
def test_negative_billsec_is_judged_the_same_in_both_integer_columns(tmp_path, null_too):
    settings = dq_settings(tmp_path)  # "mostly" 0.8
    rows = good_rows(30)
    for i in range(0, 30, 3):  # a third negative: above the bad-row fraction
        rows[i] = {**rows[i], "billsec": -5}
    if null_too:
        rows[1] = {**rows[1], "billsec": None}
    checks, _ = run_suite(frame(rows), settings)
    by_label = {c.label: c for c in checks}
    between = by_label["expect_column_values_to_be_between(billsec)"]
    assert not between.success and between.error is None
    assert between.observed["unexpected_count"] == 10 and between.observed["sample"][:1] == [-5]
    assert by_label["expect_column_values_to_be_in_type_list(billsec)"].success


# --- volume -----------------------------------------------------------------------------------

DAY = timedelta(hours=24)


def _night(rows: int, days_ago: int = 0, hours: float = 24) -> Sample:
    end = NOW - days_ago * DAY
    return Sample(rows, end - timedelta(hours=hours), end)


def test_volume_drop_of_ninety_percent_is_flagged():
    history = [_night(1000, d) for d in range(1, 8)]
    got = volume_check(_night(90), history, drop_fraction=0.9)
    assert got.status == "drop" and got.usual_per_hour == pytest.approx(1000 / 24)
    assert "91% fewer" in got.detail
    assert volume_check(_night(110), history, 0.9).status == "ok"


def test_volume_compares_rows_per_hour_of_window():
    history = [_night(1000, d) for d in range(1, 8)]
    three_days = Sample(3000, NOW - 3 * DAY, NOW)  # first run after an outage
    assert volume_check(three_days, history, 0.5).status == "ok"
    assert volume_check(Sample(1000, NOW - 3 * DAY, NOW), history, 0.5).status == "drop"


def test_volume_median_ignores_one_odd_night():
    history = [_night(1000, d) for d in range(1, 6)] + [_night(100_000, 6)]
    assert volume_check(_night(500), history, 0.9).status == "ok"


def test_volume_skips_short_windows_and_thin_history():
    history = [_night(1000, d) for d in range(1, 8)]
    assert volume_check(_night(0, hours=1), history, 0.9).status == "skipped"
    thin = volume_check(_night(0), history[: MIN_HISTORY - 1], 0.9)
    assert thin.status == "skipped" and "need 3" in thin.detail


def test_volume_without_windows_compares_per_batch():
    history = [Sample(500, None, None) for _ in range(5)]
    assert volume_check(Sample(20, None, None), history, 0.9).status == "drop"
    assert volume_check(Sample(100, None, None), history, 0.9).status == "ok"


@hsettings(max_examples=60, deadline=None)
@given(st.integers(1, 10_000), st.integers(0, 10_000), st.integers(1, 5), st.floats(0.05, 0.95))
def test_property_volume_is_scale_free(usual, tonight, scale, drop):
    """Covering k nights with k times the rows never changes the verdict."""
    history = [_night(usual, d) for d in range(1, 6)]
    one = volume_check(_night(tonight), history, drop).status
    many = volume_check(Sample(tonight * scale, NOW - scale * DAY, NOW), history, drop).status
    assert one == many


# --- policy -----------------------------------------------------------------------------------


def _report(settings, batch, volume=None) -> BatchReport:
    return batch_report(batch, settings, "pbx", 1, volume)


def test_policy_rejects_above_the_bad_row_fraction(tmp_path):
    settings = dq_settings(tmp_path)
    rows = good_rows(10) + [cdr(f"b{i}", billsec=-1) for i in range(5)]  # 5 of 15 bad = 33 %
    check = check_rows(frame(rows), settings, NOW, server="pbx")
    decision = decide(check, None, settings)
    assert not decision.accepted and decision.bad_rows == 5 and decision.judged_rows == 15
    assert "above max_bad_row_fraction 20.0%" in decision.reasons[0]


def test_policy_small_batches_need_min_bad_rows(tmp_path):
    settings = dq_settings(tmp_path)  # min_bad_rows 5
    check = check_rows(frame(good_rows(2) + [cdr("b", billsec=-1)]), settings, NOW, server="pbx")
    decision = decide(check, None, settings)
    assert decision.accepted and "fewer than min_bad_rows 5" in decision.warnings[0]
    strict = dq_settings(tmp_path, min_bad_rows=1)
    assert not decide(check, None, strict).accepted


def test_policy_ignores_overlap_duplicates_but_counts_held_rereads(tmp_path):
    settings = dq_settings(tmp_path, min_bad_rows=1)
    rows = good_rows(10) + [cdr(f"d{i}") for i in range(20)]
    billed = {f"pbx:d{i}": "billed" for i in range(20)}
    assert decide(check_rows(frame(rows), settings, NOW, billed, server="pbx"), None, settings).accepted
    held = {f"pbx:d{i}": "quarantine:held" for i in range(20)}
    decision = decide(check_rows(frame(rows), settings, NOW, held, server="pbx"), None, settings)
    assert not decision.accepted and decision.bad_rows == 20 and "20 of them still held" in decision.reasons[0]


def test_policy_rejects_on_a_critical_batch_check(tmp_path):
    settings = dq_settings(tmp_path, max_bad_row_fraction=1.0)  # the fraction alone would pass
    batch = _spoil(30, 2, billsec=-1)
    check = check_rows(batch, settings, NOW, server="pbx")
    report = _report(dq_settings(tmp_path), batch)  # a suite with the default 0.2 threshold
    decision = decide(check, report, settings)
    assert not decision.accepted
    assert any("expect_column_values_to_be_between(billsec) failed" in r for r in decision.reasons)


def test_volume_drop_warns_by_default_and_blocks_when_configured(tmp_path):
    batch = frame(good_rows(5))
    volume = volume_check(_night(5), [_night(1000, d) for d in range(1, 8)], 0.9)
    for blocks, accepted in ((False, True), (True, False)):
        settings = dq_settings(tmp_path, volume_drop_blocks=blocks)
        report = _report(settings, batch, volume)
        decision = decide(check_rows(batch, settings, NOW, server="pbx"), report, settings)
        assert decision.accepted is accepted
        texts = decision.warnings if accepted else decision.reasons
        assert any("volume" in t and "fewer CDRs than usual" in t for t in texts)


def test_empty_rowcheck_is_accepted(tmp_path):
    settings = dq_settings(tmp_path)
    empty = RowCheck(frame([]), pl.DataFrame(), frame([]).with_columns(pl.lit("x").alias("duplicate_of")))
    decision = decide(empty, None, settings)
    assert decision.accepted and decision.bad_fraction == 0.0
