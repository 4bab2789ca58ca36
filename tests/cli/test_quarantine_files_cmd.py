"""`autobill quarantine files`: drop files quarantined whole, as a table or JSON (issue #12)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from autobill.config import load_settings
from cli import app
from tasks.extract import extract_server
from tests.support.extract import drop_server

UNTIL = datetime(2026, 6, 2, tzinfo=UTC)
runner = CliRunner()


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A config with two drop servers; the first has an empty file and a non-UTF-8 file, the second
    a file with a header that is not ours; the extraction quarantined all three."""
    folders = [tmp_path / "d1", tmp_path / "d2"]
    for f in folders:
        f.mkdir()
    cfg = tmp_path / "autobill.yaml"
    cfg.write_text(yaml.safe_dump({
        "timezone": "America/Toronto", "data_dir": str(tmp_path / "data"),
        "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        "servers": [drop_server(folders[0], "d1"), drop_server(folders[1], "d2")],
    }))
    (folders[0] / "empty.csv").write_bytes(b"")
    (folders[0] / "latin.csv").write_bytes("call_id,start,billsec,dst,direction,tenant\nx,caf\xe9\n".encode("latin-1"))
    (folders[1] / "other.csv").write_bytes(b"a,b,c\n1,2,3\n")
    settings = load_settings(cfg)
    from autobill.ledger.db import upgrade

    upgrade(settings.ledger)
    for server in ("d1", "d2"):
        extract_server(settings, server, until=UNTIL)
    return cfg, folders[0], folders[1]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_table_shows_name_server_short_hash_reason_and_first_seen(world) -> None:
    cfg, d1, _ = world
    out = runner.invoke(app, ["quarantine", "files", "-c", str(cfg)], env={"COLUMNS": "250"})
    assert out.exit_code == 0, out.output
    text = out.stdout
    for name in ("empty.csv", "latin.csv", "other.csv"):
        assert name in text
    assert _digest(d1 / "latin.csv")[:12] in text and _digest(d1 / "latin.csv") not in text  # short hash
    assert "not UTF-8 text" in text and "empty file" in text and "header lacks required column" in text
    assert datetime.now(UTC).strftime("%Y-%m-%d") in text  # first seen, UTC
    assert "latin.csv: not UTF-8" not in text  # the name is not repeated in the reason
    assert "3 quarantined files" in text


def test_json_is_one_object_per_file_with_the_full_hash(world) -> None:
    cfg, d1, d2 = world
    out = runner.invoke(app, ["quarantine", "files", "--json", "-c", str(cfg)])
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["server"], r["name"]) for r in rows] == [("d1", "empty.csv"), ("d1", "latin.csv"), ("d2", "other.csv")]
    assert rows[1]["sha256"] == _digest(d1 / "latin.csv") and rows[2]["sha256"] == _digest(d2 / "other.csv")
    assert all(r["reason"] and r["created_at"] for r in rows)


def test_limit_all_and_server_filter(world) -> None:
    cfg, _, _ = world
    out = runner.invoke(app, ["quarantine", "files", "--limit", "1", "-c", str(cfg)], env={"COLUMNS": "250"})
    assert out.exit_code == 0 and "1 of 3 quarantined files (--all shows every row)" in out.stdout
    assert "empty.csv" in out.stdout and "other.csv" not in out.stdout
    out = runner.invoke(app, ["quarantine", "files", "--limit", "1", "--all", "--json", "-c", str(cfg)])
    assert len(out.stdout.splitlines()) == 3
    out = runner.invoke(app, ["quarantine", "files", "--server", "d2", "--json", "-c", str(cfg)])
    assert [json.loads(x)["name"] for x in out.stdout.splitlines()] == ["other.csv"]


def test_none_quarantined_says_so(tmp_path: Path) -> None:
    cfg = tmp_path / "autobill.yaml"
    cfg.write_text(f"ledger_url: sqlite:///{tmp_path / 'ledger.db'}\n")
    out = runner.invoke(app, ["quarantine", "files", "-c", str(cfg)])
    assert out.exit_code == 0 and "no quarantined files" in out.stdout
