"""`autobill rate`, parquet in and out: the input's columns are copied into OUT chunk by chunk
(autobill/rating/passthrough.py). OUT must read back, in polars, pyarrow and DuckDB, exactly as the
OUT written whole does; whatever the copy cannot take is written whole instead."""

from __future__ import annotations

import datetime as dt
import os
import struct
from decimal import Decimal
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest

from autobill.rating import engine, passthrough
from autobill.rating import thrift_compact as tc
from autobill.rating.engine import OUTPUT_COLUMNS

TARIFF = pl.DataFrame(
    {
        "prefix": ["1212", "44", "4420"],
        "rate": ["0.01", "0.02", "0.5"],
        "description": ["NYC", "UK", "London"],
        "connect_fee": ["", "0.1", ""],
        "first_increment": ["60", "30", "1"],
        "next_increment": ["6", "30", "1"],
        "effective_from": ["", "", ""],
    }
)
ROWS = 3000


def cdrs(n: int = ROWS) -> pl.DataFrame:
    """CDRs with every RATING.md column and extra columns of many types, nulls among them."""
    return pl.DataFrame(
        {
            "cdr_id": [f"c{i % (n - 7)}" for i in range(n)],  # a few duplicates
            "start": [f"2024-07-{1 + i % 28:02d}T{i % 24:02d}:00:00+02:00" for i in range(n)],
            "billsec": [(i * 7) % 400 if i % 11 else 0 for i in range(n)],
            "dst": [("+44207" if i % 3 else "2125550") + f"{i:06d}" if i % 97 else "junk" for i in range(n)],
            "note": [None if i % 5 == 0 else f"note {i}" for i in range(n)],
            "n32": pl.Series([i - 50 for i in range(n)], dtype=pl.Int32),
            "u16": pl.Series([i % 60000 for i in range(n)], dtype=pl.UInt16),
            "x": [i / 3 if i % 13 else None for i in range(n)],
            "ok": [i % 2 == 0 for i in range(n)],
            "day": [dt.date(2024, 1, 1) + dt.timedelta(days=i % 300) for i in range(n)],
            "at": [dt.datetime(2024, 7, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=i) for i in range(n)],
            "amount": pl.Series([Decimal(i) / 100 for i in range(n)], dtype=pl.Decimal(12, 2)),
            "raw": [bytes([i % 256]) * (i % 5) for i in range(n)],
            "clock": [dt.time(i % 24, i % 60, i % 60) for i in range(n)],
            "held": [dt.timedelta(seconds=i) for i in range(n)],
        }
    )


def write_input(frame: pl.DataFrame, path: Path, writer: str, group: int = 1000) -> Path:
    if writer == "polars":
        frame.write_parquet(path, row_group_size=group)
    elif writer == "pyarrow":  # statistics, page indexes, a bloom filter, v2 data pages, dictionaries
        pq.write_table(
            frame.to_arrow(),
            path,
            row_group_size=group,
            write_page_index=True,
            data_page_version="2.0",
            bloom_filter_options={"cdr_id": {"ndv": ROWS}},
            data_page_size=4096,
        )
    else:  # DuckDB: each chunk's metadata written after it, inside the file
        frame = frame.drop("held", strict=False)  # DuckDB writes a duration as an INTERVAL polars cannot read
        con = duckdb.connect()
        con.register("f", frame.to_arrow())
        con.execute(f"COPY f TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE {group})")
        con.close()
    return path


@pytest.fixture
def tariff(tmp_path) -> Path:
    path = tmp_path / "tariff.csv"
    TARIFF.write_csv(path)
    return path


@pytest.fixture(autouse=True)
def small_groups(monkeypatch):
    """Row groups of 1000 rows are copied here (the product wants 65,536 or more)."""
    monkeypatch.setattr(passthrough, "MIN_GROUP_ROWS", 500)


def rate_whole(tariff: Path, source: Path, out: Path, monkeypatch) -> dict[str, int]:
    """The reference: OUT written whole by polars (what every non-copyable input gets)."""
    with monkeypatch.context() as m:
        m.setattr(passthrough, "layout", lambda *a, **k: None)
        return engine.rate_files(tariff, source, out)


def assert_same_file_content(got: Path, want: Path) -> None:
    a, b = pl.read_parquet(got), pl.read_parquet(want)
    assert a.schema == b.schema
    assert a.equals(b)
    assert pq.read_table(got).equals(pq.read_table(want))
    for x, y in ((got, want), (want, got)):
        rows = duckdb.execute("SELECT count(*) FROM (FROM read_parquet(?) EXCEPT ALL FROM read_parquet(?))", [str(x), str(y)])
        assert rows.fetchall() == [(0,)]
    assert duckdb.execute("SELECT count(*) FROM read_parquet(?)", [str(got)]).fetchall() == [(a.height,)]


def codecs(path: Path) -> dict[str, set[str]]:
    """Each column's codecs over the row groups, as pyarrow names them (LZ4_RAW is "LZ4")."""
    meta = pq.ParquetFile(path).metadata
    out: dict[str, set[str]] = {}
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            column = meta.row_group(g).column(c)
            out.setdefault(column.path_in_schema, set()).add(column.compression)
    return out


def group_rows(path: Path) -> list[int]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


@pytest.mark.parametrize("writer", ["polars", "pyarrow", "duckdb"])
def test_copied_columns_read_back_as_the_whole_file_does(tmp_path, tariff, monkeypatch, writer):
    source = write_input(cdrs(), tmp_path / "in.parquet", writer)
    frame = pl.read_parquet(source)
    counts = engine.rate_files(tariff, source, tmp_path / "out.parquet")
    want = rate_whole(tariff, source, tmp_path / "whole.parquet", monkeypatch)
    assert counts == want
    assert counts["rated"] > 1000 and counts["duplicate"] == 7 and counts["invalid_number"] > 0
    assert_same_file_content(tmp_path / "out.parquet", tmp_path / "whole.parquet")
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.columns == [*frame.columns, *OUTPUT_COLUMNS]
    assert out.select(frame.columns).equals(frame)
    # copied: OUT's row groups are the input's, and each input column keeps the input's codec
    assert group_rows(tmp_path / "out.parquet") == group_rows(source)
    got_codecs, input_codecs = codecs(tmp_path / "out.parquet"), codecs(source)
    assert {c: got_codecs[c] for c in frame.columns} == input_codecs
    assert {c: got_codecs[c] for c in OUTPUT_COLUMNS} == dict.fromkeys(OUTPUT_COLUMNS, {"LZ4"})
    # the whole file is polars' own layout, all LZ4_RAW
    assert set().union(*codecs(tmp_path / "whole.parquet").values()) == {"LZ4"}


def test_copied_chunks_keep_their_statistics_and_lie_where_the_footer_says(tmp_path, tariff):
    source = write_input(cdrs(), tmp_path / "in.parquet", "pyarrow")
    engine.rate_files(tariff, source, tmp_path / "out.parquet")
    out, src = pq.ParquetFile(tmp_path / "out.parquet").metadata, pq.ParquetFile(source).metadata
    size = (tmp_path / "out.parquet").stat().st_size
    ranges = []
    for g in range(out.num_row_groups):
        group = out.row_group(g)
        for c in range(out.num_columns):
            column = group.column(c)
            start = column.dictionary_page_offset or column.data_page_offset
            ranges.append((start, start + column.total_compressed_size))
            if c < src.num_columns:  # an input column: its statistics are the input's
                original = src.row_group(g).column(c)
                assert column.statistics == original.statistics
                assert column.encodings == original.encodings
    ranges.sort()
    assert ranges[0][0] == 4 and ranges[-1][1] < size - 8
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # no gap, no overlap


def test_input_columns_named_like_output_columns_are_replaced(tmp_path, tariff, monkeypatch):
    frame = cdrs().with_columns(pl.lit("stale").alias("status"), pl.lit(1.5).alias("cost"))
    source = write_input(frame, tmp_path / "in.parquet", "polars")
    engine.rate_files(tariff, source, tmp_path / "out.parquet")
    rate_whole(tariff, source, tmp_path / "whole.parquet", monkeypatch)
    assert_same_file_content(tmp_path / "out.parquet", tmp_path / "whole.parquet")
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert "stale" not in out["status"].to_list() and out.schema["cost"] == pl.Decimal(18, 6)
    assert group_rows(tmp_path / "out.parquet") == group_rows(source)  # still copied


@pytest.mark.parametrize(
    "case",
    ["small row groups", "a list column", "a categorical column", "a column with no values", "no rows"],
)
def test_inputs_the_copy_does_not_take_are_written_whole(tmp_path, tariff, monkeypatch, case):
    frame, group = cdrs(), 1000
    if case == "small row groups":
        group = 400
    elif case == "a list column":
        frame = frame.with_columns(pl.col("n32").cast(pl.String).str.split("").alias("parts"))
    elif case == "a categorical column":
        frame = frame.with_columns(pl.col("note").cast(pl.Categorical))
    elif case == "a column with no values":
        frame = frame.with_columns(pl.lit(None).alias("empty"))
    else:
        frame = frame.head(0)
    source = write_input(frame, tmp_path / "in.parquet", "polars", group=group)
    engine.rate_files(tariff, source, tmp_path / "out.parquet")
    rate_whole(tariff, source, tmp_path / "whole.parquet", monkeypatch)
    assert_same_file_content(tmp_path / "out.parquet", tmp_path / "whole.parquet")
    assert set().union(*codecs(tmp_path / "out.parquet").values()) <= {"LZ4"}  # written whole


def _rewrite_footer(path: Path, change) -> None:
    """Rewrite a parquet file's footer in place, `change(meta)` returning the new one."""
    data = path.read_bytes()
    length = struct.unpack("<I", data[-8:-4])[0]
    meta = change(tc.Reader(data[-8 - length : -8]).struct())
    footer = tc.encode(meta)
    path.write_bytes(data[: -8 - length] + footer + struct.pack("<I", len(footer)) + b"PAR1")


def _grow_last_chunk(meta: tc.Struct) -> tc.Struct:
    """The last row group's last chunk claims 3 more bytes: DuckDB's inline chunk metadata follows
    it, so readers that stop after the chunk's values still read the file."""
    groups = tc.get(meta, 4)[1]
    chunks = tc.get(groups[-1], 1)[1]
    md = tc.get(chunks[-1], 3)
    chunks[-1] = tc.with_field(chunks[-1], 3, tc.STRUCT, tc.with_field(md, 7, tc.I64, tc.get(md, 7) + 3))
    return meta


def test_a_chunk_that_is_not_whole_pages_is_written_whole_instead(tmp_path, tariff, monkeypatch):
    source = write_input(cdrs(), tmp_path / "in.parquet", "duckdb")
    _rewrite_footer(source, _grow_last_chunk)
    assert pl.read_parquet(source).height == ROWS  # the file still reads
    engine.rate_files(tariff, source, tmp_path / "out.parquet")
    rate_whole(tariff, source, tmp_path / "whole.parquet", monkeypatch)
    assert_same_file_content(tmp_path / "out.parquet", tmp_path / "whole.parquet")
    assert set().union(*codecs(tmp_path / "out.parquet").values()) == {"LZ4"}
    assert not list(tmp_path.glob(".*tmp"))  # the abandoned copy is gone


def test_the_page_walk_refuses_a_chunk_with_trailing_bytes(tmp_path):
    source = write_input(cdrs(), tmp_path / "in.parquet", "duckdb")
    _rewrite_footer(source, _grow_last_chunk)
    frame = pl.read_parquet(source)
    seen = passthrough.identity(source)
    src = passthrough.layout(source, seen, frame.schema, frame.columns)
    assert src is not None  # the footer alone looks fine
    with pytest.raises(passthrough.NotCopyable, match="not pages|do not match"), open(tmp_path / "o", "wb") as fh:
        passthrough.write(src, pl.DataFrame({"a": list(range(ROWS))}), fh, {}, b"")


def test_an_input_changed_after_it_was_read_is_not_copied(tmp_path, tariff, monkeypatch):
    source = write_input(cdrs(), tmp_path / "in.parquet", "polars")
    frame = pl.read_parquet(source)
    seen = passthrough.identity(source)
    src = passthrough.layout(source, seen, frame.schema, frame.columns)
    assert src is not None
    os.utime(source, ns=(seen.mtime_ns + 10**9, seen.mtime_ns + 10**9))  # rewritten in place, say
    assert passthrough.layout(source, seen, frame.schema, frame.columns) is None
    with pytest.raises(passthrough.NotCopyable, match="changed"), open(tmp_path / "o", "wb") as fh:
        passthrough.write(src, pl.DataFrame({"a": list(range(ROWS))}), fh, {}, b"")
    # replaced by another file under the same name between the stat and the read
    other = write_input(cdrs().with_columns(pl.col("note").fill_null("x")), tmp_path / "other.parquet", "polars")
    other.replace(source)
    assert passthrough.layout(source, seen, frame.schema, frame.columns) is None


def test_a_footer_that_disagrees_with_what_was_read_is_not_copied(tmp_path):
    source = write_input(cdrs(), tmp_path / "in.parquet", "polars")
    frame = pl.read_parquet(source)
    seen = passthrough.identity(source)
    assert passthrough.layout(source, seen, frame.schema.copy() | {"extra": pl.String()}, frame.columns) is None
    assert passthrough.layout(source, seen, frame.schema, ()) is None  # nothing kept
    assert passthrough.layout(source, None, frame.schema, frame.columns) is None
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\x00" * 20 + b"PAR1")
    assert passthrough.layout(tmp_path / "bad.parquet", passthrough.identity(tmp_path / "bad.parquet"), frame.schema, frame.columns) is None


def test_rating_a_file_onto_itself_copies_from_the_original(tmp_path, tariff, monkeypatch):
    """--out the same path as --cdrs: the chunks are read from the original while OUT is written
    beside it, and OUT replaces it only when complete."""
    source = write_input(cdrs(), tmp_path / "in.parquet", "pyarrow")
    rate_whole(tariff, source, tmp_path / "whole.parquet", monkeypatch)
    groups = group_rows(source)
    engine.rate_files(tariff, source, source)
    assert_same_file_content(source, tmp_path / "whole.parquet")
    assert group_rows(source) == groups
    assert not list(tmp_path.glob(".*tmp"))
