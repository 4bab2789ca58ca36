"""SQL, one query per file, loaded by name (`load("charge_lines")`): DuckDB queries over the lake
and the ledger queries that are not ORM (`known_keys_<dialect>`).

Each query's contract (inputs, output columns) is in the comment block at the top of its file.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_DIR = Path(__file__).parent


@cache
def load(name: str) -> str:
    path = _DIR / f"{name}.sql"
    if not path.exists():
        raise FileNotFoundError(f"no SQL query named {name!r} in {_DIR}")
    return path.read_text(encoding="utf-8")
