"""extract_server / commit_batch / reject_batch end to end on a real FusionPBX-schema table."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

import tests.support.fusionpbx_schema as fx
from autobill import lake
from autobill.ledger.batches import BatchStateError, commit_batch, read_batch, reject_batch
from autobill.ledger.db import session_scope
from autobill.ledger.models import ExtractionBatch, ServerWatermark
from connectors.base import SourceError
from tasks.extract import extract_server
from tests.support import closed_port, make_settings
from tests.support.extract import fusion_server

pytestmark = pytest.mark.postgres

DAY = datetime(2026, 6, 1, tzinfo=UTC)


def at(hour: float) -> datetime:
    return DAY + timedelta(hours=hour)


def add_call(schema: str, end: datetime, **kw) -> dict:
    """A call ending at `end` (5 s ring, 55 s talk)."""
    row = fx.cdr_row(start=end - timedelta(seconds=60), billsec=55, **kw)
    fx.insert_cdr(schema, "v_xml_cdr", row)
    return row


def watermark(settings) -> datetime | None:
    with session_scope(settings.ledger) as s:
        wm = s.get(ServerWatermark, "pbx1")
        return wm.watermark_utc if wm else None


def stored_keys(settings) -> list[str]:
    return sorted(lake.read_range(settings.data_path, "pbx1", date(2026, 1, 1), date(2026, 12, 31))["cdr_key"])


def key(row: dict) -> str:
    return f"pbx1:{row['call_uuid']}"


def test_watermark_overlap_late_rows_and_idempotent_commit(tmp_path: Path, ledger_url: str, pg_schema: str) -> None:
    fx.create_cdr_table(pg_schema)
    settings = make_settings(tmp_path, ledger_url, [fusion_server(pg_schema, overlap_minutes=120)])
    r1, r2 = add_call(pg_schema, at(10)), add_call(pg_schema, at(11))

    first = extract_server(settings, "pbx1", until=at(12))
    assert (first.rows, first.overlap_skipped, first.watermark_before) == (2, 0, None)
    assert first.proposed_watermark == at(11)
    assert watermark(settings) is None  # extraction alone never moves the watermark
    assert sorted(read_batch(settings, first.batch_id)["cdr_key"]) == sorted([key(r1), key(r2)])
    done = commit_batch(settings, first.batch_id)
    assert watermark(settings) == at(11) and not done.already_committed

    r3 = add_call(pg_schema, at(10.5))  # late: behind the watermark, inside the 2 h overlap
    r4 = add_call(pg_schema, at(12.5))
    r5 = add_call(pg_schema, at(13))  # at `until`: next time
    second = extract_server(settings, "pbx1", until=at(13))
    assert second.window_start == at(9) and second.window_end == at(13)
    assert (second.rows, second.overlap_skipped) == (2, 2)  # r1, r2 re-read and dropped; r3, r4 new
    assert sorted(read_batch(settings, second.batch_id)["cdr_key"]) == sorted([key(r3), key(r4)])
    commit_batch(settings, second.batch_id)
    again = commit_batch(settings, second.batch_id)
    assert again.already_committed and again.watermark == at(12.5) == watermark(settings)
    assert stored_keys(settings) == sorted(key(r) for r in (r1, r2, r3, r4))
    assert key(r5) not in stored_keys(settings)


def test_down_server_raises_and_leaves_watermark(tmp_path: Path, sqlite_url: str, pg_schema: str) -> None:
    fx.create_cdr_table(pg_schema)
    add_call(pg_schema, at(10))
    settings = make_settings(tmp_path, sqlite_url, [fusion_server(pg_schema)])
    commit_batch(settings, extract_server(settings, "pbx1", until=at(12)).batch_id)
    down = make_settings(tmp_path, sqlite_url, [fusion_server(pg_schema, port=closed_port())], migrate=False)
    with pytest.raises(SourceError, match="cannot connect"):
        extract_server(down, "pbx1", until=at(20))
    assert watermark(settings) == at(10)
    with session_scope(settings.ledger) as s:
        assert [b.status for b in s.scalars(select(ExtractionBatch))] == ["committed"]


def test_crash_between_write_and_commit_loses_and_duplicates_nothing(
    tmp_path: Path, sqlite_url: str, pg_schema: str
) -> None:
    fx.create_cdr_table(pg_schema)
    rows = [add_call(pg_schema, at(h)) for h in (8, 9, 10)]
    settings = make_settings(tmp_path, sqlite_url, [fusion_server(pg_schema)])
    crashed = extract_server(settings, "pbx1", until=at(12))  # written durably ... then the process dies
    assert watermark(settings) is None
    # a second, older crash: the batch row was created and a file written, the ledger never updated
    with session_scope(settings.ledger) as s:
        orphan = ExtractionBatch(server="pbx1", status="extracting", rows=0)
        s.add(orphan)
        s.flush()
        orphan_id = orphan.id
    lake.write_batch(settings.data_path, "pbx1", orphan_id, read_batch(settings, crashed.batch_id).head(1))

    rerun = extract_server(settings, "pbx1", until=at(12))
    assert (rerun.rows, rerun.overlap_skipped) == (3, 0)  # nothing counted as stored by the dead batches
    assert any("set aside pending batch" in n for n in rerun.notes)
    commit_batch(settings, rerun.batch_id)
    assert stored_keys(settings) == sorted(key(r) for r in rows)  # each call exactly once
    assert watermark(settings) == at(10)
    with session_scope(settings.ledger) as s:
        status = {b.id: b.status for b in s.scalars(select(ExtractionBatch))}
        notes = json.loads(s.get(ExtractionBatch, crashed.batch_id).notes)
    assert status == {crashed.batch_id: "rejected", orphan_id: "rejected", rerun.batch_id: "committed"}
    assert any("superseded" in n for n in notes)
    with pytest.raises(BatchStateError):
        commit_batch(settings, crashed.batch_id)  # a late commit of the dead batch cannot move anything


def test_rejected_batch_is_set_aside_and_read_again(tmp_path: Path, sqlite_url: str, pg_schema: str) -> None:
    fx.create_cdr_table(pg_schema)
    rows = [add_call(pg_schema, at(h)) for h in (8, 9)]
    settings = make_settings(tmp_path, sqlite_url, [fusion_server(pg_schema)])
    bad = extract_server(settings, "pbx1", until=at(12))
    moved = reject_batch(settings, bad.batch_id, "too many invalid rows")
    assert moved and all("/lake/rejected/" in p for p in moved)
    assert reject_batch(settings, bad.batch_id, "twice") == moved
    assert read_batch(settings, bad.batch_id).height == 2  # kept for audit, not as stored data
    assert stored_keys(settings) == [] and watermark(settings) is None
    retry = extract_server(settings, "pbx1", until=at(12))
    assert (retry.rows, retry.overlap_skipped) == (2, 0)
    commit_batch(settings, retry.batch_id)
    with pytest.raises(BatchStateError):
        reject_batch(settings, retry.batch_id, "too late: committed")
    assert stored_keys(settings) == sorted(key(r) for r in rows)


def test_first_run_looks_back_lookback_days(tmp_path: Path, sqlite_url: str, pg_schema: str) -> None:
    fx.create_cdr_table(pg_schema)
    old = add_call(pg_schema, at(-24 * 40))
    recent = add_call(pg_schema, at(-24 * 3))
    settings = make_settings(tmp_path, sqlite_url, [fusion_server(pg_schema, overlap_minutes=0)])
    got = extract_server(settings, "pbx1", until=at(0))
    assert got.window_start == at(-24 * 35)
    assert list(read_batch(settings, got.batch_id)["cdr_key"]) == [key(recent)]
    assert key(old) not in stored_keys(settings)
