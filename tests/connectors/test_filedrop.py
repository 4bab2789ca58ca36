"""The drop folder: each file once (by content), never half-written, bad files reported."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import select

from autobill.config import FileDropServer
from autobill.ledger.batches import commit_batch, quarantined_files, read_batch
from autobill.ledger.db import session_scope
from autobill.ledger.models import ProcessedFile
from connectors import filedrop
from connectors.base import SourceError
from connectors.filedrop import FileDropConnector
from tasks.extract import extract_server
from tests.support import make_settings
from tests.support.extract import drop_server

UNTIL = datetime(2026, 6, 2, tzinfo=UTC)
HEADER = "call_id,start,billsec,dst,direction,tenant,src,extension\n"


def csv(path: Path, *rows: str, header: str = HEADER, age: float | None = None) -> Path:
    path.write_text(header + "".join(r + "\n" for r in rows))
    if age is not None:
        old = time.time() - age
        os.utime(path, (old, old))
    return path


def processed(settings) -> list[tuple[str, int]]:
    with session_scope(settings.ledger) as s:
        return sorted((f.name, f.rows) for f in s.scalars(select(ProcessedFile)))


def test_file_is_processed_once_by_content_even_renamed(tmp_path: Path, sqlite_url: str) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = make_settings(tmp_path, sqlite_url, [drop_server(drop)])
    csv(drop / "a.csv",
        "c1,2026-06-01T09:00:00-04:00,61,6135550123,outbound,acme,6135550100,1001",
        "c2,2026-06-01T10:00:00Z,0,+44 20 7946 0000,outbound,acme,,1002")  # fmt: skip

    first = extract_server(settings, "drop", until=UNTIL)
    assert first.rows == 2 and [f[0] for f in first.files] == ["a.csv"]
    assert processed(settings) == []  # recorded only when the batch is kept
    again = extract_server(settings, "drop", until=UNTIL)  # not committed: the file is read again
    assert again.rows == 2
    commit_batch(settings, again.batch_id)
    assert processed(settings) == [("a.csv", 2)]

    (drop / "a-copy.csv").write_bytes((drop / "a.csv").read_bytes())
    csv(drop / "b.csv", "c3,2026-06-01T11:00:00Z,30,6135550199,outbound,acme,,1001")
    third = extract_server(settings, "drop", until=UNTIL)
    assert [f[0] for f in third.files] == ["b.csv"] and third.rows == 1
    rows = {r["cdr_key"]: r for r in read_batch(settings, again.batch_id).iter_rows(named=True)}
    assert rows["drop:c1"]["start_utc"] == datetime(2026, 6, 1, 13, 0, tzinfo=UTC)
    assert rows["drop:c1"]["end_utc"] == datetime(2026, 6, 1, 13, 1, 1, tzinfo=UTC)  # start + billsec
    assert rows["drop:c1"]["rate_number"] == "16135550123" and rows["drop:c1"]["extension"] == "1001"
    assert rows["drop:c2"]["rate_number"] == "442079460000" and rows["drop:c2"]["src"] is None
    assert json.loads(rows["drop:c2"]["source_row"])["_file"] == "a.csv"


def test_a_processed_file_unchanged_on_disk_is_not_read_again(tmp_path: Path, sqlite_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder keeps every file: the ones processed, with the name, size and mtime they had when
    read, are skipped unread; a change to any of the three reads the file again, and its hash decides."""
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = make_settings(tmp_path, sqlite_url, [drop_server(drop)])
    a = csv(drop / "a.csv", "c1,2026-06-01T09:00:00-04:00,61,6135550123,outbound,acme,6135550100,1001", age=600)
    commit_batch(settings, extract_server(settings, "drop", until=UNTIL).batch_id)
    with session_scope(settings.ledger) as s:
        (row,) = s.scalars(select(ProcessedFile)).all()
        assert (row.size, row.mtime_ns) == (a.stat().st_size, a.stat().st_mtime_ns)

    read: list[str] = []
    real = filedrop.read_steady
    monkeypatch.setattr(filedrop, "read_steady", lambda path: read.append(path.name) or real(path))
    csv(drop / "b.csv", "c2,2026-06-01T10:00:00Z,30,6135550199,outbound,acme,,1001", age=600)
    second = extract_server(settings, "drop", until=UNTIL)
    assert read == ["b.csv"] and [f[0] for f in second.files] == ["b.csv"]  # a.csv: not even opened
    commit_batch(settings, second.batch_id)

    read.clear()
    processed_at = a.stat().st_mtime_ns
    os.utime(a, ns=(processed_at, processed_at - 10**9))  # touched: read, same hash, skipped
    third = extract_server(settings, "drop", until=UNTIL)
    assert read == ["a.csv"] and third.files == [] and third.rows == 0
    read.clear()
    # New content of the same size with the mtime put back is the documented limit: a writer that
    # keeps the mtime must change the size or the name.
    a.write_text(a.read_text().replace("c1,", "c9,"))
    os.utime(a, ns=(processed_at, processed_at))
    assert extract_server(settings, "drop", until=UNTIL).files == [] and read == []
    csv(drop / "a.csv", "c1,2026-06-01T09:00:00-04:00,61,6135550123,outbound,acme,6135550100,1001",
        "c3,2026-06-01T12:00:00Z,5,6135550123,outbound,acme,,1001", age=60)  # appended to: read again
    fourth = extract_server(settings, "drop", until=UNTIL)
    assert read == ["a.csv"] and [f[:3] for f in fourth.files] == [("a.csv", fourth.files[0][1], 2)]
    assert fourth.rows == 1  # c1 is already stored: only c3 is new


def test_half_written_files_are_not_read(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    server = FileDropServer(id="drop", kind="file", path=drop, pattern="*", settle_seconds=60)
    row = "c1,2026-06-01T09:00:00Z,10,6135550123,outbound,acme,,"
    csv(drop / "x.csv.part", row, age=3600)
    csv(drop / "y.tmp", row, age=3600)
    young = csv(drop / "young.csv", row)
    got = FileDropConnector(server, processed=set()).extract(None, UNTIL, None)
    assert got.cdrs.height == 0 and got.files == []
    assert "3 file(s) still being written" in got.notes[0]
    os.utime(young, (time.time() - 61, time.time() - 61))
    got = FileDropConnector(server, processed=set()).extract(None, UNTIL, None)
    assert [f[0] for f in got.files] == ["young.csv"]


def test_bad_header_is_reported_and_the_good_files_billed(tmp_path: Path, sqlite_url: str) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = make_settings(tmp_path, sqlite_url, [drop_server(drop)])
    csv(drop / "bad.csv", "c9,2026-06-01T09:00:00Z,10,outbound,acme", header="call_id,start,billsec,direction,tenant\n")
    csv(drop / "good.csv", "c1,2026-06-01T09:00:00Z,10,6135550123,outbound,acme,,")
    got = extract_server(settings, "drop", until=UNTIL)
    assert got.rows == 1 and [f[0] for f in got.files] == ["good.csv"]
    assert any("bad.csv" in n and "dst" in n for n in got.notes)
    assert [(name, reason.split(":")[0]) for name, _, reason in got.bad_files] == [("bad.csv", "bad.csv")]
    commit_batch(settings, got.batch_id)
    assert processed(settings) == [("good.csv", 1)]  # bad.csv is quarantined whole, not processed
    [held] = quarantined_files(settings, "drop")
    assert held["name"] == "bad.csv" and "dst" in held["reason"] and len(held["sha256"]) == 64
    again = extract_server(settings, "drop", until=UNTIL)  # unchanged: not read (nor counted) again
    assert (again.rows, again.bad_files) == (0, [])
    csv(drop / "bad.csv", "c9,2026-06-01T09:00:00Z,10,6135550199,outbound,acme,,")  # fixed: new content
    fixed = extract_server(settings, "drop", until=UNTIL)
    assert fixed.rows == 1 and [f[0] for f in fixed.files] == ["bad.csv"]


def test_parquet_typed_columns_bad_rows_and_duplicates(tmp_path: Path, sqlite_url: str) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = make_settings(tmp_path, sqlite_url, [drop_server(drop, numbering={"country_code": "44"})])
    pl.DataFrame(
        {
            "call_id": ["p1", "p2"],
            "start": [datetime(2026, 6, 1, 9, tzinfo=UTC), datetime(2026, 6, 1, 10, tzinfo=UTC)],
            "billsec": [75, 0],
            "dst": ["020 7946 0000", "00 33 1 23 45 67 89"],
            "direction": ["outbound", "inbound"],
            "tenant": ["uk", "uk"],
        }
    ).write_parquet(drop / "calls.parquet")
    csv(drop / "more.csv",
        "p1,2026-06-01T09:00:00Z,75,02079460000,outbound,uk,,",  # same call id as the parquet row
        "p3,yesterday,abc,02079460001,OUTBOUND,uk,,")  # fmt: skip
    got = extract_server(settings, "drop", until=UNTIL)
    assert got.rows == 4 and got.duplicate_rows == 1  # the repeat is kept for validation to mark
    assert sorted((f[0], f[2]) for f in got.files) == [("calls.parquet", 2), ("more.csv", 2)]
    rows = read_batch(settings, got.batch_id).sort("cdr_key", "source_row")
    p1 = rows.filter(pl.col("cdr_key") == "drop:p1")
    assert p1.height == 2 and set(p1["rate_number"]) == {"442079460000"}
    p2 = rows.filter(pl.col("cdr_key") == "drop:p2").row(0, named=True)
    assert p2["rate_number"] == "33123456789" and p2["billsec"] == 0 and p2["direction"] == "inbound"
    p3 = rows.filter(pl.col("cdr_key") == "drop:p3").row(0, named=True)
    assert p3["start_utc"] is None and p3["billsec"] is None and p3["direction"] == "outbound"
    assert json.loads(p3["source_row"])["start"] == "yesterday"  # the text survives for quarantine


def test_a_file_with_calls_starting_after_until_waits_unless_they_are_impossible(tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    server = FileDropServer(id="drop", kind="file", path=drop, pattern="*.csv", settle_seconds=0)
    now = datetime(2026, 6, 2, 0, 55, tzinfo=UTC).timestamp()  # the nightly run, just after the cutoff
    csv(drop / "day1.csv", "a1,2026-06-01T23:00:00Z,60,6135550123,outbound,acme,,",
        "a2,2026-06-01T23:59:00Z,240,6135550123,outbound,acme,,")  # fmt: skip  (ends after midnight: still day 1)
    csv(drop / "spans.csv", "b1,2026-06-01T23:50:00Z,60,6135550123,outbound,acme,,",
        "b2,2026-06-02T00:10:00Z,60,6135550123,outbound,acme,,")  # fmt: skip
    csv(drop / "bogus.csv", "c1,2026-06-01T12:00:00Z,60,6135550123,outbound,acme,,",
        "c2,2099-01-01T00:00:00Z,60,6135550123,outbound,acme,,")  # fmt: skip
    for f in drop.iterdir():  # written before the (simulated) run
        os.utime(f, (now - 3600, now - 3600))
    got = FileDropConnector(server, processed=set(), clock=lambda: now).extract(None, UNTIL, None)
    assert sorted(f[0] for f in got.files) == ["bogus.csv", "day1.csv"]  # 2099 is bad data, not a reason to wait
    assert got.cdrs.filter(pl.col("cdr_key") == "drop:a2")["end_utc"].item() > UNTIL  # crosses midnight, taken
    assert any("spans.csv (1 call(s))" in n for n in got.notes)
    later = FileDropConnector(server, processed={f[1] for f in got.files}, clock=lambda: now + 86400)
    assert [f[0] for f in later.extract(None, datetime(2026, 6, 3, tzinfo=UTC), None).files] == ["spans.csv"]


def test_missing_folder_is_a_source_error(tmp_path: Path) -> None:
    server = FileDropServer(id="drop", kind="file", path=tmp_path / "nope")
    with pytest.raises(SourceError, match="does not exist"):
        FileDropConnector(server, processed=set()).extract(None, UNTIL, None)
