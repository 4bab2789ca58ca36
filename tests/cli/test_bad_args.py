"""Bad command lines (issue #12): one line on stderr, the exit code, and no run started.

Exit codes: 1 error (bad config, a secret that does not resolve), 2 bad usage. Every argument
is checked before a flow starts: the ledger records no run for any of these.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from autobill.config import load_settings
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import Run
from autobill.timeutil import local_today
from cli import app
from data_quality.quarantine import record_quarantine
from tests.support.extract import drop_server

TOMORROW = (local_today(__import__("zoneinfo").ZoneInfo("America/Toronto")) + timedelta(days=1)).isoformat()


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch) -> Path:
    import yaml

    (tmp_path / "drop").mkdir()
    path = tmp_path / "autobill.yaml"
    path.write_text(yaml.safe_dump({
        "timezone": "America/Toronto", "data_dir": str(tmp_path / "data"),
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}", "servers": [drop_server(tmp_path / "drop", "s1")],
        "whmcs": {"url": "http://127.0.0.1:9/includes/api.php", "identifier": {"env": "BADARGS_WHMCS_ID"},
                  "secret": {"env": "BADARGS_WHMCS_SECRET"}},
    }))
    monkeypatch.delenv("BADARGS_WHMCS_ID", raising=False)
    monkeypatch.delenv("BADARGS_WHMCS_SECRET", raising=False)
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_AUTOBILL_FILE_FILENAME", str(tmp_path / "logs" / "autobill.log"))
    return path


CASES = [
    # (id, arguments (CONFIG is replaced by the config path), exit code, text in the one line)
    ("run_future_date", ["run", "--date", TOMORROW, "-c", "CONFIG"], 2, f"--date: {TOMORROW} is in the future"),
    ("run_malformed_date", ["run", "--date", "2026-13-01", "-c", "CONFIG"], 2, "--date: not a date"),
    ("run_date_words", ["run", "--date", "yesterday", "-c", "CONFIG"], 2, "--date: not a date"),
    ("run_empty_date", ["run", "--date", "", "-c", "CONFIG"], 2, "--date: not a date"),
    ("run_unknown_server", ["run", "--server", "pbx9", "-c", "CONFIG"], 2, "--server: unknown server 'pbx9'"),
    ("run_unknown_option", ["run", "--dryrun", "-c", "CONFIG"], 2, "No such option: --dryrun"),
    ("run_missing_config", ["run", "-c", "/nonexistent/autobill.yaml"], 1, "configuration file not found"),
    ("backfill_reversed", ["backfill", "--from", "2026-01-05", "--to", "2026-01-01", "-c", "CONFIG"], 2,
     "is after --to 2026-01-01 (a reversed range)"),
    ("backfill_future_to", ["backfill", "--from", "2026-01-01", "--to", TOMORROW, "-c", "CONFIG"], 2,
     "--to: " + TOMORROW + " is in the future"),
    ("backfill_malformed_from", ["backfill", "--from", "01/02/2026", "--to", "2026-01-01", "-c", "CONFIG"], 2,
     "--from: not a date"),
    ("backfill_unknown_server", ["backfill", "--from", "2026-01-01", "--to", "2026-01-02", "--server", "x", "-c",
                                 "CONFIG"], 2, "--server: unknown server 'x'"),
    ("backfill_missing_to", ["backfill", "--from", "2026-01-01", "-c", "CONFIG"], 2, "Missing option '--to'"),
    ("quarantine_unknown_status", ["quarantine", "list", "--status", "gone", "-c", "CONFIG"], 2,
     "--status: must be one of held, released, requeued"),
    ("quarantine_unknown_rule", ["quarantine", "list", "--rule", "nope", "-c", "CONFIG"], 2, "--rule: must be one of"),
    ("quarantine_negative_limit", ["quarantine", "list", "--limit", "-1", "-c", "CONFIG"], 2, "--limit"),
    ("quarantine_show_missing", ["quarantine", "show", "424242", "-c", "CONFIG"], 2, "no quarantined row 424242"),
    ("quarantine_show_not_a_number", ["quarantine", "show", "abc", "-c", "CONFIG"], 2, "Invalid value"),
    ("quarantine_release_missing", ["quarantine", "release", "1", "424242", "-c", "CONFIG"], 2,
     "no quarantined row 424242 (nothing released)"),
    ("quarantine_release_nothing", ["quarantine", "release", "-c", "CONFIG"], 2, "give quarantine ids"),
    ("quarantine_release_unknown_rule", ["quarantine", "release", "--rule", "nope", "-c", "CONFIG"], 2,
     "--rule: must be one of"),
    ("charges_reconcile_unknown_key", ["charges", "reconcile", "ab-nope", "-c", "CONFIG"], 2,
     "no charge with id or idempotency key 'ab-nope'"),
    ("charges_reconcile_unknown_id", ["charges", "reconcile", "424242", "--not-posted", "-c", "CONFIG"], 2,
     "no charge with id or idempotency key '424242'"),
    ("quarantine_files_unknown_server", ["quarantine", "files", "--server", "pbx9", "-c", "CONFIG"], 2,
     "--server: unknown server 'pbx9'"),
    ("quarantine_files_zero_limit", ["quarantine", "files", "--limit", "0", "-c", "CONFIG"], 2, "--limit"),
    ("charges_unknown_state", ["charges", "list", "--state", "paid", "-c", "CONFIG"], 2, "--state: must be one of"),
    ("charges_malformed_date", ["charges", "list", "--date", "2026-02-30", "-c", "CONFIG"], 2, "--date: not a date"),
    ("runs_unknown_kind", ["runs", "--kind", "weekly", "-c", "CONFIG"], 2, "--kind: must be one of"),
    ("unknown_command", ["bill-everyone"], 2, "No such command 'bill-everyone'"),
    ("suspend_check_missing_secret", ["suspend-check", "-c", "CONFIG"], 1,
     "whmcs.identifier: environment variable BADARGS_WHMCS_ID"),
    ("config_check_missing_secret", ["config", "check", "-c", "CONFIG"], 1, "whmcs.secret: environment variable"),
]


def _runs(config: Path) -> int:
    settings = load_settings(config)
    upgrade(settings.ledger)
    with session_scope(settings.ledger) as s:
        return s.scalar(select(func.count()).select_from(Run))


@pytest.mark.parametrize(("args", "code", "text"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_arguments_are_one_line_with_the_exit_code_and_start_nothing(cfg: Path, args, code, text) -> None:
    settings = load_settings(cfg)
    upgrade(settings.ledger)
    record_quarantine(settings, pl.DataFrame(  # quarantine row 1 exists
        {"cdr_key": ["s1:x"], "server": ["s1"], "billing_date": [None], "rule": ["missing_start"],
         "reason": ["start_utc is empty"], "row": ["{}"]}, schema_overrides={"billing_date": pl.Date}))
    result = CliRunner().invoke(app, [str(cfg) if a == "CONFIG" else a for a in args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert lines and text in lines[-1], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    if args[0] != "config":
        assert all(line.startswith("error: ") for line in lines), result.stderr
    assert _runs(cfg) == 0  # no run (no flow run) was started


def test_config_check_offline_skips_secrets(cfg: Path) -> None:
    result = CliRunner().invoke(app, ["config", "check", "--offline", "-c", str(cfg)])
    assert result.exit_code == 0 and "config OK" in result.stdout


def test_a_crash_is_one_line_and_the_traceback_goes_to_the_log_file(cfg: Path, monkeypatch, tmp_path) -> None:
    import data_quality.quarantine as q

    def boom(*a, **k):
        raise RuntimeError("the disk caught fire\nsecond line")

    monkeypatch.setattr(q, "list_quarantine", boom)
    result = CliRunner().invoke(app, ["quarantine", "list", "-c", str(cfg)])
    assert result.exit_code == 1
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert line.startswith("error: RuntimeError: the disk caught fire second line (traceback in ")
    log = (tmp_path / "logs" / "autobill.log").read_text()
    assert "Traceback (most recent call last)" in log and "the disk caught fire" in log
