from __future__ import annotations

import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from autobill.config import ConfigError, load_settings, settings_from_dict

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = {
    "timezone": "America/Toronto",
    "servers": [{"id": "pbx1", "kind": "fusionpbx", "password": {"env": "PBX1_PW"}}],
    "tariffs": [{"name": "retail", "path": "retail.csv"}],
    "plans": [{"name": "basic", "tariff": "retail", "markup_percent": "20"}],
    "services": [{"client_id": 1, "service_id": 10, "server": "pbx1", "tenant": "a.example", "plan": "basic"}],
}


def _raw(**over):
    return {**MINIMAL, **over}


def test_example_config_is_valid():
    settings = load_settings(ROOT / "autobill.example.yaml")
    assert settings.timezone == "America/Toronto"
    assert [s.kind for s in settings.servers] == ["fusionpbx", "vodia", "lesnet", "file"]
    assert settings.plan("basic").markup_percent == Decimal("20")
    assert settings.resolve_path(settings.tariffs[0].path).exists()
    assert settings.rate("CAD", "USD") == Decimal(1) / Decimal("1.37")


def test_minimal_config_defaults():
    s = settings_from_dict(MINIMAL)
    assert s.server("pbx1").numbering.effective_intl_prefix == "011"
    assert s.server("pbx1").numbering.effective_trunk_prefix == ""
    uk = settings_from_dict(_raw(servers=[{"id": "pbx1", "kind": "file", "path": "d", "numbering": {"country_code": "44"}}]))
    assert uk.server("pbx1").numbering.effective_intl_prefix == "00"
    assert uk.server("pbx1").numbering.effective_trunk_prefix == "0"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone: Value error, unknown IANA timezone 'Mars/Olympus'"),
        ({"tariffs": [{"name": "retail", "path": "r.csv", "currency": "usd"}]}, "tariffs.0.currency"),
        ({"servers": [{"id": "pbx1", "kind": "fusionpbx", "password": "hunter2"}]}, "servers.0.fusionpbx.password"),
        ({"servers": [{"id": "pbx1", "kind": "asterisk"}]}, "servers.0: Input tag 'asterisk'"),
        ({"servers": [{"id": "pbx1", "kind": "fusionpbx", "prot": 5432}]}, "servers.0.fusionpbx.prot: unknown key"),
        ({"plans": [{"name": "basic", "tariff": "nope"}]}, "plans.0.tariff: unknown tariff 'nope'"),
        ({"plans": [{"name": "basic", "tariff": "retail", "markup_percent": "-150"}]}, "plans.0.markup_percent"),
        (
            {"services": [{"client_id": 1, "service_id": 10, "server": "pbx9", "tenant": "t", "plan": "basic"}]},
            "services.0.server: unknown server 'pbx9'",
        ),
        (
            {"services": [{"client_id": 1, "service_id": 10, "server": "pbx1", "tenant": "t", "plan": "basic",
                           "suspend_mode": "gateway"}]},
            "services.0.gateway_uuids",
        ),
        ({"services": [{"service_id": 10, "server": "pbx1", "tenant": "t", "plan": "basic"}]},
         "services.0.client_id: required field is missing"),
        ({"plans": [{"name": "basic", "tariff": "retail", "currency": "EUR"}]}, "no currency_rates entry from USD to EUR"),
        ({"whmcs": {"url": "https://x/includes/api.php", "identifier": {"env": "A"}, "secret": {"env": "B", "block": "c"}}},
         "whmcs.secret: Value error, a secret reference names exactly one"),
    ],
)
def test_bad_config_names_the_field(change, expected):
    with pytest.raises(ConfigError) as err:
        settings_from_dict(_raw(**change), source="bad.yaml")
    assert "bad.yaml: invalid configuration" in str(err.value)
    assert expected in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("servers: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_settings(bad)


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    cfg = tmp_path / "conf" / "autobill.yaml"
    cfg.parent.mkdir()
    cfg.write_text("ledger_url: sqlite:///state/ledger.db\ndata_dir: lake\n")
    s = load_settings(cfg)
    assert s.ledger == f"sqlite:///{cfg.parent.absolute() / 'state' / 'ledger.db'}"
    assert s.data_path == cfg.parent / "lake"


def _cli(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_cli_config_check_explains_a_broken_config(tmp_path):
    bad = tmp_path / "autobill.yaml"
    bad.write_text(
        textwrap.dedent(
            """
            timezone: Europe/Berlin
            servers:
              - {id: pbx1, kind: fusionpbx, password: plaintext-secret}
            plans:
              - {name: basic, tariff: missing}
            """
        )
    )
    result = _cli("config", "check", "--config", str(bad))
    assert result.returncode == 1
    assert "servers.0.fusionpbx.password" in result.stderr
    assert "secrets are references" in result.stderr
    assert "plaintext-secret" not in result.stderr + result.stdout


def test_cli_config_check_ok_lists_what_it_found():
    # --offline: the example names secrets this machine does not have (checked in the next test)
    result = _cli("config", "check", "--offline", "--config", str(ROOT / "autobill.example.yaml"),
                  env_extra={"WHMCS_SECRET": "s3cr3t"})
    assert result.returncode == 0, result.stderr
    assert "pbx-east" in result.stdout and "fusionpbx" in result.stdout
    assert "env:WHMCS_SECRET (set)" in result.stdout
    assert "s3cr3t" not in result.stdout
    assert "config OK" in result.stdout


def test_every_command_has_help():
    from typer.main import get_command
    from typer.testing import CliRunner

    from cli import app

    root = get_command(app)
    assert "Usage" in _cli("--help").stdout  # the installed entry point, once
    failures, seen = [], []

    def walk(cmd, path):  # every command in this process: ~40 interpreter start-ups saved
        seen.append(" ".join(path))
        result = CliRunner().invoke(app, [*path, "--help"])
        if result.exit_code != 0 or "Usage" not in result.stdout:
            failures.append(" ".join(path))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(root, [])
    assert not failures and len(seen) > 20


def test_cli_config_check_reports_unresolvable_secrets_as_errors():
    result = _cli("config", "check", "--config", str(ROOT / "autobill.example.yaml"), env_extra={"WHMCS_SECRET": "s3cr3t"})
    assert result.returncode == 1
    assert "error: whmcs.identifier: environment variable WHMCS_IDENTIFIER (secret reference) is not set" in result.stderr
    assert "whmcs.secret" not in result.stderr  # this one resolves
    assert "s3cr3t" not in result.stdout + result.stderr
