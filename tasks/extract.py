"""Extraction: one server's new CDRs into the raw lake, and the watermark moved only when kept.

The life of a batch (ledger `extraction_batches.status`)::

    extract_server  -> "extracting" (row created to get an id) -> lake files written durably
                    -> "extracted"  (rows, paths, proposed watermark/cursor/files recorded)
    commit_batch    -> "committed"  (watermark, cursor and processed files moved in ONE transaction)
    reject_batch    -> "rejected"   (files moved to lake/rejected; watermark untouched)

Why this order: the watermark can only move after the partition is durable (a crash before the
commit re-reads the same window next run), and the flow validates a batch before it commits it.

One pending batch per server: a new `extract_server` first sets aside any earlier batch of the
same server still "extracting"/"extracted" (a run that crashed or stopped before commit) -
rejected with the reason "superseded" and its files moved aside. Its window is re-read by the
new extraction because the watermark never moved, so nothing is lost and nothing is stored
twice. Run one extraction per server at a time (the `server:<id>` task tag is there to put a
concurrency limit of 1 on).

Overlap: connectors re-read `overlap_minutes` before the watermark for late rows; rows whose
`cdr_key` is already stored (committed) in the lake are dropped here and counted as
`overlap_skipped`. Duplicate keys *within* the new batch are kept and counted
(`duplicate_rows`): validation marks them as duplicates, they are not silently dropped.

First run of a server (no watermark): the window starts `validation.lookback_days` before
`until` - older rows would be quarantined as too old anyway, and a first run must not try to
bill a PBX's two years of retained history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from sqlalchemy import select
from sqlalchemy.orm import Session

from autobill import lake
from autobill.cdr import conform
from autobill.config import Server, Settings
from autobill.ledger.db import session_scope
from autobill.ledger.models import ExtractionBatch, ProcessedFile, ServerWatermark
from autobill.timeutil import as_utc
from connectors.registry import connector_for

PENDING = ("extracting", "extracted")
BACKOFF_FACTOR = 10.0  # seconds before the first retry; doubles each time (10, 20, 40, ...)
RETRY_JITTER_FACTOR = 0.5


class BatchStateError(RuntimeError):
    """A batch asked to do something its state forbids (commit a rejected batch, reject a committed one)."""


@dataclass
class ExtractResult:
    batch_id: int
    server: str
    rows: int  # rows written to the lake (new rows, duplicates within the batch included)
    paths: list[str]
    overlap_skipped: int  # re-read rows whose key was already stored
    watermark_before: datetime | None
    proposed_watermark: datetime | None
    notes: list[str] = field(default_factory=list)
    duplicate_rows: int = 0  # rows beyond the first of a key repeated inside this batch
    window_start: datetime | None = None
    window_end: datetime | None = None
    files: list[tuple[str, str, int]] = field(default_factory=list)  # (name, sha256, rows) consumed


@dataclass
class CommitResult:
    batch_id: int
    server: str
    watermark: datetime | None
    files_recorded: int
    already_committed: bool


# -- plain functions ------------------------------------------------------------------------


def _json_or_none(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def _file_rows(cdrs: pl.DataFrame, files: list[tuple[str, str]]) -> list[tuple[str, str, int]]:
    """(name, sha256, rows) per consumed file: rows counted from `source_row._file` when the
    connector records it, else all rows for a single-file batch."""
    if not files:
        return []
    counts: dict[str, int] = {}
    if cdrs.height:
        names = cdrs.select(pl.col("source_row").str.json_path_match("$._file").alias("f"))["f"]
        counts = {k: v for k, v in names.value_counts().iter_rows() if k is not None}
    if not counts and len(files) == 1:
        counts = {files[0][0]: cdrs.height}
    return [(name, digest, counts.get(name, 0)) for name, digest in files]


def supersede_pending(settings: Settings, server_id: str, by: str = "a later extraction") -> list[int]:
    """Set aside this server's batches left pending by an earlier run (see the module docstring)."""
    with session_scope(settings.ledger) as s:
        ids = list(
            s.scalars(
                select(ExtractionBatch.id).where(
                    ExtractionBatch.server == server_id, ExtractionBatch.status.in_(PENDING)
                )
            )
        )
    for batch_id in ids:
        _reject(settings, batch_id, f"superseded by {by}: never committed, its window is read again", allow=PENDING)
    return ids


def extract_server(settings: Settings, server_id: str, until: datetime, run_id: int | None = None) -> ExtractResult:
    """Read one server up to `until` (exclusive), store the new rows durably, record the batch.

    Does NOT move the watermark: `commit_batch` does, once the batch is validated."""
    until = as_utc(until)
    server: Server = settings.server(server_id)
    data = settings.data_path
    with session_scope(settings.ledger) as s:
        wm = s.get(ServerWatermark, server_id)
        before = wm.watermark_utc if wm else None
        cursor = json.loads(wm.cursor) if wm and wm.cursor else None
    superseded = supersede_pending(settings, server_id)
    since = before if before is not None else until - timedelta(days=settings.validation.lookback_days)

    got = connector_for(server, settings).extract(since, until, cursor)

    cdrs = conform(got.cdrs)
    foreign = cdrs.filter(pl.col("server") != server_id).height
    if foreign:
        raise ValueError(f"{server_id}: the connector returned {foreign} row(s) of another server")
    days = lake.day_labels(cdrs).unique().to_list()
    stored = cdrs["cdr_key"].is_in(lake.stored_keys(data, server_id, days).implode())
    overlap_skipped = int(stored.sum())
    new = cdrs.filter(~stored)
    duplicate_rows = new.height - new["cdr_key"].n_unique() if new.height else 0
    proposed = as_utc(got.watermark) if got.watermark is not None else None
    if before is not None and (proposed is None or proposed < before):
        proposed = before
    files = _file_rows(cdrs, got.files)
    notes = list(got.notes)
    if superseded:
        notes.append(f"{server_id}: set aside pending batch(es) {superseded} from an earlier run (re-read now)")
    if overlap_skipped:
        notes.append(f"{server_id}: {overlap_skipped} re-read row(s) already stored (overlap window)")
    if duplicate_rows:
        notes.append(f"{server_id}: {duplicate_rows} row(s) repeat a cdr_key of this batch (kept for validation)")
    window_start = since - timedelta(minutes=server.overlap_minutes)

    with session_scope(settings.ledger) as s:
        batch = ExtractionBatch(
            server=server_id, run_id=run_id, window_start=window_start, window_end=until,
            rows=0, status="extracting",
        )  # fmt: skip
        s.add(batch)
        s.flush()
        batch_id = batch.id
    try:
        paths = [str(p.absolute()) for p in lake.write_batch(data, server_id, batch_id, new)]
    except BaseException:
        _reject(settings, batch_id, "the lake write failed", allow=PENDING)
        raise
    with session_scope(settings.ledger) as s:
        batch = s.get(ExtractionBatch, batch_id)
        batch.rows = new.height
        batch.path = json.dumps(paths)
        batch.proposed_watermark = proposed
        batch.proposed_cursor = _json_or_none(got.cursor)
        batch.files = json.dumps(files) if files else None
        batch.notes = json.dumps(notes) if notes else None
        batch.status = "extracted"
    return ExtractResult(
        batch_id=batch_id, server=server_id, rows=new.height, paths=paths, overlap_skipped=overlap_skipped,
        watermark_before=before, proposed_watermark=proposed, notes=notes, duplicate_rows=duplicate_rows,
        window_start=window_start, window_end=until, files=files,
    )  # fmt: skip


def commit_batch_in(session: Session, batch_id: int) -> CommitResult:
    """`commit_batch` inside the caller's transaction, for a step that must keep a batch in the
    same transaction as what it writes (the billing step: billed CDRs + watermark together).

    Moves the server's watermark (never backwards) and cursor, records the batch's files in
    `processed_files`, marks the batch committed. Idempotent; refuses a rejected batch."""
    batch = session.get(ExtractionBatch, batch_id, with_for_update=True)
    if batch is None:
        raise KeyError(f"no extraction batch {batch_id}")
    if batch.status == "committed":
        wm = session.get(ServerWatermark, batch.server)
        return CommitResult(batch_id, batch.server, wm.watermark_utc if wm else None, 0, True)
    if batch.status != "extracted":
        raise BatchStateError(f"batch {batch_id} of {batch.server} is {batch.status!r}: only an extracted batch commits")
    wm = session.get(ServerWatermark, batch.server, with_for_update=True)
    if wm is None:
        wm = ServerWatermark(server=batch.server)
        session.add(wm)
    if batch.proposed_watermark is not None and (wm.watermark_utc is None or batch.proposed_watermark > wm.watermark_utc):
        wm.watermark_utc = batch.proposed_watermark
    if batch.proposed_cursor is not None:
        wm.cursor = batch.proposed_cursor
    recorded = 0
    known = set(session.scalars(select(ProcessedFile.content_hash).where(ProcessedFile.server == batch.server)))
    for name, digest, rows in json.loads(batch.files or "[]"):
        if digest not in known:
            session.add(ProcessedFile(server=batch.server, content_hash=digest, name=name, rows=rows))
            known.add(digest)
            recorded += 1
    batch.status = "committed"
    session.flush()
    return CommitResult(batch_id, batch.server, wm.watermark_utc, recorded, False)


def commit_batch(settings: Settings, batch_id: int) -> CommitResult:
    """Keep a batch: move the watermark (never backwards), the cursor, and record its files as
    processed, in one ledger transaction. Idempotent: committing twice changes nothing."""
    with session_scope(settings.ledger) as s:
        return commit_batch_in(s, batch_id)


def _reject(settings: Settings, batch_id: int, reason: str, allow: tuple[str, ...]) -> list[str]:
    with session_scope(settings.ledger) as s:
        batch = s.get(ExtractionBatch, batch_id)
        if batch is None:
            raise KeyError(f"no extraction batch {batch_id}")
        server, status, paths = batch.server, batch.status, json.loads(batch.path or "[]")
    if status == "rejected":
        return paths
    if status not in allow:
        raise BatchStateError(f"batch {batch_id} of {server} is {status!r}: it cannot be rejected")
    # Files first: a crash between the two steps leaves a pending batch with its files aside,
    # which the next extraction supersedes (moving nothing more) - never stored data left behind.
    moved = [str(p.absolute()) for p in lake.move_aside(settings.data_path, server, batch_id)]
    with session_scope(settings.ledger) as s:
        batch = s.get(ExtractionBatch, batch_id)
        batch.status = "rejected"
        batch.path = json.dumps(moved)
        batch.notes = json.dumps([*json.loads(batch.notes or "[]"), f"rejected: {reason}"])
    return moved


def reject_batch(settings: Settings, batch_id: int, reason: str) -> list[str]:
    """Refuse a batch: its files leave the stored lake (to lake/rejected/...), the watermark stays,
    so the window is extracted again next run. Returns the files' new paths. Idempotent."""
    return _reject(settings, batch_id, reason, allow=PENDING)


def read_batch(settings: Settings, batch_id: int) -> pl.DataFrame:
    """The canonical rows of a batch (from wherever its files are now)."""
    with session_scope(settings.ledger) as s:
        batch = s.get(ExtractionBatch, batch_id)
        if batch is None:
            raise KeyError(f"no extraction batch {batch_id}")
        paths = json.loads(batch.path or "[]")
    return lake.read_paths(Path(p) for p in paths)


# -- Prefect wrappers (thin) ----------------------------------------------------------------


@task(name="extract-server", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=exponential_backoff(BACKOFF_FACTOR),
      retry_jitter_factor=RETRY_JITTER_FACTOR)  # fmt: skip
def extract_server_task(settings: Settings, server_id: str, until: datetime, run_id: int | None = None) -> ExtractResult:
    result = extract_server(settings, server_id, until, run_id)
    logger = get_run_logger()
    logger.info(
        "%s: batch %s, %s new row(s), %s overlap re-read(s) skipped, watermark %s -> %s (proposed)",
        server_id, result.batch_id, result.rows, result.overlap_skipped,
        result.watermark_before, result.proposed_watermark,
    )  # fmt: skip
    for note in result.notes:
        logger.info(note)
    return result


def extract_task_for(settings: Settings, server_id: str, backoff_factor: float = BACKOFF_FACTOR):
    """`extract_server_task` configured for one server: its retries, exponential backoff with
    jitter, and the `server:<id>` tag (for a per-server concurrency limit).

    No task-level timeout: Prefect cannot interrupt a task in a worker thread (it only warns, on
    every run), so the timeouts that matter are on every network call (psycopg2 connect and
    statement timeouts, requests timeouts), from the server's `timeout_seconds`."""
    server = settings.server(server_id)
    return extract_server_task.with_options(
        name=f"extract-{server_id}",
        task_run_name=f"extract-{server_id}",
        retries=server.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=backoff_factor),
        retry_jitter_factor=RETRY_JITTER_FACTOR,
        tags=[f"server:{server_id}", "extract"],
    )


@task(name="commit-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def commit_batch_task(settings: Settings, batch_id: int) -> CommitResult:
    return commit_batch(settings, batch_id)


@task(name="reject-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def reject_batch_task(settings: Settings, batch_id: int, reason: str) -> list[str]:
    return reject_batch(settings, batch_id, reason)
