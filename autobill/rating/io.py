"""Reading and writing the rating files (RATING.md: `.csv` or `.parquet`, chosen by extension).

CSV is read with every column as text: the output must repeat the input columns exactly as they
were written, and a number like `0012` or `1.50` must not be reformatted on the way through.
Every failure becomes an `InputError` whose message is one line naming the file, the row and the
column, because that line is all an operator sees from `autobill rate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import polars as pl

from autobill.rating import passthrough

FORMATS = (".csv", ".parquet")
# LZ4_RAW (polars' "lz4"), as the nightly's lake files (tasks/rate.py): cheaper to compress than
# snappy at about the same size (measured in benchmarks/rating.py, see README). Every current
# reader has it (polars, pyarrow, DuckDB, Spark >= 3.4); a very old one may know only snappy.
PARQUET_COMPRESSION = "lz4"
PARQUET_STATISTICS = {"min": False, "max": False, "distinct_count": False, "null_count": True}
# Rows per row group: a dictionary-coded column (an Enum, see _as_text_metadata) repeats its whole
# category list in every row group, so fewer, larger groups keep the file small (5 M rated rows:
# 286 MB against 308 MB at the streaming default), at the same writing time.
PARQUET_ROW_GROUP = 250_000


class InputError(Exception):
    """Input the rater cannot use; the message is one line: file, row, column, problem."""


def where(path: str | Path, row: int, column: str) -> str:
    """`file: row R (line L), column 'c'`: rows count data rows from 1; CSV lines count the header too."""
    row_text = f"row {row} (line {row + 1})" if Path(path).suffix.lower() == ".csv" else f"row {row}"
    return f"{path}: {row_text}, column {column!r}"


def header_error(path: str | Path, column: str, problem: str) -> InputError:
    suffix = " (line 1)" if Path(path).suffix.lower() == ".csv" else ""
    return InputError(f"{path}: header{suffix}, column {column!r}: {problem}")


def row_error(path: str | Path, row_index: int, column: str, problem: str) -> InputError:
    """`row_index` is 0-based (a frame index); the message counts from 1."""
    return InputError(f"{where(path, row_index + 1, column)}: {problem}")


def file_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .csv or .parquet")
    return suffix


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def read_table(path: str | Path) -> pl.DataFrame:
    """The file as a frame: CSV with every column as text, parquet with its own types."""
    path = Path(path)
    fmt = file_format(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if fmt == ".csv":
            return pl.read_csv(path, infer_schema=False, raise_if_empty=True)
        return pl.read_parquet(path)
    except pl.exceptions.NoDataError:
        raise InputError(f"{path}: header (line 1): the file is empty; a header row is required") from None
    except Exception as exc:  # noqa: BLE001 - any reader failure is reported as one line
        located = _locate_csv_problem(path) if fmt == ".csv" else None
        raise InputError(located or f"{path}: cannot read {fmt[1:]}: {_one_line(exc)}") from None


def _locate_csv_problem(path: Path) -> str | None:
    """On a CSV the fast reader refused, find the first row with more fields than the header."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            for i, row in enumerate(reader, start=1):
                if len(row) > len(header):
                    return (
                        f"{path}: row {i} (line {reader.line_num}), column #{len(header) + 1}: "
                        f"{len(row)} fields but the header has {len(header)}"
                    )
    except (OSError, csv.Error):
        return None
    return None


def require_columns(df: pl.DataFrame, path: str | Path, columns: tuple[str, ...]) -> None:
    for column in columns:
        if column not in df.columns:
            raise header_error(path, column, f"missing required column (found: {', '.join(df.columns) or 'none'})")


def _arrow_schema(schema: pl.Schema, as_text: Sequence[str]) -> str:
    """The arrow schema (base64, as parquet's `ARROW:schema`) polars declares for a frame of
    `schema`, with the Enum columns `as_text` as text."""
    text = {
        name: pl.String() if name in as_text and isinstance(dtype, pl.Enum) else dtype
        for name, dtype in schema.items()
    }
    buffer = BytesIO()
    pl.DataFrame(schema=text).write_parquet(buffer)
    buffer.seek(0)
    return pl.read_parquet_metadata(buffer)["ARROW:schema"]


def _as_text_metadata(schema: pl.Schema, as_text: Sequence[str]) -> dict[str, str] | None:
    """The arrow schema polars declares for this frame with the Enum columns `as_text` as text,
    to be stored in the file in place of its own.

    A parquet file holds an Enum column as a dictionary-encoded string column, exactly as it may
    hold a text column; only the arrow schema in the file's metadata tells polars, pyarrow and
    pandas to read it back as a category. Declared as text, every reader sees plain strings."""
    if not any(isinstance(schema.get(c), pl.Enum) for c in as_text):
        return None
    return {"ARROW:schema": _arrow_schema(schema, as_text)}


def _parquet_options(schema: pl.Schema, as_text: Sequence[str]) -> dict:
    return {
        "compression": PARQUET_COMPRESSION,
        "statistics": PARQUET_STATISTICS,
        "row_group_size": PARQUET_ROW_GROUP,
        "metadata": _as_text_metadata(schema, as_text),
    }


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write to a new hidden file beside OUT, then rename it into place: a failed run never leaves
    half an output, and leaves the previous OUT as it was.

    The old OUT is removed just before the rename (not replaced by it): on ext4, renaming over an
    existing file forces the new one to disk first (auto_da_alloc), about 0.3 s for a 5 M-row
    file; a crash in between leaves the complete new file under its hidden name. Nothing is
    fsynced: OUT is a work file, rebuilt by rerunning the command. Whatever `write` raises is
    raised after the hidden file is removed."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a crashed run's leftover
        # A new file (O_EXCL) written through our handle: given a path, polars opens it with
        # O_TRUNC, and on ext4 a file truncated to zero is forced to disk on close (auto_da_alloc).
        with tmp.open("xb") as fh:
            write(fh)
        path.unlink(missing_ok=True)
        tmp.rename(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_table(df: pl.DataFrame | pl.LazyFrame, path: str | Path, as_text: Sequence[str] = ()) -> None:
    """Write OUT (atomically, `_write_atomically`).

    A LazyFrame is streamed to the file, so the output never has to sit in memory whole. Parquet
    is LZ4_RAW-compressed (`PARQUET_COMPRESSION`): it costs far less CPU than zstd and somewhat
    less than snappy, for a file of about the same size. Its column
    statistics keep null counts but not min/max: computing min/max of millions of distinct
    strings (ids, times, numbers) was a fifth of the writing time, and a rated file is read
    whole, not filtered by row group. The Enum columns named in `as_text` are declared as text in
    a parquet file (`_as_text_metadata`)."""
    path = Path(path)
    fmt = file_format(path)

    def write(fh: BinaryIO) -> None:
        if isinstance(df, pl.LazyFrame):
            if fmt == ".csv":
                df.sink_csv(fh, maintain_order=True)
            else:
                df.sink_parquet(fh, maintain_order=True, **_parquet_options(df.collect_schema(), as_text))
        elif fmt == ".csv":
            df.write_csv(fh)
        else:
            df.write_parquet(fh, **_parquet_options(df.schema, as_text))

    try:
        _write_atomically(path, write)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot write {fmt[1:]}: {_one_line(exc)}") from None


def write_beside_input(
    source: passthrough.Layout,
    kept: pl.Schema,
    appended: pl.DataFrame,
    path: str | Path,
    as_text: Sequence[str] = (),
) -> bool:
    """Write a parquet OUT as the input's columns `kept`, copied from its file (passthrough.py),
    then the columns of `appended`, encoded as `write_table` would; atomically. False, with
    nothing written, when the input's chunks turn out not to be copyable after all (the caller
    then writes OUT with `write_table`)."""
    path = Path(path)
    options = _parquet_options(appended.schema, as_text)
    del options["row_group_size"], options["metadata"]  # one group per input group; the footer is ours
    arrow_schema = _arrow_schema(pl.Schema({**kept, **appended.schema}), as_text).encode()
    try:
        _write_atomically(path, lambda fh: passthrough.write(source, appended, fh, options, arrow_schema))
    except passthrough.NotCopyable:
        return False
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot write parquet: {_one_line(exc)}") from None
    return True
