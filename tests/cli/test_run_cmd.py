"""`autobill run` in a real process: a PBX that is down is one console line, its traceback is in
the log file only (Prefect logs a failed task with its traceback; cli.common.tracebacks_to_log_file)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_a_pbx_down_is_one_line_and_its_traceback_goes_to_the_log_file(tmp_path: Path) -> None:
    cfg = tmp_path / "autobill.yaml"
    cfg.write_text(
        "timezone: America/Toronto\nledger_url: sqlite:///ledger.db\ndata_dir: data\nservers:\n"
        f"  - id: gone\n    kind: file\n    path: {tmp_path / 'nowhere'}\n    retries: 0\n")
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(ROOT), PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    proc = subprocess.run([sys.executable, "-m", "cli", "run", "--dry-run", "-c", str(cfg)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=280)
    shown = proc.stdout + proc.stderr
    assert proc.returncode == 2, shown  # partial: the server was not billed
    assert "Traceback" not in shown
    log = home / "logs" / "autobill.log"
    failed = [line for line in proc.stderr.splitlines() if "Task run failed with exception: SourceError" in line]
    assert failed and all(line.endswith(f"(traceback in {log})") for line in failed), proc.stderr
    assert "gone   " in proc.stdout and "does not exist or is not a folder" in proc.stdout  # the summary's line
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "SourceError: gone: drop folder" in text
