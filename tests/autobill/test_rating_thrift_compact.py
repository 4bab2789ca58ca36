"""Thrift's compact protocol (autobill/rating/thrift_compact.py): footers written by polars,
pyarrow and DuckDB decode and encode back to the same bytes; random structs round-trip; broken
bytes are refused."""

from __future__ import annotations

import datetime as dt
import struct
from decimal import Decimal

import duckdb
import polars as pl
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autobill.rating import thrift_compact as tc


def _frame(n: int = 3000) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": [f"id-{i}" for i in range(n)],
            "n": list(range(n)),
            "x": [i / 7 for i in range(n)],
            "ok": [i % 3 == 0 for i in range(n)],
            "day": [dt.date(2024, 1, 1) + dt.timedelta(days=i % 400) for i in range(n)],
            "money": [Decimal(i) / 100 for i in range(n)],
            "maybe": [None if i % 5 else "v" for i in range(n)],
        },
        schema_overrides={"money": pl.Decimal(12, 2)},
    )


def _written(tmp_path, writer: str):
    path = tmp_path / f"{writer}.parquet"
    frame = _frame()
    if writer == "polars":
        frame.write_parquet(path, row_group_size=1000)
    elif writer == "pyarrow":  # statistics, page index, bloom filter, v2 data pages
        pq.write_table(
            frame.to_arrow(),
            path,
            row_group_size=1000,
            write_page_index=True,
            data_page_version="2.0",
            bloom_filter_options={"id": {"ndv": 3000}},
        )
    else:
        con = duckdb.connect()
        con.register("f", frame.to_arrow())
        con.execute(f"COPY f TO '{path}' (FORMAT parquet, ROW_GROUP_SIZE 1000)")
    return path


@pytest.mark.parametrize("writer", ["polars", "pyarrow", "duckdb"])
def test_real_footers_encode_back_to_their_bytes(tmp_path, writer):
    data = _written(tmp_path, writer).read_bytes()
    length = struct.unpack("<I", data[-8:-4])[0]
    footer = data[-8 - length : -8]
    reader = tc.Reader(footer)
    meta = reader.struct()
    assert reader.pos == length
    assert tc.encode(meta) == footer
    assert tc.get(meta, 3) == 3000  # num_rows
    assert len(tc.get(meta, 4)[1]) >= 2  # row groups of about 1000 rows (DuckDB rounds to its vectors)


# Random structs: any field ids, every type, nested.
_SCALARS = {
    tc.BYTE: st.integers(-128, 127),
    tc.I16: st.integers(-(2**15), 2**15 - 1),
    tc.I32: st.integers(-(2**31), 2**31 - 1),
    tc.I64: st.integers(-(2**63), 2**63 - 1),
    tc.DOUBLE: st.floats(allow_nan=False),
    tc.BINARY: st.binary(max_size=40),
    tc.BOOL_TRUE: st.booleans(),
}


def _typed_values(children: st.SearchStrategy) -> st.SearchStrategy:
    """(type, value) of one field: a scalar, a list, a map or a struct."""
    lists = [st.tuples(st.just(tc.LIST), st.tuples(st.just(t), st.lists(_SCALARS[t], max_size=20))) for t in (tc.I32, tc.BINARY, tc.BOOL_TRUE)]
    pairs = st.lists(st.tuples(_SCALARS[tc.BINARY], _SCALARS[tc.I64]), min_size=1, max_size=3)
    return st.one_of(
        *(st.tuples(st.just(t), values) for t, values in _SCALARS.items()),
        *lists,
        st.tuples(st.just(tc.LIST), st.tuples(st.just(tc.STRUCT), st.lists(children, max_size=3))),
        st.tuples(st.just(tc.MAP), pairs.map(lambda kv: (tc.BINARY, tc.I64, kv))),
        st.tuples(st.just(tc.MAP), st.just((0, 0, []))),
        st.tuples(st.just(tc.STRUCT), children),
    )


# Field ids in any order (a smaller id after a larger one takes the long field header).
STRUCTS = st.recursive(
    st.just([]),
    lambda children: st.dictionaries(st.integers(1, 300), _typed_values(children), max_size=6).map(
        lambda fields: [(fid, ttype, value) for fid, (ttype, value) in fields.items()]
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(fields=STRUCTS)
def test_random_structs_round_trip(fields):
    data = tc.encode(fields)
    reader = tc.Reader(data)
    assert reader.struct() == fields
    assert reader.pos == len(data)


def test_long_lists_and_negative_field_jumps_round_trip():
    fields = [(20, tc.I32, -5), (3, tc.LIST, (tc.BINARY, [b"a"] * 40)), (200, tc.BOOL_TRUE, False)]
    assert tc.Reader(tc.encode(fields)).struct() == fields


@pytest.mark.parametrize("cut", [1, 5, 17])
def test_truncated_bytes_are_refused(tmp_path, cut):
    data = tc.encode([(1, tc.I32, 2), (2, tc.BINARY, b"x" * 30), (3, tc.LIST, (tc.I64, [1, 2, 3]))])
    with pytest.raises(tc.ThriftError):
        tc.Reader(data[:-cut]).struct()


def test_nesting_beyond_the_limit_is_refused():
    fields: tc.Struct = []
    for _ in range(40):
        fields = [(1, tc.STRUCT, fields)]
    with pytest.raises(tc.ThriftError, match="deep"):
        tc.Reader(tc.encode(fields)).struct()


def test_field_helpers_keep_field_order():
    fields = [(1, tc.I32, 1), (4, tc.I64, 4)]
    assert tc.with_field(fields, 2, tc.I32, 2) == [(1, tc.I32, 1), (2, tc.I32, 2), (4, tc.I64, 4)]
    assert tc.with_field(fields, 4, tc.I64, 9) == [(1, tc.I32, 1), (4, tc.I64, 9)]
    assert tc.without(fields, 1) == [(4, tc.I64, 4)]
    assert tc.get(fields, 3, "absent") == "absent"
