"""The rate step of a nightly run: everything not yet billed, rated with the nightly rules.

What is rated together, each row tagged with its `source`:
- `batch`: the validated rows of this run's extraction batches;
- `unrated`: rows still unrated from earlier runs (a tariff or mapping fix bills them now);
- `requeued`: rows an operator released from quarantine, validated again this run.
Each row keeps its own billing date (the local date of its start); the allowance of included minutes already
consumed in each billing period is read from the ledger, so a period's minutes are shared
across runs in call-start order.

Bounded memory (docs/nightly-scale.md): a night of more than `chunk_rows` rows is rated in
chunks. Whole servers are packed into chunks of at most `chunk_rows` rows (`plan_chunks`); a
server larger than that gets several chunks, its rows spread by a hash of (server, tenant). A
service owns the calls of one (server, tenant) (autobill/mapping.py), so a chunk never splits a
service: not its included minutes (per service period), not a charge line (per
client/service/day). A server's validated batch is read straight into its chunk; only inputs
that span chunks (the unrated backlog, released rows, a server too large for one chunk) are
split into per-chunk files first. Each chunk is rated alone and its rated rows are appended to
the night's file as soon as they are rated, then every chunk's unrated rows; a `chunk` column
(row groups of one chunk each, with statistics) lets the record step read one chunk at a time.
One chunk (a small night) rates exactly as before, in one frame.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from autobill import lake
from autobill.billing_day import with_billing_date
from autobill.cdr import CDR_SCHEMA, conform
from autobill.config import Settings
from autobill.ledger.corrections import allowance_periods, included_by_period
from autobill.ledger.db import session_scope
from autobill.ledger.disputes import held_as_unrated, held_keys, split_held
from autobill.ledger.unrated import RATED_WITH, rating_inputs, unrated_rows
from autobill.mapping import ISSUE_COLUMN, assign_services
from autobill.memory import release_free_memory
from autobill.rating.archive import archive as archive_tariffs
from autobill.rating.billing import OUTPUT_SCHEMA, load_tariffs, rate_for_billing
from autobill.services.build import derived_plans

_LEAN = [c for c in CDR_SCHEMA if c != "source_row"]
CHUNK_COLUMN = "chunk"
# Rows per rating chunk: the rate and record steps hold about this many rows at a time.
CHUNK_ROWS = 400_000
CHUNK_ENV = "AUTOBILL_RATE_CHUNK_ROWS"


def chunk_rows() -> int:
    """`AUTOBILL_RATE_CHUNK_ROWS` (a positive integer), else CHUNK_ROWS."""
    raw = os.environ.get(CHUNK_ENV, "").strip()
    if not raw:
        return CHUNK_ROWS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{CHUNK_ENV}={raw!r}: expected a positive whole number of rows")
    return int(raw)


def chunk_of(plan: dict[str, tuple[int, int]]) -> pl.Expr:
    """The chunk of a row: its server's first chunk plus, for a server spread over k chunks, a hash
    of (server, tenant) modulo k (stable within a process, which is all it needs: the chunks of
    one run are computed by one `rate_run`). A server missing from the plan (or null: validation
    quarantines such rows) goes to chunk 0."""
    firsts = {server: first for server, (first, _) in plan.items()}
    counts = {server: count for server, (_, count) in plan.items()}
    first = pl.col("server").replace_strict(firsts, default=0, return_dtype=pl.Int64)
    count = pl.col("server").replace_strict(counts, default=1, return_dtype=pl.UInt64)
    spread = (pl.struct("server", "tenant").hash(seed=0) % count).cast(pl.Int64)
    return (first + spread).fill_null(0).cast(pl.Int32).alias(CHUNK_COLUMN)


def plan_chunks(server_rows: dict[str, int], limit: int) -> dict[str, tuple[int, int]]:
    """Each server's (first chunk, number of chunks). Whole servers are packed into chunks of at
    most `limit` rows (first fit, largest first), so most inputs - one server's batch each - go
    to their chunk whole, without being split; a server of more than `limit` rows gets
    ceil(rows / limit) chunks of its own, its rows spread by tenant (`chunk_of`)."""
    filled: list[int] = []
    plan: dict[str, tuple[int, int]] = {}
    large: list[tuple[str, int]] = []
    for server, rows in sorted(server_rows.items(), key=lambda item: (-item[1], item[0] or "")):
        if rows > limit:
            large.append((server, rows))
            continue
        chunk = next((i for i, used in enumerate(filled) if used + rows <= limit), len(filled))
        if chunk == len(filled):
            filled.append(0)
        filled[chunk] += rows
        plan[server] = (chunk, 1)
    first = len(filled)
    for server, rows in large:
        plan[server] = (first, -(-rows // limit))
        first += plan[server][1]
    return plan


def _lean(path: str) -> pl.DataFrame:
    """A validated parquet without `source_row` (the audit copy of the source row, the widest
    column by far): only unrated rows need it, and `lake.source_rows` fetches it for them alone
    (a validated batch does not even hold it: it points at the batch's raw lake files)."""
    return conform(pl.read_parquet(path, columns=_LEAN).with_columns(pl.lit(None, pl.String).alias("source_row")))


Input = tuple[str, str | pl.DataFrame]  # (source, a validated parquet's path or a frame in memory)


def _inputs(settings: Settings, day: date, validated: list[str], requeued_path: str | None,
            rated_with: str | None = None) -> list[Input]:
    """(source, path or frame) of every input, in the order that decides which copy of a key wins;
    the unrated backlog is read from the ledger here: the rows whose rating inputs changed since
    their last attempt (`rated_with`: this run's `rating_inputs`; None: every waiting row)."""
    out: list[Input] = [("batch", p) for p in validated]
    if requeued_path:
        out.append(("requeued", requeued_path))
    out.append(("unrated", unrated_rows(settings, day, skip_rated_with=rated_with)))
    return out


def _load(source: str, item: str | pl.DataFrame) -> pl.DataFrame:
    """An input's canonical rows (`_lean` for a parquet), tagged with its `source`."""
    return (_lean(item) if isinstance(item, str) else item).with_columns(pl.lit(source).alias("source"))


def _finish_gather(frames: list[pl.DataFrame], timezone: str) -> pl.DataFrame:
    frame = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema={**CDR_SCHEMA, "source": pl.String})
    # No filter on the billing date here: a row dropped now would be lost once its batch commits.
    # Rows of later dates (released quarantine rows, a file holding the next day's first calls)
    # are billed with their own billing date on their charge line.
    if frame["cdr_key"].n_unique() != frame.height:  # keep the first copy; most chunks have none to drop
        frame = frame.filter(pl.col("cdr_key").is_first_distinct())
    return with_billing_date(frame, timezone)


def gather(settings: Settings, day: date, validated: list[str], requeued_path: str | None,
           rated_with: str | None = None) -> pl.DataFrame:
    """Canonical rows to rate, tagged with `source`, de-duplicated by key (first source wins).
    `source_row` is null for parquet-backed rows (see `_lean`)."""
    parts = [_load(source, item) for source, item in _inputs(settings, day, validated, requeued_path, rated_with)]
    return _finish_gather(parts, settings.timezone)


def _count_inputs(paths: list[str]) -> int:
    """Rows in the parquet inputs, from their footers (the unrated backlog is not counted: small)."""
    return sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in paths)


def _rows_by_server(item: str | pl.DataFrame) -> dict[str, int]:
    frame = pl.scan_parquet(item) if isinstance(item, str) else item.lazy()
    return dict(frame.group_by("server").len().collect().iter_rows())


def chunk_inputs(inputs: list[Input], limit: int, parts_dir: Path) -> list[list[Callable[[], pl.DataFrame]]]:
    """The loaders of each chunk's rows, in input order (so "first source wins" holds per chunk).

    Chunks follow `plan_chunks` over every input's rows per server. An input whose servers all
    went whole to one chunk (a server's validated batch, normally) is read there directly; any
    other input (the unrated backlog, released rows, a server too large for one chunk) is split
    once, its rows written to `parts_dir/in-<chunk>-<input>.parquet`. 50 batches of 200,000 rows
    are then read once into 25 chunks in 1.8-2.0 s, where splitting all of them into part files
    and reading those back took 10.9-11.5 s (same run, this 2-core VM)."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    servers = [_rows_by_server(item) for _, item in inputs]
    totals: dict[str, int] = {}
    for rows in servers:
        for server, n in rows.items():
            totals[server] = totals.get(server, 0) + n
    plan = plan_chunks(totals, limit)
    chunks = max((first + count for first, count in plan.values()), default=1)
    loaders: list[list[Callable[[], pl.DataFrame]]] = [[] for _ in range(chunks)]
    for i, ((source, item), rows) in enumerate(zip(inputs, servers, strict=True)):
        targets = {plan[server] for server in rows}
        if not targets:
            continue
        if isinstance(item, str) and len(targets) == 1 and next(iter(targets))[1] == 1:
            loaders[next(iter(targets))[0]].append(lambda src=source, p=item: _load(src, p))
            continue
        frame = _load(source, item).with_columns(chunk_of(plan))
        for (c,), part in frame.partition_by(CHUNK_COLUMN, as_dict=True).items():
            path = parts_dir / f"in-{c}-{i}.parquet"
            part.drop(CHUNK_COLUMN).write_parquet(path, compression="lz4")
            loaders[c].append(lambda p=path: pl.read_parquet(p))
        del frame
    return loaders


def included_used(settings: Settings, cdrs: pl.DataFrame) -> dict[tuple[int, date], int]:
    """Included seconds already consumed per (service, period start) for the periods these CDRs fall in.

    Only plans with included minutes are asked about (`allowance_periods`), and all of them in one
    read of the billed state plus re-rates' corrections (`included_by_period`), not one per service."""
    wanted = allowance_periods(settings, cdrs)
    if not wanted:
        return {}
    with session_scope(settings.ledger) as session:
        used = included_by_period(session, wanted)  # billed + what re-rates moved, one read
    return dict(used)


def with_service_issue(rated: pl.DataFrame, cdrs: pl.DataFrame) -> pl.DataFrame:
    """`no_service` becomes `service_conflict` / `service_unconfirmed` where the mapping knows why
    (autobill/mapping.py): those calls wait, unrated, for the conflict to be fixed or a sync."""
    issues = cdrs.filter(pl.col(ISSUE_COLUMN).is_not_null()).select("cdr_key", ISSUE_COLUMN)
    if issues.is_empty():
        return rated
    return rated.join(issues, on="cdr_key", how="left", maintain_order="left").with_columns(
        pl.when((pl.col("unrated_reason") == "no_service") & pl.col(ISSUE_COLUMN).is_not_null())
        .then(pl.lit("service_") + pl.col(ISSUE_COLUMN)).otherwise(pl.col("unrated_reason")).alias("unrated_reason")
    ).drop(ISSUE_COLUMN)


def _rate_frame(settings: Settings, cdrs: pl.DataFrame, tariffs, rated_with: str | None = None
                ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rate one frame of gathered rows: (rated rows, the canonical rows of the unrated ones); each
    row says what it was rated with (`rated_with`, kept on the unrated ones by the record step)."""
    cdrs = assign_services(cdrs, settings)
    settings = derived_plans(settings, cdrs["plan"].unique().to_list())  # per-service included minutes
    # Calls held by an open dispute are not rated: they stay unrated ("disputed") until it is resolved.
    to_rate, held = split_held(cdrs, held_keys(settings))
    rated = rate_for_billing(to_rate, settings, tariffs, included_used(settings, to_rate))
    if held.height:
        rated = pl.concat([rated, held_as_unrated(held, OUTPUT_SCHEMA)], how="vertical")
    del to_rate
    if rated.height != cdrs.height:
        raise RuntimeError(f"rating returned {rated.height} rows for {cdrs.height} CDRs")
    rated = with_service_issue(rated, cdrs).with_columns(pl.lit(rated_with, pl.String).alias(RATED_WITH))
    extra = [c for c in ("server", "billing_date", "source", "rate_number", "start_utc") if c not in rated.columns]
    rated = rated.join(cdrs.select("cdr_key", *extra), on="cdr_key", how="left") if extra else rated
    # Only rows to rate again later keep their whole canonical row (unrated_cdrs.row); carrying
    # `source_row` for a million billed calls would triple the step's memory.
    keep = [c for c in CDR_SCHEMA if c not in rated.columns]
    unrated = rated.filter(pl.col("outcome") == "unrated").join(cdrs.select("cdr_key", *keep), on="cdr_key",
                                                               how="left")
    return rated.filter(pl.col("outcome") != "unrated"), unrated


def _with_source_rows(unrated: pl.DataFrame, inputs: list[str]) -> pl.DataFrame:
    """Parquet-backed unrated rows get their audit copy (`source_row`) back from the inputs."""
    if "source_row" not in unrated.columns:
        return unrated
    found = lake.source_rows(inputs, unrated.filter(pl.col("source_row").is_null())["cdr_key"])
    return unrated.join(found.rename({"source_row": "_src"}), on="cdr_key", how="left").with_columns(
        pl.coalesce("source_row", "_src").alias("source_row")).drop("_src")


OnChunk = Callable[[int, pl.DataFrame], None]  # (chunk, its rated rows): called as soon as a chunk is rated


def rate_run(settings: Settings, day: date, validated: list[str], requeued_path: str | None,
             run_id: int | None = None, on_chunk: OnChunk | None = None) -> Path:
    """Rate what this run bills; writes `<data>/rated/run-<id>.parquet` and returns its path.

    More than `chunk_rows()` input rows are rated chunk by chunk (see the module docstring); each
    chunk's rated rows (not its unrated ones, which get their `source_row` at the end) are handed
    to `on_chunk` as soon as they are rated: the nightly records them while the next chunk is
    rated (tasks/aggregate.py `ChunkRecorder`). A one-chunk night calls it never."""
    path = settings.data_path / "rated" / f"run-{run_id if run_id is not None else 'adhoc'}.parquet"
    tariffs = load_tariffs(settings)
    archive_tariffs(settings, tariffs)  # every version billed with can be named later (NAME@VERSION)
    rated_with = rating_inputs(settings, {name: t.version for name, t in tariffs.items()})
    inputs = validated + ([requeued_path] if requeued_path else [])
    chunks = max(1, -(-_count_inputs(inputs) // chunk_rows()))
    if chunks == 1:
        rated, unrated = _rate_frame(settings, gather(settings, day, validated, requeued_path, rated_with), tariffs,
                                     rated_with)
        rated = pl.concat([rated, _with_source_rows(unrated, inputs)], how="diagonal_relaxed")
        lake.write_parquet_atomic(rated.with_columns(pl.lit(0, pl.Int32).alias(CHUNK_COLUMN)), path)
        return path
    parts_dir = path.parent / f".{path.stem}.parts"
    shutil.rmtree(parts_dir, ignore_errors=True)
    try:
        loaders = chunk_inputs(_inputs(settings, day, validated, requeued_path, rated_with), chunk_rows(), parts_dir)
        lake.write_atomic(path, lambda tmp: _rate_chunks_into(tmp, settings, tariffs, loaders, parts_dir, inputs,
                                                              rated_with, on_chunk))
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return path


def _rate_chunks_into(tmp: Path, settings: Settings, tariffs, loaders: list[list[Callable[[], pl.DataFrame]]],
                      parts_dir: Path, inputs: list[str], rated_with: str | None = None,
                      on_chunk: OnChunk | None = None) -> None:
    """Rate chunk after chunk into one parquet file: each chunk's rated rows are appended to it as
    soon as they are rated (`lake.ParquetAppender`, written in the background while the next
    chunk is rated), then every chunk's unrated rows (normally ~1 %), whose audit copy
    (`source_row`) is fetched from the inputs in one pass at the end. The rated rows used to go to
    part files that were read back and written again (at 2 M rows, 2.6 s of a 6.5 s step).
    Statistics on `chunk` only: the record step reads one chunk at a time by them, and min/max
    over every string column was a fifth of a write. An empty chunk adds no row group."""
    unrated_parts = []
    with lake.ParquetAppender(tmp, statistics=[CHUNK_COLUMN], row_group_size=1 << 18) as night:
        for c, chunk in enumerate(loaders):
            frame = _finish_gather([load() for load in chunk], settings.timezone)
            rated, unrated = _rate_frame(settings, frame, tariffs, rated_with)
            del frame
            if night.schema is None:
                keep = {k: t for k, t in CDR_SCHEMA.items() if k not in rated.columns}
                night.start({**rated.schema, CHUNK_COLUMN: pl.Int32(), **keep})
            night.append(rated.with_columns(pl.lit(c, pl.Int32).alias(CHUNK_COLUMN)))
            if on_chunk is not None:
                on_chunk(c, rated)
            # The unrated rows go through a file, not kept as a frame: a few thousand rows
            # filtered out of the chunk still point into its string buffers (polars string views).
            # Read whole, so without column statistics.
            unrated_parts.append(parts_dir / f"unrated-{c}.parquet")
            unrated.with_columns(pl.lit(c, pl.Int32).alias(CHUNK_COLUMN)).write_parquet(
                unrated_parts[-1], compression="lz4", statistics=False)
            del rated, unrated
            release_free_memory()  # each chunk starts from what the night holds, not the last chunk's peak
        unrated_all = _with_source_rows(pl.concat([pl.read_parquet(p) for p in unrated_parts], how="diagonal_relaxed"),
                                        inputs)
        for (_,), part in unrated_all.partition_by(CHUNK_COLUMN, as_dict=True, maintain_order=True).items():
            night.append(part)


@task(name="rate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def rate_run_task(settings: Settings, day: date, validated: list[str], requeued: Any | None,
                  run_id: int | None = None, recorder: Any | None = None) -> str:
    """`rate_run`; with a `recorder` (tasks/aggregate.py `ChunkRecorder`), each chunk's rated rows
    are recorded in its thread while the next chunk is rated. An attempt starts it afresh and
    leaves no chunk half-recorded behind it: its last record is waited for, even on a failure."""
    requeued_path = str(requeued.validated_path) if requeued is not None and requeued.validated_path else None
    release_free_memory()  # start from what the extraction threads left, not from their high-water mark
    if recorder is None:
        path = rate_run(settings, day, validated, requeued_path, run_id)
    else:
        recorder.begin()
        try:
            path = rate_run(settings, day, validated, requeued_path, run_id, on_chunk=recorder)
        except BaseException:
            recorder.settle(quiet=True)  # the rating's error is the one to report
            raise
        recorder.settle()
    rows, backlog = pl.scan_parquet(path).select(pl.len(), (pl.col("source") == "unrated").sum()).collect().row(0)
    get_run_logger().info("rated %s CDR(s) -> %s; %s of them from the unrated backlog (the waiting calls whose "
                          "config, tariffs or services changed since their last attempt)", rows, path, backlog)
    return str(path)
