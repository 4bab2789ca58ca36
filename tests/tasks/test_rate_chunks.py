"""Rating and recording a night in chunks (tasks/rate.py, tasks/aggregate.py): the same bill as one
frame, whatever the chunk size; a crash between chunks bills nothing twice and loses nothing."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

import tasks.aggregate as aggregate
import tasks.rate as rate
from autobill import lake
from autobill.cdr import CDR_SCHEMA, conform
from autobill.config import load_settings
from autobill.ledger.batches import close_batch, open_batch
from autobill.ledger.billed import billed_rows
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import Charge, ExtractionBatch, ServerWatermark, UnratedCDR
from autobill.ledger.runs import start_run
from sandboxes.generate import generate_calls, generate_config, make_world, tariff_frame
from tasks.aggregate import record_chunks
from tasks.rate import (
    CHUNK_COLUMN,
    CHUNK_ENV,
    _finish_gather,
    chunk_inputs,
    chunk_of,
    chunk_rows,
    plan_chunks,
    rate_run,
)

DAY = date(2026, 11, 18)
UNTIL = datetime(2026, 11, 19, 5, tzinfo=UTC)


def _world(tmp: Path, seed: int = 5):
    world = make_world(clients=30, servers_per_kind=3, kinds=("file",), seed=seed)
    config = generate_config(world)
    (tmp / "tariffs").mkdir(parents=True, exist_ok=True)
    tariff_frame().write_csv(tmp / "tariffs" / "retail.csv")
    (tmp / "autobill.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    s = load_settings(tmp / "autobill.yaml")
    upgrade(s.ledger)
    return world, s


def _night(tmp: Path, calls: pl.DataFrame, chunk: int | None, monkeypatch) -> tuple:
    """One night: lake batches (one per server, with a ledger batch), rated."""
    s, paths, batch_ids = _batches(tmp, calls, chunk, monkeypatch)
    return s, rate_run(s, DAY, paths, None, 1), batch_ids


def _batches(tmp: Path, calls: pl.DataFrame, chunk: int | None, monkeypatch) -> tuple:
    """One night's lake batches (one per server, with a ledger batch), not rated yet."""
    _, s = _world(tmp)
    if chunk is None:
        monkeypatch.delenv(CHUNK_ENV, raising=False)
    else:
        monkeypatch.setenv(CHUNK_ENV, str(chunk))
    run_id = start_run(s, "nightly", DAY)
    assert run_id == 1
    paths, batch_ids = [], []
    for (server,), part in sorted(conform(calls).partition_by("server", as_dict=True).items()):
        bid = open_batch(s, server, run_id, UNTIL - timedelta(days=2), UNTIL)
        written = [str(p) for p in lake.write_batch(s.data_path, server, bid, part)]
        close_batch(s, bid, part.height, written, UNTIL, None, [], [])
        paths += written
        batch_ids.append(bid)
    return s, paths, batch_ids


def _ledger(s) -> tuple:
    with session_scope(s.ledger) as session:
        charges = sorted(session.execute(select(Charge.idempotency_key, Charge.amount, Charge.cdr_count)).all())
        unrated = sorted(session.scalars(select(UnratedCDR.cdr_key)).all())
        marks = sorted(session.execute(select(ServerWatermark.server, ServerWatermark.watermark_utc)).all())
    billed = sorted((b.cdr_key, b.outcome, b.cost, b.included_seconds) for b in billed_rows(s))
    return charges, billed, unrated, marks


def _calls(seed: int = 1) -> pl.DataFrame:
    world = make_world(clients=30, servers_per_kind=3, kinds=("file",), seed=5)
    return generate_calls(world, DAY - timedelta(days=1), DAY, calls_per_client_day=12, seed=seed)


def test_chunked_night_bills_exactly_what_one_frame_bills(tmp_path, monkeypatch):
    calls = _calls()
    ref_s, ref_path, ref_batches = _night(tmp_path / "one", calls, None, monkeypatch)
    ref_record, ref_chunks = record_chunks(ref_s, str(ref_path), 1, ref_batches)
    assert ref_chunks == 1
    reference = _ledger(ref_s)
    assert reference[0] and reference[1] and reference[2] and len(reference[3]) == 3  # charges, billed CDRs, unrated rows, watermarks moved
    ref_rated = pl.read_parquet(ref_path).drop(CHUNK_COLUMN).sort("cdr_key")
    for chunk in (97, 250):
        s, path, batches = _night(tmp_path / f"c{chunk}", calls, chunk, monkeypatch)
        got = pl.read_parquet(path)
        chunks = got[CHUNK_COLUMN].n_unique()
        plan = plan_chunks(dict(calls.group_by("server").len().iter_rows()), chunk)
        planned = conform(calls).select("cdr_key", chunk_of(plan)).sort("cdr_key")
        assert planned[CHUNK_COLUMN].n_unique() > 1
        assert got.select("cdr_key", CHUNK_COLUMN).sort("cdr_key").equals(planned)  # every row in its planned chunk
        # Row groups hold one chunk each, with its statistics: what the record step reads them by.
        meta = pq.ParquetFile(path).metadata
        at = meta.schema.to_arrow_schema().get_field_index(CHUNK_COLUMN)
        groups = [meta.row_group(g).column(at).statistics for g in range(meta.num_row_groups)]
        assert all(st is not None and st.has_min_max and st.min == st.max for st in groups)
        assert {st.min for st in groups} == set(got[CHUNK_COLUMN])
        assert got.drop(CHUNK_COLUMN).sort("cdr_key").equals(ref_rated.select(got.drop(CHUNK_COLUMN).columns))
        record, n = record_chunks(s, str(path), 1, batches)
        assert n == chunks
        assert _ledger(s) == reference
        assert record.outcomes == ref_record.outcomes
        assert sorted(ln.idempotency_key for ln in record.lines) == sorted(ln.idempotency_key for ln in ref_record.lines)
        assert record.amount_by_currency == ref_record.amount_by_currency


def test_a_crash_between_chunks_bills_nothing_twice_and_the_rerun_finishes(tmp_path, monkeypatch):
    calls = _calls(seed=2)
    ref_s, ref_path, ref_batches = _night(tmp_path / "one", calls, None, monkeypatch)
    record_chunks(ref_s, str(ref_path), 1, ref_batches)
    reference = _ledger(ref_s)

    s, path, batches = _night(tmp_path / "chunked", calls, 150, monkeypatch)
    real, seen = aggregate.record_billing, []

    def crash_on_third(*args, **kwargs):
        if len(seen) == 2:
            raise RuntimeError("killed between chunks")
        seen.append(args[3])  # batch_ids: empty but for the last chunk
        return real(*args, **kwargs)

    monkeypatch.setattr(aggregate, "record_billing", crash_on_third)
    with pytest.raises(RuntimeError, match="killed"):
        record_chunks(s, str(path), 1, batches)
    assert seen == [[], []]
    charges, billed, _, marks = _ledger(s)
    assert charges and set(charges) < set(reference[0]) and set(billed) < set(reference[1])
    assert marks == []  # no watermark moved: the window is read again
    with session_scope(s.ledger) as session:
        assert set(session.scalars(select(ExtractionBatch.status))) == {"extracted"}

    monkeypatch.setattr(aggregate, "record_billing", real)
    record, chunks = record_chunks(s, str(path), 1, batches)  # the task's retry, or the rerun's record
    assert _ledger(s) == reference  # every charge once, every CDR once, watermarks moved now
    assert record.already_final == len(billed)  # the chunks recorded before the crash, counted once
    assert chunks > 3


def _rate_step(s, paths, recorder, monkeypatch) -> str:
    """The rate task's body (tasks/rate.py `rate_run_task`) with its recorder, outside a flow run."""
    monkeypatch.setattr(rate, "get_run_logger", lambda: logging.getLogger("test"))
    return rate.rate_run_task.fn(s, DAY, paths, None, 1, recorder)


def test_chunks_recorded_while_the_next_is_rated_bill_exactly_what_one_frame_bills(tmp_path, monkeypatch):
    """The nightly's pipeline: the rate step hands each chunk's rated rows to a `ChunkRecorder`,
    which records them in its own thread while the next chunk is rated; the record step then
    records every unrated row with the batches. The ledger ends exactly as one frame leaves it."""
    calls = _calls()
    ref_s, ref_path, ref_batches = _night(tmp_path / "one", calls, None, monkeypatch)
    ref_record, _ = record_chunks(ref_s, str(ref_path), 1, ref_batches)
    reference = _ledger(ref_s)

    s, paths, batches = _batches(tmp_path / "piped", calls, 97, monkeypatch)
    real, threads, marks_seen = aggregate.record_billing, [], []

    def spy(settings, rated, run_id, batch_ids, dry_run):
        threads.append(threading.current_thread().name)
        assert batch_ids == []  # the chunks' transactions never move a watermark
        marks_seen.append(_ledger(s)[3])
        return real(settings, rated, run_id, batch_ids, dry_run)

    monkeypatch.setattr(aggregate, "record_billing", spy)
    recorder = aggregate.ChunkRecorder(s, 1)
    try:
        path = _rate_step(s, paths, recorder, monkeypatch)
    finally:
        recorder.close()
    rated_chunks = sorted(pl.read_parquet(path).filter(pl.col("outcome") != "unrated")[CHUNK_COLUMN].unique())
    assert len(rated_chunks) > 2 and recorder.chunks == rated_chunks  # each chunk recorded once, in order
    assert set(threads) == {"record-chunk_0"} and marks_seen == [[]] * len(rated_chunks)
    charges, billed, unrated, marks = _ledger(s)
    assert charges == reference[0] and billed == reference[1]  # every chunk's billing is in
    assert unrated == [] and marks == []  # the unrated rows and the batches wait for the record step
    monkeypatch.setattr(aggregate, "record_billing", real)
    record, n = record_chunks(s, str(path), 1, batches, recorder=recorder)
    assert n == pl.read_parquet(path)[CHUNK_COLUMN].n_unique()
    assert _ledger(s) == reference
    assert record.outcomes == ref_record.outcomes and record.already_final == 0
    assert sorted(ln.idempotency_key for ln in record.lines) == sorted(ln.idempotency_key for ln in ref_record.lines)
    assert record.amount_by_currency == ref_record.amount_by_currency


@pytest.mark.parametrize("fails", ["rating", "recording"])
def test_a_pipelined_rate_step_that_fails_midway_bills_nothing_twice_and_its_retry_finishes(tmp_path, monkeypatch,
                                                                                          fails):
    """The rate step fails while chunk 2 is rated, or chunk 1's transaction fails in the recorder's
    thread: the step fails with that error, after the recording in flight ended; what was
    recorded is final and no watermark moved. The task's retry records everything once."""
    calls = _calls(seed=3)
    ref_s, ref_path, ref_batches = _night(tmp_path / "one", calls, None, monkeypatch)
    record_chunks(ref_s, str(ref_path), 1, ref_batches)
    reference = _ledger(ref_s)

    s, paths, batches = _batches(tmp_path / "piped", calls, 97, monkeypatch)
    real_rate, real_record, calls_made = rate._rate_frame, aggregate.record_billing, []

    def rate_failing(*args, **kwargs):
        calls_made.append("rate")
        if fails == "rating" and calls_made.count("rate") == 3:
            raise RuntimeError("killed while rating chunk 2")
        return real_rate(*args, **kwargs)

    def record_failing(*args, **kwargs):
        calls_made.append("record")
        if fails == "recording" and calls_made.count("record") == 2:
            raise RuntimeError("the ledger failed in chunk 1")
        return real_record(*args, **kwargs)

    monkeypatch.setattr(rate, "_rate_frame", rate_failing)
    monkeypatch.setattr(aggregate, "record_billing", record_failing)
    recorder = aggregate.ChunkRecorder(s, 1)
    try:
        with pytest.raises(RuntimeError, match="killed while rating" if fails == "rating" else "ledger failed"):
            _rate_step(s, paths, recorder, monkeypatch)
        charges, billed, unrated, marks = _ledger(s)
        assert charges and set(charges) < set(reference[0]) and set(billed) < set(reference[1])
        assert marks == [] and unrated == []
        assert recorder.chunks == ([0, 1] if fails == "rating" else [0])
        monkeypatch.setattr(rate, "_rate_frame", real_rate)
        monkeypatch.setattr(aggregate, "record_billing", real_record)
        path = _rate_step(s, paths, recorder, monkeypatch)  # the task's retry
        record, _ = record_chunks(s, str(path), 1, batches, recorder=recorder)
    finally:
        recorder.close()
    assert _ledger(s) == reference  # every charge once, every CDR once, watermarks moved now
    assert record.already_final == len(billed)  # recorded by the failed attempt, counted once


SERVERS = ["pbx1", "pbx2", "f-3", "f-4", "v-5"]
TENANTS = st.one_of(st.none(), st.sampled_from(["a.example", "b.example", "c", ""]))


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.sampled_from(SERVERS), st.integers(1, 60), min_size=1),
       st.integers(min_value=1, max_value=70))
def test_plan_packs_whole_servers_and_gives_a_large_one_its_own_chunks(rows, limit):
    """Reference: every chunk in [0, K) belongs to packed servers of at most `limit` rows together,
    or to one server larger than `limit`, which has ceil(rows / limit) chunks to itself."""
    plan = plan_chunks(rows, limit)
    assert set(plan) == set(rows)
    total = max(first + count for first, count in plan.values())
    owners: dict[int, list[str]] = {c: [] for c in range(total)}
    for server, (first, count) in plan.items():
        assert count == (1 if rows[server] <= limit else -(-rows[server] // limit))
        for c in range(first, first + count):
            owners[c].append(server)
    for servers in owners.values():
        assert servers  # no chunk number is skipped
        if len(servers) > 1 or plan[servers[0]][1] == 1:
            assert all(plan[s][1] == 1 for s in servers) and sum(rows[s] for s in servers) <= limit


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SERVERS), TENANTS), min_size=1, max_size=60),
       st.integers(min_value=1, max_value=9))
def test_a_chunk_never_splits_a_server_tenant(rows, limit):
    """Reference: rows of one (server, tenant) - one service's calls - land in one chunk, one of
    its server's chunks."""
    frame = pl.DataFrame(rows, schema={"server": pl.String, "tenant": pl.String}, orient="row")
    plan = plan_chunks(dict(frame.group_by("server").len().iter_rows()), limit)
    got = frame.with_columns(chunk_of(plan))
    owners: dict[tuple, int] = {}
    for server, tenant, chunk in got.iter_rows():
        first, count = plan[server]
        assert first <= chunk < first + count
        assert owners.setdefault((server, tenant), chunk) == chunk


def _canonical(rows: list[tuple[str, str | None]], tag: int) -> pl.DataFrame:
    keyed = [{"cdr_key": f"{server}:{tag}-{j}", "server": server, "tenant": tenant} for j, (server, tenant) in enumerate(rows)]
    return conform(pl.DataFrame(keyed, schema={"cdr_key": pl.String, "server": pl.String, "tenant": pl.String})
                   .with_columns([pl.lit(None).alias(c) for c in CDR_SCHEMA if c not in ("cdr_key", "server", "tenant")]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.sampled_from(SERVERS[:3]), TENANTS), max_size=15), st.booleans()),
                min_size=1, max_size=6),
       st.integers(min_value=1, max_value=30))
def test_chunk_inputs_give_each_chunk_its_rows_in_input_order(tmp_path_factory, inputs, limit):
    """chunk_inputs reads a one-server input straight into its chunk and splits the others; each
    chunk's loaders, in order, give that chunk's rows in input order (first source wins
    downstream), every row once, and one (server, tenant) only ever in one chunk."""
    tmp = tmp_path_factory.mktemp("chunks")
    items = []
    for i, (rows, on_disk) in enumerate(inputs):
        frame = _canonical(rows, i)
        if on_disk:
            frame.write_parquet(tmp / f"v{i}.parquet")
        items.append((f"s{i}", str(tmp / f"v{i}.parquet") if on_disk else frame))
    loaders = chunk_inputs(items, limit, tmp / "parts")
    seen, owners = [], {}
    for c, chunk in enumerate(loaders):
        got = pl.concat([load() for load in chunk]) if chunk else _canonical([], -1).with_columns(source=pl.lit(""))
        order = [(int(k.split(":")[1].split("-")[0]), int(k.split("-")[-1])) for k in got["cdr_key"]]
        assert order == sorted(order)  # input order within the chunk
        assert got["source"].to_list() == [f"s{i}" for i, _ in order]
        for server, tenant in got.select("server", "tenant").iter_rows():
            assert owners.setdefault((server, tenant), c) == c
        seen += got["cdr_key"].to_list()
    expected = [f"{server}:{i}-{j}" for i, (rows, _) in enumerate(inputs) for j, (server, _) in enumerate(rows)]
    assert sorted(seen) == sorted(expected)
    split = {int(p.name.split("-")[2].split(".")[0]) for p in (tmp / "parts").glob("in-*.parquet")}
    servers = {}
    for rows, _ in inputs:
        for server, _ in rows:
            servers[server] = servers.get(server, 0) + 1
    plan = plan_chunks(servers, limit)
    for i, (rows, on_disk) in enumerate(inputs):
        whole = len({plan[server] for server, _ in rows}) == 1 and plan[rows[0][0]][1] == 1 if rows else True
        assert (i in split) == (bool(rows) and not (on_disk and whole))  # only what spans chunks is split


@pytest.mark.parametrize("raw", ["0", "-3", "lots", "1.5"])
def test_a_bad_chunk_size_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv(CHUNK_ENV, raw)
    with pytest.raises(ValueError, match=f"{CHUNK_ENV}=.*positive whole number"):
        chunk_rows()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), st.sampled_from(["pbx:a", "pbx:b", "pbx:c", "pbx:d"])), max_size=8),
                min_size=1, max_size=4))
def test_gathered_inputs_keep_the_first_copy_of_each_key(frames):
    """A key in two inputs (a released row also in a batch) is rated once, from the first input
    that has it: the same rows, in the same order, as `unique(keep="first", maintain_order=True)`."""
    start = datetime(2026, 11, 18, 12, tzinfo=UTC)
    parts = [lake.shaped(pl.DataFrame({"cdr_key": keys}, schema={"cdr_key": pl.String}).with_columns(
                 server=pl.lit("pbx"), start_utc=pl.lit(start), billsec=pl.int_range(pl.len())), CDR_SCHEMA)
             .with_columns(pl.lit(f"s{i}").alias("source")) for i, keys in enumerate(frames)]
    got = _finish_gather(parts, "America/Toronto")
    expected = pl.concat(parts).unique("cdr_key", keep="first", maintain_order=True)
    assert got.drop("billing_date").equals(expected)
    assert got["billing_date"].to_list() == [date(2026, 11, 18)] * got.height
