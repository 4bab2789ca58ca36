"""The autosuspend flow under the Prefect test harness, against the WHMCS sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from autobill.ledger.db import session_scope
from autobill.ledger.models import Run, SuspensionLog
from sandboxes.whmcs import WhmcsSandbox
from sandboxes.whmcs.store import CUSTOM_FIELDS

pytestmark = pytest.mark.flow


@pytest.fixture
def sb(monkeypatch):
    monkeypatch.setenv("AUTOBILL_FLOW_WHMCS_ID", "flow-id")
    monkeypatch.setenv("AUTOBILL_FLOW_WHMCS_SECRET", "flow-secret")
    with WhmcsSandbox(identifier="flow-id", secret="flow-secret") as s:
        yield s


def write_config(tmp_path: Path, sb: WhmcsSandbox, services: list[dict]) -> Path:
    cfg = {
        "ledger_url": "sqlite:///ledger.db",
        "servers": [{"id": "pbx1", "kind": "fusionpbx"}],
        "tariffs": [{"name": "t", "path": "t.csv"}],
        "plans": [{"name": "p", "tariff": "t"}],
        "services": [{"server": "pbx1", "plan": "p", "tenant": "acme.example", "suspend_mode": "module", **s} for s in services],
        "whmcs": {
            "url": sb.url, "identifier": {"env": "AUTOBILL_FLOW_WHMCS_ID"}, "secret": {"env": "AUTOBILL_FLOW_WHMCS_SECRET"},
            "retries": 0, "custom_field_ids": dict(CUSTOM_FIELDS),
        },  # fmt: skip
        "intraday": {"enabled": False},  # pbx1 has no CDR database here (tests/flows/test_credit_control.py reads one)
    }
    path = tmp_path / "autobill.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_flow_suspends_and_publishes_artifacts(prefect_harness, tmp_path, sb) -> None:
    from prefect.artifacts import Artifact

    from flows.autosuspend import autosuspend

    broke = sb.add_client(credit="0.00")
    low = sb.add_client(credit="3.00")
    fine = sb.add_client(credit="70.00")
    services = [{"client_id": c, "service_id": sb.add_product(c)} for c in (broke, low, fine)]
    config = write_config(tmp_path, sb, services)

    summary = autosuspend(config_path=str(config))
    assert summary["status"] == "completed"
    assert summary["decisions"] == {"alert_low_balance": 1, "none": 1, "suspend": 1}
    assert summary["applied"] == 2
    assert [c["serviceid"] for c in sb.module_calls()] == [services[0]["service_id"]]
    assert sorted(e["messagename"] for e in sb.emails()) == ["Low Balance Alert", "VoIP Zero Balance"]

    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    with session_scope(ledger) as s:
        run = s.scalars(select(Run)).one()
        assert run.kind == "autosuspend" and run.status == "completed" and run.flow_run_id
        assert {entry.action for entry in s.scalars(select(SuspensionLog))} == {"suspend", "alert"}

    table = Artifact.get("autosuspend-changes")
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {r["action"] for r in rows} == {"suspend", "alert_low_balance"}
    assert all(r["status"] == "done" for r in rows)
    md = Artifact.get("autosuspend-summary")
    assert "services checked: **3**" in md.data and "applied: **2**" in md.data

    again = autosuspend(config_path=str(config))  # the next cycle: nothing to do
    assert again["applied"] == 0 and len(sb.emails()) == 2


def test_flow_dry_run_changes_nothing(prefect_harness, tmp_path, sb) -> None:
    from flows.autosuspend import autosuspend

    cid = sb.add_client(credit="-1.00")
    config = write_config(tmp_path, sb, [{"client_id": cid, "service_id": sb.add_product(cid)}])
    summary = autosuspend(dry_run=True, config_path=str(config))
    assert summary["decisions"] == {"suspend": 1} and summary["dry_run"] and summary["run_id"] is None
    assert sb.module_calls() == [] and sb.emails() == []


def test_flow_with_whmcs_down_changes_nothing(prefect_harness, tmp_path, sb) -> None:
    from flows.autosuspend import autosuspend

    cid = sb.add_client(credit="0")
    config = write_config(tmp_path, sb, [{"client_id": cid, "service_id": sb.add_product(cid)}])
    sb.set_faults("*", "500")
    summary = autosuspend(config_path=str(config))
    assert summary["decisions"] == {"skip_unreadable": 1} and summary["applied"] == 0
    assert summary["status"] == "failed"
    sb.clear_faults()
    assert sb.module_calls() == []


def test_flow_run_is_named_by_its_local_time(prefect_harness, tmp_path, sb) -> None:
    """Runs are named by the billing timezone's clock (not a random "unbeatable-griffin")."""
    import re
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from prefect.client.orchestration import get_client

    from flows.autosuspend import autosuspend

    client_id = sb.add_client(credit="70.00")
    config = write_config(tmp_path, sb, [{"client_id": client_id, "service_id": sb.add_product(client_id)}])
    raw = yaml.safe_load(config.read_text())
    raw["timezone"] = "Asia/Kolkata"  # +05:30: a UTC name would differ in hour and minute
    config.write_text(yaml.safe_dump(raw))
    before = datetime.now(UTC)
    state = autosuspend(config_path=str(config), dry_run=True, return_state=True)
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(state.state_details.flow_run_id).name
    match = re.fullmatch(r"autosuspend-(\d{4}-\d{2}-\d{2}-\d{4})-dry-run", name)
    assert match, name
    named = datetime.strptime(match.group(1), "%Y-%m-%d-%H%M").replace(tzinfo=ZoneInfo("Asia/Kolkata"))
    assert abs((named - before).total_seconds()) < 120, (name, before)
