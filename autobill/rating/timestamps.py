"""Call start times: ISO-8601 text with an offset or `Z` -> UTC instants, for millions of rows.

RATING.md: `start` is "ISO-8601 with offset or Z". The rule applied here is exactly Python's
`datetime.fromisoformat` (3.11) on the text with surrounding white space removed, and the result
must carry an offset: text without one (`2024-03-01T12:00:00`) is unparsable, because the
instant it names is unknown. Python's reading is the reference because it is what an operator
checking a row by hand, or a script beside Autobill, would use.

Speed: most CDR exports write one fixed layout (`YYYY-MM-DD[T ]hh:mm:ss[.ffffff](Z|+hh:mm)`),
which is parsed here by slicing and integer arithmetic, vectorised; any other text (week dates,
`+0200`, basic format, 7+ fraction digits, odd years, out-of-range fields) goes to
`fromisoformat` row by row, so the two paths cannot disagree on what they both accept.

Typed parquet columns: a time-zone-aware datetime is used as is; a naive one is treated like
text without an offset (unknown instant), and so is a date.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl

UTC_US = pl.Datetime("us", "UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

FAST_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:[0-9]{2})$"


def parse_instant(text: str | None) -> datetime | None:
    """The scalar rule: fromisoformat on stripped text, offset required; None when unparsable."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
        if moment.tzinfo is None or moment.utcoffset() is None:
            return None
        return moment.astimezone(UTC)
    except (ValueError, OverflowError, TypeError):
        return None


def _micros(text: str | None) -> int | None:
    moment = parse_instant(text)
    return None if moment is None else (moment - _EPOCH) // _US


def _days_from_civil(y: pl.Expr, m: pl.Expr, d: pl.Expr) -> pl.Expr:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm), for y >= 1."""
    y = y - (m <= 2).cast(pl.Int64)
    era = y // 400
    yoe = y - era * 400
    mp = pl.when(m > 2).then(m - 3).otherwise(m + 9)
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _fast(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Adds `us` (micros since epoch) and `ok` for text `t` in the common layout (else ok=False).

    Two stages of plain columns, so each slice is cut once (no reliance on CSE)."""
    t = pl.col("t")

    def part(start: int, length: int) -> pl.Expr:
        return t.str.slice(start, length).cast(pl.Int64, strict=False)

    n = t.str.len_bytes()
    zulu = t.str.ends_with("Z")
    frac_len = pl.when(zulu).then(n - 21).otherwise(n - 26).clip(0)
    stage1 = frame.with_columns(
        t.str.contains(FAST_PATTERN).fill_null(False).alias("shape"),
        part(0, 4).alias("y"),
        part(5, 2).alias("mo"),
        part(8, 2).alias("d"),
        part(11, 2).alias("h"),
        part(14, 2).alias("mi"),
        part(17, 2).alias("se"),
        zulu.alias("z"),
        pl.when(t.str.slice(19, 1) == ".")
        .then(t.str.slice(20, frac_len).str.pad_end(6, "0").cast(pl.Int64, strict=False))
        .otherwise(0)
        .alias("f"),
        t.str.slice(-6).alias("off"),
    ).with_columns(
        pl.col("off").str.slice(1, 2).cast(pl.Int64, strict=False).alias("oh"),
        pl.col("off").str.slice(4, 2).cast(pl.Int64, strict=False).alias("om"),
        pl.when(pl.col("off").str.starts_with("-")).then(-1).otherwise(1).alias("sign"),
    )
    y, mo, d = pl.col("y"), pl.col("mo"), pl.col("d")
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    dim = (
        pl.when(mo == 2)
        .then(pl.when(leap).then(29).otherwise(28))
        .when(mo.is_in([4, 6, 9, 11]))
        .then(30)
        .otherwise(31)
    )
    ok = (
        pl.col("shape")
        & y.is_between(1900, 2999)
        & mo.is_between(1, 12)
        & (d >= 1)
        & (d <= dim)
        & (pl.col("h") <= 23)
        & (pl.col("mi") <= 59)
        & (pl.col("se") <= 59)
        & (pl.col("z") | ((pl.col("oh") <= 23) & (pl.col("om") <= 59)))
    ).fill_null(False)
    off_s = pl.when(pl.col("z")).then(0).otherwise(pl.col("sign") * (pl.col("oh") * 3600 + pl.col("om") * 60))
    seconds = _days_from_civil(y, mo, d) * 86400 + pl.col("h") * 3600 + pl.col("mi") * 60 + pl.col("se") - off_s
    return stage1.select("t", (seconds * 1_000_000 + pl.col("f")).alias("us"), ok.alias("ok"))


def _word(chars: str) -> int:
    """The little-endian integer of ASCII `chars` (the first char in the lowest byte)."""
    return int.from_bytes(chars.encode("ascii"), "little")


# Byte templates of `YYYY-MM-DD?HH:MM:SS` in three words (bytes 0-7, 8-15, 16-19 with the last
# byte, the zone, not tested here), and of the offset `hh:mm` in bytes 20-24 (a fourth word, bytes
# 17-24, whose first three bytes are not tested here): "0" where a digit goes, the separator itself elsewhere. `x = word - low` then
# leaves the digit values in digit bytes and 0 in separator bytes, and a row is in the layout when
# no byte of `(x + add) | x` has its top bit set (`add` is 0x76 for a digit byte, so a value
# above 9 sets it, and 0x7F for a separator byte, so anything but 0 sets it). A byte below its
# template byte borrows and gets the top bit, and the lowest bad byte is always seen exactly
# (borrows and carries only move upwards), so the test is exact. u64 arithmetic wraps in polars.
_LOW0, _ADD0 = _word("0000-00-"), _word("\x76\x76\x76\x76\x7f\x76\x76\x7f")
_LOW1, _ADD1 = _word("00\x0000:00"), _word("\x76\x76\x00\x76\x76\x7f\x76\x76")  # byte 2: `sep`
_LOW2, _ADD2 = _word(":00\x00"), _word("\x7f\x76\x76\x7f")
_TOP8, _TOP3 = 0x8080808080808080, 0x808080  # _TOP3: the 4th byte of x2 is the zone
# Bytes 0-2 of the fourth word (`ss+`) have template 0: no borrow starts there, none is tested.
_LOW3, _ADD3 = _word("\x00\x00\x0000:00"), _word("\x00\x00\x00\x76\x76\x7f\x76\x76")
_TOP_OFFSET = 0x8080808080000000


def _field(word: pl.Expr, i: int) -> pl.Expr:
    """Byte i of a word (polars has no shift operator: a division by a power of two)."""
    return (word // (1 << (8 * i)) % 256).reinterpret(signed=True)


def _pairs(x: pl.Expr) -> pl.Expr:
    """SWAR: with digit values in the bytes of x, byte i of the result is 10 * byte i + byte i+1."""
    return x * 10 + x // 256


# Days from 1970-01-01 to the first of each month of 1900-2999, and the length of each month:
# a lookup instead of calendar arithmetic on every row.
_FIRST_YEAR, _LAST_YEAR = 1900, 2999


def _month_tables() -> tuple[pl.Series, pl.Series]:
    from datetime import date

    firsts = pl.date_range(date(_FIRST_YEAR, 1, 1), date(_LAST_YEAR + 1, 1, 1), "1mo", eager=True).cast(pl.Int64)
    return firsts.head(-1).alias("first"), firsts.diff().tail(-1).alias("days")


_MONTH_FIRST, _MONTH_DAYS = _month_tables()


def _bytes_fast(series: pl.Series) -> pl.Series:
    """Micros since the epoch for text exactly `YYYY-MM-DD[T ]hh:mm:ss(Z|+hh:mm|-hh:mm)` (20 or 25
    bytes, year 1900-2999, valid fields), null for anything else. No string is cut: the bytes are
    read as integers (see _LOW0), which is several times faster than slicing text."""
    b = pl.col("t").cast(pl.Binary)

    def word(start: int, size: int, dtype: pl.DataType) -> pl.Expr:
        return b.bin.slice(start, size).bin.reinterpret(dtype=dtype, endianness="little")

    u64 = pl.UInt64()
    x0, x1, x2, x3 = pl.col("x0"), pl.col("x1"), pl.col("x2"), pl.col("x3")
    head = pl.col("head")
    # Separator and zone bytes are read from the words, not cut out: below a byte, a borrow only
    # comes from a byte out of its layout, and that row fails the test anyway.
    stage1 = (
        pl.DataFrame({"t": series})
        .lazy()
        .with_columns(word(0, 16, pl.Array(u64, 2)).alias("head"))
        .select(
            pl.col("t").str.len_bytes().alias("n"),
            (head.arr.get(0, null_on_oob=True) - pl.lit(_LOW0, dtype=u64)).alias("x0"),
            (head.arr.get(1, null_on_oob=True) - pl.lit(_LOW1, dtype=u64)).alias("x1"),
            (word(16, 4, pl.UInt32()).cast(u64) - pl.lit(_LOW2, dtype=u64)).alias("x2"),
            (word(17, 8, u64) - pl.lit(_LOW3, dtype=u64)).alias("x3"),  # null unless 25 bytes
        )
        .with_columns(_field(x1, 2).alias("sep"), _field(x2, 3).alias("tz"))
    )
    zulu = (pl.col("n") == 20) & (pl.col("tz") == ord("Z"))
    signed = (pl.col("n") == 25) & pl.col("tz").is_in([ord("+"), ord("-")])
    stage2 = stage1.select(
        (
            (((x0 + _ADD0) | x0) & _TOP8 == 0)
            & (((x1 + _ADD1) | x1) & _TOP8 == 0)
            & (((x2 + _ADD2) | x2) & _TOP3 == 0)
            & pl.col("sep").is_in([ord("T"), ord(" ")])
            & (zulu | (signed & (((x3 + _ADD3) | x3) & _TOP_OFFSET == 0)))
        ).alias("shaped"),
        zulu.alias("z"),
        (pl.col("tz") == ord("-")).alias("neg"),
        _pairs(x0).alias("p0"),  # bytes 0, 2: the year's two halves; byte 5: the month
        _pairs(x1 & 0xFFFFFFFFFF00FFFF).alias("p1"),  # byte 0: day, 3: hour, 6: minute (byte 2, `sep`, masked)
        _pairs(x2 & 0xFFFFFF).alias("p2"),  # byte 1: second (byte 3, the zone, masked)
        _pairs(x3 & 0xFFFFFFFFFF000000).alias("p3"),  # byte 3: offset hours, 6: minutes (`ss+` masked)
    )
    p0, p1, p2, p3 = pl.col("p0"), pl.col("p1"), pl.col("p2"), pl.col("p3")
    stage3 = stage2.select(
        "shaped",
        "z",
        "neg",
        _field(p3, 3).alias("oh"),
        _field(p3, 6).alias("om"),
        (_field(p0, 0) * 100 + _field(p0, 2)).alias("y"),
        _field(p0, 5).alias("mo"),
        _field(p1, 0).alias("d"),
        _field(p1, 3).alias("h"),
        _field(p1, 6).alias("mi"),
        _field(p2, 1).alias("se"),
    )
    y, mo, d, h, mi, se, oh, om = (pl.col(c) for c in ("y", "mo", "d", "h", "mi", "se", "oh", "om"))
    month = ((y - _FIRST_YEAR) * 12 + mo - 1).clip(0, _MONTH_FIRST.len() - 1)
    ok = (
        pl.col("shaped")
        & y.is_between(_FIRST_YEAR, _LAST_YEAR)
        & mo.is_between(1, 12)
        & (d >= 1)
        & (d <= pl.lit(_MONTH_DAYS).gather(month))
        & (h <= 23)
        & (mi <= 59)
        & (se <= 59)
        & (pl.col("z") | ((oh <= 23) & (om <= 59)))
    ).fill_null(False)
    off_s = pl.when(pl.col("z")).then(0).otherwise((oh * 3600 + om * 60) * pl.when(pl.col("neg")).then(-1).otherwise(1))
    seconds = (pl.lit(_MONTH_FIRST).gather(month) + d - 1) * 86400 + h * 3600 + mi * 60 + se - off_s
    return stage3.select(pl.when(ok).then(seconds * 1_000_000).alias("us")).collect().get_column("us")


def parse_starts(series: pl.Series) -> pl.Series:
    """UTC instants (Datetime us UTC) for a `start` column; null where it does not parse."""
    dtype = series.dtype
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return pl.Series(series.name, [None] * series.len(), dtype=UTC_US)
        return series.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if dtype != pl.String:
        return pl.Series(series.name, [None] * series.len(), dtype=UTC_US)
    us = _bytes_fast(series)
    rest = us.is_null() & series.is_not_null()
    if rest.any():  # other layouts, white space, fractions: sliced text, then Python
        idx = rest.arg_true()
        us = us.scatter(idx, _text_path(series.gather(idx)))
    return us.cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias(series.name)


def _text_path(series: pl.Series) -> pl.Series:
    """Micros (Int64) for any text: the sliced-text fast layout, else fromisoformat row by row."""
    lazy = pl.DataFrame({"t": series}).lazy().select(pl.col("t").str.strip_chars())
    parsed = _fast(lazy).select(
        "t",
        pl.when(pl.col("ok")).then(pl.col("us")).alias("us"),
        (~pl.col("ok") & pl.col("t").is_not_null()).alias("slow"),
    ).collect()
    us = parsed.get_column("us")
    slow = parsed.get_column("slow")
    if slow.any():
        idx = slow.arg_true()
        texts = parsed.get_column("t").gather(idx).to_list()
        cache = {t: _micros(t) for t in set(texts)}  # exports repeat the same odd layout
        us = us.scatter(idx, pl.Series([cache[t] for t in texts], dtype=pl.Int64))
    return us
