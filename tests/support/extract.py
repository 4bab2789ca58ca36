"""Helpers shared by the extraction tests (not fixtures: plain functions the tests call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autobill.config import Settings, settings_from_dict
from autobill.ledger.db import upgrade


def fusion_server(schema: str, server_id: str = "pbx1", table: str = "v_xml_cdr", **extra: Any) -> dict[str, Any]:
    """A FusionPBX server entry pointing at the test PostgreSQL, table in the test's schema."""
    return {
        "id": server_id,
        "kind": "fusionpbx",
        "host": "127.0.0.1",
        "port": 5432,
        "database": "test",
        "user": "postgres",
        "sslmode": "disable",
        "table": f"{schema}.{table}",
        "timeout_seconds": 5,
        **extra,
    }


def drop_server(folder: Path, server_id: str = "drop", **extra: Any) -> dict[str, Any]:
    return {"id": server_id, "kind": "file", "path": str(folder), "pattern": "*", "settle_seconds": 0, **extra}


def make_settings(tmp_path: Path, ledger_url: str, servers: list[dict[str, Any]], migrate: bool = True, **extra: Any) -> Settings:
    if migrate:
        upgrade(ledger_url)
    raw = {
        "timezone": "America/Toronto",
        "data_dir": str(tmp_path / "data"),
        "ledger_url": ledger_url,
        "servers": servers,
        **extra,
    }
    return settings_from_dict(raw, base_dir=tmp_path)
