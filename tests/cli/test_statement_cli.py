"""`autobill statement` and `autobill dispute` at the terminal: files written, one-line errors."""

from __future__ import annotations

import subprocess
from datetime import date

import pytest
from typer.testing import CliRunner

from autobill.ledger.billed import billed_rows
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge
from cli import app
from tests.support.statements import StatementWorld
from tests.support.whmcs import new_sandbox

D1 = date(2026, 11, 18)


@pytest.fixture
def world(tmp_path, monkeypatch):
    for k, v in StatementWorld.env().items():
        monkeypatch.setenv(k, v)
    with new_sandbox() as sb:
        w = StatementWorld(tmp_path, sb)
        w.bill(D1, w.calls(D1, D1, per_day=25))
        yield w


def _run(w, *args):
    return CliRunner().invoke(app, [*args, "--config", str(w.config_path)])


def test_statement_pdf_with_the_whmcs_name(world, tmp_path):
    with session_scope(world.settings.ledger) as s:
        client = s.query(Charge).order_by(Charge.cdr_count.desc()).first().client_id
    out = tmp_path / "s.pdf"
    res = _run(world, "statement", "--client", str(client), "--from", "2026-11-18", "--to", "2026-11-18",
               "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "charge line(s)" in res.output
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True, check=True).stdout
    assert f"Acme {client} Ltd (Ann{client} Lee)" in text  # GetClientsDetails over HTTP from the sandbox
    res = _run(world, "statement", "--client", str(client), "--from", "2026-11-18", "--format", "csv", "--out", "-")
    assert res.exit_code == 0 and res.output.startswith("record,line_ref,cdr_key")


@pytest.mark.parametrize("args,field", [
    (["--client", "1", "--from", "2026-13-01"], "--from"),
    (["--client", "1", "--from", "2026-11-18", "--to", "2026-11-01"], "--to"),
    (["--client", "1", "--from", "2026-11-18", "--format", "doc"], "--format"),
])
def test_statement_bad_argument_is_one_line(world, args, field):
    res = _run(world, "statement", *args)
    assert res.exit_code == 1 and res.output.startswith(f"error: {field}") and len(res.output.splitlines()) == 1


def test_dispute_open_credit_list(world):
    b = billed_rows(world.settings, outcomes=["billed"])[0]
    key, client = b.cdr_key, b.client_id
    res = _run(world, "dispute", "open", "--client", str(client), "--cdr", key, "--reason", "never made",
               "--by", "alice")
    assert res.exit_code == 0 and "dispute #1 open" in res.output, res.output
    res = _run(world, "dispute", "resolve", "1", "--credit", "--reject")
    assert res.exit_code == 1 and res.output.startswith("error: resolve")
    res = _run(world, "dispute", "resolve", "1", "--credit", "--by", "bob", "--note", "goodwill")
    assert res.exit_code == 0 and "1 correction line(s)" in res.output, res.output
    res = _run(world, "dispute", "list")
    assert "#1 client" in res.output and "alice" in res.output and "credit by bob" in res.output
    assert key in res.output
    res = _run(world, "dispute", "open", "--client", str(client), "--cdr", "x:1", "--reason", "r")
    assert res.exit_code == 1 and "unknown to the ledger" in res.output and len(res.output.splitlines()) == 1


def test_statement_unicode_name_and_a_character_no_font_has(world, tmp_path):
    out = tmp_path / "u.pdf"
    res = _run(world, "statement", "--client", "1", "--from", "2026-11-18", "--out", str(out),
               "--name", "Zoë Łukasz 株式会社")
    assert res.exit_code == 0, res.output
    assert "warning: no font shows '会式株社'" in res.output and "statements.fonts" in res.output
    text = subprocess.run(["pdftotext", str(out), "-"], capture_output=True, text=True, check=True).stdout
    assert "Zoë Łukasz <U+682A><U+5F0F><U+4F1A><U+793E>" in text


def test_config_check_resolves_the_upload_credentials(tmp_path, monkeypatch):
    import yaml

    from tests.support.statements import StatementWorld

    with new_sandbox() as sb:
        w = StatementWorld(tmp_path, sb, statements={"upload": {
            "url": "s3://bucket/p", "access_key_id": {"env": "UPLOAD_KEY_ID_UNSET"},
            "secret_access_key": {"env": "UPLOAD_SECRET_SET"}}})
    assert yaml.safe_load(w.config_path.read_text())["statements"]["upload"]["url"] == "s3://bucket/p"
    monkeypatch.setenv("UPLOAD_SECRET_SET", "x")
    for k, v in StatementWorld.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("UPLOAD_KEY_ID_UNSET", raising=False)
    res = CliRunner().invoke(app, ["config", "check", "--config", str(w.config_path)])
    assert res.exit_code == 1 and "1 secret(s) do not resolve" in res.output, res.output
    assert "statements.upload.access_key_id" in res.output and "UPLOAD_KEY_ID_UNSET" in res.output
    assert "statements.upload.secret_access_key" not in res.output.split("NOT OK")[-1]
