"""Included minutes already used (autobill/ledger/corrections.py), as the nightly and credit
control read them before rating.

`included_by_period` reads each manifest's footer summary (included seconds per service), the
rows of manifests written before footers existed, and only the calls a re-rate moved (issue #15:
a month of billed calls was read every night and every credit-control cycle). The reference kept
here sums `included_seconds` plus every correction's change over ALL billed rows of each period;
on random nights, random re-rates and random manifests without a summary the two must agree, and
`allowance_periods` must ask only for the plans that include minutes.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobill.config import settings_from_dict
from autobill.ledger.billed import INCLUDED_KEY, billed_frame, empty_billed, manifest_paths, record_final
from autobill.ledger.corrections import allowance_periods, included_by_period
from autobill.ledger.db import session_scope
from autobill.ledger.models import CorrectionCDR, Rerate
from autobill.timeutil import period_bounds, utc_now
from tests.autobill.test_billed_state import _settings

MONTH = date(2026, 11, 1)
SERVICES = (10, 20, 30)

# (key number, service, day of the month, included seconds); most calls use no allowance
billed_row = st.tuples(st.integers(0, 60), st.sampled_from(SERVICES), st.integers(0, 29),
                       st.sampled_from((0, 0, 0, 0, 30, 60, 600)))
# (which billed call, included before, included after): a re-rate moved this call's allowance
# (the call is picked among the billed ones, or none when the index is past them)
correction = st.tuples(st.integers(0, 50), st.sampled_from((0, 60)), st.sampled_from((0, 45, 60)))


def _write(cfg, rows: list[tuple[int, int, int, int]], corrections: list[tuple[int, int, int]]) -> None:
    now = utc_now()
    unique = {key: (key, sid, day, inc) for key, sid, day, inc in rows}  # a key is billed once
    keys = list(unique)
    corrections = [(keys[i] if i < len(keys) else 100 + i, old, new) for i, old, new in corrections]
    frame = pl.DataFrame(
        {
            "cdr_key": [f"pbx:{k}" for k in unique],
            "server": ["pbx"] * len(unique),
            "client_id": [1] * len(unique),
            "service_id": [sid for _, sid, _, _ in unique.values()],
            "billing_date": [MONTH + timedelta(days=day) for _, _, day, _ in unique.values()],
            "outcome": ["included" if inc else "billed" for *_, inc in unique.values()],
            "charge_id": [None] * len(unique),
            "cost": ["0.000000"] * len(unique),
            "billable_seconds": [600] * len(unique),
            "included_seconds": [inc for *_, inc in unique.values()],
            "run_id": [None] * len(unique),
            "created_at": [now] * len(unique),
        },
        schema=empty_billed().schema,
    )
    with session_scope(cfg.ledger) as session:
        if frame.height:
            record_final(session, cfg.data_path, frame, None, [], now)
        if corrections:
            rerate = Rerate(requested_by="test", reason="test", date_from=MONTH, date_to=MONTH + timedelta(days=29),
                            tariff_versions="{}", old_versions="[]")
            session.add(rerate)
            session.flush()
            session.add_all(CorrectionCDR(
                rerate_id=rerate.id, cdr_key=f"pbx:{key}", old_class="outbound", new_class="outbound",
                old_outcome="billed", new_outcome="billed", old_cost=Decimal(0), new_cost=Decimal(0),
                old_included=old, new_included=new, new_billable_seconds=600,
            ) for key, old, new in corrections)


def _strip_summaries(cfg, days: set[int]) -> None:
    """Rewrite the manifests of these days of the month without their footer summary, as files
    written before the summary existed look."""
    with session_scope(cfg.ledger) as session:
        paths = manifest_paths(session, days=[MONTH + timedelta(days=d) for d in days])
    for path in paths:
        assert INCLUDED_KEY in pl.read_parquet_metadata(path)
        pl.read_parquet(path).write_parquet(path)
        assert INCLUDED_KEY not in pl.read_parquet_metadata(path)


def _reference(cfg, wanted: dict[tuple[int, date], date]) -> dict[tuple[int, date], int]:
    """Every billed row of each period, its included seconds plus all its corrections' changes."""
    with session_scope(cfg.ledger) as session:
        billed = billed_frame(session=session)
        moved: dict[str, int] = {}
        for c in session.query(CorrectionCDR).all():
            moved[c.cdr_key] = moved.get(c.cdr_key, 0) + c.new_included - c.old_included
    out = {}
    for (sid, start), end in wanted.items():
        total = 0
        for row in billed.iter_rows(named=True):
            if row["service_id"] == sid and start <= row["billing_date"] < end:
                total += row["included_seconds"] + moved.get(row["cdr_key"], 0)
        out[(sid, start)] = total
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(rows=st.lists(billed_row, max_size=40), corrections=st.lists(correction, max_size=8),
       asked=st.lists(st.sampled_from(SERVICES), min_size=1, max_size=3, unique=True),
       unsummarised=st.sets(st.integers(0, 29), max_size=10))
def test_allowance_read_matches_a_sum_over_every_billed_row(tmp_path_factory, rows, corrections, asked,
                                                            unsummarised):
    tmp = tmp_path_factory.mktemp("included")
    cfg = _settings(tmp)
    _write(cfg, rows, corrections)
    _strip_summaries(cfg, unsummarised)
    wanted = {(sid, MONTH): MONTH + timedelta(days=30) for sid in asked}
    with session_scope(cfg.ledger) as session:
        got = included_by_period(session, wanted)
    assert got == _reference(cfg, wanted)


def test_the_allowance_read_opens_footers_not_rows(tmp_path, monkeypatch):
    """Without re-rates and with every manifest summarised, no row of the month is read."""
    cfg = _settings(tmp_path)
    _write(cfg, [(k, SERVICES[k % 3], k % 30, (0, 30, 600)[k % 3]) for k in range(60)], [])
    wanted = {(sid, MONTH): MONTH + timedelta(days=30) for sid in SERVICES}
    expected = _reference(cfg, wanted)
    assert expected == {(10, MONTH): 0, (20, MONTH): 600, (30, MONTH): 12000}

    def no_rows(*args, **kwargs):
        raise AssertionError("the allowance read scanned manifest rows")

    monkeypatch.setattr(pl, "scan_parquet", no_rows)
    with session_scope(cfg.ledger) as session:
        assert included_by_period(session, wanted) == expected


def test_manifests_without_a_summary_are_read_row_by_row(tmp_path):
    """Files written before the footer summary existed (here: every other day) still count."""
    cfg = _settings(tmp_path)
    _write(cfg, [(k, SERVICES[k % 3], k % 30, (0, 30, 600)[k % 3]) for k in range(60)],
           [(1, 30, 0), (5, 600, 60)])  # two re-rates: calls 1 (day 1) and 5 (day 5)
    _strip_summaries(cfg, set(range(0, 30, 2)))
    wanted = {(sid, MONTH): MONTH + timedelta(days=30) for sid in SERVICES}
    with session_scope(cfg.ledger) as session:
        got = included_by_period(session, wanted)
    assert got == _reference(cfg, wanted) == {(10, MONTH): 0, (20, MONTH): 570, (30, MONTH): 11460}


def test_only_plans_with_included_minutes_are_asked_for():
    cfg = settings_from_dict({
        "timezone": "America/Toronto",
        "servers": [{"id": "pbx1", "kind": "file", "path": "/tmp"}],
        "tariffs": [{"name": "main", "path": "/tmp/t.csv", "currency": "USD"}],
        "plans": [{"name": "basic", "tariff": "main"},
                  {"name": "business", "tariff": "main", "included_minutes": 500, "period_anchor_day": 15}],
    })
    day = date(2026, 11, 20)
    cdrs = pl.DataFrame({
        "service_id": [1, 1, 2, None, 3],
        "plan": ["business", "business", "basic", "business", "gone"],
        "billing_date": [day, day, day, day, day],
    })
    assert allowance_periods(cfg, cdrs) == {(1, period_bounds(day, 15)[0]): period_bounds(day, 15)[1]}
    assert allowance_periods(cfg, cdrs.filter(pl.col("plan") == "basic")) == {}
