"""`autobill generate`: files + config that the extraction step reads as they are."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from autobill.config import load_settings
from autobill.ledger.batches import commit_batch
from autobill.ledger.db import upgrade
from cli import app
from tasks.extract import extract_server

UNTIL = datetime(2026, 3, 12, tzinfo=UTC)


def run(*args: str):
    return CliRunner().invoke(app, ["generate", *args])


def test_generate_files_and_config_then_extract(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    result = run("--clients", "7", "--servers-per-kind", "2", "--from", "2026-03-07", "--to", "2026-03-09",
                 "--out", str(out), "--seed", "5", "--kinds", "file,lesnet,vodia")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "generated" in result.output and "file-1" in result.output and "lesnet-2" in result.output
    settings = load_settings(out / "autobill.yaml")
    assert {s.id for s in settings.servers} == {"file-1", "file-2", "lesnet-1", "lesnet-2", "vodia-1", "vodia-2"}
    assert (out / "lesnet" / "lesnet-1.txt").exists() and (out / "vodia" / "vodia-2.parquet").exists()
    tariff = pl.read_csv(settings.resolve_path(settings.tariff("retail").path), infer_schema=False)
    assert {"prefix", "rate"} <= set(tariff.columns)

    upgrade(settings.ledger)
    got = extract_server(settings, "file-1", UNTIL)
    files = sorted(p.name for p in (out / "drop" / "file-1").glob("*.csv"))
    assert got.rows > 0 and sorted(f[0] for f in got.files) == files
    commit_batch(settings, got.batch_id)
    assert extract_server(settings, "file-1", UNTIL).rows == 0  # processed once

    again = tmp_path / "again"
    assert run("--clients", "7", "--servers-per-kind", "2", "--from", "2026-03-07", "--to", "2026-03-09",
               "--out", str(again), "--seed", "5", "--kinds", "file,lesnet,vodia").exit_code == 0  # fmt: skip
    for rel in ("lesnet/lesnet-1.txt", "drop/file-2/cdr-2026-03-08.csv", "autobill.yaml"):
        assert (again / rel).read_bytes() == (out / rel).read_bytes()  # same seed, same bytes


def test_bad_arguments_fail_with_one_line(tmp_path: Path) -> None:
    result = run("--clients", "2", "--from", "2026-03-09", "--to", "2026-03-07", "--out", str(tmp_path))
    assert result.exit_code == 1 and "before --from" in result.output
    result = run("--clients", "2", "--from", "2026-03-07", "--to", "2026-03-08", "--out", str(tmp_path),
                 "--kinds", "fusionpbx")  # fmt: skip
    assert result.exit_code == 1 and "--fusionpbx-url" in result.output
    result = run("--clients", "2", "--from", "nope", "--to", "2026-03-08", "--out", str(tmp_path))
    assert result.exit_code == 1 and "--from" in result.output


@pytest.mark.postgres
def test_generate_into_postgresql_then_extract(tmp_path: Path, pg_url: str, pg_schema: str) -> None:
    out = tmp_path / "gen"
    result = run("--clients", "4", "--servers-per-kind", "2", "--from", "2026-03-08", "--to", "2026-03-08",
                 "--out", str(out), "--kinds", "fusionpbx", "--fusionpbx-url", pg_url)  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = load_settings(out / "autobill.yaml")
    tables = sorted(s.table for s in settings.servers)
    assert tables == [f"{pg_schema}.v_xml_cdr_1", f"{pg_schema}.v_xml_cdr_2"]
    server = settings.server("fusionpbx-2")
    assert (server.host, server.database, server.user, server.password) == ("127.0.0.1", "test", "postgres", None)
    upgrade(settings.ledger)
    got = extract_server(settings, "fusionpbx-2", UNTIL)
    generated = int(re.search(r"fusionpbx-2\s+(\d+) calls", result.output).group(1))
    assert got.rows == generated > 0  # every generated call, none of the extra B-leg / LOSE_RACE rows
