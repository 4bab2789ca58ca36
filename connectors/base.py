"""What every CDR source gives the extraction step.

A connector only talks to the outside: it reads one server's CDRs for a window and returns
canonical rows (`autobill.cdr.CDR_SCHEMA`) plus the state to remember *if* the batch is kept.
It never writes the ledger or moves a watermark itself: `tasks/extract.py` writes the batch to
the lake durably, and the watermark / cursor / processed files are committed only after the
batch passed validation (DESIGN.md invariant 5: a failed server is simply retried next run).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import polars as pl


@dataclass
class Extracted:
    cdrs: pl.DataFrame  # canonical columns, conformed with autobill.cdr.conform
    watermark: datetime | None  # new high-water mark (UTC) to store once the batch is kept
    cursor: dict[str, Any] | None = None  # connector state to store with it (ETag, Last-Modified, ...)
    # (name, content sha256, rows) consumed; drop folders add (size, mtime_ns) as the file was read
    files: list[tuple] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # human-readable remarks for the run report
    # Files that cannot be read as a whole: (name, content sha256 or "", reason); quarantined whole.
    bad_files: list[tuple[str, str, str]] = field(default_factory=list)


class Connector(Protocol):
    def extract(self, since: datetime | None, until: datetime, cursor: dict[str, Any] | None) -> Extracted:
        """CDRs that ended in [since - overlap, until) (the connector applies the server's overlap)."""
        ...


class SourceError(Exception):
    """A source that could not be read (down, refused, malformed as a whole); retried next run."""


# A source row that could not be read as a call carries the reason in its `source_row` JSON under
# this key; validation quarantines it as `unreadable_row` with that reason (data_quality/rules.py).
PROBLEM_KEY = "_error"


def with_problem(source_row: pl.Expr, problem: pl.Expr) -> pl.Expr:
    """`source_row` (a JSON object) with `"_error": problem` added where `problem` is not null."""
    encoded = pl.struct(problem.alias(PROBLEM_KEY)).struct.json_encode()
    text = source_row.str.strip_chars()
    wrapped = pl.struct(problem.alias(PROBLEM_KEY), source_row.alias("_raw")).struct.json_encode()
    merged = (
        pl.when(text.is_null() | (text == "{}"))
        .then(encoded)
        .when(~text.str.starts_with("{") | ~text.str.ends_with("}"))
        .then(wrapped)
        .otherwise(text.str.strip_suffix("}") + pl.lit(", ") + encoded.str.strip_prefix("{"))
    )
    return pl.when(problem.is_not_null()).then(merged).otherwise(source_row)


def merge_problems(frame: pl.DataFrame, problem: str) -> pl.DataFrame:
    """`frame` without its `problem` column, its `source_row` carrying `"_error": problem` where
    that is not null (`with_problem`). Only those rows are merged: they are few, and merging the
    JSON text of every row cost more than building it (a when/then evaluates both branches)."""
    rows = frame[problem].is_not_null()
    if rows.any():
        at = rows.arg_true()
        merged = frame[at].select(with_problem(pl.col("source_row"), pl.col(problem))).to_series()
        frame = frame.with_columns(frame["source_row"].clone().scatter(at, merged))
    return frame.drop(problem)

