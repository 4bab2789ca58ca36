"""Quarantine life cycle: held -> released -> requeued -> validated again (and the CLI)."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml
from sqlalchemy import select
from typer.testing import CliRunner

from autobill.ledger.db import session_scope
from autobill.ledger.models import QuarantinedRow, Run
from cli import app
from data_quality.quarantine import get_entry, list_quarantine, release, requeue_released
from data_quality.rules import check_rows
from tests.support import make_final
from tests.support.dq import NOW, START, add_batch, cdr, dq_settings, frame, good_rows, settings_raw


def _statuses(settings) -> dict[str | None, str]:
    with session_scope(settings.ledger) as s:
        return {q.cdr_key: q.status for q in s.scalars(select(QuarantinedRow).order_by(QuarantinedRow.id))}


def _run_row(settings) -> int:
    with session_scope(settings.ledger) as s:
        run = Run(kind="nightly")
        s.add(run)
        s.flush()
        return run.id


def _quarantine_rows(settings, rows):
    """Validate `rows` as a pbx batch (accepted: few bad rows) and return the validation outcome."""
    from tasks.validate import validate_batch

    return validate_batch(settings, add_batch(settings, "pbx", good_rows(30) + rows), now=NOW)


def test_release_and_requeue_round_trip(tmp_path, ledger_url):
    settings = dq_settings(tmp_path, ledger_url)
    bad = [cdr("new-ext", tenant="beta", extension="2002"), cdr("neg", billsec=-1)]
    out = _quarantine_rows(settings, bad)
    assert out.quarantined_by_rule == {"negative_billsec": 1, "unknown_service": 1}
    assert requeue_released(settings, run_id=1).height == 0  # nothing released yet

    by_rule = {e.rule: e for e in list_quarantine(settings)}
    assert release(settings, ids=[by_rule["unknown_service"].id], by="ops") == 1
    assert release(settings, ids=[by_rule["unknown_service"].id], by="ops") == 0  # only held rows
    entry = get_entry(settings, by_rule["unknown_service"].id)
    assert (entry.status, entry.released_by) == ("released", "ops") and entry.released_at is not None

    back = requeue_released(settings, run_id=1)
    assert back.to_dicts() == frame([bad[0]]).to_dicts()  # the canonical row, exactly as extracted
    assert _statuses(settings) == {"pbx:new-ext": "requeued", "pbx:neg": "held"}


def test_requeued_rows_are_validated_again_with_the_fixed_config(tmp_path, ledger_url):
    from tasks.validate import validate_requeued

    settings = dq_settings(tmp_path, ledger_url)
    old_start = START.replace(month=9)  # more than lookback_days before NOW: only released rows may pass
    bad = [cdr("ext", tenant="beta", extension="2002"), cdr("still", tenant="nobody"),
           cdr("old", start_utc=old_start, answer_utc=None, end_utc=old_start.replace(minute=2))]
    _quarantine_rows(settings, bad)
    assert release(settings, rule="unknown_service") == 2
    assert release(settings, rule="before_lookback") == 1
    run_id = _run_row(settings)

    raw = settings_raw(tmp_path, ledger_url)
    raw["services"][1]["extensions"].append("2002")  # the operator maps the new extension
    from autobill.config import settings_from_dict

    fixed = settings_from_dict(raw, base_dir=tmp_path)
    out = validate_requeued(fixed, run_id=run_id, now=NOW)
    assert (out.rows, out.good, out.quarantined, out.duplicates) == (3, 2, 1, 0)
    assert out.validated_path.name == f"requeue-run-{run_id}.parquet"
    assert sorted(pl.read_parquet(out.validated_path)["cdr_key"]) == ["pbx:ext", "pbx:old"]
    with session_scope(settings.ledger) as s:
        records = [(q.cdr_key, q.rule, q.status) for q in s.scalars(select(QuarantinedRow).order_by(QuarantinedRow.id))]
    # the row that still fails gets a NEW held record; the old ones stay as history
    assert ("pbx:still", "unknown_service", "requeued") in records
    assert records[-1] == ("pbx:still", "unknown_service", "held")


def test_stranded_requeued_rows_come_back(tmp_path, ledger_url):
    settings = dq_settings(tmp_path, ledger_url)
    _quarantine_rows(settings, [cdr("a", tenant="nobody"), cdr("b", tenant="nobody")])
    release(settings, rule="unknown_service")
    assert requeue_released(settings, run_id=1).height == 2
    # the run died before billing: both come back; once one is billed, only the other one
    assert sorted(requeue_released(settings, run_id=2)["cdr_key"]) == ["pbx:a", "pbx:b"]
    make_final(settings.ledger, settings.data_path, [("pbx:a", "pbx", START.date(), "billed", "0.050000")])
    assert requeue_released(settings, run_id=3)["cdr_key"].to_list() == ["pbx:b"]


def test_requeued_key_is_a_duplicate_for_a_batch_that_reads_it_again(tmp_path, ledger_url):
    from data_quality.known import load_known_keys

    settings = dq_settings(tmp_path, ledger_url)
    _quarantine_rows(settings, [cdr("a", tenant="nobody")])
    release(settings, rule="unknown_service")
    requeue_released(settings)
    known = load_known_keys(settings.ledger, ["pbx:a", "pbx:zzz"])
    assert known.to_dicts() == [{"cdr_key": "pbx:a", "state": "quarantine:requeued"}]
    check = check_rows(frame([cdr("a", tenant="nobody")]), settings, NOW, known, server="pbx")
    assert check.duplicates.height == 1  # the batch copy; the requeued copy is the one validated
    assert load_known_keys(settings.ledger, ["pbx:a"], include_requeued=False).height == 0


def test_release_needs_a_target(tmp_path):
    settings = dq_settings(tmp_path, migrate=True)
    with pytest.raises(ValueError):
        release(settings)


# --- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def cli_config(tmp_path):
    settings = dq_settings(tmp_path, migrate=True)
    _quarantine_rows(settings, [cdr("x1", tenant="nobody"), cdr("x2", tenant="nobody"), cdr("n1", billsec=-4),
                                cdr("p2", cdr_key="pbx2:p2")])
    path = tmp_path / "autobill.yaml"
    path.write_text(yaml.safe_dump(settings_raw(tmp_path)))
    return settings, str(path)


def _run(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_list_show_release_round_trip(cli_config):
    settings, config = cli_config
    text = _run("quarantine", "list", "-c", config)
    assert "4 quarantined rows" in text and "by rule: malformed_key 1, negative_billsec 1, unknown_service 2" in text
    header = next(line for line in text.splitlines() if "status" in line).split()
    assert header[:5] == ["id", "status", "server", "date", "rule"]  # a table with headers

    rows = [json.loads(line) for line in _run("quarantine", "list", "-c", config, "--rule", "unknown_service",
                                              "--json").splitlines()]
    assert [r["cdr_key"] for r in rows] == ["pbx:x1", "pbx:x2"] and {r["status"] for r in rows} == {"held"}

    shown = json.loads(_run("quarantine", "show", str(rows[0]["id"]), "-c", config))
    assert shown["rule"] == "unknown_service" and "tenant nobody" in shown["reason"]
    assert shown["row"]["cdr_key"] == "pbx:x1" and shown["row"]["billsec"] == 60

    assert "released 1 row(s)" in _run("quarantine", "release", str(rows[0]["id"]), "-c", config, "--by", "ops")
    released = [json.loads(x) for x in _run("quarantine", "list", "-c", config, "--status", "released",
                                            "--json").splitlines()]
    assert [(r["cdr_key"], r["released_by"]) for r in released] == [("pbx:x1", "ops")]

    back = requeue_released(settings, run_id=5)
    assert back["cdr_key"].to_list() == ["pbx:x1"]
    assert "requeued" in _run("quarantine", "list", "-c", config, "--status", "requeued")


def test_cli_release_by_rule_and_server(cli_config):
    settings, config = cli_config
    assert "released 0 row(s)" in _run("quarantine", "release", "--rule", "unknown_service", "--server", "pbx2",
                                       "-c", config)
    assert "released 2 row(s)" in _run("quarantine", "release", "--rule", "unknown_service", "--server", "pbx",
                                       "-c", config)
    assert {e.cdr_key for e in list_quarantine(settings, status="released")} == {"pbx:x1", "pbx:x2"}


def test_cli_errors(cli_config):
    _, config = cli_config
    runner = CliRunner()
    # bad usage (an unknown id, nothing to release, an unknown status) is exit 2 (issue #12)
    assert runner.invoke(app, ["quarantine", "show", "9999", "-c", config]).exit_code == 2
    assert runner.invoke(app, ["quarantine", "release", "-c", config]).exit_code == 2
    assert runner.invoke(app, ["quarantine", "list", "--status", "gone", "-c", config]).exit_code == 2


def test_cli_list_says_when_it_is_cut(cli_config):
    _, config = cli_config
    assert "2 of 4 quarantined rows (--all shows every row)" in _run("quarantine", "list", "-c", config, "--limit", "2")
    assert "4 quarantined rows\n" in _run("quarantine", "list", "-c", config, "--all")
    assert len(_run("quarantine", "list", "-c", config, "--limit", "1", "--json").splitlines()) == 1
