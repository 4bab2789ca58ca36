"""autobill/lake.py: the parquet appender the rate step writes the night's rated file with, and
lake files that point at the files holding their rows' `source_row`."""

from __future__ import annotations

import json

import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autobill.lake import SOURCE_ROWS_KEY, ParquetAppender, source_rows, write_without_source_rows

SCHEMA = {"cdr_key": pl.String(), "cost": pl.String(), "chunk": pl.Int32(), "source_row": pl.String()}


def test_appends_are_shaped_and_an_unknown_column_stops_the_write(tmp_path):
    """An append with a column missing gets it as null; one with a column the file lacks raises
    rather than dropping it; an empty append adds no row group; appends never share a row group."""
    path = tmp_path / "night.parquet"
    with ParquetAppender(path, statistics=["chunk"], row_group_size=2) as out:
        out.start(SCHEMA)
        out.append(pl.DataFrame({"cdr_key": ["a", "b", "c"], "cost": ["1.000000"] * 3, "chunk": [0] * 3},
                                schema_overrides={"chunk": pl.Int32}))
        out.append(pl.DataFrame({"cdr_key": ["d"], "chunk": [1], "source_row": ["{}"]}))
        out.append(pl.DataFrame(schema={"cdr_key": pl.String()}))
        with pytest.raises(RuntimeError, match=r"column\(s\) \['rogue'\]"):
            out.append(pl.DataFrame({"cdr_key": ["e"], "chunk": [1], "rogue": [1]}))
    got = pl.read_parquet(path)
    assert got.schema == pl.Schema(SCHEMA)
    assert got.rows() == [("a", "1.000000", 0, None), ("b", "1.000000", 0, None), ("c", "1.000000", 0, None),
                          ("d", None, 1, "{}")]
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [2, 1, 1]
    stats = [meta.row_group(g).column(2).statistics for g in range(meta.num_row_groups)]
    assert [(st.min, st.max) for st in stats] == [(0, 0), (0, 0), (1, 1)]
    assert meta.row_group(0).column(0).statistics is None  # only the columns asked for


def test_a_failed_write_is_raised(tmp_path, monkeypatch):
    """A write that fails in the background thread surfaces at the next append or on exit."""
    path = tmp_path / "night.parquet"
    with pytest.raises(OSError, match="disk full"):  # noqa: PT012 - the failure surfaces at exit
        with ParquetAppender(path) as out:
            out.start(SCHEMA)

            def broken(*_a, **_k):
                raise OSError("disk full")

            monkeypatch.setattr(out._writer, "write_table", broken)
            out.append(pl.DataFrame({"cdr_key": ["a"]}))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.text(max_size=5), max_size=6), max_size=6), st.integers(1, 4))
def test_the_file_is_every_append_in_order(tmp_path_factory, frames, group):
    path = tmp_path_factory.mktemp("appender") / "out.parquet"
    with ParquetAppender(path, statistics=["chunk"], row_group_size=group) as out:
        out.start(SCHEMA)
        for i, keys in enumerate(frames):
            out.append(pl.DataFrame({"cdr_key": keys, "chunk": [i] * len(keys)},
                                    schema={"cdr_key": pl.String(), "chunk": pl.Int32()}))
    got = pl.read_parquet(path)
    assert got["cdr_key"].to_list() == [k for keys in frames for k in keys]
    assert got["chunk"].to_list() == [i for i, keys in enumerate(frames) for _ in keys]


def test_a_file_without_source_rows_points_at_the_files_that_hold_them(tmp_path):
    """`write_without_source_rows` leaves the column out and names its sources in the footer;
    `source_rows` reads through such a file, and reads a file that holds the column directly.
    The first copy of a key, in file order, wins; keys found nowhere are absent."""
    raw1, raw2, kept = tmp_path / "raw1.parquet", tmp_path / "raw2.parquet", tmp_path / "requeued.parquet"
    pl.DataFrame({"cdr_key": ["a", "b"], "source_row": ['{"n": 1}', '{"n": 2}']}).write_parquet(raw1)
    pl.DataFrame({"cdr_key": ["b", "c"], "source_row": ['{"n": "2 again"}', '{"n": 3}']}).write_parquet(raw2)
    pl.DataFrame({"cdr_key": ["r"], "source_row": ['{"n": "r"}']}).write_parquet(kept)
    good = pl.DataFrame({"cdr_key": ["a", "b", "c"], "cost": ["1"] * 3, "source_row": ["x"] * 3})
    lean = write_without_source_rows(good, tmp_path / "validated.parquet", [raw1, raw2])
    assert pl.read_parquet(lean).columns == ["cdr_key", "cost"]
    assert json.loads(pl.read_parquet_metadata(lean)[SOURCE_ROWS_KEY]) == [str(raw1), str(raw2)]
    got = source_rows([lean, kept], pl.Series(["c", "b", "r", "zz"]))
    assert sorted(got.rows()) == [("b", '{"n": 2}'), ("c", '{"n": 3}'), ("r", '{"n": "r"}')]
    assert source_rows([lean], pl.Series([], dtype=pl.String)).is_empty()
