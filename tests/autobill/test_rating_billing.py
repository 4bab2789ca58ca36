"""The nightly rater (rate_for_billing) against a per-row reference, plus worked examples.

Covers included minutes (the crossing call, ties on start time, periods by anchor day), time
bands in the tariff's timezone across DST days, currency conversion (direct and inverse rates),
inbound/local rules, charge classes and the unrated reasons.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobill.config import settings_from_dict
from autobill.rating.billing import OUTPUT_SCHEMA, load_tariffs, rate_for_billing
from autobill.rating.tariff import tariff_from_frame
from tests.support.reference_rater import ref_bill

BAND_CHOICES = [("", ""), ("mon-fri", "08:00-18:00"), ("sat,sun", ""), ("mon-fri", "18:00-08:00")]
TARIFF_COLUMNS = ["prefix", "rate", "description", "connect_fee", "first_increment", "next_increment",
                  "effective_from", "days", "hours", "class"]
COMPARED = ["cdr_key", "outcome", "unrated_reason", "charge_class", "matched_prefix", "description", "billable_seconds",
            "included_seconds", "charged_seconds", "rate", "connect_fee", "cost", "tariff_name", "period_start",
            "currency"]


def make_settings(tz="America/Toronto", included=(0, 0), markup=("0", "12.5"), bill_inbound=False, bill_local=False,
                  anchor=(1, 15), rates=None, inbound_tariff=None):
    return settings_from_dict(
        {
            "timezone": tz,
            "currency_rates": rates if rates is not None else {"EUR": {"USD": "1.0837"}},
            "servers": [
                {"id": "pbx1", "kind": "file", "path": "/tmp"},
                {"id": "pbx2", "kind": "file", "path": "/tmp", "numbering": {"country_code": "44"}},
            ],
            "tariffs": [
                {"name": "main", "path": "main.csv", "currency": "USD"},
                {"name": "eu", "path": "eu.csv", "currency": "EUR", "timezone": "Europe/Paris"},
            ],
            "plans": [
                {"name": "A", "tariff": "main", "included_minutes": included[0], "markup_percent": markup[0],
                 "bill_inbound": bill_inbound, "bill_local": bill_local, "period_anchor_day": anchor[0],
                 "inbound_tariff": inbound_tariff},
                {"name": "B", "tariff": "eu", "included_minutes": included[1], "markup_percent": markup[1],
                 "currency": "USD", "period_anchor_day": anchor[1]},
            ],
            "services": [
                {"client_id": 1, "service_id": 10, "server": "pbx1", "tenant": "t1", "plan": "A"},
                {"client_id": 2, "service_id": 20, "server": "pbx2", "tenant": "t2", "plan": "B"},
            ],
        }
    )


def loaded(rows: list[dict], name: str, currency: str, tz: str | None):
    frame = pl.DataFrame({c: [r.get(c) or None for r in rows] for c in TARIFF_COLUMNS},
                         schema={c: pl.String for c in TARIFF_COLUMNS})
    return tariff_from_frame(frame, name=name, currency=currency, timezone=tz, with_bands=True)


def cdr_frame(cdrs: list[dict]) -> pl.DataFrame:
    schema = {"cdr_key": pl.String, "server": pl.String, "direction": pl.String, "rate_number": pl.String,
              "start_utc": pl.Datetime("us", "UTC"), "billsec": pl.Int64, "client_id": pl.Int64,
              "service_id": pl.Int64, "plan": pl.String}
    return pl.DataFrame({c: [r[c] for r in cdrs] for c in schema}, schema=schema)


def compare(cdrs, cfg, tariff_rows: dict, used: dict):
    tariffs = {name: loaded(rows, name, cur, tz) for name, (rows, cur, tz) in tariff_rows.items()}
    out = rate_for_billing(cdr_frame(cdrs), cfg, tariffs, used)
    assert out.columns == list(OUTPUT_SCHEMA)
    got = out.select(COMPARED).to_dicts()
    expected = [{k: r[k] for k in COMPARED} for r in ref_bill(cdrs, cfg, tariff_rows, used)]
    assert got == expected
    return out


# Instants near the interesting edges: Toronto DST start (2024-03-10 02:00 local = 07:00Z), Paris
# DST start (2024-03-31 02:00 local = 01:00Z), local 08:00 / 18:00 band edges, a period boundary.
EDGES = [
    datetime(2024, 3, 10, 7, 0, tzinfo=UTC),
    datetime(2024, 3, 31, 1, 0, tzinfo=UTC),
    datetime(2024, 3, 29, 7, 0, tzinfo=UTC),  # Fri 08:00 Paris (UTC+1)
    datetime(2024, 3, 29, 17, 0, tzinfo=UTC),  # Fri 18:00 Paris
    datetime(2024, 3, 15, 4, 0, tzinfo=UTC),  # 00:00 in Toronto on the 15th (EDT)
    datetime(2024, 3, 16, 23, 0, tzinfo=UTC),  # Sat/Sun edge in Paris
]
PREFIXES = ["1", "12", "1212", "44", "442", "33", "4420"]


@st.composite
def billing_case(draw):
    n_rows = draw(st.integers(0, 10))
    tariffs = {}
    for name in ("main", "eu"):
        rows, seen = [], set()
        for _ in range(n_rows):
            prefix = draw(st.sampled_from(PREFIXES))
            eff = draw(st.sampled_from(["", "2024-03-10T07:00:00Z", "2024-03-20"]))
            days, hours = draw(st.sampled_from(BAND_CHOICES))
            if (prefix, eff, days, hours) in seen or (prefix, eff, "", "") in seen and not (days or hours):
                continue
            seen.add((prefix, eff, days, hours))
            rows.append({
                "prefix": prefix, "rate": draw(st.sampled_from(["0", "0.01", "0.123457", "2.5"])),
                "description": draw(st.sampled_from(["", "d1", "d2"])),
                "connect_fee": draw(st.sampled_from(["", "0", "0.05", "0.000001"])),
                "first_increment": draw(st.sampled_from(["", "1", "30", "60"])),
                "next_increment": draw(st.sampled_from(["", "1", "6", "60"])),
                "effective_from": eff, "days": days, "hours": hours,
                "class": draw(st.sampled_from(["", "", "international", "premium"])),
            })
        tariffs[name] = rows
    cfg = make_settings(
        tz=draw(st.sampled_from(["America/Toronto", "Europe/London", "UTC"])),
        included=(draw(st.sampled_from([0, 1, 3])), draw(st.sampled_from([0, 2]))),
        markup=(draw(st.sampled_from(["0", "12.5", "-5"])), draw(st.sampled_from(["0", "33.333333"]))),
        bill_inbound=draw(st.booleans()),
        bill_local=draw(st.booleans()),
        anchor=(draw(st.sampled_from([1, 15])), draw(st.sampled_from([1, 10]))),
        rates=draw(st.sampled_from([{"EUR": {"USD": "1.0837"}}, {"USD": {"EUR": "0.92"}}])),
        inbound_tariff=draw(st.sampled_from([None, "eu"])),
    )
    cdrs = []
    for i in range(draw(st.integers(0, 20))):
        svc = draw(st.sampled_from([(1, 10, "A"), (2, 20, "B"), (None, None, None)]))
        base = draw(st.sampled_from(EDGES))
        start = base + timedelta(seconds=draw(st.sampled_from([-3600, -1, 0, 0, 0, 1, 86400 * 7])))
        cdrs.append({
            "cdr_key": f"k{draw(st.integers(0, 99)):02d}-{i}",
            "server": draw(st.sampled_from(["pbx1", "pbx2"])),
            "direction": draw(st.sampled_from(["outbound", "outbound", "inbound", "local", "sideways"])),
            "rate_number": draw(st.one_of(st.none(), st.sampled_from(PREFIXES).map(lambda p: p + "5550100"))),
            "start_utc": draw(st.one_of(st.just(start), st.just(start), st.just(start), st.none())),
            "billsec": draw(st.one_of(st.sampled_from([0, 1, 29, 30, 31, 59, 60, 61, 90, 119, 120, 121, 200]),
                                      st.integers(0, 400), st.sampled_from([None, -1]))),
            "client_id": svc[0], "service_id": svc[1], "plan": svc[2],
        })
    used = {}
    if draw(st.booleans()):
        used[(10, date(2024, 3, 1))] = draw(st.sampled_from([0, 30, 59, 60, 500]))
        used[(10, date(2024, 3, 15))] = draw(st.sampled_from([0, 61]))
    tariff_rows = {"main": (tariffs["main"], "USD", None), "eu": (tariffs["eu"], "EUR", "Europe/Paris")}
    return cdrs, cfg, tariff_rows, used


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=billing_case())
def test_billing_equals_reference(case):
    compare(*case)


def test_crossing_call_is_split_and_ties_use_cdr_key():
    cfg = make_settings(tz="UTC", included=(1, 0), markup=("0", "0"))
    rows = {"main": ([{"prefix": "1", "rate": "0.60", "connect_fee": "0.10"}], "USD", None), "eu": ([], "EUR", None)}
    t = datetime(2024, 5, 2, 12, tzinfo=UTC)
    cdrs = [
        {"cdr_key": "b", "server": "pbx1", "direction": "outbound", "rate_number": "12125550100", "start_utc": t,
         "billsec": 40, "client_id": 1, "service_id": 10, "plan": "A"},
        {"cdr_key": "a", "server": "pbx1", "direction": "outbound", "rate_number": "12125550100", "start_utc": t,
         "billsec": 30, "client_id": 1, "service_id": 10, "plan": "A"},
        {"cdr_key": "c", "server": "pbx1", "direction": "outbound", "rate_number": "12125550100",
         "start_utc": t + timedelta(seconds=1), "billsec": 10, "client_id": 1, "service_id": 10, "plan": "A"},
    ]
    out = compare(cdrs, cfg, rows, {})
    got = out.select("cdr_key", "outcome", "included_seconds", "charged_seconds", "cost").rows()
    # "a" (tie, earlier key) takes 30 s, "b" crosses: 30 s free, 10 s charged (+ connect fee), "c" pays in full
    assert got == [
        ("b", "billed", 30, 10, "0.200000"),
        ("a", "included", 30, 0, "0.000000"),
        ("c", "billed", 0, 10, "0.200000"),
    ]
    # with 45 s already used this period, only 15 s are left
    out = compare(cdrs, cfg, rows, {(10, date(2024, 5, 1)): 45})
    assert out.select("cdr_key", "included_seconds").rows() == [("b", 0), ("a", 15), ("c", 0)]


def test_currency_conversion_before_the_single_rounding():
    cfg = make_settings(tz="UTC", markup=("0", "12.5"))
    rows = {"main": ([], "USD", None), "eu": ([{"prefix": "44", "rate": "0.000001"}], "EUR", None)}
    cdrs = [{"cdr_key": "x", "server": "pbx2", "direction": "outbound", "rate_number": "442071234567",
             "start_utc": datetime(2024, 5, 2, tzinfo=UTC), "billsec": 7, "client_id": 2, "service_id": 20, "plan": "B"}]
    out = compare(cdrs, cfg, rows, {})
    # 0.000001 * 7/60 * 1.125 * 1.0837 = 0.000000142... -> 0.000000 (rounded once, at the end)
    assert out.row(0, named=True)["cost"] == "0.000000"
    cdrs[0]["billsec"] = 3600
    out = compare(cdrs, cfg, rows, {})
    assert out.row(0, named=True)["cost"] == "0.000073"  # 0.00006 * 1.125 * 1.0837 = 0.0000731497...
    assert out.row(0, named=True)["charge_class"] == "outbound"  # 44 on a +44 server


def test_time_band_follows_the_tariff_timezone_across_dst():
    cfg = make_settings(tz="UTC")
    rows = {
        "main": ([{"prefix": "1", "rate": "1", "days": "", "hours": "08:00-18:00", "description": "day"},
                  {"prefix": "1", "rate": "0.5", "description": "other"}], "USD", "America/Toronto"),
        "eu": ([], "EUR", None),
    }
    def call(at):
        return {"cdr_key": str(at), "server": "pbx1", "direction": "outbound", "rate_number": "12125550100",
                "start_utc": at, "billsec": 60, "client_id": 1, "service_id": 10, "plan": "A"}
    # 08:00 Toronto is 13:00Z before the DST change (EST) and 12:00Z after it (EDT)
    cdrs = [call(datetime(2024, 3, 8, 12, 59, 59, tzinfo=UTC)), call(datetime(2024, 3, 8, 13, tzinfo=UTC)),
            call(datetime(2024, 3, 11, 12, tzinfo=UTC)), call(datetime(2024, 3, 11, 22, tzinfo=UTC))]
    out = compare(cdrs, cfg, rows, {})
    assert out["description"].to_list() == ["other", "day", "day", "other"]


def test_outcomes_and_reasons():
    cfg = make_settings(tz="UTC", bill_inbound=False, bill_local=False)
    rows = {"main": ([{"prefix": "1", "rate": "0.01"}, {"prefix": "1800", "rate": "0"}], "USD", None),
            "eu": ([], "EUR", None)}
    t = datetime(2024, 5, 2, tzinfo=UTC)
    base = {"server": "pbx1", "direction": "outbound", "rate_number": "12125550100", "start_utc": t, "billsec": 60,
            "client_id": 1, "service_id": 10, "plan": "A"}
    cases = [
        ({}, "billed", None, "outbound"),
        ({"billsec": 0, "service_id": None, "client_id": None, "plan": None}, "zero_cost", None, "outbound"),
        ({"service_id": None, "client_id": None, "plan": None}, "unrated", "no_service", "outbound"),
        ({"direction": "inbound"}, "zero_cost", None, "inbound"),
        ({"direction": "local"}, "zero_cost", None, "local"),
        ({"rate_number": None}, "unrated", "invalid_number", "outbound"),
        ({"rate_number": "861234"}, "unrated", "no_rate", "international"),
        ({"rate_number": "18005550100"}, "zero_cost", None, "outbound"),
        ({"billsec": None}, "unrated", "invalid_billsec", "outbound"),
        ({"direction": "sideways"}, "unrated", "invalid_direction", "outbound"),
    ]
    cdrs = [{**base, **change, "cdr_key": str(i)} for i, (change, *_) in enumerate(cases)]
    out = compare(cdrs, cfg, rows, {})
    assert out.select("outcome", "unrated_reason", "charge_class").rows() == [c[1:] for c in cases]


def test_empty_input():
    cfg = make_settings()
    out = rate_for_billing(cdr_frame([]), cfg, {"main": loaded([], "main", "USD", None),
                                                "eu": loaded([], "eu", "EUR", None)}, {})
    assert out.height == 0 and out.schema == pl.Schema(OUTPUT_SCHEMA)


def test_load_tariffs_from_config(tmp_path):
    (tmp_path / "main.csv").write_text("prefix,rate,days,hours,class\n1,0.01,,,\n1,0.02,sat,,weekend\n")
    (tmp_path / "eu.csv").write_text("prefix,rate\n44,0.02\n")
    cfg = make_settings().model_copy(update={"base_dir": tmp_path})
    tariffs = load_tariffs(cfg)
    assert tariffs["main"].has_bands and tariffs["eu"].currency == "EUR"
    assert tariffs["eu"].timezone == "Europe/Paris" and tariffs["main"].timezone == "America/Toronto"
    with pytest.raises(KeyError, match="needs tariff"):
        rate_for_billing(cdr_frame([]), cfg, {"main": tariffs["main"]}, {})
