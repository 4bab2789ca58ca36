"""The life of an extraction batch in the ledger (`extraction_batches.status`)::

    open_batch      -> "extracting" (row created to get an id; the lake files are written next)
    close_batch     -> "extracted"  (rows, paths, proposed watermark/cursor/files recorded)
    commit_batch    -> "committed"  (watermark, cursor and processed files moved in ONE transaction)
    reject_batch    -> "rejected"   (files moved to lake/rejected; watermark untouched)

The watermark only moves after the partition is durable (a crash before the commit re-reads the
same window next run), and the flow validates a batch before it commits it. One pending batch
per server: `supersede_pending` sets aside a batch an earlier run left "extracting"/"extracted";
its window is re-read because its watermark never moved. Used by the extract, validate and
billing steps (tasks/), which never import one another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl
from sqlalchemy import select
from sqlalchemy.orm import Session

from autobill import lake
from autobill.config import Settings
from autobill.ledger.db import session_scope
from autobill.ledger.models import ExtractionBatch, ProcessedFile, QuarantinedFile, ServerWatermark

PENDING = ("extracting", "extracted")


class BatchStateError(RuntimeError):
    """A batch asked to do something its state forbids (commit a rejected batch, reject a committed one)."""


@dataclass
class CommitResult:
    batch_id: int
    server: str
    watermark: datetime | None
    files_recorded: int
    already_committed: bool


def _json_or_none(value) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


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
        reject_pending(settings, batch_id, f"superseded by {by}: never committed, its window is read again", allow=PENDING)
    return ids


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
    for name, digest, rows, *stat in json.loads(batch.files or "[]"):
        if digest not in known:
            size, mtime_ns = stat if stat else (None, None)  # drop folders: as the file was when read
            session.add(ProcessedFile(server=batch.server, content_hash=digest, name=name, rows=rows, size=size,
                                      mtime_ns=mtime_ns))
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


def batch_paths(batch: ExtractionBatch) -> list[str]:
    """The lake files of a batch, where they are now."""
    return [str(p) for p in json.loads(batch.path or "[]")]


def reject_pending(settings: Settings, batch_id: int, reason: str, allow: tuple[str, ...]) -> list[str]:
    with session_scope(settings.ledger) as s:
        batch = s.get(ExtractionBatch, batch_id)
        if batch is None:
            raise KeyError(f"no extraction batch {batch_id}")
        server, status, paths = batch.server, batch.status, batch_paths(batch)
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
    return reject_pending(settings, batch_id, reason, allow=PENDING)


def read_batch(settings: Settings, batch_id: int) -> pl.DataFrame:
    """The canonical rows of a batch (from wherever its files are now)."""
    with session_scope(settings.ledger) as s:
        batch = s.get(ExtractionBatch, batch_id)
        if batch is None:
            raise KeyError(f"no extraction batch {batch_id}")
        paths = batch_paths(batch)
    return lake.read_paths(paths)


def server_position(settings: Settings, server_id: str) -> tuple[datetime | None, Any]:
    """(watermark, cursor) the server's next extraction starts from."""
    with session_scope(settings.ledger) as s:
        wm = s.get(ServerWatermark, server_id)
        before = wm.watermark_utc if wm else None
        cursor = json.loads(wm.cursor) if wm and wm.cursor else None
    return before, cursor


def open_batch(settings: Settings, server_id: str, run_id: int | None, window_start: datetime,
               window_end: datetime) -> int:
    """A new batch in state "extracting" (its lake files are written next); returns its id."""
    with session_scope(settings.ledger) as s:
        batch = ExtractionBatch(server=server_id, run_id=run_id, window_start=window_start, window_end=window_end,
                                rows=0, status="extracting")
        s.add(batch)
        s.flush()
        return batch.id


def close_batch(settings: Settings, batch_id: int, rows: int, paths: list[str], proposed: datetime | None,
                cursor: Any, files: list[tuple], notes: list[str]) -> None:
    """The batch's files are durable: record what it holds and what committing it would move."""
    with session_scope(settings.ledger) as s:
        batch = s.get(ExtractionBatch, batch_id)
        batch.rows = rows
        batch.path = json.dumps(paths)
        batch.proposed_watermark = proposed
        batch.proposed_cursor = _json_or_none(cursor)
        batch.files = json.dumps(files) if files else None
        batch.notes = json.dumps(notes) if notes else None
        batch.status = "extracted"


# -- files quarantined whole (drop folder) --------------------------------------------------


def known_file_hashes(settings: Settings, server_id: str) -> set[str]:
    """Content hashes of this server's files already processed or quarantined whole: not read again."""
    with session_scope(settings.ledger) as s:
        done = s.scalars(select(ProcessedFile.content_hash).where(ProcessedFile.server == server_id))
        held = s.scalars(select(QuarantinedFile.content_hash).where(QuarantinedFile.server == server_id))
        return set(done) | set(held)


def known_file_stats(settings: Settings, server_id: str) -> set[tuple[str, int, int]]:
    """(name, size, mtime_ns) of this server's processed files, as they were when read: a file that
    still has all three is the file processed, and is not read again (connectors/filedrop.py)."""
    with session_scope(settings.ledger) as s:
        return {tuple(r) for r in s.execute(
            select(ProcessedFile.name, ProcessedFile.size, ProcessedFile.mtime_ns).where(
                ProcessedFile.server == server_id, ProcessedFile.size.is_not(None),
                ProcessedFile.mtime_ns.is_not(None)))}


def quarantine_files(settings: Settings, server_id: str, bad_files: list[tuple[str, str, str]],
                     run_id: int | None = None) -> int:
    """Record files that cannot be read as a whole (name, sha256, reason); returns how many are new.
    A file without a hash (it could not even be read from disk) is not recorded: it is tried again."""
    recorded = 0
    with session_scope(settings.ledger) as s:
        for name, digest, reason in bad_files:
            if not digest:
                continue
            exists = s.scalar(select(QuarantinedFile.id).where(
                QuarantinedFile.server == server_id, QuarantinedFile.content_hash == digest))
            if exists is None:
                s.add(QuarantinedFile(server=server_id, content_hash=digest, name=name, reason=reason[:2000],
                                      run_id=run_id))
                recorded += 1
    return recorded


def quarantined_files(settings: Settings, server_id: str | None = None) -> list[dict[str, Any]]:
    with session_scope(settings.ledger) as s:
        query = select(QuarantinedFile).order_by(QuarantinedFile.id)
        if server_id:
            query = query.where(QuarantinedFile.server == server_id)
        return [{"id": f.id, "server": f.server, "name": f.name, "sha256": f.content_hash, "reason": f.reason,
                 "run_id": f.run_id, "created_at": f.created_at.isoformat()} for f in s.scalars(query)]
