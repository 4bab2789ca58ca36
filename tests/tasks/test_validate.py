"""validate_batch against the real ledger (SQLite and PostgreSQL) and lake: where every row
ends, batch rejection (watermark stays, other servers unaffected), reports, volume, reruns."""

from __future__ import annotations

import json
from datetime import timedelta

import polars as pl
import pytest
from sqlalchemy import select

from autobill import lake
from autobill.ledger.batches import read_batch
from autobill.ledger.db import session_scope
from autobill.ledger.models import ExtractionBatch, QuarantinedRow, ServerWatermark
from data_quality.quarantine import release
from tasks.validate import BatchRejected, validate_batch, validated_path
from tests.support import make_final
from tests.support.dq import NOW, START, add_batch, cdr, dq_settings, good_rows, history


def _settings(tmp_path, ledger_url, **validation):
    return dq_settings(tmp_path, ledger_url, **validation)


def _quarantine(settings) -> list[QuarantinedRow]:
    with session_scope(settings.ledger) as s:
        return list(s.scalars(select(QuarantinedRow).order_by(QuarantinedRow.id)))


def _batch(settings, batch_id) -> ExtractionBatch:
    with session_scope(settings.ledger) as s:
        return s.get(ExtractionBatch, batch_id)


def _bill(settings, key: str, server: str = "pbx") -> None:
    make_final(settings.ledger, settings.data_path, [(key, server, START.date(), "billed", "0.100000")])


def test_accepted_batch(tmp_path, ledger_url):
    settings = _settings(tmp_path, ledger_url)
    _bill(settings, "pbx:old")
    rows = good_rows(20) + [
        cdr("neg", billsec=-1), cdr("nobody", tenant="nobody"),  # quarantined
        good_rows(1)[0],  # identical repeat of g1: duplicate
        cdr("old"),  # billed last night: duplicate
    ]
    batch_id = add_batch(settings, "pbx", rows)
    out = validate_batch(settings, batch_id, run_id=None, now=NOW)

    assert out.accepted and (out.rows, out.good, out.quarantined, out.duplicates) == (24, 20, 2, 2)
    assert out.quarantined_by_rule == {"negative_billsec": 1, "unknown_service": 1}
    assert out.duplicates_by == {"batch": 1, "billed": 1}
    validated = pl.read_parquet(out.validated_path)
    assert out.validated_path == validated_path(settings, f"batch-{batch_id}")
    assert sorted(validated["cdr_key"]) == sorted(f"pbx:g{i}" for i in range(1, 21))
    # no second copy of the source rows: the file points at the batch's raw files, which hold them
    assert "source_row" not in validated.columns
    found = lake.source_rows([str(out.validated_path)], validated["cdr_key"])
    raw = read_batch(settings, batch_id).unique("cdr_key", keep="first", maintain_order=True)
    assert found.sort("cdr_key").rows() == raw.filter(pl.col("cdr_key").is_in(validated["cdr_key"].implode())).select(
        "cdr_key", "source_row").sort("cdr_key").rows()
    assert found["source_row"].null_count() == 0

    held = _quarantine(settings)
    assert [(q.cdr_key, q.rule, q.status, q.server) for q in held] == [
        ("pbx:neg", "negative_billsec", "held", "pbx"), ("pbx:nobody", "unknown_service", "held", "pbx")]
    assert json.loads(held[1].row)["tenant"] == "nobody" and "tenant nobody" in held[1].reason
    assert held[0].billing_date == START.date()
    assert _batch(settings, batch_id).status == "extracted"  # committing is the billing step's job

    report = json.loads(out.report_path.read_text())
    assert report["outcome"]["good"] == 20 and report["batch"]["success"] is True
    assert report["batch"]["great_expectations"]["statistics"]["evaluated_expectations"] >= 20
    md = out.markdown_path.read_text()
    assert "ACCEPTED" in md and "| negative_billsec | 1 |" in md and "pbx:nobody" in md


def test_rejected_batch_keeps_the_watermark_and_other_servers_go_on(tmp_path, ledger_url):
    settings = _settings(tmp_path, ledger_url)
    mark = NOW - timedelta(days=1)
    with session_scope(settings.ledger) as s:
        s.add(ServerWatermark(server="pbx", watermark_utc=mark))
    bad = add_batch(settings, "pbx", good_rows(10) + [cdr(f"b{i}", direction="nowhere") for i in range(10)])
    ok = add_batch(settings, "pbx2", good_rows(10, server="pbx2"))

    with pytest.raises(BatchRejected) as err:
        validate_batch(settings, bad, now=NOW)
    assert err.value.server == "pbx"
    assert "10 of 20 rows are bad" in err.value.reasons[0]
    assert any("expect_column_values_to_be_in_set(direction)" in r for r in err.value.reasons)
    outcome = err.value.outcome
    assert not outcome.accepted and outcome.validated_path is None
    assert not validated_path(settings, f"batch-{bad}").exists()
    assert "REJECTED" in outcome.markdown_path.read_text()

    batch = _batch(settings, bad)
    assert batch.status == "rejected" and "validation:" in batch.notes
    assert lake.batch_files(settings.data_path, "pbx", bad) == []  # set aside, not in the stored lake
    assert len(lake.batch_files(settings.data_path, "pbx", bad, root=lake.rejected_root(settings.data_path))) == 1
    with session_scope(settings.ledger) as s:
        assert s.get(ServerWatermark, "pbx").watermark_utc == mark
    assert {q.rule for q in _quarantine(settings)} == {"unknown_direction"} and len(_quarantine(settings)) == 10

    other = validate_batch(settings, ok, now=NOW)
    assert other.accepted and other.good == 10 and _batch(settings, ok).status == "extracted"


def test_rejected_batch_read_again_stays_rejected_until_released(tmp_path, ledger_url):
    settings = _settings(tmp_path, ledger_url)
    rows = good_rows(10) + [cdr(f"b{i}", tenant="nobody") for i in range(10)]
    first = add_batch(settings, "pbx", rows)
    with pytest.raises(BatchRejected):
        validate_batch(settings, first, now=NOW)

    again = add_batch(settings, "pbx", rows)  # the watermark did not move: the window is read again
    with pytest.raises(BatchRejected) as err:
        validate_batch(settings, again, now=NOW)
    assert err.value.outcome.quarantined == 0 and err.value.outcome.duplicates_by == {"quarantine:held": 10}
    assert len(_quarantine(settings)) == 10  # no second record per row

    assert release(settings, rule="unknown_service", server="pbx", by="test") == 10
    third = add_batch(settings, "pbx", rows)
    out = validate_batch(settings, third, now=NOW)
    assert out.accepted and out.good == 10 and out.duplicates_by == {"quarantine:released": 10}


def test_revalidating_a_batch_changes_nothing(tmp_path, ledger_url):
    settings = _settings(tmp_path, ledger_url)
    batch_id = add_batch(settings, "pbx", good_rows(10) + [cdr("neg", billsec=-2)])
    first = validate_batch(settings, batch_id, now=NOW)
    second = validate_batch(settings, batch_id, now=NOW)
    assert (first.good, first.quarantined) == (10, 1)
    assert (second.good, second.quarantined, second.duplicates_by) == (10, 0, {"quarantine:held": 1})
    assert first.bad_fraction == second.bad_fraction
    assert len(_quarantine(settings)) == 1


def test_volume_drop_is_flagged_and_can_block(tmp_path, ledger_url):
    settings = _settings(tmp_path, ledger_url)
    history(settings, "pbx", [1000] * 7)
    out = validate_batch(settings, add_batch(settings, "pbx", good_rows(5)), now=NOW)
    assert out.accepted and any("fewer CDRs than usual" in w for w in out.warnings)

    blocking = _settings(tmp_path, ledger_url, volume_drop_blocks=True)
    with pytest.raises(BatchRejected) as err:
        validate_batch(blocking, add_batch(blocking, "pbx", good_rows(5)), now=NOW)
    assert any(r.startswith("volume failed") for r in err.value.reasons)
    # pbx2 has no history: not judged, accepted
    assert validate_batch(blocking, add_batch(blocking, "pbx2", good_rows(5, server="pbx2")), now=NOW).accepted


def test_quarantine_keeps_rows_the_ledger_columns_cannot_hold(tmp_path, ledger_url):
    settings = _settings(tmp_path, ledger_url, min_bad_rows=10)
    long_key = "pbx:" + "x" * 400
    batch_id = add_batch(settings, "pbx", good_rows(3) + [cdr("long", cdr_key=long_key)])
    out = validate_batch(settings, batch_id, now=NOW)
    assert out.quarantined_by_rule == {"malformed_key": 1}
    (held,) = _quarantine(settings)
    assert held.cdr_key is None and json.loads(held.row)["cdr_key"] == long_key


def test_unknown_batch_is_an_error(tmp_path, ledger_url):
    settings = _settings(tmp_path, ledger_url)
    with pytest.raises(KeyError):
        validate_batch(settings, 999, now=NOW)


def test_empty_batch_is_accepted_with_a_warning(tmp_path, ledger_url):
    settings = _settings(tmp_path, ledger_url)
    out = validate_batch(settings, add_batch(settings, "pbx", []), now=NOW)
    assert out.accepted and (out.rows, out.good, out.quarantined, out.duplicates) == (0, 0, 0, 0)
    assert any("expect_table_row_count_to_be_between" in w for w in out.warnings)
    assert pl.read_parquet(out.validated_path).height == 0


def test_artifact_keys_are_what_prefect_accepts():
    from tasks.validate import _artifact_key

    assert _artifact_key("validation-PBX_East.1") == "validation-pbx-east-1"
    assert _artifact_key("validation--a__b-") == "validation-a-b"
