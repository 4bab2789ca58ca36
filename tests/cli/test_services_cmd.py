"""`autobill services sync|list` against the WHMCS sandbox over loopback HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli import app
from sandboxes.generate import generate_config, make_world, seed_whmcs_services, service_sync_section
from tests.support.whmcs import IDENT, SECRET, new_sandbox

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("T_WHMCS_ID", IDENT)
    monkeypatch.setenv("T_WHMCS_SECRET", SECRET)
    with new_sandbox() as sb:
        world = make_world(clients=4, servers_per_kind=1, kinds=("vodia", "fusionpbx"), seed=5)
        config = generate_config(world)
        config.pop("services")
        config.update(ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}", service_sync=service_sync_section(),
                      whmcs={"url": sb.url, "identifier": {"env": "T_WHMCS_ID"}, "secret": {"env": "T_WHMCS_SECRET"},
                             "retries": 0})
        path = tmp_path / "autobill.yaml"
        path.write_text(yaml.safe_dump(config))
        for _ in range(4):
            sb.add_client()
        seed_whmcs_services(sb, world)
        yield sb, path, world


def test_sync_then_list(setup):
    sb, path, world = setup
    runner = CliRunner()
    out = runner.invoke(app, ["services", "list", "-c", str(path)])
    assert out.exit_code == 1 and "no successful services sync yet" in out.output
    out = runner.invoke(app, ["services", "sync", "-c", str(path)])
    assert out.exit_code == 0, out.output
    assert "read 4 service(s) from WHMCS: 4 VoIP" in out.output and "0 conflict(s)" in out.output
    doc = json.loads(runner.invoke(app, ["services", "list", "--json", "-c", str(path)]).output)
    assert sorted(s["service_id"] for s in doc["services"]) == sorted(world.clients["service_id"].to_list())
    vodia = [s for s in doc["services"] if s["server"] == "vodia-1"]
    assert vodia and all(s["raw"]["domain"].startswith(s["tenant"] + " | ") for s in vodia)
    assert runner.invoke(app, ["services", "list", "--conflicts", "-c", str(path)]).exit_code == 0


def test_conflicts_exit_2_and_are_listed(setup):
    sb, path, world = setup
    first = world.clients.row(0, named=True)
    sb.set_service(first["service_id"], domain="not a tenant")
    runner = CliRunner()
    out = runner.invoke(app, ["services", "sync", "-c", str(path)])
    assert out.exit_code == 2 and "CONFLICT unparseable" in out.output and "'not a tenant'" in out.output
    out = runner.invoke(app, ["services", "list", "--conflicts", "--json", "-c", str(path)])
    assert out.exit_code == 2
    doc = json.loads(out.output)
    assert [c["service_ids"] for c in doc["conflicts"]] == [[first["service_id"]]] and "services" not in doc


def test_whmcs_down_is_one_line(setup):
    """In a real process: the user sees the connector's warning and one error line, no traceback."""
    sb, path, _ = setup
    sb.set_faults(action="GetClientsProducts", mode="503")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "T_WHMCS_ID": IDENT, "T_WHMCS_SECRET": SECRET}
    proc = subprocess.run([sys.executable, "-m", "cli", "services", "sync", "-c", str(path)], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [line for line in errors if "services sync failed, nothing changed: WHMCS GetClientsProducts"
                      in line] and len(errors) == 1
