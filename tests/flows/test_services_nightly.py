"""Services from WHMCS, end to end: real nightly flow runs against the WHMCS sandbox over HTTP.

A nightly run with no `services:` in the config (the services read from WHMCS products, custom
fields and server assignment) bills exactly what the same run with the equivalent YAML bills;
a conflict leaves its calls unrated and they are billed, once, by the run after the fix.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import polars as pl
import pytest
import yaml
from sqlalchemy import select

from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import UnratedCDR
from sandboxes.generate import seed_whmcs_services, service_sync_section
from sandboxes.whmcs import WhmcsSandbox
from tests.support.ops import WHMCS_ENV, BillingWorld, summary_for

pytestmark = [pytest.mark.flow]
D1, D2 = date(2026, 11, 18), date(2026, 11, 19)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    for k, v in WHMCS_ENV.items():
        monkeypatch.setenv(k, v)


def _run(world: BillingWorld, day: date) -> dict:
    from flows.autobill import nightly

    state = nightly(billing_date=day, config_path=str(world.config_path), return_state=True)
    summary = summary_for(world.settings, str(state.state_details.flow_run_id))
    assert summary is not None, state.message
    return summary


def _billed(world: BillingWorld) -> dict[str, tuple]:
    return {b.cdr_key: (b.client_id, b.service_id, b.outcome, b.cost) for b in world.billed()}


def _world(tmp, sandbox, from_whmcs: bool) -> BillingWorld:
    extra = {"services": [], "service_sync": service_sync_section()} if from_whmcs else {}
    world = BillingWorld(tmp, sandbox, D1, D2, clients=6, servers=2, **extra)
    if from_whmcs:
        seed_whmcs_services(sandbox, world.world)
    return world


def test_whmcs_services_bill_the_same_as_the_yaml_list(tmp_path, prefect_harness):
    outcomes = {}
    for mode in ("yaml", "whmcs"):
        with WhmcsSandbox() as sandbox:
            world = _world(tmp_path / mode, sandbox, mode == "whmcs")
            summaries = []
            for day in (D1, D2):
                world.drop(day)
                summaries.append(_run(world, day))
            rerun = _run(world, D2)
            assert rerun["charges_created"] == 0 and rerun["charges_posted"] == 0
            world.assert_exactly_once()
            if mode == "whmcs":
                assert yaml.safe_load(world.config_path.read_text())["services"] == []
                for s in summaries:
                    assert s["services"]["ok"] and s["services"]["services"] == 6 and s["services"]["conflicts"] == []
            else:
                assert "services" not in summaries[0]
            outcomes[mode] = (world.charge_signature(), _billed(world),
                              sorted((i["userid"], i["amount"], i["description"]) for i in sandbox.billable_items()),
                              [(s["billed"], s["unrated"], s["quarantined"]) for s in summaries])
    assert outcomes["yaml"][0] and outcomes["whmcs"] == outcomes["yaml"]


def test_a_conflict_waits_unrated_and_is_billed_once_after_the_fix(tmp_path, prefect_harness):
    with WhmcsSandbox() as sandbox:
        world = _world(tmp_path, sandbox, from_whmcs=True)
        clients = world.world.clients
        answered_in = (world.calls_of(D1).filter((pl.col("direction") == "inbound") & (pl.col("billsec") > 0))
                       .group_by("client_id").len().sort("len", "client_id", descending=True))
        owner = clients.filter(pl.col("client_id") == answered_in["client_id"][0]).row(0, named=True)
        other = clients.filter((clients["service_id"] != owner["service_id"])
                               & (clients["server"] == owner["server"])).row(0, named=True)
        # Another client's service also claims the owner client's DID: neither gets its calls.
        sandbox.set_service(other["service_id"], custom_fields={"DIDs": f"1{other['did']}, 1{owner['did']}"})
        world.drop(D1)
        first = _run(world, D1)
        kinds = [c["kind"] for c in first["services"]["conflicts"]]
        assert kinds == ["duplicate_claim", "duplicate_claim"]
        with_conflict = {k for k, v in _billed(world).items() if v[1] == owner["service_id"]}
        with session_scope(world.settings.ledger) as s:
            waiting = {u.cdr_key: u.reason for u in s.scalars(select(UnratedCDR))}
        conflicted = {k for k, r in waiting.items() if r == "service_conflict"}
        assert conflicted, waiting
        assert not conflicted & set(_billed(world))
        # The fix: the other service lets go of the DID. The next run bills the waiting calls, once.
        sandbox.set_service(other["service_id"], custom_fields={"DIDs": f"1{other['did']}"})
        world.drop(D2)
        second = _run(world, D2)
        assert second["services"]["conflicts"] == []
        billed = _billed(world)
        assert conflicted <= set(billed)
        assert {billed[k][1] for k in conflicted} == {owner["service_id"]}
        assert with_conflict <= set(billed)
        world.assert_exactly_once()
        assert sum((b[3] for b in billed.values()), Decimal(0)) > 0
        assert _run(world, D2)["charges_posted"] == 0
        world.assert_exactly_once()


def test_autosuspend_manages_the_services_read_from_whmcs(tmp_path):
    """With no `services:` in the config, an autosuspend cycle syncs WHMCS first and manages what it
    read there: an out-of-credit client's service is suspended (by module, the mode a service read
    from WHMCS gets unless its product or field says otherwise), a client in credit is left alone."""
    from flows.autosuspend import run_cycle

    with WhmcsSandbox() as sandbox:
        world = _world(tmp_path, sandbox, True)
        assert yaml.safe_load(world.config_path.read_text())["services"] == []
        clients = world.world.clients.unique("client_id", keep="first", maintain_order=True)
        broke, fine = clients.row(0, named=True), clients.row(1, named=True)
        for c in clients.iter_rows(named=True):
            sandbox.set_credit(c["client_id"], "50.00")
        sandbox.set_credit(broke["client_id"], "0.00")
        upgrade(world.settings.ledger)
        report = run_cycle(world.settings, actor="test")
        done = {(o.decision.service_id, str(o.decision.action)) for o in report.outcomes if o.status == "done"}
        assert (broke["service_id"], "suspend") in done
        assert not any(sid == fine["service_id"] for sid, _ in done)
        assert [c["serviceid"] for c in sandbox.module_calls()] == [broke["service_id"]]
