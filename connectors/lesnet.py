"""LesNet (les.net) CDRs: the per-account text file the carrier refreshes once a day.

Why it looks the way it does:
- The file's layout is unconfirmed (reference/domain.md §4), so the parser is driven by
  `LesNetFormat` and rejects a file whose header does not fit, with a one-line message,
  instead of guessing. The default layout (what `write_lesnet_file` writes, and what the
  generator and the demo serve) is::

      CallID,DateTime,Source,Destination,Direction,Duration
      a1b2c3,2024-03-01 09:15:02,4165550100,+442079460000,out,61

  comma-delimited, header row, DateTime local time in America/Toronto (`LesNetFormat.timezone`),
  Direction `in`/`out`, Duration = billable seconds.
- `LesNetFormat.columns` maps canonical keys to header names (or 0-based indexes as strings).
  Keys: `start` (DateTime), `dst` (Destination) and `billsec` (Duration) are required; `call_id`,
  `src` and `direction` are optional. A non-empty map *replaces* the default one, so a layout
  without a call id simply leaves `call_id` out. Header names match case-insensitively.
- The file is fetched with If-None-Match / If-Modified-Since; a 304, or a 200 whose content hash
  equals the one in the cursor (a server that ignores validators), yields nothing new.

Row rules (decided here; the tests hold them):
- A row that cannot be parsed (bad date, bad duration, wrong number of fields, unknown direction)
  is kept, with nulls in the fields that failed and the original row in `source_row`, so the
  validation step quarantines it with a reason instead of it disappearing. A date or duration
  that is there but does not parse, and a wrong field count, put the reason in
  `source_row["_error"]` (`start "June first" is not a date (DateTime, format ...)`): validation
  quarantines the row as `unreadable_row` with it. An empty date or duration stays
  missing_start / missing_billsec.
- `cdr_key` is `<server>:<CallID>`. Without a CallID (column not mapped, or empty in a row) it is
  `<server>:row-<24 hex>`: the SHA-256 of the row's mapped raw values (start, src, dst, direction,
  duration, stripped, in that order). It is stable across re-downloads of a cumulative file;
  two byte-identical rows share a key, so validation reports the second as a duplicate rather
  than billing it twice.
- The carrier logs no ring time: `start_utc` = DateTime, `answer_utc` = DateTime when Duration > 0,
  `end_utc` = DateTime + Duration. `rate_number` is the normalised Destination for both
  directions (outbound: the number called; inbound: the DID dialled).
- Local times that occur twice (the autumn DST hour) resolve to the first occurrence; local
  times that do not exist (the spring gap) are a bad date (null). A `%z` in the format wins.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import requests

from autobill.cdr import CDR_SCHEMA, cdr_key, conform
from autobill.config import LesNetFormat, LesNetServer
from autobill.numbering import normalise_expr
from connectors.base import Extracted, SourceError, merge_problems

DEFAULT_COLUMNS: dict[str, str] = {
    "call_id": "CallID",
    "start": "DateTime",
    "src": "Source",
    "dst": "Destination",
    "direction": "Direction",
    "billsec": "Duration",
}
REQUIRED_KEYS = ("start", "dst", "billsec")
KNOWN_KEYS = ("call_id", "start", "src", "dst", "direction", "billsec")
DEFAULT_DIRECTIONS = {"in": "inbound", "out": "outbound", "inbound": "inbound", "outbound": "outbound"}
DELIMITERS = (",", ";", "|", "\t")
_HASHED_KEYS = ("start", "src", "dst", "direction", "billsec")


# -- layout ------------------------------------------------------------------------------


def column_map(fmt: LesNetFormat) -> dict[str, str]:
    """The effective canonical-key -> column map (the default when the config gives none)."""
    if not fmt.columns:
        if fmt.has_header:
            return dict(DEFAULT_COLUMNS)
        return {key: str(i) for i, key in enumerate(DEFAULT_COLUMNS)}
    unknown = sorted(set(fmt.columns) - set(KNOWN_KEYS))
    if unknown:
        raise ValueError(f"LesNet column map has unknown keys {unknown} (known: {list(KNOWN_KEYS)})")
    return dict(fmt.columns)


def direction_map(fmt: LesNetFormat) -> dict[str, str]:
    mapping = (
        {k.strip().lower(): v for k, v in fmt.directions.items()} if fmt.directions else DEFAULT_DIRECTIONS
    )
    bad = sorted(v for v in mapping.values() if v not in ("inbound", "outbound"))
    if bad:
        raise ValueError(f"LesNet direction map values must be inbound or outbound, got {bad}")
    return mapping


def detect_delimiter(first_line: str) -> str:
    """The candidate that occurs most often in the first line; comma on a tie or none."""
    counts = {d: first_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] > 0 else ","


def _resolve_positions(
    cmap: dict[str, str], header: list[str] | None, server_cfg: LesNetServer
) -> dict[str, int]:
    """Canonical key -> field index; a header that lacks a mapped column is a SourceError."""
    positions: dict[str, int] = {}
    missing_required = [k for k in REQUIRED_KEYS if k not in cmap]
    if missing_required:
        raise SourceError(
            f"lesnet {server_cfg.id}: column map lacks required keys {missing_required} (map: {cmap})"
        )
    lookup = {h.strip().lstrip("\ufeff").lower(): i for i, h in enumerate(header or [])}
    for key, name in cmap.items():
        wanted = name.strip().lower()
        if header is not None and wanted in lookup:
            positions[key] = lookup[wanted]
        elif wanted.isdigit():
            positions[key] = int(wanted)
        else:
            got = ", ".join(h.strip() for h in header or [])
            raise SourceError(
                f"lesnet {server_cfg.id}: {safe_url(server_cfg.url)}: header lacks column {name!r} (got {got})"
            )
    return positions


# -- parsing -----------------------------------------------------------------------------


def _records(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(1-based line number, fields) of every non-blank record."""
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    for fields in reader:
        if not any(fields) or (len(fields) == 1 and not fields[0].strip()):  # a blank line
            continue
        yield reader.line_num, fields


def _duration_expr(raw: pl.Expr) -> pl.Expr:
    """Seconds from `61`, `1:01` or `0:01:01`; anything else (incl. negatives, decimals) -> null."""
    s = raw.str.strip_chars()
    parts = s.str.split(":")
    n = parts.list.len()
    as_int = s.str.extract(r"^(\d+)$", 1).cast(pl.Int64, strict=False)
    hms_ok = s.str.contains(r"^\d+(:[0-5]\d){1,2}$")
    p = [parts.list.get(i, null_on_oob=True).cast(pl.Int64, strict=False) for i in range(3)]
    mmss = p[0] * 60 + p[1]
    hhmmss = p[0] * 3600 + p[1] * 60 + p[2]
    return (
        pl.when(as_int.is_not_null())
        .then(as_int)
        .when(hms_ok & (n == 2))
        .then(mmss)
        .when(hms_ok & (n == 3))
        .then(hhmmss)
        .otherwise(None)
    )


def _start_expr(raw: pl.Expr, fmt: LesNetFormat) -> pl.Expr:
    s = raw.str.strip_chars()
    if "%z" in fmt.timestamp_format or "%:z" in fmt.timestamp_format:
        return s.str.strptime(pl.Datetime("us"), fmt.timestamp_format, strict=False).dt.convert_time_zone(
            "UTC"
        )
    local = _naive_start(raw, fmt).dt.replace_time_zone(fmt.timezone, ambiguous="earliest", non_existent="null")
    return local.dt.convert_time_zone("UTC")


def _naive_start(raw: pl.Expr, fmt: LesNetFormat) -> pl.Expr:
    return raw.str.strip_chars().str.strptime(pl.Datetime("us"), fmt.timestamp_format, strict=False)


def _problems(frame: pl.DataFrame, start: pl.Expr, billsec: pl.Expr, fmt: LesNetFormat,
              cmap: dict[str, str]) -> pl.Expr:
    """Why a row's date or duration cannot be read (null when both can, or are empty)."""
    def given(key: str) -> pl.Expr:
        return pl.col(key).str.strip_chars().replace("", None).is_not_null()

    def shown(key: str) -> pl.Expr:
        return pl.lit('"') + pl.col(key).str.strip_chars().str.slice(0, 60) + pl.lit('"')

    zoned = "%z" in fmt.timestamp_format or "%:z" in fmt.timestamp_format
    gap = pl.lit(False) if zoned else _naive_start(pl.col("start"), fmt).is_not_null()
    checks = [
        pl.when(given("start") & start.is_null() & gap).then(pl.format(
            "start {} does not exist in {} (the clocks skip it)", shown("start"), pl.lit(fmt.timezone))),
        pl.when(given("start") & start.is_null() & ~gap).then(pl.format(
            "start {} is not a date ({}, format {})", shown("start"), pl.lit(cmap["start"]),
            pl.lit(fmt.timestamp_format))),
        pl.when(given("billsec") & billsec.is_null()).then(pl.format(
            "duration {} is not a duration ({}: seconds, M:SS or H:MM:SS)", shown("billsec"),
            pl.lit(cmap["billsec"]))),
    ]
    return pl.concat_str(checks, separator="; ", ignore_nulls=True).replace("", None)


def parse_lesnet(text: str, fmt: LesNetFormat | None, server_cfg: LesNetServer) -> pl.DataFrame:
    """Canonical CDRs (conformed) for a LesNet file's text; see the module docstring for the rules."""
    fmt = fmt or server_cfg.format
    cmap = column_map(fmt)
    dmap = direction_map(fmt)
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = fmt.delimiter or detect_delimiter(first)
    records = _records(text, delimiter)
    header: list[str] | None = None
    if fmt.has_header:
        first_record = next(records, None)
        if first_record is None:
            return conform(pl.DataFrame(schema=CDR_SCHEMA))
        header = first_record[1]
    positions = _resolve_positions(cmap, header, server_cfg)
    width = len(header) if header is not None else max(positions.values()) + 1

    good: list[list[str]] = []
    good_lines: list[int] = []
    bad: list[tuple[int, list[str]]] = []
    for line_no, fields in records:
        if header is not None and len(fields) > width and not any(f.strip() for f in fields[width:]):
            fields = fields[:width]  # a trailing delimiter is not a misaligned row
        if len(fields) == width or (header is None and len(fields) > width):
            good.append(fields)
            good_lines.append(line_no)
        else:
            bad.append((line_no, fields))
    frames = [_good_rows(good, good_lines, header, width, positions, server_cfg.id)] if good else []
    if bad:
        frames.append(_bad_rows(bad, width, server_cfg.id))
    if not frames:
        return conform(pl.DataFrame(schema=CDR_SCHEMA))
    frame = pl.concat(frames, how="vertical").sort("_line").drop("_line")
    return _canonical(frame, fmt, dmap, server_cfg, cmap)


def _good_rows(
    rows: list[list[str]],
    lines: list[int],
    header: list[str] | None,
    width: int,
    positions: dict[str, int],
    server_id: str,
) -> pl.DataFrame:
    """Rows with the expected number of fields, vectorised: raw mapped values, key, source_row."""
    columns = list(zip(*rows, strict=False))[:width]
    frame = pl.DataFrame(
        {f"f{i}": pl.Series(col, dtype=pl.String) for i, col in enumerate(columns)}
        | {"_line": pl.Series(lines, dtype=pl.Int64)}
    )
    if header is not None:
        names = _unique_names(header)
        source = pl.struct([pl.col(f"f{i}").alias(n) for i, n in enumerate(names)] + [pl.col("_line")])
    else:
        frame = frame.with_columns(_fields=pl.Series(rows, dtype=pl.List(pl.String)))
        source = pl.struct(pl.col("_fields"), pl.col("_line"))
    raw = {
        key: pl.col(f"f{positions[key]}") if key in positions else pl.lit(None, pl.String)
        for key in KNOWN_KEYS
    }
    content = pl.concat_str([raw[k].fill_null("").str.strip_chars() for k in _HASHED_KEYS], separator="\x1f")
    frame = frame.with_columns(
        **raw, source_row=source.struct.json_encode(), _cid=raw["call_id"].str.strip_chars(), _content=content
    )
    keys = [
        cdr_key(server_id, cid) if cid else _hash_key(server_id, text)
        for cid, text in zip(
            frame.get_column("_cid").to_list(), frame.get_column("_content").to_list(), strict=True
        )
    ]
    return frame.select(*KNOWN_KEYS, "_line", "source_row", cdr_key=pl.Series(keys, dtype=pl.String))


def _bad_rows(bad: list[tuple[int, list[str]]], width: int, server_id: str) -> pl.DataFrame:
    """Rows whose field count is wrong: nothing is trusted, everything is kept in source_row."""
    sources = [
        json.dumps(
            {"_fields": f, "_error": f"{len(f)} fields, expected {width}", "_line": n}, ensure_ascii=False
        )
        for n, f in bad
    ]
    return pl.DataFrame(
        {key: pl.Series([None] * len(bad), dtype=pl.String) for key in KNOWN_KEYS}
        | {
            "_line": pl.Series([n for n, _ in bad], dtype=pl.Int64),
            "source_row": pl.Series(sources, dtype=pl.String),
            "cdr_key": pl.Series([_hash_key(server_id, "\x1e".join(f)) for _, f in bad], dtype=pl.String),
        }
    )


def _hash_key(server_id: str, content: str) -> str:
    return cdr_key(server_id, "row-" + hashlib.sha256(content.encode("utf-8")).hexdigest()[:24])


def _unique_names(header: list[str]) -> list[str]:
    """Header names for source_row keys: stripped, blanks named by position, repeats numbered."""
    names: list[str] = []
    for i, h in enumerate(header):
        name = h.strip().lstrip("\ufeff") or f"_{i}"
        while name in names or name in ("_line",):
            name += "'"
        names.append(name)
    return names


def _canonical(
    frame: pl.DataFrame, fmt: LesNetFormat, dmap: dict[str, str], cfg: LesNetServer, cmap: dict[str, str]
) -> pl.DataFrame:
    num = cfg.numbering
    blank_to_null = {k: pl.col(k).str.strip_chars().replace("", None) for k in ("src", "dst", "direction")}
    direction = (
        blank_to_null["direction"]
        .str.to_lowercase()
        .replace_strict(dmap, default=None, return_dtype=pl.String)
    )
    start = _start_expr(pl.col("start"), fmt)
    billsec = _duration_expr(pl.col("billsec"))
    out = frame.with_columns(
        server=pl.lit(cfg.id),
        tenant=pl.lit(cfg.account or cfg.id),
        account=pl.lit(cfg.account or None, dtype=pl.String),
        extension=pl.lit(None, dtype=pl.String),
        direction=direction,
        src=blank_to_null["src"],
        dst=blank_to_null["dst"],
        rate_number=normalise_expr(blank_to_null["dst"], num.country_code, num.intl_prefix, num.trunk_prefix),
        start_utc=start,
        answer_utc=pl.when(billsec > 0).then(start).otherwise(None),
        end_utc=start + pl.duration(seconds=billsec),
        billsec=billsec,
        hangup_cause=pl.lit(None, dtype=pl.String),
        _problem=_problems(frame, start, billsec, fmt, cmap),
    )
    return conform(merge_problems(out, "_problem"))


# -- writing (the generator and the demo) -----------------------------------------------


def write_lesnet_file(path: str | Path, calls: pl.DataFrame, fmt: LesNetFormat | None = None) -> int:
    """Write canonical-like calls as a LesNet file in `fmt` (default layout); returns rows written.

    Local calls are not written: they never cross the carrier's trunk. CallID is the `call_id`
    column when present, else the part of `cdr_key` after the server id. The file is replaced
    atomically so a sandbox serving it never sends half a file.
    """
    fmt = fmt or LesNetFormat()
    cmap = column_map(fmt)
    inverse = {}
    for value, canonical in direction_map(fmt).items():
        inverse.setdefault(canonical, value)
    calls = calls.filter(pl.col("direction").is_in(["inbound", "outbound"]))
    call_id = (
        pl.col("call_id") if "call_id" in calls.columns else pl.col("cdr_key").str.splitn(":", 2).struct[1]
    )
    tz_start = pl.col("start_utc").dt.convert_time_zone(
        fmt.timezone if "%z" not in fmt.timestamp_format else "UTC"
    )
    cells = calls.select(
        call_id=call_id.cast(pl.String),
        start=tz_start.dt.strftime(fmt.timestamp_format),
        src=pl.col("src").cast(pl.String),
        dst=pl.col("dst").cast(pl.String),
        direction=pl.col("direction").replace_strict(inverse, default=None, return_dtype=pl.String),
        billsec=pl.col("billsec").cast(pl.String),
    ).fill_null("")

    by_index = not fmt.has_header or all(v.strip().isdigit() for v in cmap.values())
    order = sorted(cmap, key=lambda k: int(cmap[k])) if by_index else list(cmap)
    width = max(int(cmap[k]) for k in cmap) + 1 if by_index else len(order)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=fmt.delimiter or ",", lineterminator="\n")
    if fmt.has_header:
        writer.writerow(_place({k: cmap[k] for k in order}, cmap, width, by_index))
    columns = [cells.get_column(k).to_list() for k in order]
    for values in zip(*columns, strict=True):
        writer.writerow(_place(dict(zip(order, values, strict=True)), cmap, width, by_index))
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, target)
    return cells.height


def _place(values: dict[str, str], cmap: dict[str, str], width: int, by_index: bool) -> list[str]:
    if not by_index:
        return list(values.values())
    out = [""] * width
    for key, value in values.items():
        out[int(cmap[key])] = value
    return out


# -- the connector -----------------------------------------------------------------------


def safe_url(url: str) -> str:
    """The URL without user:password@, for messages and logs."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class LesNetConnector:
    """Download the account's CDR file when it changed and return its rows in the window."""

    def __init__(self, server_cfg: LesNetServer, settings: Any = None) -> None:
        self.cfg = server_cfg
        self.settings = settings

    @property
    def url(self) -> str:
        return self.cfg.url.replace("{account}", self.cfg.account)

    def extract(self, since: datetime | None, until: datetime, cursor: dict[str, Any] | None) -> Extracted:
        cursor = dict(cursor or {})
        headers = {"Accept": "text/plain, text/csv, */*"}
        if cursor.get("etag"):
            headers["If-None-Match"] = cursor["etag"]
        if cursor.get("last_modified"):
            headers["If-Modified-Since"] = cursor["last_modified"]
        where = f"lesnet {self.cfg.id}: {safe_url(self.url)}"
        try:
            resp = requests.get(
                self.url, headers=headers, timeout=self.cfg.timeout_seconds, verify=self.cfg.verify_tls
            )
        except requests.RequestException as exc:
            raise SourceError(f"{where}: {type(exc).__name__}") from None
        if resp.status_code == 304:
            return self._unchanged(cursor, "not modified (304)")
        if resp.status_code != 200:
            raise SourceError(f"{where}: HTTP {resp.status_code}")
        digest = hashlib.sha256(resp.content).hexdigest()
        if cursor.get("sha256") == digest:
            return self._unchanged(cursor, "content unchanged (same SHA-256)")
        new_cursor = {
            "etag": resp.headers.get("ETag"),
            "last_modified": resp.headers.get("Last-Modified"),
            "sha256": digest,
        }
        try:
            text = resp.content.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = resp.content.decode("latin-1")
        cdrs = parse_lesnet(text, self.cfg.format, self.cfg)
        return self._window(cdrs, since, until, cursor, new_cursor)

    def _unchanged(self, cursor: dict[str, Any], why: str) -> Extracted:
        return Extracted(
            cdrs=conform(pl.DataFrame(schema=CDR_SCHEMA)),
            watermark=None,
            cursor=cursor or None,
            notes=[f"lesnet {self.cfg.id}: {why}; nothing new"],
        )

    def _window(
        self,
        cdrs: pl.DataFrame,
        since: datetime | None,
        until: datetime,
        old_cursor: dict[str, Any],
        new_cursor: dict[str, Any],
    ) -> Extracted:
        """Rows that ended in [since - overlap, until), plus rows whose end is unknown (bad rows).

        Rows ending at or after `until` are held back; the old cursor is then kept so the next
        run downloads the file again and picks them up, even if the file has not changed.
        """
        end = pl.col("end_utc")
        in_window = end < until
        if since is not None:
            in_window = in_window & (end >= since - timedelta(minutes=self.cfg.overlap_minutes))
        kept = cdrs.filter(end.is_null() | in_window)
        held_back = cdrs.filter(end >= until).height
        notes = [f"lesnet {self.cfg.id}: file has {cdrs.height} rows, {kept.height} in the window"]
        cursor = new_cursor
        if held_back:
            cursor = old_cursor or None
            notes.append(
                f"lesnet {self.cfg.id}: {held_back} rows end after {until.isoformat()}; file re-read next run"
            )
        bad = kept.filter(end.is_null()).height
        if bad:
            notes.append(
                f"lesnet {self.cfg.id}: {bad} rows with an unparsable date or duration (kept for quarantine)"
            )
        watermark = kept.get_column("end_utc").max() if kept.height else None
        return Extracted(cdrs=kept, watermark=watermark, cursor=cursor, notes=notes)
