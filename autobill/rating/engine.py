"""The `autobill rate` rater (RATING.md), vectorised with polars.

One output row per input row, in input order: every input column unchanged, then `status`,
`e164`, `matched_prefix`, `description`, `billable_seconds`, `rate`, `connect_fee`, `cost`.

Readings where RATING.md is silent (a telecom billing engineer's choices):
- `billsec`: ASCII digits with optional surrounding spaces (no sign, no decimal point, no
  exponent); any length (a huge value is rated exactly, not rejected). In parquet, an integer
  column is used as is (negative: invalid) and a float or decimal column counts when its value is
  a whole number. `start`: see timestamps.py (offset required).
- `cdr_id` duplicates compare the value exactly as read (no trimming); an empty/missing id is a
  value like any other, so the second row without an id is a `duplicate`.
- Columns besides `cost` are filled whenever they can be determined, whatever the status:
  `e164` whenever the number normalises; `matched_prefix`, `description`, `rate` and
  `connect_fee` whenever the number and start find a tariff row in effect (also for `duplicate`
  and `unanswered` rows, to show what would apply); `billable_seconds` is 0 when billsec is 0,
  the increment-rounded seconds when billsec > 0 and a row matched, else empty. `cost` follows
  RATING.md: the cost for `rated`, `0.000000` for `unanswered`, empty otherwise.
- `rate` and `connect_fee` are the tariff's values written with exactly 6 decimals, like `cost`
  (`0.01` -> `0.010000`, connect_fee default `0.000000`); `description` is empty when the row
  has none.
- An input column named like an output column (say a file that was rated before) is replaced
  by the freshly computed one, at the end.
- Empty values are empty text in CSV and nulls in parquet. In parquet the appended columns are
  text, except `billable_seconds`, which is Int64 (text if a value does not fit in Int64).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import polars as pl

from autobill.numbering import normalise_expr
from autobill.rating import exact
from autobill.rating.io import InputError, read_table, require_columns, write_table
from autobill.rating.match import match
from autobill.rating.tariff import LoadedTariff, load_tariff
from autobill.rating.timestamps import parse_starts

CDR_REQUIRED = ("cdr_id", "start", "billsec", "dst")
OUTPUT_COLUMNS = (
    "status",
    "e164",
    "matched_prefix",
    "description",
    "billable_seconds",
    "rate",
    "connect_fee",
    "cost",
)
STATUSES = ("rated", "unanswered", "no_rate", "invalid_number", "invalid", "duplicate")
# Above this, billsec takes the exact Python path (see exact.py); below, Int128 is safe.
_BIG_SECONDS = 10**30
I128 = pl.Int128()


@dataclass(frozen=True)
class Numbering:
    country_code: str = "1"
    intl_prefix: str | None = None
    trunk_prefix: str | None = None


def parse_markup(text: str | Decimal | int) -> Decimal:
    """A markup percent: a finite decimal >= -100 (below, calls would pay the client)."""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise ValueError(f"--markup: not a decimal percent: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"--markup: not a finite percent: {text!r}")
    if value < -100:
        raise ValueError(f"--markup: {value} is below -100 %, which would make calls pay the client")
    return value


def _billsec(series: pl.Series) -> pl.DataFrame:
    """Columns `_s_ok` (valid integer >= 0), `_s` (Int128 when below 10^30), `_s_txt` (digits)."""
    dtype = series.dtype
    if isinstance(dtype, pl.Decimal):  # a whole decimal value counts: 12.000 -> 12
        series = series.cast(pl.String).str.replace(r"\.0*$", "")
        dtype = pl.String()
    if dtype == pl.String:
        txt = series.str.strip_chars()
        frame = pl.DataFrame({"t": txt}).select(
            pl.col("t").str.contains(exact.INTEGER_PATTERN).fill_null(False).alias("_s_ok"),
            pl.col("t").str.strip_chars_start("0").alias("_d"),
        )
        digits = pl.when(pl.col("_d") == "").then(pl.lit("0")).otherwise(pl.col("_d"))
        frame = frame.select(
            "_s_ok",
            pl.when(pl.col("_s_ok")).then(digits).alias("_s_txt"),
        ).with_columns(
            pl.when(pl.col("_s_ok") & (pl.col("_s_txt").str.len_bytes() <= 30))
            .then(pl.col("_s_txt").cast(I128, strict=False))
            .alias("_s")
        )
        return frame
    if dtype.is_integer():
        ok = series.is_not_null() & (series >= 0)
    elif dtype.is_float():
        ok = series.is_not_null() & series.is_finite() & (series >= 0) & (series < 1e30) & (series == series.floor())
    else:
        ok = pl.Series([False] * series.len())
    ok = ok.fill_null(False)
    frame = pl.DataFrame({"_s_ok": ok, "v": series})
    value = pl.col("v").cast(pl.Int128, strict=False)
    return frame.select(
        "_s_ok",
        pl.when(pl.col("_s_ok")).then(value.cast(pl.String)).alias("_s_txt"),
        pl.when(pl.col("_s_ok")).then(value).alias("_s"),
    )


def _status() -> pl.Expr:
    return (
        pl.when(pl.col("_dup"))
        .then(pl.lit("duplicate"))
        .when(pl.col("_start").is_null() | ~pl.col("_s_ok"))
        .then(pl.lit("invalid"))
        .when(pl.col("_e164").is_null())
        .then(pl.lit("invalid_number"))
        .when(pl.col("_s_txt") == "0")
        .then(pl.lit("unanswered"))
        .when(pl.col("_tid").is_null())
        .then(pl.lit("no_rate"))
        .otherwise(pl.lit("rated"))
    )


def rate_cdrs(
    cdrs: pl.DataFrame,
    tariff: LoadedTariff,
    *,
    numbering: Numbering = Numbering(),
    markup: Decimal = Decimal(0),
    source: str | Path = "<cdrs>",
) -> pl.DataFrame:
    """Rate a CDR table (RATING.md "CDR columns") against a tariff; see the module docstring."""
    require_columns(cdrs, source, CDR_REQUIRED)
    a, d = exact.cost_fraction(markup)
    dst = cdrs.get_column("dst")
    work = pl.DataFrame(
        {
            "_row": pl.int_range(cdrs.height, dtype=pl.UInt32, eager=True),
            "_dup": ~cdrs.get_column("cdr_id").is_first_distinct(),
            "_start": parse_starts(cdrs.get_column("start")),
            "_dst": dst if dst.dtype == pl.String else dst.cast(pl.String, strict=False),
        }
    ).hstack(_billsec(cdrs.get_column("billsec")))
    e164 = normalise_expr(pl.col("_dst"), numbering.country_code, numbering.intl_prefix, numbering.trunk_prefix)
    work = work.lazy().with_columns(e164.alias("_e164")).collect()  # lazy: polars evaluates shared parts once
    found = match(work, tariff)
    t = tariff.rows.select(
        "_tid", "prefix", "description", "rate", "connect_fee", "rate_micro", "connect_micro",
        "first_increment", "next_increment",
    )
    work = (
        work.join(found, on="_row", how="left", maintain_order="left")
        .join(t, on="_tid", how="left", maintain_order="left")
        .with_columns(_status().alias("status"))
    )
    big = pl.col("_s_ok") & (pl.col("_s").is_null() | (pl.col("_s") >= exact.lit128(_BIG_SECONDS)))
    b = exact.billable_expr(pl.col("_s"), pl.col("first_increment"), pl.col("next_increment"))
    work = work.with_columns(
        pl.when(pl.col("_s_txt") == "0")
        .then(exact.lit128(0))
        .when(pl.col("_tid").is_not_null() & ~big.fill_null(False))
        .then(b)
        .alias("_b"),
        big.fill_null(False).alias("_big"),
    )
    rated = pl.col("status") == "rated"
    costs = exact.cost_text(
        work.with_columns(pl.when(rated).then(pl.col("_b")).alias("_b_rated")),
        seconds="_b_rated",
        rate="rate_micro",
        connect="connect_micro",
        a=a,
        d=d,
    )
    work = work.with_columns(
        costs.alias("_cost"),
        pl.col("_b").cast(pl.String).alias("_b_txt"),
    )
    work = _big_rows(work, a, d)
    appended = work.select(
        "status",
        pl.col("_e164").alias("e164"),
        pl.col("prefix").alias("matched_prefix"),
        "description",
        pl.col("_b_txt").alias("billable_seconds"),
        "rate",
        "connect_fee",
        pl.when(pl.col("status") == "unanswered").then(pl.lit("0.000000")).otherwise(pl.col("_cost")).alias("cost"),
    )
    kept = cdrs.drop([c for c in OUTPUT_COLUMNS if c in cdrs.columns])
    return kept.hstack(appended)


def _big_rows(work: pl.DataFrame, a: int, d: int) -> pl.DataFrame:
    """Billable seconds and cost of matched rows whose billsec is too big for Int128, in Python."""
    sel = work.select((pl.col("_big") & pl.col("_tid").is_not_null()).alias("x")).get_column("x")
    if not sel.any():
        return work
    idx = sel.arg_true()
    rows = work.select("_s_txt", "first_increment", "next_increment", "rate_micro", "connect_micro", "status")[idx]
    b_txt, costs = [], []
    for s_txt, first, nxt, rate, connect, status in rows.iter_rows():
        b = exact.py_billable(int(s_txt), first, nxt)
        b_txt.append(str(b))
        costs.append(exact.micro_text(exact.py_cost_micro(connect, rate, b, a, d)) if status == "rated" else None)
    return work.with_columns(
        work.get_column("_b_txt").scatter(idx, pl.Series(b_txt, dtype=pl.String)),
        work.get_column("_cost").scatter(idx, pl.Series(costs, dtype=pl.String)),
    )


def _for_parquet(out: pl.DataFrame) -> pl.DataFrame:
    as_int = out.get_column("billable_seconds").cast(pl.Int64, strict=False)
    if as_int.null_count() == out.get_column("billable_seconds").null_count():
        return out.with_columns(as_int.alias("billable_seconds"))
    return out


def summarise(out: pl.DataFrame) -> dict[str, int]:
    counts = dict(out.get_column("status").value_counts().iter_rows())
    return {s: int(counts.get(s, 0)) for s in STATUSES}


def rate_files(
    tariff_path: str | Path,
    cdrs_path: str | Path,
    out_path: str | Path,
    *,
    numbering: Numbering = Numbering(),
    markup: Decimal = Decimal(0),
) -> dict[str, int]:
    """`autobill rate`: read, rate, write OUT; returns the count of rows per status."""
    from autobill.rating.io import file_format

    file_format(out_path)  # refuse an unknown output type before any work
    tariff = load_tariff(tariff_path)
    cdrs = read_table(cdrs_path)
    out = rate_cdrs(cdrs, tariff, numbering=numbering, markup=markup, source=cdrs_path)
    if Path(out_path).suffix.lower() == ".parquet":
        out = _for_parquet(out)
    write_table(out, out_path)
    return summarise(out)


__all__ = ["InputError", "Numbering", "parse_markup", "rate_cdrs", "rate_files", "summarise"]
