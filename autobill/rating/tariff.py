"""Loading and validating a tariff (RATING.md "Tariff columns"), CSV or parquet.

A tariff that is wrong in one row must not rate anything: the loader stops at the first bad row
(in file order; within a row, in column order) with one line naming the file, row and column.

Readings where RATING.md is silent, as a billing engineer would choose:
- Values are trimmed of surrounding spaces. `prefix` is 1-15 ASCII digits (no `+`).
- `rate` / `connect_fee`: plain decimal text, at most 6 digits after the point, no sign, no
  exponent; trailing zeros count as written (`0.1000000` has 7 decimals and is refused). A
  parquet column may be text, integer, decimal (its value must fit 6 decimals) or float (its
  shortest text form is used, so 0.1 reads as `0.1`, never as the binary approximation).
- `first_increment` / `next_increment`: ASCII digits only, >= 1 (and < 2^63).
- `effective_from`: anything Python's `datetime.fromisoformat` reads (date or date-time, with
  or without offset); no offset means UTC. An empty value means "always". Two rows with the same
  prefix and the same instant (`2024-01-01` equals `2024-01-01T00:00:00Z`) are an error, and so
  are two rows of a prefix that both leave it empty.
- An empty tariff (header only) is valid: nothing matches.
- The version of a tariff is a hash of its validated content (not of the file bytes), so the
  same prices saved as CSV or as parquet have the same version.

Nightly extensions (`bands=True`, used by the nightly rater, never by `autobill rate`): optional
columns `days` / `hours` (see bands.py) and `class` (the charge class of calls matched by the
row). Rows with the same prefix and effective_from may then differ by band; their bands must not
overlap, and a banded row beats an unbanded one where both apply.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from autobill.rating import bands
from autobill.rating.exact import DECIMAL_PATTERN, INTEGER_PATTERN, decimal_micro_expr, micro_text_expr
from autobill.rating.io import InputError, read_table, require_columns, row_error
from autobill.rating.timestamps import UTC_US

if TYPE_CHECKING:  # numpy is imported by the banded path only: `autobill rate` does not pay for it
    import numpy as np

REQUIRED = ("prefix", "rate")
OPTIONAL = ("description", "connect_fee", "first_increment", "next_increment", "effective_from")
BAND_COLUMNS = ("days", "hours", "class")
MAX_PREFIX_DIGITS = 15
_I64_MAX = 2**63 - 1


class TariffError(InputError):
    """A tariff that cannot be used (one line: file, row, column, problem)."""


@dataclass(frozen=True)
class LoadedTariff:
    """A validated tariff, ready for the matcher.

    `rows` has one row per tariff line: `_tid` (0-based line index), `prefix`, `_len`, `_key`
    (the prefix digits as an integer; unique together with `_len`), `effective_from` (UTC, null =
    always), `rate_micro` / `connect_micro` (Int128 micro-units), `rate` / `connect_fee` (the
    same as text with exactly 6 decimals), `first_increment`, `next_increment`, `description`,
    `class`, `_band` (index into `band_masks`, null = always)."""

    name: str
    path: Path | None
    version: str
    rows: pl.DataFrame
    currency: str = "USD"
    timezone: str | None = None
    band_masks: np.ndarray | None = None  # shape (n_bands, WEEK_MINUTES)
    lengths: tuple[int, ...] = field(default=())

    @property
    def has_bands(self) -> bool:
        return self.band_masks is not None and len(self.band_masks) > 0


def _as_text(series: pl.Series) -> pl.Series:
    """Column values as trimmed text, for validation (see the module docstring for types)."""
    dtype = series.dtype
    if dtype == pl.String:
        out = series
    elif isinstance(dtype, pl.Decimal):
        out = series.cast(pl.String).str.replace(r"(\.[0-9]*?)0+$", "$1").str.replace(r"\.$", "")
    elif dtype.is_float():
        # Shortest round-trip text in positional notation: 0.1 -> "0.1", 1e-06 -> "0.000001".
        texts = {v: (format(Decimal(repr(v)), "f") if math.isfinite(v) else repr(v)) for v in series.drop_nulls().unique()}
        out = series.replace_strict(list(texts), list(texts.values()), default=None, return_dtype=pl.String)
    elif dtype.is_numeric() or dtype == pl.Boolean:
        out = series.cast(pl.String)
    elif isinstance(dtype, pl.Datetime | pl.Date):
        out = series.cast(pl.String)
    else:
        out = series.cast(pl.String, strict=False)
    return out.str.strip_chars().alias(series.name)


def _parse_effective(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _effective_column(series: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(effective_from as UTC instants, bad-value flags) for the raw column."""
    dtype = series.dtype
    no_bad = pl.Series("bad", [False] * series.len(), dtype=pl.Boolean)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            return series.dt.cast_time_unit("us").dt.replace_time_zone("UTC"), no_bad
        return series.dt.convert_time_zone("UTC").dt.cast_time_unit("us"), no_bad
    if dtype == pl.Date:
        return series.cast(pl.Datetime("us")).dt.replace_time_zone("UTC"), no_bad
    text = _as_text(series)
    parsed: dict[str, datetime | None] = {}
    for value in text.unique().to_list():
        if value is None or value == "":
            continue
        try:
            parsed[value] = _parse_effective(value)
        except (ValueError, OverflowError):
            parsed[value] = None
    good = {k: v for k, v in parsed.items() if v is not None}
    bad = text.is_in([k for k, v in parsed.items() if v is None])
    lookup = pl.DataFrame(
        {"k": list(good), "v": list(good.values())}, schema={"k": pl.String, "v": UTC_US}
    )
    values = pl.DataFrame({"k": text}).join(lookup, on="k", how="left", maintain_order="left").get_column("v")
    return values.alias(series.name), bad.fill_null(False)


def _checks(t: pl.DataFrame) -> list[tuple[str, pl.Expr, pl.Expr]]:
    """(column, bad-row expression, message expression) in column order."""

    def empty(c: str) -> pl.Expr:
        return pl.col(c).is_null() | (pl.col(c) == "")

    def decimal(c: str, required: bool) -> list[tuple[str, pl.Expr, pl.Expr]]:
        if c not in t.columns:
            return []
        txt = pl.col(c)
        out = []
        if required:
            out.append((c, empty(c), pl.lit("required value is empty")))
        out.append((
            c,
            ~empty(c) & txt.str.starts_with("-"),
            pl.lit("must be >= 0: ") + txt,
        ))
        out.append((
            c,
            ~empty(c) & ~txt.str.contains(DECIMAL_PATTERN),
            pl.lit("not a decimal number with at most 6 decimals (and 25 digits before the point): ") + txt,
        ))
        return out

    def integer(c: str) -> list[tuple[str, pl.Expr, pl.Expr]]:
        if c not in t.columns:
            return []
        txt = pl.col(c)
        value = txt.cast(pl.Int64, strict=False)
        bad = ~empty(c) & (~txt.str.contains(INTEGER_PATTERN) | value.is_null() | (value < 1))
        return [(c, bad, pl.lit("not a whole number of seconds >= 1: ") + txt)]

    prefix = pl.col("prefix")
    checks = [
        ("prefix", empty("prefix"), pl.lit("required value is empty")),
        (
            "prefix",
            ~prefix.str.contains(rf"^[0-9]{{1,{MAX_PREFIX_DIGITS}}}$"),
            pl.lit("not a prefix of 1-15 digits: ") + prefix,
        ),
    ]
    checks += decimal("rate", True)
    checks += decimal("connect_fee", False)
    checks += integer("first_increment")
    checks += integer("next_increment")
    if "_eff_bad" in t.columns:
        checks.append(
            ("effective_from", pl.col("_eff_bad"), pl.lit("not an ISO date or date-time: ") + pl.col("effective_from"))
        )
    return checks


def _first_error(t: pl.DataFrame, path: Path | str) -> None:
    checks = _checks(t)
    flags = t.select([bad.fill_null(False).alias(f"b{i}") for i, (_, bad, _) in enumerate(checks)])
    any_bad = flags.select(pl.any_horizontal(pl.all()).alias("x")).get_column("x") if checks else None
    if any_bad is None or not any_bad.any():
        return
    idx = int(any_bad.arg_true()[0])
    row = flags.row(idx)
    for i, (column, _, message) in enumerate(checks):
        if row[i]:
            text = t[idx].select(message.alias("m")).item()
            raise TariffError(row_error(path, idx, column, text).args[0])


def _band_ids(t: pl.DataFrame, path: Path | str) -> tuple[pl.Series, np.ndarray]:
    """Per row: the index of its band (null = no band), and the band masks."""
    import numpy as np

    days = t.get_column("days") if "days" in t.columns else pl.Series([None] * t.height, dtype=pl.String)
    hours = t.get_column("hours") if "hours" in t.columns else pl.Series([None] * t.height, dtype=pl.String)
    keys: dict[tuple[str, str], int] = {}
    masks: list[np.ndarray] = []
    ids: list[int | None] = []
    for i, (d, h) in enumerate(zip(days.to_list(), hours.to_list(), strict=True)):
        d = (d or "").strip()
        h = (h or "").strip()
        if not d and not h:
            ids.append(None)
            continue
        key = (d.lower().replace(" ", ""), h.replace(" ", ""))
        if key not in keys:
            try:
                mask = bands.band_mask(d, h)
            except bands.BandError as exc:
                column = "days" if d and _fails(bands.parse_days, d) else "hours"
                raise TariffError(row_error(path, i, column, str(exc)).args[0]) from None
            keys[key] = len(masks)
            masks.append(mask)
        ids.append(keys[key])
    return pl.Series("_band", ids, dtype=pl.Int32), np.array(masks, dtype=bool).reshape(len(masks), bands.WEEK_MINUTES)


def _fails(fn, value: str) -> bool:
    try:
        fn(value)
        return False
    except bands.BandError:
        return True


def _check_unique(rows: pl.DataFrame, path: Path | str, masks: np.ndarray | None, eff_given: bool) -> None:
    column = "effective_from" if eff_given else "prefix"
    dup = rows.select(pl.struct("prefix", "effective_from", "_band").is_duplicated().alias("d")).get_column("d")
    unbanded_dup = dup & rows.get_column("_band").is_null()
    if unbanded_dup.any():
        idx = _second(rows, unbanded_dup)
        raise TariffError(
            row_error(path, idx, column, f"a second row for prefix {rows['prefix'][idx]} with the same effective_from").args[0]
        )
    if masks is None or rows.get_column("_band").null_count() == rows.height:
        return
    import numpy as np

    banded = rows.filter(pl.col("_band").is_not_null())
    groups = banded.group_by("prefix", "effective_from").agg("_tid", "_band").filter(pl.col("_tid").list.len() > 1)
    worst: int | None = None
    for tids, bids in zip(groups.get_column("_tid").to_list(), groups.get_column("_band").to_list(), strict=True):
        order = sorted(zip(tids, bids, strict=True))
        seen = np.zeros(bands.WEEK_MINUTES, dtype=bool)
        for tid, bid in order:
            if (seen & masks[bid]).any():
                worst = tid if worst is None else min(worst, tid)
                break
            seen |= masks[bid]
    if worst is not None:
        raise TariffError(
            row_error(path, worst, "hours", "its days/hours overlap another row of the same prefix and effective_from").args[0]
        )


def _second(rows: pl.DataFrame, dup_mask: pl.Series) -> int:
    """The first row that repeats an earlier (prefix, effective_from) pair."""
    keyed = rows.filter(dup_mask).select("_tid", "prefix", "effective_from", "_band")
    later = keyed.filter(~pl.struct("prefix", "effective_from", "_band").is_first_distinct())
    return int(later.get_column("_tid").min())


def _version(rows: pl.DataFrame, extra: list[str]) -> str:
    """A hash of the validated content in a canonical order (the file's row order does not count)."""
    columns = ["prefix", "effective_from", "rate", "connect_fee", "first_increment", "next_increment", "description", *extra]
    canonical = rows.select(columns).sort(["prefix", "effective_from", *extra], nulls_last=True)
    text = canonical.select(
        pl.concat_str(
            [pl.col(c).cast(pl.String).fill_null("\x00") for c in columns], separator="\x1f"
        ).str.join("\n")
    ).item()
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


def tariff_from_frame(
    raw: pl.DataFrame,
    *,
    source: str | Path = "<tariff>",
    name: str | None = None,
    currency: str = "USD",
    timezone: str | None = None,
    with_bands: bool = False,
) -> LoadedTariff:
    """Validate a tariff table already read into a frame (see the module docstring)."""
    require_columns(raw, source, REQUIRED)
    present = [c for c in (*REQUIRED, *OPTIONAL) if c in raw.columns]
    extra = [c for c in BAND_COLUMNS if with_bands and c in raw.columns]
    t = raw.select([_as_text(raw.get_column(c)) for c in present] + [pl.col(c) for c in extra])
    if "effective_from" in raw.columns:
        eff, eff_bad = _effective_column(raw.get_column("effective_from"))
        t = t.with_columns(eff_bad.alias("_eff_bad"))
    else:
        eff = pl.Series("effective_from", [None] * raw.height, dtype=UTC_US)
    _first_error(t.select([c for c in t.columns if c not in BAND_COLUMNS]), source)

    def text_or(c: str, default: pl.Expr) -> pl.Expr:
        if c not in t.columns:
            return default
        return pl.when(pl.col(c).is_null() | (pl.col(c) == "")).then(default).otherwise(pl.col(c))

    first = text_or("first_increment", pl.lit("1")).cast(pl.Int64)
    rows = t.select(
        pl.int_range(pl.len(), dtype=pl.UInt32).alias("_tid"),
        pl.col("prefix"),
        pl.col("prefix").str.len_bytes().cast(pl.Int32).alias("_len"),
        pl.col("prefix").cast(pl.UInt64).alias("_key"),
        decimal_micro_expr(pl.col("rate")).alias("rate_micro"),
        decimal_micro_expr(text_or("connect_fee", pl.lit("0"))).alias("connect_micro"),
        first.alias("first_increment"),
        text_or("next_increment", first.cast(pl.String)).cast(pl.Int64).alias("next_increment"),
        (pl.col("description") if "description" in t.columns else pl.lit(None, dtype=pl.String)).alias("description"),
        (pl.col("class").str.strip_chars() if "class" in extra else pl.lit(None, dtype=pl.String)).alias("class"),
    ).with_columns(
        eff.alias("effective_from"),
        micro_text_expr(pl.col("rate_micro")).alias("rate"),
        micro_text_expr(pl.col("connect_micro")).alias("connect_fee"),
    )
    rows = rows.with_columns(pl.when(pl.col("class") == "").then(None).otherwise(pl.col("class")).alias("class"))
    masks = None
    if with_bands and ("days" in raw.columns or "hours" in raw.columns):
        band_ids, masks = _band_ids(t, source)
        rows = rows.with_columns(band_ids)
    else:
        rows = rows.with_columns(pl.lit(None, dtype=pl.Int32).alias("_band"))
    _check_unique(rows, source, masks, "effective_from" in raw.columns)
    version_extra = ["class"] + (["days", "hours"] if masks is not None else [])
    versioned = rows.with_columns([t.get_column(c) for c in ("days", "hours") if masks is not None and c in t.columns])
    for c in ("days", "hours"):
        if masks is not None and c not in versioned.columns:
            versioned = versioned.with_columns(pl.lit(None, dtype=pl.String).alias(c))
    return LoadedTariff(
        name=name or Path(str(source)).stem,
        path=Path(str(source)) if not str(source).startswith("<") else None,
        version=_version(versioned, version_extra),
        rows=rows,
        currency=currency,
        timezone=timezone,
        band_masks=masks if masks is not None and len(masks) else None,
        lengths=tuple(sorted(set(rows.get_column("_len").to_list()), reverse=True)),
    )


def load_tariff(
    path: str | Path,
    *,
    name: str | None = None,
    currency: str = "USD",
    timezone: str | None = None,
    with_bands: bool = False,
) -> LoadedTariff:
    """Read and validate a tariff file; raises TariffError / InputError with a one-line message."""
    try:
        raw = read_table(path)
        return tariff_from_frame(
            raw, source=path, name=name, currency=currency, timezone=timezone, with_bands=with_bands
        )
    except InputError as exc:
        raise TariffError(str(exc)) from None


def effective_from_text(moment: date | datetime | None) -> str:
    """How effective_from values are shown (reports, tests)."""
    return "" if moment is None else moment.isoformat()
