"""The services step over real loopback HTTP against the WHMCS sandbox: GetClientsProducts read
page by page, the mapping built per PBX kind, conflicts reported, history kept in the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from autobill.cdr import CDR_SCHEMA
from autobill.config import settings_from_dict
from autobill.mapping import ISSUE_COLUMN, assign_services
from autobill.services.history import last_sync, load_history
from sandboxes.generate import generate_config, make_world, seed_whmcs_services, service_sync_section
from tasks.services import services_settings, sync_services
from tests.support.whmcs import IDENT, SECRET, new_sandbox

T1 = datetime(2026, 11, 1, 6, tzinfo=UTC)


@pytest.fixture
def sandbox():
    with new_sandbox() as sb:
        yield sb


def make_settings(sb, ledger_url: str, services_yaml: bool = False, page_size: int = 3, **sync):
    world = make_world(clients=7, servers_per_kind=1, kinds=("file", "vodia", "lesnet", "fusionpbx"), seed=3)
    config = generate_config(world)
    if not services_yaml:
        config.pop("services")
    config.update(ledger_url=ledger_url, service_sync={**service_sync_section(), **sync},
                  whmcs={"url": sb.url, "identifier": {"env": "T_WHMCS_ID"}, "secret": {"env": "T_WHMCS_SECRET"},
                         "retries": 1, "timeout_seconds": 5, "page_size": page_size})
    return world, config


@pytest.fixture(autouse=True)
def _creds(monkeypatch):
    monkeypatch.setenv("T_WHMCS_ID", IDENT)
    monkeypatch.setenv("T_WHMCS_SECRET", SECRET)


def test_sync_reads_every_service_like_the_yaml_list(sandbox, ledger_url):
    world, config = make_settings(sandbox, ledger_url)
    for _ in range(7):
        sandbox.add_client()
    seed_whmcs_services(sandbox, world)
    sandbox.add_product(1, name="Web Hosting", pid=9, groupname="Hosting", domain="not voip at all |")
    settings = settings_from_dict(config)
    result = sync_services(settings, now=T1)
    assert result.ok and result.conflicts == [] and result.read == 8 and result.services == 7
    assert sandbox.request_count("GetClientsProducts") == 3  # 8 services, 3 a page
    yaml = settings_from_dict({**config, "service_sync": {}, "services": generate_config(world)["services"]})
    got = {s.service_id: (s.client_id, s.server, s.tenant, s.dids, s.plan) for s in services_settings(settings).services}
    want = {s.service_id: (s.client_id, s.server, s.tenant, s.dids, s.plan) for s in yaml.services}
    assert got == want and len(got) == 7


def _call(server, tenant, direction, number, at, ext=None):
    row = {"cdr_key": f"{server}:{tenant}:{number}:{at.isoformat()}", "server": server, "tenant": tenant,
           "direction": direction, "rate_number": number, "extension": ext, "start_utc": at}
    return pl.DataFrame([row]).with_columns(
        [pl.lit(None, dtype=dt).alias(c) for c, dt in CDR_SCHEMA.items() if c not in row]
    ).select(list(CDR_SCHEMA)).cast(CDR_SCHEMA)


def test_did_moves_termination_and_conflicts_through_whmcs(sandbox, ledger_url):
    _, config = make_settings(sandbox, ledger_url)
    config["servers"] = [s for s in config["servers"] if s["kind"] == "vodia"]
    settings = settings_from_dict(config)
    a, b = sandbox.add_client(), sandbox.add_client()
    vodia = sandbox.add_server("vodia-1", "pbx.example.net")
    sa = sandbox.add_product(a, pid=1, server_id=vodia, domain="acme.pbx | 5485550100 | 8300", service_id=501)
    sb_ = sandbox.add_product(b, pid=2, server_id=vodia, domain="beta.pbx", service_id=502)
    assert sync_services(settings, now=T1).conflicts == []
    # The 15th: the DID moves from A to B.
    t15 = T1 + timedelta(days=14)
    sandbox.set_service(sa, domain="acme.pbx | 8300")
    sandbox.set_service(sb_, domain="beta.pbx | 5485550100")
    sync_services(settings, now=t15)
    # The 20th: A is terminated; a third service claims B's DID too; one has a bad field; one no server.
    t20 = T1 + timedelta(days=19)
    sandbox.set_service(sa, status="Terminated")
    c = sandbox.add_client()
    sandbox.add_product(c, pid=1, server_id=vodia, domain="gamma.pbx | 5485550100", service_id=503)
    sandbox.add_product(c, pid=1, server_id=vodia, domain="bad tenant name", service_id=504)
    sandbox.add_product(c, pid=1, server_id=sandbox.add_server("elsewhere"), domain="x.pbx", service_id=505)
    result = sync_services(settings, now=t20)
    kinds = sorted((k["kind"], tuple(k["service_ids"])) for k in result.conflicts)
    assert kinds == [("duplicate_claim", (502, 503)), ("duplicate_claim", (502, 503)), ("unknown_server", (505,)),
                     ("unparseable", (504,))]  # the DID in beta's tenant and in gamma's
    sync_services(settings, now=t20 + timedelta(days=1))  # confirms the state after the 20th
    did = "15485550100"
    frame = pl.concat([
        _call("vodia-1", "acme.pbx", "inbound", did, T1 + timedelta(days=3)),
        _call("vodia-1", "beta.pbx", "inbound", did, t15 + timedelta(hours=2)),
        _call("vodia-1", "acme.pbx", "outbound", "4420", t20 - timedelta(minutes=1)),
        _call("vodia-1", "acme.pbx", "outbound", "4420", t20 + timedelta(minutes=1)),
        _call("vodia-1", "beta.pbx", "inbound", did, t20 + timedelta(hours=1)),
        _call("vodia-1", "beta.pbx", "inbound", did, t20 + timedelta(days=2)),
    ])
    got = assign_services(frame, settings)
    assert got["service_id"].to_list() == [501, 502, 501, None, None, None]
    assert got[ISSUE_COLUMN].to_list() == [None, None, None, None, "conflict", "unconfirmed"]


def test_whmcs_down_changes_nothing(sandbox, ledger_url):
    world, config = make_settings(sandbox, ledger_url)
    for _ in range(7):
        sandbox.add_client()
    seed_whmcs_services(sandbox, world)
    settings = settings_from_dict(config)
    assert sync_services(settings, now=T1).ok
    before = load_history(ledger_url)
    sandbox.set_faults(action="GetClientsProducts", mode="500")
    result = sync_services(settings, now=T1 + timedelta(hours=1))
    assert not result.ok and "GetClientsProducts" in result.error
    after = load_history(ledger_url)
    assert after.confirmed_until == before.confirmed_until == T1
    assert after.claims.equals(before.claims)
    assert last_sync(ledger_url, ok_only=False).ok is False


def test_overrides_from_custom_fields_and_yaml(sandbox, ledger_url):
    _, config = make_settings(sandbox, ledger_url)
    config["servers"] = [s for s in config["servers"] if s["kind"] == "fusionpbx"]
    config["services"] = [{"client_id": 1, "service_id": 602, "server": "fusionpbx-1", "tenant": "yaml.pbx",
                           "plan": "basic"}]
    settings = settings_from_dict(config)
    cid = sandbox.add_client()
    fus = sandbox.add_server("fusionpbx-1")
    sandbox.add_product(cid, pid=1, server_id=fus, domain="acme.pbx", dedicatedip="201-202", service_id=601,
                        custom_fields={"Plan": "business", "Included Minutes": "1000", "Suspend Mode": "extension",
                                       "Low Balance Threshold": "7.50"})
    sandbox.add_product(cid, pid=1, server_id=fus, domain="ignored.pbx", service_id=602)
    sandbox.add_product(cid, pid=1, server_id=fus, domain="c.pbx", service_id=603, custom_fields={"Plan": "gold"})
    result = sync_services(settings, now=T1)
    assert [(c["kind"], c["service_ids"]) for c in result.conflicts] == [("unknown_plan", [603])]
    by_id = {s.service_id: s for s in services_settings(settings).services}
    s601 = by_id[601]
    assert (s601.plan, s601.extensions, s601.suspend_mode, str(s601.low_balance_threshold)) == (
        "business+1000min", ["201", "202"], "extension", "7.50")
    assert by_id[602].tenant == "yaml.pbx" and 603 not in by_id


def test_disabled_sync_does_nothing(sandbox, ledger_url):
    _, config = make_settings(sandbox, ledger_url, services_yaml=True, enabled=False)
    settings = settings_from_dict(config)
    assert not sync_services(settings).enabled
    assert sandbox.request_count("GetClientsProducts") == 0
    assert services_settings(settings) is settings
