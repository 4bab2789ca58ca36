"""Helpers shared by the extraction tests (not fixtures: plain functions the tests call)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
