"""Helpers for the data-quality / validation / quarantine tests (plain functions, no fixtures)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from autobill import lake
from autobill.cdr import CDR_SCHEMA, conform
from autobill.config import Settings
from autobill.ledger.db import session_scope
from autobill.ledger.models import ExtractionBatch
from tests.support import make_settings

NOW = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)  # 01:00 in America/Toronto: the nightly run
START = datetime(2026, 11, 19, 15, 0, tzinfo=UTC)


def dq_settings(tmp_path: Path, ledger_url: str | None = None, migrate: bool = False, **validation: Any) -> Settings:
    """Two servers; services: pbx/acme (whole tenant, plan basic), pbx/beta extension 2001
    (plan rich: bills inbound and local), pbx2/acme2 (whole tenant)."""
    return make_settings(tmp_path, migrate=migrate, **settings_raw(tmp_path, ledger_url, **validation))


def settings_raw(tmp_path: Path, ledger_url: str | None = None, **validation: Any) -> dict[str, Any]:
    url = ledger_url or f"sqlite:///{tmp_path / 'ledger.db'}"
    return {
        "timezone": "America/Toronto",
        "data_dir": str(tmp_path / "data"),
        "ledger_url": url,
        "servers": [
            {"id": "pbx", "kind": "file", "path": str(tmp_path / "drop"), "settle_seconds": 0},
            {"id": "pbx2", "kind": "file", "path": str(tmp_path / "drop2"), "settle_seconds": 0},
        ],
        "tariffs": [{"name": "t", "path": "t.csv"}],
        "plans": [
            {"name": "basic", "tariff": "t"},
            {"name": "rich", "tariff": "t", "bill_inbound": True, "bill_local": True},
        ],
        "services": [
            {"client_id": 1, "service_id": 10, "server": "pbx", "tenant": "acme", "plan": "basic"},
            {"client_id": 2, "service_id": 11, "server": "pbx", "tenant": "beta", "extensions": ["2001"],
             "plan": "rich"},
            {"client_id": 3, "service_id": 12, "server": "pbx2", "tenant": "acme2", "plan": "basic"},
        ],
        "validation": validation,
    }


def cdr(n: int | str = 1, server: str = "pbx", **overrides: Any) -> dict[str, Any]:
    """A good answered outbound call of acme (60 s billed, 65 s long), tagged by `source_row`."""
    row = {
        "cdr_key": f"{server}:{n}", "server": server, "tenant": "acme" if server == "pbx" else "acme2",
        "account": None, "extension": "1001", "direction": "outbound", "src": "1001", "dst": "6135550100",
        "rate_number": "16135550100", "start_utc": START, "answer_utc": START + timedelta(seconds=5),
        "end_utc": START + timedelta(seconds=65), "billsec": 60, "hangup_cause": "NORMAL_CLEARING",
        "source_row": json.dumps({"tag": str(n)}),
    }
    row.update(overrides)
    return row


def frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return conform(pl.DataFrame(rows, schema=CDR_SCHEMA))


def good_rows(count: int, server: str = "pbx", first: int = 1) -> list[dict[str, Any]]:
    return [cdr(f"g{i}", server=server, start_utc=START + timedelta(minutes=i),
                answer_utc=START + timedelta(minutes=i, seconds=5), end_utc=START + timedelta(minutes=i, seconds=65))
            for i in range(first, first + count)]


def add_batch(settings: Settings, server: str, rows: list[dict[str, Any]], status: str = "extracted",
              window: tuple[datetime, datetime] | None = None, created_at: datetime | None = None,
              row_count: int | None = None) -> int:
    """An extraction batch as tasks.extract records it: lake files + an `extraction_batches` row."""
    window = window or (START - timedelta(hours=24), NOW)
    with session_scope(settings.ledger) as s:
        batch = ExtractionBatch(server=server, window_start=window[0], window_end=window[1], rows=0,
                                status="extracting", created_at=created_at or NOW)
        s.add(batch)
        s.flush()
        batch_id = batch.id
    paths = [str(p) for p in lake.write_batch(settings.data_path, server, batch_id, frame(rows))] if rows else []
    with session_scope(settings.ledger) as s:
        batch = s.get(ExtractionBatch, batch_id)
        batch.rows = len(rows) if row_count is None else row_count
        batch.path = json.dumps(paths)
        batch.proposed_watermark = window[1]
        batch.status = status
    return batch_id


def history(settings: Settings, server: str, rows_per_night: list[int]) -> None:
    """Committed nightly batches (24 h windows) of the previous nights, for the volume check."""
    for i, rows in enumerate(rows_per_night, start=1):
        end = NOW - timedelta(days=i)
        add_batch(settings, server, [], status="committed", window=(end - timedelta(hours=24), end),
                  created_at=end, row_count=rows)


def where(check, tag: str) -> list[tuple[str, str | None]]:
    """Where the row(s) tagged `tag` ended: ("good", None), ("duplicate", state), ("quarantine", rule)."""
    out: list[tuple[str, str | None]] = []
    tag_json = json.dumps({"tag": tag})
    out += [("good", None)] * check.good.filter(pl.col("source_row") == tag_json).height
    for state in check.duplicates.filter(pl.col("source_row") == tag_json)["duplicate_of"]:
        out.append(("duplicate", state))
    q = check.quarantined.with_columns(pl.col("row").str.json_path_match("$.source_row").alias("_src"))
    for rule in q.filter(pl.col("_src") == tag_json)["rule"]:
        out.append(("quarantine", rule))
    return sorted(out, key=str)
