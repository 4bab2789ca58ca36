"""Aggregate rated CDRs into charge lines (sql/charge_lines.sql) and record them in the ledger.

The exactly-once transaction is ledger logic (autobill/ledger/billing.py); this step supplies
how lines are formed and wraps it as a task.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal

import duckdb
import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import sql
from autobill.cdr import CDR_SCHEMA
from autobill.config import Settings
from autobill.ledger.billing import REQUIRED, BillingRecord, record_rated
from autobill.ledger.charges import ChargeLine, describe, idempotency_key
from autobill.ledger.unrated import RATED_WITH
from autobill.money import round_minor

LINE_COLUMNS = {"client_id": pl.Int64, "service_id": pl.Int64, "billing_date": pl.Date, "charge_class": pl.String,
                "currency": pl.String, "tariff_version": pl.String}  # what a charge line is per (sql/charge_lines.sql)


def charge_lines(billed: pl.DataFrame) -> list[ChargeLine]:
    """One line per client/service/date/class/currency/tariff version (sql/charge_lines.sql)."""
    if billed.height == 0:
        return []
    rated = billed.select(  # noqa: F841 - read by DuckDB through the replacement scan
        *LINE_COLUMNS, pl.col("cost").cast(pl.String), "charged_seconds", "cdr_key",
    )
    con = duckdb.connect()
    try:
        rows = con.execute(sql.load("charge_lines")).fetchall()
    finally:
        con.close()
    lines = []
    for client_id, service_id, day, cls, ccy, version, exact, seconds, count, digest in rows:
        exact = Decimal(exact)
        key = idempotency_key(client_id, service_id, day, cls, ccy, version, digest=digest)
        lines.append(
            ChargeLine(
                client_id=int(client_id), service_id=int(service_id), billing_date=day, charge_class=cls,
                currency=ccy, tariff_version=version, exact_amount=exact, amount=round_minor(exact, ccy),
                charged_seconds=int(seconds), cdr_count=int(count), idempotency_key=key,
                description=describe(cls, day, int(count), int(seconds), key),
            )
        )
    return lines


def lines_with_members(billed: pl.DataFrame) -> tuple[list[ChargeLine], pl.Series]:
    """`charge_lines`, and for each billed row (in order) the position of its line in that list:
    the rows a line's charge id is written on. Matched on the line's grouping, in polars: the
    CDR keys never come back from DuckDB as Python lists (10 M of them at 10 M calls a night)."""
    lines = charge_lines(billed)
    grouping = pl.DataFrame(
        [tuple(getattr(ln, c) for c in LINE_COLUMNS) for ln in lines], schema=LINE_COLUMNS, orient="row",
    ).with_row_index("line")
    member = billed.select(pl.col(c).cast(t) for c, t in LINE_COLUMNS.items()).join(
        grouping, on=list(LINE_COLUMNS), how="left", nulls_equal=True, maintain_order="left")["line"]
    if member.null_count():
        raise RuntimeError(f"{member.null_count()} billed row(s) match no charge line")
    return lines, member


def record_billing(settings: Settings, rated: pl.DataFrame, run_id: int | None = None, batch_ids: Iterable[int] = (),
                   dry_run: bool = False, attempts: int = 3) -> BillingRecord:
    """Charge lines (sql/charge_lines.sql) + billed CDRs + watermarks in one ledger transaction."""
    return record_rated(settings, rated, run_id, batch_ids, dry_run, attempts, lines_of=lines_with_members)


def rated_chunks(rated_path: str) -> list[int | None]:
    """The chunks of a rated file (tasks/rate.py): [None] when it has no `chunk` column (one frame)."""
    if "chunk" not in pl.read_parquet_schema(rated_path):
        return [None]
    return sorted(pl.scan_parquet(rated_path).select(pl.col("chunk").unique()).collect()["chunk"].to_list()) or [None]


def read_rated(rated_path: str, where: pl.Expr | None, wanted: Iterable[str]) -> pl.DataFrame:
    """The `wanted` columns the rated file has, of the rows `where` selects (all when None)."""
    present = pl.read_parquet_schema(rated_path)
    wanted = set(wanted)
    scan = pl.scan_parquet(rated_path)
    if where is not None:
        scan = scan.filter(where)
    return scan.select([c for c in present if c in wanted]).collect()


def merge_records(records: list[BillingRecord], dry_run: bool) -> BillingRecord:
    """The chunks' records as one (what the report reads)."""
    outcomes: dict[str, int] = {}
    for r in records:
        for k, v in r.outcomes.items():
            outcomes[k] = outcomes.get(k, 0) + v
    return BillingRecord(
        outcomes=outcomes, lines=[ln for r in records for ln in r.lines],
        already_final_keys=sorted(k for r in records for k in r.already_final_keys),
        charge_ids=[i for r in records for i in r.charge_ids], dry_run=dry_run,
    )


class ChunkRecorder:
    """Records each chunk's rated rows as the rate step hands them over (tasks/rate.py `on_chunk`),
    in one thread of its own: chunk i is recorded while chunk i+1 is rated. Each chunk is one
    `record_billing` transaction without the batches, exactly as `record_chunks` records it from
    the file; the unrated rows of every chunk and the batches follow in the record step's one last
    transaction (`record_chunks(recorder=...)`). At most one chunk waits: handing over chunk i+1
    first waits for chunk i's transaction (and raises its error)."""

    def __init__(self, settings: Settings, run_id: int | None, dry_run: bool = False) -> None:
        self.settings, self.run_id, self.dry_run = settings, run_id, dry_run
        self.records: list[BillingRecord] = []
        self.chunks: list[int] = []
        self._pending: tuple[int, Future[BillingRecord]] | None = None
        self._pool: ThreadPoolExecutor | None = None

    def begin(self) -> None:
        """A new attempt of the rate step: what an earlier attempt recorded is final in the ledger
        and is counted again as already billed, as `record_chunks` counts it on a retry."""
        self.settle(quiet=True)
        self.records, self.chunks = [], []

    def __call__(self, chunk: int, rated: pl.DataFrame) -> None:
        self.settle()
        if rated.height == 0:
            return  # nothing rated in it: its unrated rows, if any, go with the last transaction
        # What the transaction reads of a rated row: the rate step's other columns (rate_number,
        # the matched prefix, ...) are freed while the chunk waits for its transaction.
        rated = rated.select(c for c in rated.columns if c in (*REQUIRED, "source"))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="record-chunk")
        self._pending = (chunk, self._pool.submit(record_billing, self.settings, rated, self.run_id, [], self.dry_run))

    def settle(self, quiet: bool = False) -> None:
        """Wait for the chunk being recorded; its error is raised unless `quiet` (the attempt failed
        anyway: the chunk is then not counted as recorded, and the record step records it)."""
        if self._pending is None:
            return
        chunk, future = self._pending
        self._pending = None
        try:
            record = future.result()
        except BaseException:
            if quiet:
                return
            raise
        self.records.append(record)
        self.chunks.append(chunk)

    def close(self) -> None:
        self.settle(quiet=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def record_chunks(settings: Settings, rated_path: str, run_id: int | None, batch_ids: Iterable[int],
                  dry_run: bool = False, recorder: ChunkRecorder | None = None) -> tuple[BillingRecord, int]:
    """`record_billing` of each chunk of the rated file in turn, the batches with the last one;
    returns the merged record and the number of chunks. With a `recorder` that recorded chunks'
    rated rows already, what is left (every unrated row, and the rows of any chunk it did not
    record) is recorded in one last transaction with the batches."""
    wanted = {*REQUIRED, "source", "rate_number", "unrated_reason", RATED_WITH, *CDR_SCHEMA}
    chunks = rated_chunks(rated_path)
    if recorder is not None and recorder.records:
        rest = read_rated(rated_path, (pl.col("outcome") == "unrated") | ~pl.col("chunk").is_in(recorder.chunks),
                          wanted)
        last = record_billing(settings, rest, run_id, list(batch_ids), dry_run)
        return merge_records([*recorder.records, last], dry_run), len(chunks)
    records = []
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        # by chunk: row-group statistics skip the other chunks
        rated = read_rated(rated_path, None if chunk is None else pl.col("chunk") == chunk, wanted)
        record = record_billing(settings, rated, run_id, list(batch_ids) if last else [], dry_run)
        del rated
        records.append(record)
    return (records[0] if len(records) == 1 else merge_records(records, dry_run)), len(chunks)


@task(name="aggregate-and-record", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def record_billing_task(settings: Settings, rated_path: str, run_id: int | None, batch_ids: list[int],
                        dry_run: bool = False, recorder: ChunkRecorder | None = None) -> BillingRecord:
    """Charge lines + billed CDRs in one ledger transaction per chunk of the rated file (a chunk
    never splits a service, so never a charge line; tasks/rate.py); the batches' watermarks move
    with the LAST transaction. With a `recorder`, the chunks' rated rows were recorded while the
    rate step ran and this step records the rest (`record_chunks`). A retry is safe: the chunks
    recorded are already final and are filtered out (docs/nightly-scale.md says why a crash
    between chunks bills nothing twice)."""
    record, chunks = record_chunks(settings, rated_path, run_id, batch_ids, dry_run, recorder)
    get_run_logger().info(
        "%s charge line(s) %s in %s chunk(s); outcomes %s; %s already billed",
        len(record.lines), "previewed" if dry_run else "recorded", chunks, record.outcomes,
        record.already_final,
    )
    return record
