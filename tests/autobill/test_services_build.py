"""The mapping of one sync (pure): claims, conflicts, YAML overrides, derived plans."""

from __future__ import annotations

from collections import defaultdict

from hypothesis import given
from hypothesis import strategies as st

from autobill.config import settings_from_dict
from autobill.services.build import MappedService, build_mapping, claims_of, derived_plans
from autobill.services.records import WhmcsService

SETTINGS = settings_from_dict({
    "servers": [{"id": "pbx", "kind": "file", "path": "drop"}, {"id": "v", "kind": "vodia", "url": "https://v",
                                                                 "username": "u", "password": {"env": "X"}}],
    "tariffs": [{"name": "t", "path": "t.csv"}],
    "plans": [{"name": "basic", "tariff": "t"}, {"name": "pro", "tariff": "t", "included_minutes": 10}],
    "service_sync": {"enabled": True, "product_ids": [1], "products": [{"product": 1, "plan": "basic"}]},
})

services = st.builds(
    MappedService,
    service_id=st.integers(1, 8), client_id=st.integers(1, 3), source=st.just("whmcs"),
    server=st.sampled_from(["pbx", "v"]), tenant=st.sampled_from(["a", "b"]),
    extensions=st.lists(st.sampled_from(["101", "102", "103"]), max_size=2, unique=True).map(tuple),
    dids=st.lists(st.sampled_from(["16135550100", "16135550101"]), max_size=2, unique=True).map(tuple),
    plan=st.just("basic"), owning=st.booleans(), problem=st.sampled_from([None, None, "unparseable: x"]),
)


@given(st.lists(services, max_size=8, unique_by=lambda m: m.service_id))
def test_claims_against_a_plain_reference(mapped):
    claims, conflicts = claims_of(mapped, SETTINGS)
    want: dict[tuple, set[int]] = defaultdict(set)
    did_owners: dict[tuple, set[int]] = defaultdict(set)
    for m in mapped:
        if not m.owning or m.problem:
            continue
        keys = [(m.server, m.tenant, "extension", e) for e in m.extensions]
        keys += [(m.server, m.tenant, "did", d) for d in m.dids]
        keys += [] if m.extensions else [(m.server, m.tenant, "tenant", "")]
        for k in keys:
            want[k].add(m.service_id)
            if k[2] == "did":
                did_owners[(k[0], k[3])].add(m.service_id)
    assert len({c.key for c in claims}) == len(claims) and {c.key for c in claims} == set(want)
    for c in claims:
        owners = did_owners[(c.server, c.value)] if c.kind == "did" else want[c.key]
        if len(owners) > 1:
            assert c.service_id is None and set(c.conflict) == owners
        else:
            assert c.service_id == next(iter(want[c.key])) and not c.conflict
    assert len(conflicts) == sum(1 for c in claims if c.conflict)


def _svc(sid, domain, pid=1, status="Active", server="pbx", fields=None):
    return WhmcsService(sid, sid * 10, pid, "VoIP", "VoIP", status, domain=domain, server_name=server,
                        custom_fields=fields or {})


def test_build_filters_products_reads_statuses_and_lets_yaml_override():
    settings = SETTINGS
    records = [_svc(1, "a"), _svc(2, "b", pid=9), _svc(3, "c", status="Terminated"), _svc(4, "d", server="nowhere")]
    m = build_mapping(records, settings)
    assert [s.service_id for s in m.services] == [1, 3, 4] and m.not_voip == 1
    assert [(c.tenant, c.service_id) for c in m.claims] == [("a", 1)]
    assert [(c.kind, c.service_ids) for c in m.conflicts] == [("unknown_server", (4,))]
    with_yaml = settings_from_dict({**SETTINGS.model_dump(exclude={"base_dir"}, mode="json"), "services": [
        {"client_id": 5, "service_id": 1, "server": "pbx", "tenant": "yaml-a", "plan": "pro"}]})
    m2 = build_mapping(records, with_yaml)
    assert [(c.tenant, c.service_id, c.client_id, c.plan) for c in m2.claims] == [("yaml-a", 1, 5, "pro")]


def test_derived_plans_carry_the_included_minutes_override():
    s = derived_plans(SETTINGS, ["basic", "pro+250min", None, "ghost+5min"])
    assert s.plan("pro+250min").included_minutes == 250 and s.plan("pro+250min").tariff == "t"
    assert [p.name for p in s.plans] == ["basic", "pro", "pro+250min"]
    assert derived_plans(SETTINGS, ["basic"]) is SETTINGS


def test_an_included_minutes_override_is_rated_with_its_minutes(tmp_path):
    """`Included Minutes` = 1 on a `pro` service: its first minute is included, the next billed."""
    from datetime import UTC, datetime
    from decimal import Decimal

    import polars as pl

    from autobill.rating.billing import load_tariffs, rate_for_billing

    (tmp_path / "t.csv").write_text("prefix,rate,description,connect_fee,first_increment,next_increment\n"
                                    "44,0.60,UK,0,60,60\n")
    base = settings_from_dict({**SETTINGS.model_dump(exclude={"base_dir"}, mode="json")}, base_dir=tmp_path)
    settings = derived_plans(base, ["pro+1min"])
    cdrs = pl.DataFrame({
        "cdr_key": ["pbx:1", "pbx:2"], "client_id": [7, 7], "service_id": [70, 70], "plan": ["pro+1min"] * 2,
        "server": ["pbx", "pbx"], "direction": ["outbound"] * 2, "rate_number": ["442071234567"] * 2,
        "start_utc": [datetime(2026, 11, 2, 10, tzinfo=UTC), datetime(2026, 11, 2, 11, tzinfo=UTC)],
        "billsec": [60, 60],
    })
    rated = rate_for_billing(cdrs, settings, load_tariffs(settings), {})
    assert rated["outcome"].to_list() == ["included", "billed"]
    assert [Decimal(str(c)) for c in rated["cost"].to_list()] == [Decimal("0"), Decimal("0.6")]
