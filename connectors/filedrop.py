"""The drop folder: CSV or parquet CDR files put in a folder by another system (the seeds'
"custom module"), each file processed once.

File format (header required, order free, extra columns kept in `source_row` only):

| column | required | meaning |
|---|---|---|
| `call_id` | yes | the call's id at the source; `cdr_key` = `<server>:<call_id>` |
| `start` | yes | call start, ISO-8601 with an offset or `Z` (no offset: null, quarantined later) |
| `billsec` | yes | answered seconds, integer (0 = unanswered) |
| `dst` | yes | the number dialled (outbound/local) or the DID called (inbound), as the PBX wrote it |
| `direction` | yes | `inbound`, `outbound` or `local` |
| `tenant` | yes | the tenant (what `services[].tenant` names) |
| `src`, `extension`, `account`, `hangup_cause` | no | copied |
| `answer`, `end` | no | ISO-8601 like `start`; `end` defaults to (`answer` or `start`) + `billsec` |

Parquet files may carry `start`/`answer`/`end` as timestamps (a timestamp without zone is UTC,
parquet's convention) and `billsec` as an integer. `rate_number` is `dst` normalised with the
server's numbering rules, for every direction (an inbound row's `dst` is the DID).

Rules (DESIGN.md invariant 2, nothing disappears):
- A file is read only when it has settled: not hidden, no `.part`/`.tmp` suffix, and not
  modified for `settle_seconds` (a writer still appending is not read half-way).
- The window: a file is taken whole, so it is read only once every call in it *started* before
  `until` (the protocol's upper bound: a backfill of one date must not take the next date's
  calls, and a call belongs to the date it started). A file is complete when it is dropped, so
  a call that started before midnight and ended after it does not hold back the day's file (with
  an end-based rule every day file with a call crossing midnight would be billed a day late). A
  file with a call starting at or after `until` waits for a later run (noted). Calls starting
  impossibly far ahead (after now + `validation.future_tolerance_seconds`) do not hold a file
  back: that is bad data, read and quarantined, not a reason to wait forever. `since` does not
  apply: an old call in a new file is a late CDR, billed, not dropped.
- A file is identified by the sha256 of its bytes: a file whose hash is in `processed_files`
  (or seen earlier in the same pass, e.g. a renamed copy) is skipped. The hash is computed
  over the bytes that are then parsed, so a file changing under us cannot be half-recorded.
  A folder keeps every file it was given, so a file that still has the name, size and
  modification time (ns) it had when it was processed is skipped without being read (reading
  and hashing every old file made each run dearer than the last); change any of the three and
  it is read and hashed again. Its size and time are recorded only when they did not change
  while it was read.
- A file that cannot be used as a whole (empty, no header, a required column missing, not CSV
  or parquet, not UTF-8, a broken parquet) is QUARANTINED WHOLE: the extraction step records
  its name, sha256 and reason in the ledger (`quarantined_files`), the run summary counts it and
  the run ends partial. The good files are still billed. A quarantined file is not read again
  while its content is unchanged: fix it (new content, new hash) and it is read next run.
- A bad row in a good file is not a reason to skip the file: it is kept with nulls where it
  does not parse and its `source_row` keeps the text plus `_error` (why), so validation
  quarantines it as `unreadable_row`. A row with more or fewer fields than the header, a value
  that does not parse, and a last line without a line break (a file cut off mid-write: the
  truncated call must not be billed) are such rows.
- Files are recorded as processed by `tasks.extract.commit_batch`, never here.
"""

from __future__ import annotations

import csv as _csv
import hashlib
import io
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from autobill.cdr import conform, empty_cdrs
from autobill.config import FileDropServer, Settings
from autobill.ledger.batches import known_file_hashes, known_file_stats
from autobill.numbering import normalise_expr
from connectors.base import Extracted, SourceError, merge_problems

REQUIRED_COLUMNS = ("call_id", "start", "billsec", "dst", "direction", "tenant")
OPTIONAL_COLUMNS = ("src", "extension", "account", "answer", "end", "hangup_cause")
IN_PROGRESS_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")
ISO_FORMAT = "%Y-%m-%dT%H:%M:%S%.f%:z"
# The usual spelling, `2026-11-18T00:00:08-05:00`: a local time and an offset of at most 23:59.
USUAL_ISO = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-](?:[01]\d|2[0-3]):[0-5]\d$"
LOCAL_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S"


class BadFile(Exception):
    """A file that cannot be read as a whole; the message names the file and the reason."""


def read_steady(path: Path) -> tuple[bytes, tuple[int, int] | None]:
    """The file's bytes, and its (size, mtime_ns) if they did not change while it was read."""
    with open(path, "rb") as handle:
        before = os.fstat(handle.fileno())
        data = handle.read()
        after = os.fstat(handle.fileno())
    steady = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns) and after.st_size == len(data)
    return data, (after.st_size, after.st_mtime_ns) if steady else None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_iso(expr: pl.Expr) -> pl.Expr:
    """ISO-8601 text with an offset (or Z) -> UTC datetime; anything else (no offset) -> null.

    The accepted spellings (`T` or space, optional fraction, `Z`, `+hh:mm` or `+hhmm`) are first
    rewritten to one shape with cheap regexes, then parsed with a single format: trying several
    formats per row was 3x slower."""
    text = (
        expr.cast(pl.String)
        .str.strip_chars()
        .str.replace(r"^(\d{4}-\d{2}-\d{2})[ t]", "${1}T")
        .str.replace(r"[Zz]$", "+00:00")
        .str.replace(r"([+-]\d{2})(\d{2})$", "${1}:${2}")
        .str.replace(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})([+-])", "${1}.0${2}")
    )
    return text.str.to_datetime(ISO_FORMAT, time_unit="us", time_zone="UTC", strict=False)


def parse_iso_series(values: pl.Series) -> pl.Series:
    """`parse_iso` of a column, faster on the usual spelling: text in the one shape
    `2026-11-18T00:00:08-05:00` is read from its fixed places - the local time (a format without an
    offset, which polars parses about 3x faster than one with `%:z`) minus the offset - and only
    the rows that read does not parse go through `parse_iso`."""
    text = values.cast(pl.String).str.strip_chars()
    t = pl.col("t")
    sign = pl.when(t.str.slice(19, 1) == "-").then(-1).otherwise(1)
    offset = (t.str.slice(20, 2).cast(pl.Int64) * 60 + t.str.slice(23, 2).cast(pl.Int64)) * sign
    local = t.str.slice(0, 19).str.to_datetime(LOCAL_ISO_FORMAT, time_unit="us", strict=False)
    fast = pl.DataFrame({"t": text}).select(
        pl.when(t.str.contains(USUAL_ISO)).then(local - pl.duration(minutes=offset)).dt.replace_time_zone("UTC")
    ).to_series()
    retry = fast.is_null() & text.is_not_null()
    if retry.any():
        at = retry.arg_true()
        fast = fast.scatter(at, pl.select(parse_iso(pl.lit(text.gather(at)))).to_series())
    return fast.alias(values.name)


def _parsed(col: str) -> str:
    return f"_utc_{col}"  # a leading "_": not a source column (kept out of source_row)


def _as_utc(df: pl.DataFrame, col: str) -> pl.Expr:
    if col not in df.columns:
        return pl.lit(None, dtype=pl.Datetime("us", "UTC"))
    dtype = df.schema[col]
    if isinstance(dtype, pl.Datetime):
        value = pl.col(col).cast(pl.Datetime("us", dtype.time_zone))
        return value.dt.convert_time_zone("UTC") if dtype.time_zone else value.dt.replace_time_zone("UTC")
    if _parsed(col) in df.columns:
        return pl.col(_parsed(col))
    return parse_iso(pl.col(col))


def _text(df: pl.DataFrame, col: str) -> pl.Expr:
    if col not in df.columns:
        return pl.lit(None, dtype=pl.String)
    stripped = pl.col(col).cast(pl.String).str.strip_chars()
    return pl.when(stripped != "").then(stripped)


def _csv_frame(name: str, text: str) -> pl.DataFrame:
    """CSV text -> all-text columns plus `_error` (why a row cannot be trusted, else null).

    A row with more or fewer fields than the header, and a last line without a line break (a
    file cut off while it was written), are bad ROWS: kept with their text for quarantine, the
    rest of the file goes on. Fast path: polars, when every line has the header's field count."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise BadFile(f"{name}: empty file (no header, no rows)")
    width = None
    series = pl.Series(lines, dtype=pl.String)
    # Quoted fields (`""`, `"a,b"`) stay on the fast path when every line closes its quotes (no
    # field spans lines): the commas outside quotes are then the field separators.
    if '"' not in text or (series.str.count_matches('"', literal=True) % 2 == 0).all():
        counts = (series.str.replace_all(r'"[^"]*"', "") if '"' in text else series).str.count_matches(",", literal=True)
        if counts.n_unique() == 1:
            width = int(counts[0]) + 1
    del series
    if width is not None:
        header = [h.strip() for h in next(_csv.reader([lines[0]]))]
        if len(set(header)) != len(header):
            raise BadFile(f"{name}: the header repeats a column name ({', '.join(header)})")
        df = pl.read_csv(io.BytesIO(text.encode("utf-8")), infer_schema=False, truncate_ragged_lines=False)
        # `""` is an empty field, as the csv module's path reads it (null), not an empty string
        df = df.with_columns(pl.all().replace("", None), pl.lit(None, dtype=pl.String).alias("_error"))
    else:
        records = [r for r in _csv.reader(io.StringIO(text, newline="")) if any(f.strip() for f in r)]
        header, rows = records[0], records[1:]
        width = len(header)
        if len({h.strip() for h in header}) != width:
            raise BadFile(f"{name}: the header repeats a column name ({', '.join(header)})")
        errors = [None if len(r) == width else f"row has {len(r)} field(s), the header has {width}" for r in rows]
        cells = [(r + [""] * width)[:width] for r in rows]
        df = pl.DataFrame({h: [c[i] or None for c in cells] for i, h in enumerate(header)},
                          schema={h: pl.String() for h in header})
        df = df.with_columns(pl.Series("_error", errors, dtype=pl.String))
    if df.height and not text.endswith(("\n", "\r")):
        cut = "the last line has no line break: the file was cut off (truncated row)"
        last = pl.int_range(pl.len()) == pl.len() - 1
        df = df.with_columns(
            pl.when(last).then(pl.concat_str([pl.col("_error"), pl.lit(cut)], separator="; ", ignore_nulls=True))
            .otherwise(pl.col("_error")).alias("_error"))
    return df


def read_table(name: str, data: bytes) -> pl.DataFrame:
    """Parse one file's bytes; a file unusable as a whole raises BadFile (empty, not UTF-8, not CSV
    or parquet, a required column missing). Bad rows come back with `_error` set, not raised."""
    suffix = Path(name).suffix.lower()
    if not data.strip():
        raise BadFile(f"{name}: empty file")
    try:
        if suffix == ".parquet":
            df = pl.read_parquet(io.BytesIO(data))
        elif suffix in (".csv", ".txt"):
            text = data.decode("utf-8")  # a clear error for a non-UTF-8 file instead of mojibake
            df = _csv_frame(name, text.removeprefix("\ufeff"))
        else:
            raise BadFile(f"{name}: not a .csv or .parquet file")
    except BadFile:
        raise
    except UnicodeDecodeError as exc:
        raise BadFile(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure means "this file as a whole"
        raise BadFile(f"{name}: unreadable: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}") from None
    df = df.rename({c: c.strip() for c in df.columns})
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise BadFile(f"{name}: header lacks required column(s) {', '.join(missing)} (has: {', '.join(df.columns)})")
    return df


def _problems(df: pl.DataFrame, start: pl.Expr, answer: pl.Expr, end: pl.Expr, billsec: pl.Expr) -> pl.Expr:
    """Why a row cannot be read as a call (null when it can): the reader's `_error`, and each value
    that is there but does not parse."""
    def given(col: str) -> pl.Expr:
        return _text(df, col).is_not_null()

    def raw(col: str) -> pl.Expr:
        return _text(df, col).str.slice(0, 60)

    checks = [pl.col("_error") if "_error" in df.columns else pl.lit(None, dtype=pl.String)]
    for col, value in (("start", start), ("answer", answer), ("end", end)):
        if col in df.columns and df.schema[col] == pl.String:
            checks.append(pl.when(given(col) & value.is_null()).then(
                pl.format("{} {} is not an ISO-8601 time with an offset", pl.lit(col), raw(col))))
    if df.schema["billsec"] == pl.String:
        checks.append(pl.when(given("billsec") & billsec.is_null()).then(
            pl.format("billsec {} is not a whole number of seconds", raw("billsec"))))
    return pl.concat_str(checks, separator="; ", ignore_nulls=True).replace("", None)


def to_canonical(df: pl.DataFrame, server: FileDropServer, file_name: str) -> pl.DataFrame:
    """One file's rows -> canonical CDRs; unparsable values become null, the text stays in source_row."""
    num = server.numbering
    originals = [pl.col(c).cast(pl.String) for c in df.columns if not c.startswith("_")]
    df = df.with_columns(parse_iso_series(df[c]).alias(_parsed(c)) for c in ("start", "answer", "end")
                         if c in df.columns and df.schema[c] == pl.String)
    source = pl.struct(
        pl.lit(file_name).alias("_file"), (pl.int_range(pl.len()) + 1).alias("_line"), *originals
    ).struct.json_encode()
    billsec = pl.col("billsec")
    if df.schema["billsec"] == pl.String:
        billsec = billsec.str.strip_chars().cast(pl.Int64, strict=False)
    else:
        billsec = billsec.cast(pl.Int64, strict=False)
    start, answer = _as_utc(df, "start"), _as_utc(df, "answer")
    computed_end = pl.coalesce(answer, start) + pl.duration(seconds=billsec)
    end = pl.coalesce(_as_utc(df, "end"), computed_end)
    problem = _problems(df, start, answer, _as_utc(df, "end"), billsec)
    dst = _text(df, "dst")
    out = df.lazy().select(  # lazy: polars then computes shared sub-expressions once
        (pl.lit(f"{server.id}:") + _text(df, "call_id")).alias("cdr_key"),
        pl.lit(server.id).alias("server"),
        _text(df, "tenant").alias("tenant"),
        _text(df, "account").alias("account"),
        _text(df, "extension").alias("extension"),
        _text(df, "direction").str.to_lowercase().alias("direction"),
        _text(df, "src").alias("src"),
        dst.alias("dst"),
        normalise_expr(dst, num.country_code, num.intl_prefix, num.trunk_prefix).alias("rate_number"),
        start.alias("start_utc"),
        answer.alias("answer_utc"),
        end.alias("end_utc"),
        billsec.alias("billsec"),
        _text(df, "hangup_cause").alias("hangup_cause"),
        source.alias("source_row"),
        problem.alias("_problem"),
    )
    return conform(merge_problems(out.collect(), "_problem"))


class FileDropConnector:
    """Reads the settled, not yet processed files of one drop folder."""

    def __init__(
        self,
        server: FileDropServer,
        settings: Settings | None = None,
        processed: set[str] | None = None,
        clock: Any = time.time,
    ) -> None:
        self.server = server
        self.settings = settings
        self._processed = processed
        self._clock = clock

    @property
    def folder(self) -> Path:
        return self.settings.resolve_path(self.server.path) if self.settings else Path(self.server.path)

    def processed_hashes(self) -> set[str]:
        """Content hashes already committed for this server, or quarantined whole (from the ledger)."""
        if self._processed is not None:
            return set(self._processed)
        if self.settings is None:
            return set()
        return known_file_hashes(self.settings, self.server.id)

    def processed_stats(self) -> set[tuple[str, int, int]]:
        """(name, size, mtime_ns) of the files processed, as they were when read (from the ledger)."""
        if self._processed is not None or self.settings is None:
            return set()
        return known_file_stats(self.settings, self.server.id)

    def candidates(self) -> tuple[list[Path], list[Path]]:
        """(settled files to read, files still being written), in name order."""
        folder = self.folder
        if not folder.is_dir():
            raise SourceError(f"{self.server.id}: drop folder {folder} does not exist or is not a folder")
        now = self._clock()
        ready, waiting = [], []
        for path in sorted(folder.glob(self.server.pattern)):
            if not path.is_file() or path.name.startswith("."):
                continue
            if path.name.lower().endswith(IN_PROGRESS_SUFFIXES):
                waiting.append(path)
                continue
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:  # moved away between glob and stat
                continue
            (ready if age >= self.server.settle_seconds else waiting).append(path)
        return ready, waiting

    def extract(self, since: datetime | None, until: datetime, cursor: dict[str, Any] | None = None) -> Extracted:
        """Every settled, unprocessed file whose calls all started before `until` (see the module
        docstring: a file is taken whole, once; `since` does not apply, old rows are late CDRs)."""
        sid = self.server.id
        ready, waiting = self.candidates()
        seen = self.processed_hashes()
        unchanged = self.processed_stats()
        tolerance = self.settings.validation.future_tolerance_seconds if self.settings else 300
        impossible = datetime.fromtimestamp(self._clock(), UTC) + timedelta(seconds=tolerance)
        frames, files, notes, bad, later = [], [], [], [], []
        if waiting:
            notes.append(f"{sid}: {len(waiting)} file(s) still being written, left for the next run: "
                         + ", ".join(p.name for p in waiting[:5]))
        for path in ready:
            name = path.relative_to(self.folder).as_posix()
            try:
                stat = path.stat()
                if (name, stat.st_size, stat.st_mtime_ns) in unchanged:
                    continue  # the file processed, as it was then: not read again
                data, stat = read_steady(path)
            except OSError as exc:
                bad.append((name, "", f"{name}: cannot read: {exc.strerror or exc}"))
                continue
            digest = sha256_bytes(data)
            if digest in seen:
                continue  # processed or quarantined before (or a renamed copy of such a file / one of this pass)
            try:
                frame = to_canonical(read_table(name, data), self.server, name)
            except BadFile as exc:
                seen.add(digest)
                bad.append((name, digest, str(exc)))
                continue
            after = frame.filter((pl.col("start_utc") >= until) & (pl.col("start_utc") <= impossible)).height
            if after:
                later.append(f"{name} ({after} call(s))")
                continue
            seen.add(digest)
            frames.append(frame)
            files.append((name, digest, frame.height, *stat) if stat else (name, digest, frame.height))
        notes.extend(f"{sid}: file quarantined whole: {reason}" for _, _, reason in bad)
        if later:
            notes.append(f"{sid}: file(s) with calls starting at or after {until.isoformat()} left for a later run: "
                         + ", ".join(later[:5]) + (f" and {len(later) - 5} more" if len(later) > 5 else ""))
        cdrs = pl.concat(frames) if frames else empty_cdrs()
        watermark = cdrs["end_utc"].max() if cdrs.height else None
        return Extracted(cdrs=cdrs, watermark=watermark, cursor=None, files=files, notes=notes, bad_files=bad)
