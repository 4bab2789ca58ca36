"""The rate step of a nightly run: everything not yet billed, rated with the nightly rules.

What is rated together, each row tagged with its `source`:
- `batch`: the validated rows of this run's extraction batches;
- `unrated`: rows still unrated from earlier runs (a tariff or mapping fix bills them now);
- `requeued`: rows an operator released from quarantine, validated again this run.
Each row keeps its own billing date (the local date of its start); the allowance of included minutes already
consumed in each billing period is read from the ledger, so a period's minutes are shared
across runs in call-start order.

Bounded memory (docs/nightly-scale.md): a night of more than `chunk_rows` rows is rated in K
chunks, a row's chunk being a hash of its (server, tenant) modulo K. A service owns the calls of
one (server, tenant) (autobill/mapping.py), so a chunk never splits a service: not its included
minutes (per service period), not a charge line (per client/service/day). The inputs are split
into per-chunk files in one pass, each chunk is rated alone, and the rated file is written one
chunk at a time, sorted by chunk, with a `chunk` column (one row group or more per chunk) that
the record step reads back one chunk at a time. One chunk (a small night) rates exactly as
before, in one frame.
"""

from __future__ import annotations

import os
import shutil
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
from autobill.ledger.unrated import unrated_rows
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


def chunk_of(chunks: int) -> pl.Expr:
    """The chunk of a row: a hash of (server, tenant) modulo `chunks` (stable within a process,
    which is all it needs: the chunks of one run are computed by one `rate_run`)."""
    return (pl.struct("server", "tenant").hash(seed=0) % chunks).cast(pl.Int32).alias(CHUNK_COLUMN)


def _lean(path: str) -> pl.DataFrame:
    """A validated parquet without `source_row` (the audit copy of the source row, the widest
    column by far): only unrated rows need it, and `_source_rows` fetches it for them alone."""
    return conform(pl.read_parquet(path, columns=_LEAN).with_columns(pl.lit(None, pl.String).alias("source_row")))


def _inputs(settings: Settings, day: date, validated: list[str], requeued_path: str | None):
    """(source, loader) of every input, in the order that decides which copy of a key wins."""
    out = [("batch", lambda p=p: _lean(p)) for p in validated]
    if requeued_path:
        out.append(("requeued", lambda: _lean(requeued_path)))
    out.append(("unrated", lambda: unrated_rows(settings, day)))
    return out


def _finish_gather(frames: list[pl.DataFrame], timezone: str) -> pl.DataFrame:
    frame = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema={**CDR_SCHEMA, "source": pl.String})
    # No filter on the billing date here: a row dropped now would be lost once its batch commits.
    # Rows of later dates (released quarantine rows, a file holding the next day's first calls)
    # are billed with their own billing date on their charge line.
    return with_billing_date(frame.unique("cdr_key", keep="first", maintain_order=True), timezone)


def gather(settings: Settings, day: date, validated: list[str], requeued_path: str | None) -> pl.DataFrame:
    """Canonical rows to rate, tagged with `source`, de-duplicated by key (first source wins).
    `source_row` is null for parquet-backed rows (see `_lean`)."""
    parts = [load().with_columns(pl.lit(source).alias("source"))
             for source, load in _inputs(settings, day, validated, requeued_path)]
    return _finish_gather(parts, settings.timezone)


def _count_inputs(validated: list[str], requeued_path: str | None) -> int:
    """Rows in the parquet inputs, from their footers (the unrated backlog is not counted: small)."""
    paths = validated + ([requeued_path] if requeued_path else [])
    return sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in paths)


def split_inputs(settings: Settings, day: date, validated: list[str], requeued_path: str | None, chunks: int,
                 parts_dir: Path, group_rows: int | None = None) -> list[list[Path]]:
    """Write every input's rows to `parts_dir/in-<chunk>-<group>.parquet`, a group of consecutive
    inputs of about `group_rows` rows (default: one chunk's worth) at a time; returns
    the files of each chunk in input order (so "first source wins" holds per chunk). Grouping
    keeps the file count near chunks x groups, not chunks x inputs (a 10 M night: 500 files instead
    of 1,275, and the split took 8.6 s instead of 10.6 s in one measurement)."""
    parts_dir.mkdir(parents=True, exist_ok=True)
    limit = group_rows if group_rows is not None else chunk_rows()  # two raised a 1 M night's peak by 120 MB
    files: list[list[Path]] = [[] for _ in range(chunks)]
    group: list[pl.DataFrame] = []

    def flush(g: int) -> None:
        frame = pl.concat(group, how="vertical")  # in input order
        group.clear()
        for (c,), part in frame.partition_by(CHUNK_COLUMN, as_dict=True).items():
            path = parts_dir / f"in-{c}-{g}.parquet"
            part.drop(CHUNK_COLUMN).write_parquet(path, compression="lz4")
            files[c].append(path)

    groups = 0
    for source, load in _inputs(settings, day, validated, requeued_path):
        group.append(load().with_columns(pl.lit(source).alias("source"), chunk_of(chunks)))
        if sum(f.height for f in group) >= limit:
            flush(groups)
            groups += 1
    if group:
        flush(groups)
    return files


def _source_rows(paths: list[str], keys: pl.Series) -> pl.DataFrame:
    """(cdr_key, source_row) of these keys, read back from the validated parquet files."""
    if not paths or keys.is_empty():
        return pl.DataFrame(schema={"cdr_key": pl.String, "source_row": pl.String})
    return (
        pl.scan_parquet(paths).select("cdr_key", "source_row")
        .filter(pl.col("cdr_key").is_in(keys.implode())).unique("cdr_key").collect()
    )


def included_used(settings: Settings, cdrs: pl.DataFrame) -> dict[tuple[int, date], int]:
    """Included seconds already consumed per (service, period start) for the periods these CDRs fall in.

    Two grouped queries per 500 services (billed rows, and re-rates' corrections, per service and
    day) instead of two per service: ten thousand services are ten thousand round trips otherwise."""
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


def _rate_frame(settings: Settings, cdrs: pl.DataFrame, tariffs) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rate one frame of gathered rows: (rated rows, the canonical rows of the unrated ones)."""
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
    rated = with_service_issue(rated, cdrs)
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
    found = _source_rows(inputs, unrated.filter(pl.col("source_row").is_null())["cdr_key"])
    return unrated.join(found.rename({"source_row": "_src"}), on="cdr_key", how="left").with_columns(
        pl.coalesce("source_row", "_src").alias("source_row")).drop("_src")


def rate_run(settings: Settings, day: date, validated: list[str], requeued_path: str | None,
             run_id: int | None = None) -> Path:
    """Rate what this run bills; writes `<data>/rated/run-<id>.parquet` and returns its path.

    More than `chunk_rows()` input rows are rated chunk by chunk (see the module docstring)."""
    path = settings.data_path / "rated" / f"run-{run_id if run_id is not None else 'adhoc'}.parquet"
    tariffs = load_tariffs(settings)
    archive_tariffs(settings, tariffs)  # every version billed with can be named later (NAME@VERSION)
    inputs = validated + ([requeued_path] if requeued_path else [])
    chunks = max(1, -(-_count_inputs(validated, requeued_path) // chunk_rows()))
    if chunks == 1:
        rated, unrated = _rate_frame(settings, gather(settings, day, validated, requeued_path), tariffs)
        rated = pl.concat([rated, _with_source_rows(unrated, inputs)], how="diagonal_relaxed")
        lake.write_parquet_atomic(rated.with_columns(pl.lit(0, pl.Int32).alias(CHUNK_COLUMN)), path)
        return path
    parts_dir = path.parent / f".{path.stem}.parts"
    shutil.rmtree(parts_dir, ignore_errors=True)
    try:
        files = split_inputs(settings, day, validated, requeued_path, chunks, parts_dir)
        rated_parts, unrated_parts = [], []
        for c in range(chunks):
            frame = _finish_gather([pl.read_parquet(f) for f in files[c]], settings.timezone)
            rated, unrated = _rate_frame(settings, frame, tariffs)
            del frame
            # The unrated rows go through a file too, not kept as a frame: a few thousand rows
            # filtered out of the chunk still point into its string buffers (polars string views).
            for kind, part, parts in (("rated", rated, rated_parts), ("unrated", unrated, unrated_parts)):
                parts.append(parts_dir / f"{kind}-{c}.parquet")
                part.with_columns(pl.lit(c, pl.Int32).alias(CHUNK_COLUMN)).write_parquet(parts[-1], compression="lz4")
            del rated, unrated, part
            release_free_memory()  # each chunk starts from what the night holds, not the last chunk's peak
        # The unrated rows (normally ~1 %) of every chunk, with their audit copy, fetched in one pass.
        unrated_all = _with_source_rows(pl.concat([pl.read_parquet(p) for p in unrated_parts], how="diagonal_relaxed"),
                                        inputs)
        _write_chunks(path, rated_parts, unrated_all)
    finally:
        shutil.rmtree(parts_dir, ignore_errors=True)
    return path


def _write_chunks(path: Path, rated_parts: list[Path], unrated: pl.DataFrame) -> None:
    """One parquet, chunk after chunk (in order, so each chunk's rows are together in the row
    groups), written whole or not at all. Streamed from the parts: the step's peak is a chunk's,
    not the night's (the pyarrow writer this replaces held each chunk twice: frame and arrow copy)."""
    empty = [pl.DataFrame(schema=pl.read_parquet_schema(p)) for p in rated_parts] + [unrated.clear()]
    schema = pl.concat(empty, how="diagonal_relaxed").schema  # every column, in one type across chunks

    def shaped(frame: pl.LazyFrame) -> pl.LazyFrame:
        have = frame.collect_schema()
        return frame.select([pl.col(c).cast(t) if c in have else pl.lit(None, dtype=t).alias(c)
                             for c, t in schema.items()])

    parts = []
    for c, part in enumerate(rated_parts):
        parts.append(shaped(pl.scan_parquet(part)))
        mine = unrated.filter(pl.col(CHUNK_COLUMN) == c)
        if mine.height:
            parts.append(shaped(mine.lazy()))
    night = pl.concat(parts, how="vertical")
    lake.write_atomic(path, lambda tmp: night.sink_parquet(
        tmp, compression="zstd", compression_level=lake.ZSTD_LEVEL, row_group_size=1 << 18))


@task(name="rate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def rate_run_task(settings: Settings, day: date, validated: list[str], requeued: Any | None,
                  run_id: int | None = None) -> str:
    requeued_path = str(requeued.validated_path) if requeued is not None and requeued.validated_path else None
    release_free_memory()  # start from what the extraction threads left, not from their high-water mark
    path = rate_run(settings, day, validated, requeued_path, run_id)
    get_run_logger().info("rated %s CDR(s) -> %s", pl.scan_parquet(path).select(pl.len()).collect().item(), path)
    return str(path)
