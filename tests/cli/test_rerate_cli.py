"""`autobill rerate` and `autobill charges list` at the terminal: one-line argument errors, the
preview table, and corrections listed under the lines they correct."""

from __future__ import annotations

import json
from datetime import date

import pytest
from typer.testing import CliRunner

from cli import app
from sandboxes.generate import tariff_frame
from tests.support.ops import whmcs_world

D1 = date(2026, 11, 18)


@pytest.fixture
def world(tmp_path, prefect_harness, monkeypatch):
    with whmcs_world(tmp_path, monkeypatch, D1, D1, clients=4, servers=1, calls_per_day=20) as w:
        yield w


def run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.flow
def test_rerate_cli_errors_preview_and_charges_list(world):
    cfg = ["-c", str(world.config_path)]
    missing = run("rerate", "--from", str(D1), "--to", str(D1), *cfg)
    assert missing.exit_code == 2 and "--reason" in missing.output
    for args, field in ((["--from", "2026-11-19", "--to", str(D1), "--reason", "x"], "--to"),
                        (["--from", "18/11/2026", "--to", str(D1), "--reason", "x"], "--from"),
                        (["--from", str(D1), "--to", str(D1), "--reason", "  "], "--reason"),
                        (["--from", str(D1), "--to", str(D1), "--reason", "x", "--tariff", "retail@zzzzzzzz"],
                         "--tariff"),
                        (["--from", str(D1), "--to", str(D1), "--reason", "x", "--client", "999"], "--client")):
        bad = run("rerate", *args, *cfg)
        assert bad.exit_code == 1 and bad.output.count("\n") == 1 and field in bad.output, bad.output
        assert "Traceback" not in bad.output
    world.drop(D1)
    assert run("run", "--date", str(D1), *cfg).exit_code == 0
    version = json.loads(run("rerate", "--from", str(D1), "--to", str(D1), "--reason", "r", "--dry-run", "--json",
                             *cfg).output)["tariff_versions"]["retail"]
    tariff_frame().with_columns(rate=tariff_frame()["rate"].str.replace("^0.0100$", "0.0200")).write_csv(
        world.tmp / "tariffs" / "retail.csv")
    preview = run("rerate", "--from", str(D1), "--to", str(D1), "--reason", "USA rate doubled", "--dry-run", *cfg)
    assert preview.exit_code == 0, preview.output
    assert "dry run" in preview.output and "would post billable_item" in preview.output
    assert "USA/Canada" in preview.output and "difference" in preview.output
    done = run("rerate", "--from", str(D1), "--to", str(D1), "--reason", "USA rate doubled", "--by", "alice", *cfg)
    assert done.exit_code == 0 and "status completed" in done.output, done.output
    listing = run("charges", "list", *cfg).output.splitlines()
    marks = [line for line in listing if "correction of #" in line]
    assert marks and all("alice" in line and "USA rate doubled" in line for line in marks)
    rows = [json.loads(line) for line in run("charges", "list", "--json", *cfg).output.splitlines()]
    assert sum(r["kind"] == "correction" for r in rows) == len(marks)
    for i, r in enumerate(rows):  # right under the line it corrects (or another correction of it)
        if r["kind"] == "correction":
            j = i - 1
            while rows[j]["kind"] == "correction":
                j -= 1
            assert rows[j]["id"] == r["corrects"]
    # Back to the archived version the day was billed with: the corrections are taken back.
    back = run("rerate", "--from", str(D1), "--to", str(D1), "--reason", "revert", "--tariff",
               f"retail@{version[:8]}", "--json", *cfg)
    summary = json.loads(back.output)
    assert back.exit_code == 0 and summary["credits"] > 0 and summary["billable_items"] == 0
    rows = [json.loads(line) for line in run("charges", "list", "--json", *cfg).output.splitlines()]
    assert sum(__import__("decimal").Decimal(r["amount"]) for r in rows if r["kind"] == "correction") == 0
