"""Extraction: one server's new CDRs into the raw lake, and the watermark moved only when kept.

The batch lifecycle itself is ledger logic: autobill/ledger/batches.py.

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
twice. One extraction per server at a time comes from the ledger lock (one nightly or backfill
child at a time, autobill/ledger/lock.py), not from Prefect tag concurrency limits: a tagged task
run asks the Prefect API for slots before it starts and releases them after, and 40 tagged empty
tasks on 2 threads took 28-36 s against 0.1 s untagged (issue #15).

Overlap: connectors re-read `overlap_minutes` before the watermark for late rows; rows whose
`cdr_key` is already stored (committed) in the lake are dropped here and counted as
`overlap_skipped`. Duplicate keys *within* the new batch are kept and counted
(`duplicate_rows`): validation marks them as duplicates, they are not silently dropped.

First run of a server (no watermark): the window starts `validation.lookback_days` before
`until` - older rows would be quarantined as too old anyway, and a first run must not try to
bill a PBX's two years of retained history.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from autobill import lake
from autobill.cdr import conform
from autobill.config import Server, Settings
from autobill.ledger.batches import (
    PENDING,
    CommitResult,
    close_batch,
    commit_batch,
    open_batch,
    quarantine_files,
    reject_batch,
    reject_pending,
    server_position,
    supersede_pending,
)
from autobill.memory import release_free_memory
from autobill.timeutil import as_utc
from connectors.registry import connector_for

BACKOFF_FACTOR = 10.0  # seconds before the first retry; doubles each time (10, 20, 40, ...)
RETRY_JITTER_FACTOR = 0.5


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
    files: list[tuple] = field(default_factory=list)  # (name, sha256, rows[, size, mtime_ns]) consumed
    bad_files: list[tuple[str, str, str]] = field(default_factory=list)  # (name, sha256, reason) quarantined whole


# -- plain functions ------------------------------------------------------------------------


def extract_server(settings: Settings, server_id: str, until: datetime, run_id: int | None = None) -> ExtractResult:
    """Read one server up to `until` (exclusive), store the new rows durably, record the batch.

    Does NOT move the watermark: `commit_batch` does, once the batch is validated."""
    until = as_utc(until)
    server: Server = settings.server(server_id)
    data = settings.data_path
    before, cursor = server_position(settings, server_id)
    superseded = supersede_pending(settings, server_id)
    since = before if before is not None else until - timedelta(days=settings.validation.lookback_days)

    got = connector_for(server, settings).extract(since, until, cursor)
    # Files unreadable as a whole are recorded before anything else: they are accounted for even
    # when this batch is later rejected (they are not part of it).
    quarantine_files(settings, server_id, got.bad_files, run_id)

    cdrs = conform(got.cdrs)
    foreign = cdrs.filter(pl.col("server") != server_id).height
    if foreign:
        raise ValueError(f"{server_id}: the connector returned {foreign} row(s) of another server")
    days = lake.day_labels(cdrs).unique().to_list()
    # fill_null: a row without a key is never "already stored"; it goes on to be quarantined
    stored = cdrs["cdr_key"].is_in(lake.stored_keys(data, server_id, days).implode()).fill_null(False)
    overlap_skipped = int(stored.sum())
    new = cdrs.filter(~stored) if overlap_skipped else cdrs  # no second copy of a batch with no re-read rows
    duplicate_rows = new.height - new["cdr_key"].n_unique() if new.height else 0
    proposed = as_utc(got.watermark) if got.watermark is not None else None
    if before is not None and (proposed is None or proposed < before):
        proposed = before
    files = list(got.files)
    notes = list(got.notes)
    if superseded:
        notes.append(f"{server_id}: set aside pending batch(es) {superseded} from an earlier run (re-read now)")
    if overlap_skipped:
        notes.append(f"{server_id}: {overlap_skipped} re-read row(s) already stored (overlap window)")
    if duplicate_rows:
        notes.append(f"{server_id}: {duplicate_rows} row(s) repeat a cdr_key of this batch (kept for validation)")
    window_start = since - timedelta(minutes=server.overlap_minutes)

    batch_id = open_batch(settings, server_id, run_id, window_start, until)
    try:
        paths = [str(p.absolute()) for p in lake.write_batch(data, server_id, batch_id, new)]
    except BaseException:
        reject_pending(settings, batch_id, "the lake write failed", allow=PENDING)
        raise
    close_batch(settings, batch_id, new.height, paths, proposed, got.cursor, files, notes)
    return ExtractResult(
        batch_id=batch_id, server=server_id, rows=new.height, paths=paths, overlap_skipped=overlap_skipped,
        watermark_before=before, proposed_watermark=proposed, notes=notes, duplicate_rows=duplicate_rows,
        window_start=window_start, window_end=until, files=files, bad_files=list(got.bad_files),
    )  # fmt: skip


# -- Prefect wrappers (thin) ----------------------------------------------------------------


@task(name="extract-server", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=exponential_backoff(BACKOFF_FACTOR),
      retry_jitter_factor=RETRY_JITTER_FACTOR)  # fmt: skip
def extract_server_task(settings: Settings, server_id: str, until: datetime, run_id: int | None = None) -> ExtractResult:
    try:
        result = extract_server(settings, server_id, until, run_id)
    finally:
        release_free_memory()  # the server's rows are in the lake now: give their pages back
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
    """`extract_server_task` configured for one server: its name, retries and exponential backoff
    with jitter. No tags (see the module docstring: each tag costs API round trips per task run).

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
    )


@task(name="commit-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def commit_batch_task(settings: Settings, batch_id: int) -> CommitResult:
    return commit_batch(settings, batch_id)


@task(name="reject-batch", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def reject_batch_task(settings: Settings, batch_id: int, reason: str) -> list[str]:
    return reject_batch(settings, batch_id, reason)
