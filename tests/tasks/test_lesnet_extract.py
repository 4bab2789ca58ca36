"""The HTTP connectors through the extract step: the cursor round-trips through the ledger.

The LesNet contract that matters end to end: a committed batch stores the ETag/Last-Modified,
the next run sends them, the carrier answers 304, nothing new is stored and the watermark stays;
a rejected batch leaves the old cursor, so the same file is downloaded and read again.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from autobill.config import settings_from_dict
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import ServerWatermark
from sandboxes import LesNetSandbox, VodiaSandbox

ROWS = "CallID,DateTime,Source,Destination,Direction,Duration\n" + "".join(
    f"c{i},2024-07-01 {8 + i:02d}:00:00,4165550100,+442079460000,out,{10 * i}\n" for i in range(1, 6)
)
UNTIL = datetime(2024, 7, 2, tzinfo=UTC)


def settings_for(tmp_path: Path, servers: list[dict]):
    settings = settings_from_dict(
        {
            "data_dir": str(tmp_path / "data"),
            "ledger_url": f"sqlite:///{tmp_path / 'ledger.db'}",
            "servers": servers,
        }
    )
    upgrade(settings.ledger)
    return settings


def test_lesnet_cursor_is_kept_by_commit_and_the_unchanged_file_adds_nothing(tmp_path: Path) -> None:
    from autobill.ledger.batches import commit_batch, reject_batch
    from tasks.extract import extract_server

    with LesNetSandbox(ROWS) as sb:
        settings = settings_for(
            tmp_path, [{"id": "les1", "kind": "lesnet", "url": sb.file_url, "account": "P1"}]
        )
        first = extract_server(settings, "les1", UNTIL)
        assert first.rows == 5
        reject_batch(settings, first.batch_id, "test: validation said no")
        again = extract_server(settings, "les1", UNTIL)  # no cursor stored: the file is read again
        assert again.rows == 5 and "if-none-match" not in sb.requests[-1].headers
        commit_batch(settings, again.batch_id)
        with session_scope(settings.ledger) as s:
            wm = s.get(ServerWatermark, "les1")
            cursor, watermark = json.loads(wm.cursor), wm.watermark_utc
        assert watermark == datetime(2024, 7, 1, 17, 0, 50, tzinfo=UTC)
        third = extract_server(settings, "les1", UNTIL + timedelta(days=1))
        assert sb.requests[-1].headers["if-none-match"] == cursor["etag"]
    assert third.rows == 0 and third.proposed_watermark == watermark


def test_vodia_through_the_extract_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from autobill.ledger.batches import commit_batch, read_batch
    from tasks.extract import extract_server

    monkeypatch.setenv("VODIA_TEST_PASSWORD", "pw")
    t0 = datetime(2024, 3, 1, 14, tzinfo=UTC)
    calls = pl.DataFrame(
        [
            {"call_id": f"k{i}", "tenant": "a.example", "extension": "101", "direction": d, "src": "4165550100",
             "dst": "+442079460000" if d == "outbound" else "4165550101", "start_utc": t0 + timedelta(minutes=i),
             "answer_utc": t0 + timedelta(minutes=i, seconds=3), "end_utc": None, "billsec": 10 * i}
            for i, d in enumerate(["outbound", "inbound", "local"] * 3, start=1)
        ],
        schema_overrides={c: pl.Datetime("us", "UTC") for c in ("start_utc", "answer_utc", "end_utc")},
    )  # fmt: skip
    with VodiaSandbox(calls, password="pw") as sb:
        server = {"id": "v1", "kind": "vodia", "url": sb.url, "username": "admin",
                  "password": {"env": "VODIA_TEST_PASSWORD"}}  # fmt: skip
        settings = settings_for(tmp_path, [server])
        until = datetime(2024, 3, 2, tzinfo=UTC)
        first = extract_server(settings, "v1", until)
        commit_batch(settings, first.batch_id)
        second = extract_server(settings, "v1", until)  # the overlap re-reads: all already stored
    assert first.rows == 6 and read_batch(settings, first.batch_id).height == 6  # local calls: no trunk leg
    assert second.rows == 0 and second.overlap_skipped == 6
