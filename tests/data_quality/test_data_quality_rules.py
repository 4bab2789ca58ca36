"""Row rules: a corpus of bad (and tricky good) rows, each asserting where it ended and why."""

from __future__ import annotations

import json
from datetime import timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from data_quality.rules import RULE_ORDER, check_rows, decode_rows, known_frame
from tests.support.dq import NOW, START, cdr, dq_settings, frame, good_rows, where

S = START
GOOD = ("good", None)


def q(rule: str) -> tuple[str, str]:
    return ("quarantine", rule)


def dup(state: str) -> tuple[str, str]:
    return ("duplicate", state)


# (case id, rows, known ledger keys, {tag: expected destinations}, {tag: text the reason must contain})
CASES = [
    ("missing_key_null", [cdr("a", cdr_key=None)], {}, {"a": [q("missing_key")]}, {"a": "cdr_key is empty"}),
    ("missing_key_blank", [cdr("a", cdr_key="   ")], {}, {"a": [q("missing_key")]}, {}),
    ("unknown_server", [cdr("a", server="ghost", cdr_key="ghost:a")], {}, {"a": [q("unknown_server")]},
     {"a": "server ghost is not configured"}),
    ("null_server", [cdr("a", server=None, cdr_key="pbx:a")], {}, {"a": [q("unknown_server")]}, {}),
    ("key_of_other_server", [cdr("a", cdr_key="pbx2:a")], {}, {"a": [q("malformed_key")]}, {"a": "pbx2:a"}),
    ("key_without_call_id", [cdr("a", cdr_key="pbx:")], {}, {"a": [q("malformed_key")]}, {}),
    ("key_with_space", [cdr("a", cdr_key="pbx:a b")], {}, {"a": [q("malformed_key")]}, {}),
    ("key_with_control_char", [cdr("a", cdr_key="pbx:a\x01")], {}, {"a": [q("malformed_key")]}, {}),
    ("key_too_long", [cdr("a", cdr_key="pbx:" + "9" * 300)], {}, {"a": [q("malformed_key")]}, {}),
    ("row_of_other_server", [cdr("a", server="pbx2")], {}, {"a": [q("wrong_server")]},
     {"a": "row of server pbx2 in a batch of server pbx"}),
    ("missing_start", [cdr("a", start_utc=None)], {}, {"a": [q("missing_start")]}, {}),
    ("missing_end", [cdr("a", end_utc=None)], {}, {"a": [q("missing_end")]}, {}),
    ("missing_billsec", [cdr("a", billsec=None)], {}, {"a": [q("missing_billsec")]}, {}),
    ("end_before_start", [cdr("a", end_utc=S - timedelta(seconds=1), answer_utc=None, billsec=0)], {},
     {"a": [q("end_before_start")]}, {"a": "is before start"}),
    ("answer_before_start", [cdr("a", answer_utc=S - timedelta(seconds=30))], {}, {"a": [q("answer_before_start")]}, {}),
    ("answer_after_end", [cdr("a", answer_utc=S + timedelta(seconds=90), billsec=0)], {},
     {"a": [q("answer_after_end")]}, {}),
    ("negative_billsec", [cdr("a", billsec=-5)], {}, {"a": [q("negative_billsec")]}, {"a": "billsec -5 is negative"}),
    ("billsec_longer_than_call", [cdr("a", billsec=600)], {}, {"a": [q("billsec_exceeds_call")]},
     {"a": "65 s start to end"}),
    ("billsec_longer_than_answered_part", [cdr("a", answer_utc=S + timedelta(seconds=50), billsec=60)], {},
     {"a": [q("billsec_exceeds_call")]}, {"a": "15 s answer to end"}),
    ("stuck_channel", [cdr("a", end_utc=S + timedelta(days=2), billsec=100)], {}, {"a": [q("call_too_long")]},
     {"a": "max_call_seconds 86400"}),
    ("start_in_future", [cdr("a", start_utc=NOW + timedelta(days=1), answer_utc=None,
                             end_utc=NOW + timedelta(days=1, seconds=60))], {},
     {"a": [q("future_timestamp")]}, {"a": "in the future"}),
    ("end_in_future", [cdr("a", end_utc=NOW + timedelta(hours=1), billsec=0, answer_utc=None)], {},
     {"a": [q("future_timestamp")]}, {}),
    ("older_than_lookback", [cdr("a", start_utc=S - timedelta(days=60), answer_utc=None,
                                 end_utc=S - timedelta(days=60) + timedelta(seconds=30), billsec=10)], {},
     {"a": [q("before_lookback")]}, {"a": "35 days"}),
    ("unknown_direction", [cdr("a", direction="sideways")], {}, {"a": [q("unknown_direction")]},
     {"a": "direction sideways"}),
    ("null_direction", [cdr("a", direction=None)], {}, {"a": [q("unknown_direction")]}, {}),
    ("answered_without_tenant", [cdr("a", tenant=None)], {}, {"a": [q("missing_tenant")]}, {}),
    ("unknown_tenant", [cdr("a", tenant="nobody")], {}, {"a": [q("unknown_service")]},
     {"a": "tenant nobody extension 1001"}),
    ("unmapped_extension", [cdr("a", tenant="beta", extension="2999")], {}, {"a": [q("unknown_service")]}, {}),
    ("outbound_number_empty", [cdr("a", rate_number=None, dst="abc")], {}, {"a": [q("invalid_number")]},
     {"a": "dst abc"}),
    ("outbound_number_16_digits", [cdr("a", rate_number="1" * 16)], {}, {"a": [q("invalid_number")]}, {}),
    ("outbound_number_not_digits", [cdr("a", rate_number="16135550x00")], {}, {"a": [q("invalid_number")]}, {}),
    ("inbound_junk_number_billed_inbound", [cdr("a", tenant="beta", extension="2001", direction="inbound",
                                                rate_number=None)], {}, {"a": [q("invalid_number")]}, {}),
    ("local_junk_number_billed_local", [cdr("a", tenant="beta", extension="2001", direction="local",
                                            rate_number=None)], {}, {"a": [q("invalid_number")]}, {}),
    ("several_faults_first_rule_wins", [cdr("a", billsec=-1, direction="up", tenant="nobody")], {},
     {"a": [q("negative_billsec")]}, {"a": "unknown_direction: direction up"}),
    # --- duplicates --------------------------------------------------------------------------
    ("already_billed", [cdr("a")], {"pbx:a": "billed"}, {"a": [dup("billed")]}, {}),
    ("already_unrated", [cdr("a")], {"pbx:a": "unrated"}, {"a": [dup("unrated")]}, {}),
    ("already_held_in_quarantine", [cdr("a")], {"pbx:a": "quarantine:held"}, {"a": [dup("quarantine:held")]}, {}),
    ("billed_key_with_bad_content", [cdr("a", billsec=-3)], {"pbx:a": "billed"}, {"a": [dup("billed")]}, {}),
    ("identical_repeat_in_batch", [cdr("a"), cdr("a")], {}, {"a": [GOOD, dup("batch")]}, {}),
    ("repeat_differing_only_in_source_row", [cdr("a"), cdr("a", source_row=json.dumps({"tag": "a2"}))], {},
     {"a": [GOOD], "a2": [dup("batch")]}, {}),
    ("conflicting_repeat_in_batch", [cdr("a"), cdr("a", billsec=30, source_row=json.dumps({"tag": "a2"}))], {},
     {"a": [GOOD], "a2": [q("conflicting_duplicate")]}, {"a2": "different billsec"}),
    ("conflicting_repeat_also_broken", [cdr("a"), cdr("a", billsec=-1, source_row=json.dumps({"tag": "a2"}))], {},
     {"a2": [q("conflicting_duplicate")]}, {"a2": "negative_billsec"}),
    # --- rows that look odd but are fine -------------------------------------------------------
    ("unanswered_junk_number_is_zero_cost", [cdr("a", billsec=0, answer_utc=None, rate_number=None, dst="")], {},
     {"a": [GOOD]}, {}),
    ("unanswered_unknown_tenant_is_zero_cost", [cdr("a", billsec=0, answer_utc=None, tenant="nobody")], {},
     {"a": [GOOD]}, {}),
    ("inbound_junk_number_not_billed_inbound", [cdr("a", direction="inbound", rate_number=None)], {},
     {"a": [GOOD]}, {}),
    ("local_junk_number_not_billed_local", [cdr("a", direction="local", rate_number=None, dst="*97")], {},
     {"a": [GOOD]}, {}),
    ("billsec_one_second_slack", [cdr("a", billsec=61)], {}, {"a": [GOOD]}, {}),
    ("future_within_tolerance", [cdr("a", start_utc=NOW - timedelta(seconds=30), answer_utc=None,
                                     end_utc=NOW + timedelta(seconds=200), billsec=0)], {}, {"a": [GOOD]}, {}),
    ("released_quarantine_key_seen_again", [cdr("a")], {"pbx:a": "quarantine:released"},
     {"a": [dup("quarantine:released")]}, {}),
]


@pytest.mark.parametrize(("rows", "known", "expected", "reasons"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_corpus(tmp_path, rows, known, expected, reasons):
    settings = dq_settings(tmp_path)
    background = good_rows(3)
    batch = frame(background + rows)
    check = check_rows(batch, settings, NOW, known, server="pbx")

    assert check.good.height + check.quarantined.height + check.duplicates.height == batch.height
    for row in background:
        assert where(check, json.loads(row["source_row"])["tag"]) == [GOOD]
    for tag, destinations in expected.items():
        assert where(check, tag) == sorted(destinations, key=str), tag
    for tag, text in reasons.items():
        got = check.quarantined.filter(pl.col("row").str.json_path_match("$.source_row") == json.dumps({"tag": tag}))
        assert got.height == 1 and text in got["reason"][0], (tag, got["reason"].to_list())
    for r in check.quarantined.iter_rows(named=True):
        assert r["rule"] in RULE_ORDER
        assert r["reason"].startswith(f"{r['rule']}:")
        assert r["server"]  # always set (the batch server when the row has none)


def test_corpus_has_at_least_thirty_bad_kinds():
    bad = {c[0] for c in CASES if any(d[0] != "good" for ds in c[3].values() for d in ds)}
    assert len(bad) >= 30


def test_quarantine_record_keeps_the_whole_row_and_its_billing_date(tmp_path):
    settings = dq_settings(tmp_path)
    row = cdr("a", billsec=-5, start_utc=START.replace(hour=2))  # 21:00 the day before in Toronto
    check = check_rows(frame([row]), settings, NOW, None, server="pbx")
    record = check.quarantined.row(0, named=True)
    assert record["billing_date"].isoformat() == "2026-11-18"
    back = decode_rows([record["row"]])
    assert back.row(0, named=True) == frame([row]).row(0, named=True)


def test_decode_rows_round_trips_nulls_and_fractional_seconds(tmp_path):
    settings = dq_settings(tmp_path)
    rows = [cdr("a", cdr_key=None, answer_utc=None, billsec=None),
            cdr("b", billsec=-1, start_utc=START + timedelta(microseconds=1234))]
    check = check_rows(frame(rows), settings, NOW, None, server="pbx")
    back = decode_rows(check.quarantined["row"].to_list()).sort("source_row")
    assert back.equals(frame(rows).sort("source_row"))


def test_known_keys_accepts_a_plain_set_as_billed():
    assert known_frame({"pbx:1"}).to_dicts() == [{"cdr_key": "pbx:1", "state": "billed"}]


def test_row_tuple_unpacking_and_counts(tmp_path):
    settings = dq_settings(tmp_path)
    good, quarantined, duplicates = check_rows(frame(good_rows(2) + [cdr("x", billsec=-1)]), settings, NOW)
    assert (good.height, quarantined.height, duplicates.height) == (2, 1, 0)


# --- property: every row ends in exactly one place, and the place matches the row ----------------

MUTATIONS = {
    "none": {},
    "neg": {"billsec": -1},
    "nokey": {"cdr_key": None},
    "dir": {"direction": "x"},
    "tenant": {"tenant": "nobody"},
    "unanswered_junk": {"billsec": 0, "answer_utc": None, "rate_number": None},
}


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 6), st.sampled_from(sorted(MUTATIONS))), min_size=0, max_size=25),
       st.sets(st.integers(0, 6), max_size=3))
def test_property_nothing_disappears(tmp_path, spec, billed):
    settings = dq_settings(tmp_path)
    rows = [cdr(str(key), **MUTATIONS[m], source_row=json.dumps({"tag": f"{i}"})) for i, (key, m) in enumerate(spec)]
    known = {f"pbx:{k}" for k in billed}
    check = check_rows(frame(rows), settings, NOW, known, server="pbx")
    assert check.good.height + check.quarantined.height + check.duplicates.height == len(rows)
    assert check.good["cdr_key"].is_duplicated().sum() == 0  # a key is rated at most once
    assert not set(check.good["cdr_key"]) & known
    first_seen: set[str] = set()
    for i, (key, m) in enumerate(spec):
        places = where(check, str(i))
        assert len(places) == 1, (i, places)
        place = places[0]
        k = f"pbx:{key}"
        if m == "nokey":
            assert place == q("missing_key")
        elif k in known:
            assert place == dup("billed")
        elif k in first_seen:
            assert place[0] in ("duplicate", "quarantine")
        elif m in ("none", "unanswered_junk"):
            assert place == GOOD
        else:
            assert place[0] == "quarantine"
        if m != "nokey":
            first_seen.add(k)
