"""`autobill suspend-check` against the WHMCS sandbox (no Prefect server)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from autobill.ledger.db import session_scope
from autobill.ledger.models import SuspensionLog
from cli import app
from sandboxes.whmcs import WhmcsSandbox
from sandboxes.whmcs.store import CUSTOM_FIELDS

runner = CliRunner()


def config(tmp_path: Path, sb: WhmcsSandbox, services: list[dict]) -> Path:
    path = tmp_path / "autobill.yaml"
    path.write_text(yaml.safe_dump({
        "ledger_url": "sqlite:///ledger.db",
        "servers": [{"id": "pbx1", "kind": "fusionpbx"}],
        "tariffs": [{"name": "t", "path": "t.csv"}],
        "plans": [{"name": "p", "tariff": "t"}],
        "services": [{"server": "pbx1", "plan": "p", "tenant": "a.example", "suspend_mode": "module", **s} for s in services],
        "whmcs": {"url": sb.url, "identifier": {"env": "CLI_WHMCS_ID"}, "secret": {"env": "CLI_WHMCS_SECRET"},
                  "retries": 0, "custom_field_ids": dict(CUSTOM_FIELDS)},
    }))  # fmt: skip
    return path


def test_suspend_check_dry_run_then_for_real(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CLI_WHMCS_ID", "cli")
    monkeypatch.setenv("CLI_WHMCS_SECRET", "cli-secret")
    with WhmcsSandbox(identifier="cli", secret="cli-secret") as sb:
        broke, fine = sb.add_client(credit="-2.50"), sb.add_client(credit="40")
        cfg = config(tmp_path, sb, [{"client_id": c, "service_id": sb.add_product(c)} for c in (broke, fine)])

        dry = runner.invoke(app, ["suspend-check", "--dry-run", "-c", str(cfg)])
        assert dry.exit_code == 0, dry.output
        assert "suspend" in dry.output and "dry-run" in dry.output and "credit -2.50 <= 0" in dry.output
        assert "dry run: 2 services" in dry.output
        assert sb.module_calls() == []

        real = runner.invoke(app, ["suspend-check", "--json", "-c", str(cfg)])
        assert real.exit_code == 0, real.output
        doc = json.loads(real.output)
        assert doc["decisions"] == {"none": 1, "suspend": 1} and doc["applied"] == 1
        assert doc["changes"][0]["action"] == "suspend" and doc["changes"][0]["status"] == "done"
        assert [c["action"] for c in sb.module_calls()] == ["ModuleSuspend"]
        with session_scope(f"sqlite:///{tmp_path / 'ledger.db'}") as s:
            (entry,) = s.scalars(select(SuspensionLog)).all()
            assert entry.actor == "suspend-check" and entry.action == "suspend"

        sb.set_faults("*", "500")
        down = runner.invoke(app, ["suspend-check", "-c", str(cfg)])
        assert down.exit_code == 1
        assert "skip_unreadable 2" in down.output


def test_suspend_check_refuses_to_overlap_a_running_cycle(tmp_path, monkeypatch) -> None:
    from autobill.ledger.db import upgrade
    from autobill.ledger.models import Run
    from autobill.timeutil import utc_now

    monkeypatch.setenv("CLI_WHMCS_ID", "cli")
    monkeypatch.setenv("CLI_WHMCS_SECRET", "cli-secret")
    with WhmcsSandbox(identifier="cli", secret="cli-secret") as sb:
        cid = sb.add_client(credit="0")
        cfg = config(tmp_path, sb, [{"client_id": cid, "service_id": sb.add_product(cid)}])
        ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
        upgrade(ledger)
        with session_scope(ledger) as s:
            s.add(Run(kind="autosuspend", status="running", started_at=utc_now()))
        busy = runner.invoke(app, ["suspend-check", "-c", str(cfg)])
        assert busy.exit_code == 1 and "still running" in busy.output
        assert sb.module_calls() == []
        assert runner.invoke(app, ["suspend-check", "--dry-run", "-c", str(cfg)]).exit_code == 0  # reads only
