"""Run-duration history (`autobill runs`, autobill.durations) and the rotating run-log file."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from autobill.durations import NEAR_FRACTION, analyse

TZ = ZoneInfo("America/Toronto")
T0 = datetime(2026, 11, 1, 5, 55, tzinfo=UTC)  # 00:55 in Toronto


def history(minutes: list[float | None], kind: str = "nightly", start: datetime = T0) -> list[dict]:
    """run_history rows, newest first, one nightly run a day with these durations (oldest first)."""
    rows = []
    for i, m in enumerate(minutes):
        started = start + timedelta(days=i)
        rows.append({"id": i + 1, "kind": kind, "billing_date": (started - timedelta(days=1)).date(),
                     "status": "completed" if m is not None else "running", "dry_run": False,
                     "started_at": started, "finished_at": None if m is None else started + timedelta(minutes=m),
                     "seconds": None if m is None else m * 60, "flow_run_id": None})
    return rows[::-1]


def test_a_run_past_the_budget_warns_and_one_near_it_too():
    over = analyse(history([10, 12, 50]), 45, TZ, now=T0 + timedelta(days=5))
    assert len(over.warnings) == 1 and "took 50.0 min, past the 45 min budget" in over.warnings[0]
    near = analyse(history([10, 12, 40]), 45, TZ, now=T0 + timedelta(days=5))
    assert near.warnings and "89% of the 45 min budget" in near.warnings[0]
    fine = analyse(history([10, 12, 11]), 45, TZ, now=T0 + timedelta(days=5))
    assert fine.ok and "within the budget" in fine.markdown()


def test_a_rising_trend_warns_before_any_run_is_late():
    report = analyse(history([10 + 2 * i for i in range(10)]), 45, TZ, now=T0 + timedelta(days=12))
    assert report.trend_minutes_per_week == pytest.approx(14.0)
    assert report.days_to_budget == pytest.approx((45 - 28) / 2)
    assert any("grow 14.0 min/week" in w for w in report.warnings)
    flat = analyse(history([20, 21, 19, 20, 21, 20]), 45, TZ, now=T0 + timedelta(days=7))
    assert flat.ok and abs(flat.trend_minutes_per_week) < 1


def test_a_run_that_never_finished_is_reported_and_other_kinds_are_ignored():
    rows = history([10, None, 11]) + history([60], kind="autosuspend")
    report = analyse(rows, 45, TZ, now=T0 + timedelta(days=5))
    assert [r.kind for r in report.runs] == ["nightly"] * 3
    assert any("never finished" in w for w in report.warnings)
    assert not any("60" in w for w in report.warnings)


@given(st.lists(st.one_of(st.none(), st.floats(0, 300)), min_size=0, max_size=30), st.integers(1, 240))
def test_warnings_follow_the_latest_finished_run(minutes, budget):
    report = analyse(history(minutes), budget, TZ, now=T0)
    finished = [m for m in minutes if m is not None]
    if not finished:
        assert report.trend_minutes_per_week is None
        return
    latest = finished[-1]
    flagged = any("the latest nightly run" in w for w in report.warnings)
    assert flagged == (latest > NEAR_FRACTION * budget)
    assert len(report.rows()) == len(minutes)
    json.dumps(report.rows())


def test_runs_command_prints_durations_and_check_exits_1_past_the_budget(tmp_path):
    from autobill.ledger.db import session_scope, upgrade
    from autobill.ledger.models import Run
    from cli import app

    cfg = tmp_path / "autobill.yaml"
    cfg.write_text("timezone: America/Toronto\nnightly_budget_minutes: 30\nledger_url: sqlite:///ledger.db\n")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    with session_scope(url) as s:
        for i, minutes in enumerate([12, 14, 35]):
            started = T0 + timedelta(days=i)
            s.add(Run(kind="nightly", billing_date=date(2026, 10, 31) + timedelta(days=i), dry_run=False,
                      status="completed", started_at=started, finished_at=started + timedelta(minutes=minutes)))
        s.add(Run(kind="autosuspend", dry_run=False, status="completed", started_at=T0,
                  finished_at=T0 + timedelta(seconds=3)))
    runner = CliRunner()
    result = runner.invoke(app, ["runs", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "2026-11-02" in result.output and "35.0" in result.output and "OVER" in result.output
    assert "00:55:00" in result.output  # start times in the billing timezone
    assert "past the 30 min budget" in result.output
    assert runner.invoke(app, ["runs", "-c", str(cfg), "--check"]).exit_code == 1
    doc = json.loads(runner.invoke(app, ["runs", "-c", str(cfg), "--json", "--kind", "nightly"]).output)
    assert doc["budget_minutes"] == 30 and len(doc["runs"]) == 3 and doc["warnings"]


def test_rotating_file_handler_keeps_run_names_and_rotates(tmp_path):
    from autobill.logging_setup import RunLogFileHandler, file_formatter

    path = tmp_path / "logs" / "nested" / "autobill.log"  # the directory does not exist yet
    handler = RunLogFileHandler(path, maxBytes=2000, backupCount=2)
    handler.setFormatter(file_formatter())
    record = {"task_run_id": "x", "task_run_name": "extract-pbx1", "flow_run_name": "autobill-2026-11-20",
              "flow_run_id": "y"}
    try:
        for i in range(100):  # records as Prefect's task-run logger makes them
            handler.handle(logging.makeLogRecord({"name": "prefect.task_runs", "levelno": logging.INFO,
                                                  "levelname": "INFO", "msg": "line %d", "args": (i,), **record}))
    finally:
        handler.close()
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["autobill.log", "autobill.log.1", "autobill.log.2"]  # rotated, capped at 2 backups
    last = path.read_text().splitlines()[-1]
    assert "flow run autobill-2026-11-20 | task run extract-pbx1 - line 99" in last


def test_prefect_logging_yaml_adds_the_file_handler_to_every_run_log(tmp_path):
    """deployments/logging.yml loads with Prefect's loader and routes run logs to the file."""
    from prefect.logging.configuration import load_logging_config

    from autobill.logging_setup import LOGGING_YML

    config = load_logging_config(LOGGING_YML)
    handler = config["handlers"]["autobill_file"]
    assert handler["class"] == "autobill.logging_setup.RunLogFileHandler"
    assert handler["filename"].endswith("/logs/autobill.log") and "$" not in handler["filename"]
    assert "autobill_file" in config["root"]["handlers"]
    assert config["loggers"]["prefect.flow_runs"].get("propagate", True)  # reaches the root handler


def test_a_run_whose_process_died_shows_as_interrupted(tmp_path):
    import subprocess
    import sys

    from autobill.ledger.db import session_scope, upgrade
    from autobill.ledger.models import Run
    from autobill.ledger.runs import HOST, run_history, start_run
    from autobill.timeutil import utc_now
    from cli import app

    cfg = tmp_path / "autobill.yaml"
    cfg.write_text("timezone: America/Toronto\nledger_url: sqlite:///ledger.db\n")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    upgrade(url)
    from autobill.config import load_settings

    settings = load_settings(cfg)
    alive = start_run(settings, "nightly", date(2026, 11, 20))  # this process: still running
    dead_proc = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_proc.wait()
    with session_scope(url) as s:  # a run started by a process that has exited since
        s.add(Run(kind="nightly", billing_date=date(2026, 11, 21), dry_run=False, status="running",
                  started_at=utc_now(), host=HOST, pid=dead_proc.pid))
        s.add(Run(kind="nightly", billing_date=date(2026, 11, 22), dry_run=False, status="running",
                  started_at=utc_now(), host="another-host", pid=dead_proc.pid))  # cannot tell: stays running
    status = {h["billing_date"].day: h["status"] for h in run_history(settings)}
    assert status == {20: "running", 21: "interrupted", 22: "running"}
    assert [h["id"] for h in run_history(settings) if h["status"] == "running"][-1] == alive
    result = CliRunner().invoke(app, ["runs", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "interrupted" in result.output and "1 interrupted run(s)" in result.output
    assert "never finished: its process died" in result.output  # the durations report says so at once
    assert "3 runs" in result.output
    few = CliRunner().invoke(app, ["runs", "-c", str(cfg), "--limit", "1"])
    assert "1 of 3 runs (--all shows every row)" in few.output
