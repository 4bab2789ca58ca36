"""A parquet OUT that holds the input's columns as the input's own bytes (`autobill rate`).

RATING.md: OUT repeats every input column unchanged, then the output columns. Decoding the
input's columns was needed to rate them, but encoding and compressing them again for OUT was
about a sixth of `autobill rate`'s CPU (issue #15, benchmarks/rating.py). A parquet file is a
run of column chunks, each one self-contained: its pages and their headers hold no file offset;
only the footer says where each chunk starts. So OUT is written as, for each input row group:

1. the output columns of the same rows, encoded by polars as a small parquet file of one row
   group (in a few threads at once), whose column chunks are copied into OUT;
2. the input's column chunks of that row group, copied byte for byte;

and then one footer (`FileMetaData`) naming all the chunks at their new offsets: the input's
schema elements, then the output columns'. Nothing else in a copied chunk changes: its encoding,
codec and statistics are the input's. Readers (polars, pyarrow, DuckDB, Spark) follow the footer;
a file may mix codecs from chunk to chunk.

`layout` reads and checks the input's footer before any of that; it returns None when the input
is not a file this can copy (then OUT is written whole, as for CSV): encrypted or external
chunks, nested or unusual columns, row groups of fewer than `MIN_GROUP_ROWS` (each output row
group repeats the matched prefixes' dictionary), or a footer that does not match what polars read.
While copying, each chunk is walked page header by page header: the pages must fill the chunk's
byte range exactly and hold its row group's values; and the input file must still be the one that
was read (same inode, size and mtime, from before it was read). Otherwise `NotCopyable` is raised
and the caller writes OUT whole.
"""

from __future__ import annotations

import io
import os
import struct
from collections import deque
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import polars as pl

from autobill.rating import thrift_compact as tc
from autobill.rating.thrift_compact import Struct

MAGIC = b"PAR1"
# Every row group but the last: an output row group carries its Enum columns' whole dictionary
# (the matched prefixes, up to the tariff's size), so many small groups would make OUT large.
MIN_GROUP_ROWS = 65_536
WORKERS = 2  # output row groups encoded at once (polars releases the GIL while it encodes)

# Column types whose parquet form polars reads and writes without doubt (no nesting, no dictionary
# type of polars' own, nothing wider than parquet's types).
_SIMPLE = (
    pl.String, pl.Binary, pl.Boolean, pl.Int8, pl.Int16, pl.Int32, pl.Int64,
    pl.UInt8, pl.UInt16, pl.UInt32, pl.UInt64, pl.Float32, pl.Float64,
    pl.Date, pl.Datetime, pl.Duration, pl.Time, pl.Decimal,
)  # fmt: skip

# Thrift field ids (parquet.thrift)
_FMD_VERSION, _FMD_SCHEMA, _FMD_ROWS, _FMD_GROUPS, _FMD_KV, _FMD_CREATED_BY, _FMD_ORDERS = 1, 2, 3, 4, 5, 6, 7
_FMD_ENCRYPTION = 8
_SE_TYPE, _SE_NAME, _SE_CHILDREN = 1, 4, 5
_RG_COLUMNS, _RG_BYTES, _RG_ROWS, _RG_OFFSET, _RG_COMPRESSED, _RG_ORDINAL = 1, 2, 3, 5, 6, 7
_CC_PATH, _CC_OFFSET, _CC_META = 1, 2, 3
_CC_INDEXES = (4, 5, 6, 7)  # offset and column index: not copied (optional)
_CC_CRYPTO = (8, 9)
_CM_PATH, _CM_VALUES, _CM_UNCOMPRESSED, _CM_COMPRESSED = 3, 5, 6, 7
_CM_DATA_PAGE, _CM_INDEX_PAGE, _CM_DICT_PAGE = 9, 10, 11
_CM_BLOOM = (14, 15)  # bloom filter: not copied (optional)
_PH_TYPE, _PH_COMPRESSED_SIZE, _PH_DATA, _PH_DATA_V2 = 1, 3, 5, 8
_DATA_PAGE, _DATA_PAGE_V2 = 0, 3


class NotCopyable(Exception):
    """The input's chunks cannot be copied as they are; OUT is to be written whole instead."""


@dataclass(frozen=True)
class Identity:
    """Which file a path named when it was read: a file replaced or rewritten since differs."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Identity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def identity(path: str | Path) -> Identity | None:
    """The file at `path` now (call before reading it), or None when it cannot be stat'ed."""
    try:
        return Identity.of(os.stat(path))
    except OSError:
        return None


@dataclass(frozen=True)
class Layout:
    """The input file's footer, checked: what `write` copies."""

    path: Path
    identity: Identity
    meta: Struct  # FileMetaData
    keep: tuple[int, ...]  # the input columns (leaf indexes) OUT repeats


def layout(
    path: str | Path, seen: Identity | None, schema: pl.Schema, keep: Collection[str]
) -> Layout | None:
    """The layout of the parquet file `path` (which polars read as a frame of `schema`, and which
    was `seen` before it was read), for copying its columns `keep`; None when its chunks are not
    ones `write` copies."""
    if seen is None:
        return None
    try:
        with open(path, "rb") as fh:
            if Identity.of(os.fstat(fh.fileno())) != seen:
                return None
            meta, footer_start = _footer(fh, seen.size)
        kept = _kept_columns(meta, footer_start, schema, set(keep))
    except Exception:  # noqa: BLE001 - a footer that surprises us in any way: OUT is written whole
        return None
    return Layout(Path(path), seen, meta, kept) if kept else None


def _kept_columns(meta: Struct, footer_start: int, schema: pl.Schema, keep: set[str]) -> tuple[int, ...]:
    """The leaf indexes of the columns OUT keeps; () when the file is not one `write` copies."""
    if tc.get(meta, _FMD_ENCRYPTION) is not None:
        return ()
    elements = tc.get(meta, _FMD_SCHEMA)[1]
    leaves = elements[1:]
    if not leaves or tc.get(elements[0], _SE_CHILDREN) != len(leaves):
        return ()
    if any(tc.get(e, _SE_CHILDREN) is not None or tc.get(e, _SE_TYPE) is None for e in leaves):
        return ()  # nested
    names = [tc.get(e, _SE_NAME).decode() for e in leaves]
    if names != list(schema.names()) or not all(isinstance(schema[n], _SIMPLE) for n in names):
        return ()
    groups = tc.get(meta, _FMD_GROUPS)[1]
    sizes = [tc.get(g, _RG_ROWS) for g in groups]
    if not groups or min(sizes) <= 0 or sum(sizes) != tc.get(meta, _FMD_ROWS):
        return ()
    if any(n < MIN_GROUP_ROWS for n in sizes[:-1]):
        return ()
    for group in groups:
        chunks = tc.get(group, _RG_COLUMNS)[1]
        if len(chunks) != len(leaves):
            return ()
        for chunk, name in zip(chunks, names, strict=True):
            md = tc.get(chunk, _CC_META)
            if (
                md is None
                or tc.get(chunk, _CC_PATH) is not None
                or any(tc.get(chunk, f) is not None for f in _CC_CRYPTO)
            ):
                return ()
            if tc.get(md, _CM_PATH)[1] != [name.encode()]:
                return ()
            start, length = _chunk_range(md)
            if start < len(MAGIC) or length <= 0 or start + length > footer_start:
                return ()
    return tuple(i for i, name in enumerate(names) if name in keep)


def write(src: Layout, appended: pl.DataFrame, out: BinaryIO, options: dict, arrow_schema: bytes) -> None:
    """Write OUT to `out`: per input row group, `appended`'s rows (encoded with the polars parquet
    `options`) and the input's kept chunks; then the footer, whose key-value metadata is
    `ARROW:schema` = `arrow_schema` (the whole OUT's, as polars would declare it).

    Raises NotCopyable (with part of OUT written) when a chunk is not what its footer says or the
    input changed since it was read."""
    meta = src.meta
    groups = tc.get(meta, _FMD_GROUPS)[1]
    out.write(MAGIC)
    position = len(MAGIC)
    new_groups: list[Struct] = []
    first_mini: Struct | None = None
    with open(src.path, "rb") as fh:
        fd = fh.fileno()
        if Identity.of(os.fstat(fd)) != src.identity:
            raise NotCopyable("the input changed since it was read")
        for ordinal, (group, (mini, mini_meta)) in enumerate(
            zip(groups, _encoded(appended, groups, options), strict=True)
        ):
            rows = tc.get(group, _RG_ROWS)
            (mini_group,) = tc.get(mini_meta, _FMD_GROUPS)[1]  # one row group (`_encode_one`)
            if first_mini is None:
                first_mini = mini_meta
            columns: list[Struct] = []
            input_chunks = tc.get(group, _RG_COLUMNS)[1]
            for i in src.keep:
                md = tc.get(input_chunks[i], _CC_META)
                start, length = _chunk_range(md)
                data = os.pread(fd, length, start)
                _check_pages(data, md, rows)
                out.write(data)
                columns.append(_moved(input_chunks[i], position - start))
                position += length
            for chunk in tc.get(mini_group, _RG_COLUMNS)[1]:
                md = tc.get(chunk, _CC_META)
                start, length = _chunk_range(md)
                out.write(mini[start : start + length])
                columns.append(_moved(chunk, position - start))
                position += length
            new_groups.append(_row_group(columns, rows, ordinal))
        if Identity.of(os.fstat(fd)) != src.identity:
            raise NotCopyable("the input changed while it was copied")
    assert first_mini is not None  # at least one row group (layout)
    footer = _file_metadata(meta, first_mini, src.keep, new_groups, arrow_schema)
    out.write(footer)
    out.write(struct.pack("<I", len(footer)))
    out.write(MAGIC)


def _footer(fh: BinaryIO, size: int) -> tuple[Struct, int]:
    """(FileMetaData, where it starts) of an open parquet file of `size` bytes."""
    if size < 12:
        raise tc.ThriftError("too short for parquet")
    fh.seek(0)
    head = fh.read(4)
    fh.seek(size - 8)
    tail = fh.read(8)
    if head != MAGIC or tail[4:] != MAGIC:
        raise tc.ThriftError("not a plain parquet file")
    length = struct.unpack("<I", tail[:4])[0]
    start = size - 8 - length
    if start < len(MAGIC):
        raise tc.ThriftError("footer length out of range")
    fh.seek(start)
    data = fh.read(length)
    reader = tc.Reader(data)
    meta = reader.struct()
    if reader.pos != length:
        raise tc.ThriftError("footer length disagrees with its content")
    return meta, start


def _chunk_range(md: Struct) -> tuple[int, int]:
    """(first byte, length) of a column chunk: its dictionary page when it has one, then its data."""
    data = tc.get(md, _CM_DATA_PAGE, -1)
    dictionary = tc.get(md, _CM_DICT_PAGE)
    start = dictionary if dictionary is not None and 0 < dictionary < data else data
    return start, tc.get(md, _CM_COMPRESSED, -1)


def _check_pages(data: bytes, md: Struct, rows: int) -> None:
    """The chunk's bytes are whole pages, ending exactly at its end, with one value per row."""
    pos = values = 0
    try:
        while pos < len(data):
            reader = tc.Reader(data, pos)
            header = reader.struct()
            kind = tc.get(header, _PH_TYPE)
            if kind == _DATA_PAGE:
                values += tc.get(tc.get(header, _PH_DATA), 1)
            elif kind == _DATA_PAGE_V2:
                values += tc.get(tc.get(header, _PH_DATA_V2), 1)
            size = tc.get(header, _PH_COMPRESSED_SIZE)
            if size < 0:
                raise ValueError("a page of negative size")
            pos = reader.pos + size
    except Exception as exc:  # noqa: BLE001 - bytes that are not pages, however they fail
        raise NotCopyable(f"a column chunk's bytes are not pages: {exc}") from None
    if pos != len(data) or values != rows or tc.get(md, _CM_VALUES) != rows:
        raise NotCopyable("a column chunk's pages do not match its footer")


def _moved(chunk: Struct, delta: int) -> Struct:
    """A ColumnChunk's footer entry for its bytes moved by `delta`, without the optional page
    indexes and bloom filter (they live elsewhere in the source file and are not copied)."""
    md = tc.without(tc.get(chunk, _CC_META), *_CM_BLOOM)
    for fid in (_CM_DATA_PAGE, _CM_INDEX_PAGE, _CM_DICT_PAGE):
        offset = tc.get(md, fid)
        if offset is not None:
            md = tc.with_field(md, fid, tc.I64, offset + delta)
    start, _ = _chunk_range(md)
    chunk = tc.without(chunk, *_CC_INDEXES)
    chunk = tc.with_field(chunk, _CC_OFFSET, tc.I64, start)
    return tc.with_field(chunk, _CC_META, tc.STRUCT, md)


def _row_group(columns: list[Struct], rows: int, ordinal: int) -> Struct:
    metas = [tc.get(c, _CC_META) for c in columns]
    return [
        (_RG_COLUMNS, tc.LIST, (tc.STRUCT, columns)),
        (_RG_BYTES, tc.I64, sum(tc.get(m, _CM_UNCOMPRESSED) for m in metas)),
        (_RG_ROWS, tc.I64, rows),
        (_RG_OFFSET, tc.I64, _chunk_range(metas[0])[0]),
        (_RG_COMPRESSED, tc.I64, sum(tc.get(m, _CM_COMPRESSED) for m in metas)),
        (_RG_ORDINAL, tc.I16, ordinal),
    ]


def _file_metadata(
    source: Struct, mini: Struct, keep: tuple[int, ...], groups: list[Struct], arrow_schema: bytes
) -> bytes:
    """OUT's footer: the input's root and kept schema elements, then the output columns' (from a
    one-group file `mini` of them), the row groups, and `arrow_schema` as `ARROW:schema`."""
    elements = tc.get(source, _FMD_SCHEMA)[1]
    kept = [elements[1 + i] for i in keep]
    added = tc.get(mini, _FMD_SCHEMA)[1][1:]
    root = tc.with_field(elements[0], _SE_CHILDREN, tc.I32, len(kept) + len(added))
    fields: Struct = [
        (_FMD_VERSION, tc.I32, max(tc.get(source, _FMD_VERSION, 1), tc.get(mini, _FMD_VERSION, 1))),
        (_FMD_SCHEMA, tc.LIST, (tc.STRUCT, [root, *kept, *added])),
        (_FMD_ROWS, tc.I64, tc.get(source, _FMD_ROWS)),
        (_FMD_GROUPS, tc.LIST, (tc.STRUCT, groups)),
        (_FMD_KV, tc.LIST, (tc.STRUCT, [[(1, tc.BINARY, b"ARROW:schema"), (2, tc.BINARY, arrow_schema)]])),
        # the input's writer: readers key their workarounds (statistics, encodings) on it, and the
        # copied chunks are the only ones with min/max statistics
        (_FMD_CREATED_BY, tc.BINARY, tc.get(source, _FMD_CREATED_BY, b"autobill")),
    ]
    source_orders, mini_orders = tc.get(source, _FMD_ORDERS), tc.get(mini, _FMD_ORDERS)
    if source_orders is not None and mini_orders is not None:
        orders = [source_orders[1][i] for i in keep] + mini_orders[1]
        fields.append((_FMD_ORDERS, tc.LIST, (tc.STRUCT, orders)))
    return tc.encode(fields)


def _encode_one(part: pl.DataFrame, options: dict) -> tuple[memoryview, Struct]:
    buffer = io.BytesIO()
    part.write_parquet(buffer, row_group_size=part.height, **options)
    data = buffer.getbuffer()
    length = struct.unpack("<I", data[-8:-4])[0]
    meta = tc.Reader(data, len(data) - 8 - length).struct()
    groups = tc.get(meta, _FMD_GROUPS)[1]
    if [tc.get(g, _RG_ROWS) for g in groups] != [part.height]:  # polars' word, checked
        raise NotCopyable(f"polars wrote {len(groups)} row groups for {part.height} rows, not one")
    return data, meta


def _encoded(
    appended: pl.DataFrame, groups: list[Struct], options: dict
) -> Iterator[tuple[memoryview, Struct]]:
    """Each row group's rows of `appended` as a one-group parquet file (bytes, footer), in order;
    a few are encoded at once, and at most 2 x WORKERS wait to be copied."""
    with ThreadPoolExecutor(WORKERS) as pool:
        pending: deque[Future] = deque()
        offset = 0
        for group in groups:
            rows = tc.get(group, _RG_ROWS)
            pending.append(pool.submit(_encode_one, appended.slice(offset, rows), options))
            offset += rows
            if len(pending) >= 2 * WORKERS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
