"""The `autobill rate` rater (RATING.md), vectorised with polars.

One output row per input row, in input order: every input column unchanged, then `status`,
`e164`, `matched_prefix`, `description`, `billable_seconds`, `rate`, `connect_fee`, `cost`.

Readings where RATING.md is silent (a telecom billing engineer's choices):
- `billsec`: ASCII digits with optional surrounding spaces (no sign, no decimal point, no
  exponent); any length (a huge value is rated exactly, not rejected). In parquet, an integer
  column is used as is (negative: invalid) and a float or decimal column counts when its value is
  a whole number. `start`: see timestamps.py (offset required).
- `cdr_id` duplicates compare the value exactly as read (no trimming). An empty id (missing,
  or only spaces) is `invalid`, never a duplicate: it cannot be told apart from another call.
- `billsec` above `MAX_BILLSEC` (604800 s, 7 days) is `invalid`: no real call lasts a week.
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
- Empty values are empty text in CSV and nulls in parquet. In parquet, `billable_seconds` is
  Int64 and `rate`, `connect_fee` and `cost` are DECIMAL(18,6) (RATING.md allows it: the same
  values, exactly); when a value does not fit (a rate or cost of 10^12 or more, billable seconds
  of 2^63 or more, or a row that needed the exact Python path) those columns are text, as in CSV.

How: a narrow per-call "core" (status code, E.164 text, matched tariff row, billable seconds,
cost in micro-units) is computed first, then the output columns are written to the file.
Speed (issue #15) comes from doing each step once, as integers, with a general path behind it
for the rows the fast one does not take (the tests hold each pair equal):
- numbers (fast.py): `+digits` / `digits` are normalised as integers (value, digit count), the
  rest by numbering.normalise_expr; the E.164 text is the value's text (zero-padded if needed);
- starts (timestamps.py): the common ISO layouts are read as bytes, the rest by slicing, then
  by fromisoformat;
- duplicates (fast.py): 64-bit hashes, exact comparison only where a hash repeats;
- matching (match.py): a table indexed by the first 6 digits, with blocks of a second one for the
  next 2, answers nearly every call in one or two lookups, the per-length join the rest;
- money: Int64 micro-units when the tariff and markup bound every product below 2^62
  (`narrow_ok`), else Int128 with the per-row guard of exact.py, else exact Python integers;
- the independent steps (the per-call ones and the tariff's prefix index, then the match and the
  E.164 text) run at once in threads; the parquet OUT is LZ4_RAW-compressed (io.py);
- a parquet input's columns go into a parquet OUT as the input's own column chunks, copied
  byte for byte beside the output columns (passthrough.py), not decoded and encoded again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import polars as pl

from autobill.rating import exact, fast, passthrough
from autobill.rating.io import (
    InputError,
    file_format,
    read_table,
    require_columns,
    write_beside_input,
    write_table,
)
from autobill.rating.match import DirectIndex, direct_index, match_tids
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
# Written to parquet from their codes (Enums, `_appended`), declared as text (io.write_table).
CODED_COLUMNS = ("status", "matched_prefix", "description")
STATUSES = ("rated", "unanswered", "no_rate", "invalid_number", "invalid", "duplicate")
MAX_BILLSEC = 604_800  # RATING.md: a billsec above 7 days is invalid
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


def _billsec(series: pl.Series, narrow: bool = False) -> pl.DataFrame:
    """`_s_ok` (a valid integer >= 0) and `_s` (its value as Int128, null when >= 10^30; with
    `narrow`, as Int64 and null when >= 10^18). A null `_s` with `_s_ok` is a huge value that
    only the exact Python path handles."""
    if narrow and series.dtype.is_integer():  # the common parquet case: no Int128 detour
        ok = (series.is_not_null() & (series >= 0)).fill_null(False)
        frame = pl.DataFrame({"_s_ok": ok, "v": series})
        fits = pl.col("_s_ok") & (pl.col("v") < NARROW_LIMIT)
        return frame.select("_s_ok", pl.when(fits).then(pl.col("v")).cast(pl.Int64).alias("_s"))
    if narrow:
        wide = _billsec(series)
        fits = pl.col("_s") < exact.lit128(NARROW_LIMIT)
        return wide.select("_s_ok", pl.when(fits).then(pl.col("_s")).cast(pl.Int64).alias("_s"))
    dtype = series.dtype
    if isinstance(dtype, pl.Decimal):  # a whole decimal value counts: 12.000 -> 12
        series = series.cast(pl.String).str.replace(r"\.0*$", "")
        dtype = pl.String()
    if dtype == pl.String:
        txt = pl.col("t").str.strip_chars()
        digits = txt.str.strip_chars_start("0")
        ok = txt.str.contains(exact.INTEGER_PATTERN).fill_null(False)
        value = pl.when(digits == "").then(exact.lit128(0)).otherwise(digits.cast(I128, strict=False))
        return (
            pl.DataFrame({"t": series})
            .lazy()
            .select(ok.alias("_s_ok"), pl.when(ok & (digits.str.len_bytes() <= 30)).then(value).alias("_s"))
            .collect()
        )
    if dtype.is_integer():
        ok = series.is_not_null() & (series >= 0)
    elif dtype.is_float():
        ok = series.is_not_null() & series.is_finite() & (series >= 0) & (series < 1e30) & (series == series.floor())
    else:
        ok = pl.Series([False] * series.len())
    frame = pl.DataFrame({"_s_ok": ok.fill_null(False), "v": series})
    return frame.select("_s_ok", pl.when(pl.col("_s_ok")).then(pl.col("v").cast(I128, strict=False)).alias("_s"))


def _big_text(series: pl.Series, idx: pl.Series) -> list[str]:
    """The digits of huge billsec values (rows `idx`), for the exact Python path."""
    values = series.gather(idx).cast(pl.String).to_list()
    return [(v.strip().split(".")[0].lstrip("0") or "0") for v in values]


# Status codes while rating (small), turned into text at the end.
_CODES = {name: i for i, name in enumerate(STATUSES)}


def _status_code() -> pl.Expr:
    def code(name: str) -> pl.Expr:
        return pl.lit(_CODES[name], dtype=pl.UInt8)

    return (
        pl.when(pl.col("_dup"))
        .then(code("duplicate"))
        .when(pl.col("_start").is_null() | ~pl.col("_s_ok") | pl.col("_no_id")
              | (pl.col("_s").is_null() | (pl.col("_s") > MAX_BILLSEC)))
        .then(code("invalid"))
        .when(pl.col("_v").is_null())
        .then(code("invalid_number"))
        .when(pl.col("_s") == 0)
        .then(code("unanswered"))
        .when(pl.col("_tid").is_null())
        .then(code("no_rate"))
        .otherwise(code("rated"))
    )


def _by_tid(tariff: LoadedTariff, column: str) -> pl.Expr:
    """The tariff row's `column` for each call (null when no row matched)."""
    return pl.lit(tariff.rows.get_column(column)).gather(pl.col("_tid"))


# The narrow path keeps every per-call integer in Int64: billsec below NARROW_LIMIT (larger ones go
# to Python) and, for rated calls (billsec <= MAX_BILLSEC), a cost numerator that `narrow_ok` bounds.
NARROW_LIMIT = 10**18
_I64_SAFE = 2**62


def narrow_ok(tariff: LoadedTariff, a: int, d: int) -> bool:
    """True when Int64 cannot overflow for any call against this tariff and cost fraction A/D:
    b <= max(F, MAX_BILLSEC + N) for a rated call, and 2 * (fee*60 + rate*b) * A + D stays below 2^62;
    and billsec + N (any call shown with its billable seconds) stays below 2^62."""
    rows = tariff.rows
    if rows.height == 0:
        return True
    top = rows.select(
        pl.col("rate_micro").max(), pl.col("connect_micro").max(),
        pl.col("first_increment").max(), pl.col("next_increment").max(),
    ).row(0)
    rate, fee, first, nxt = (int(x) for x in top)
    if max(first, nxt) >= 2**61:
        return False
    b_max = max(first, MAX_BILLSEC + nxt)
    return 2 * (fee * 60 + rate * b_max) * a + d < _I64_SAFE


class Steps:
    """Wall and CPU seconds per step, for benchmarks/rating.py (`None` everywhere else: no cost)."""

    def __init__(self) -> None:
        self.seconds: dict[str, tuple[float, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            w, c = self.seconds.get(name, (0.0, 0.0))
            self.seconds[name] = (w + time.perf_counter() - wall, c + time.process_time() - cpu)


@contextmanager
def _step(steps: Steps | None, name: str) -> Iterator[None]:
    if steps is None:
        yield
    else:
        with steps(name):
            yield


def _concurrently(steps: Steps | None, tasks: dict[str, Callable[[], object]]) -> list[object]:
    """Run independent steps at once (threads: polars releases the GIL while it computes, so one
    step's single-threaded stretches use the core another leaves idle); their results in order.
    With `steps` (benchmarks) they run one after another instead, so each one's CPU is its own."""
    if steps is not None:
        out = []
        for name, task in tasks.items():
            with steps(name):
                out.append(task())
        return out
    with ThreadPoolExecutor(max_workers=len(tasks)) as pool:
        futures = [pool.submit(task) for task in tasks.values()]
        return [f.result() for f in futures]  # the first failing step, in this order, is raised


def _work(
    cdrs: pl.DataFrame, tariff: LoadedTariff, numbering: Numbering, narrow: bool, steps: Steps | None = None
) -> tuple[pl.DataFrame, DirectIndex | None]:
    """Per CDR: `_row`, `_dup`, `_no_id`, `_start`, `_s_ok`, `_s`, `_v`, `_n` (fast.py,
    timestamps.py); and the tariff's prefix index, built meanwhile (it needs no call)."""
    dst = cdrs.get_column("dst")

    def e164() -> pl.DataFrame:
        return fast.numbers(dst, numbering.country_code, numbering.intl_prefix, numbering.trunk_prefix)

    (dup, no_id), start, billsec, nums, index = _concurrently(
        steps,
        {
            "duplicate ids": lambda: fast.duplicate_ids(cdrs.get_column("cdr_id")),
            "start times": lambda: parse_starts(cdrs.get_column("start")).alias("_start"),
            "billsec": lambda: _billsec(cdrs.get_column("billsec"), narrow),
            "numbers (E.164)": e164,
            "prefix index": lambda: direct_index(tariff),
        },
    )
    rows = pl.int_range(cdrs.height, dtype=pl.UInt32, eager=True).alias("_row")
    # An empty id is never a duplicate (it is invalid); only non-empty ids are compared.
    return pl.DataFrame([rows, dup, no_id, start]).hstack(billsec).hstack(nums), index


def _core(
    cdrs: pl.DataFrame, tariff: LoadedTariff, numbering: Numbering, a: int, d: int, steps: Steps | None = None
) -> pl.DataFrame:
    """Per CDR, narrow: `_code`, `_e164`, `_tid`, `_b` and `_micro` (Int64 on
    the narrow path, else Int128), `_slow` (needs Python)."""
    narrow = narrow_ok(tariff, a, d)
    work, index = _work(cdrs, tariff, numbering, narrow, steps)
    # row for row with `work`; `_tid` indexes the tariff rows: gathers, not hash joins
    tid, e164 = _concurrently(
        steps,
        {
            "longest-prefix match": lambda: match_tids(work, tariff, index),
            "E.164 text": lambda: fast.e164_column(cdrs.get_column("dst"), work).alias("_e164"),
        },
    )
    work = work.with_columns(e164)
    columns = ("rate_micro", "connect_micro", "first_increment", "next_increment")
    # narrow: the tariff's money as Int64 once (narrow_ok bounds it), not per call
    values = tariff.rows.select([pl.col(c).cast(pl.Int64) if narrow else pl.col(c) for c in columns])
    numbers = [pl.lit(values.get_column(c)).gather(pl.col("_tid")).alias(c) for c in columns]
    big = pl.col("_s_ok") & pl.col("_s").is_null()
    if narrow:
        s, first, nxt = pl.col("_s"), pl.col("first_increment"), pl.col("next_increment")
        b = pl.when(s <= first).then(first).otherwise(first + ((s - first + nxt - 1) // nxt) * nxt)
        zero = pl.lit(0, dtype=pl.Int64)
    else:
        b = exact.billable_expr(pl.col("_s"), pl.col("first_increment"), pl.col("next_increment"))
        zero = exact.lit128(0)
    plan = (
        work.lazy()
        .with_columns(tid.alias("_tid"))
        .with_columns(numbers)
        .with_columns(
            _status_code().alias("_code"),
            pl.when(pl.col("_s") == 0).then(zero).when(pl.col("_tid").is_not_null()).then(b).alias("_b"),
        )
    )
    rated = pl.col("_code") == _CODES["rated"]
    with _step(steps, "status, billable seconds, cost"):
        return _finish(plan, rated, narrow, big, a, d)


def _finish(plan: pl.LazyFrame, rated: pl.Expr, narrow: bool, big: pl.Expr, a: int, d: int) -> pl.DataFrame:
    if narrow:
        rate, fee = pl.col("rate_micro"), pl.col("connect_micro")
        micro = pl.when(rated).then((2 * (fee * 60 + rate * pl.col("_b")) * a + d) // (2 * d))
        slow = pl.lit(False)
    else:
        micro, slow = exact.cost_micro_exprs(
            pl.when(rated).then(pl.col("_b")), pl.col("rate_micro"), pl.col("connect_micro"), a, d
        )
    return plan.select(
        "_code",
        "_e164",
        "_tid",
        "_b",
        micro.alias("_micro"),
        ((slow & rated) | (big & pl.col("_tid").is_not_null())).alias("_slow"),
    ).collect()


def _patches(core: pl.DataFrame, cdrs: pl.DataFrame, tariff: LoadedTariff, a: int, d: int) -> pl.DataFrame:
    """(_row, _b_txt, _cost_txt) of the rare rows computed in exact Python integers."""
    schema = {"_row": pl.UInt32, "_b_txt": pl.String, "_cost_txt": pl.String}
    idx = core.get_column("_slow").arg_true()
    if idx.len() == 0:
        return pl.DataFrame(schema=schema)
    rows = core[idx].join(
        tariff.rows.select("_tid", "rate_micro", "connect_micro", "first_increment", "next_increment"),
        on="_tid",
        how="left",
        maintain_order="left",
    )
    big_txt = _big_text(cdrs.get_column("billsec"), idx)
    out = []
    for i, row, s_txt in zip(idx.to_list(), rows.iter_rows(named=True), big_txt, strict=True):
        b = row["_b"] if row["_b"] is not None else exact.py_billable(int(s_txt), row["first_increment"], row["next_increment"])
        cost = None
        if row["_code"] == _CODES["rated"]:
            cost = exact.micro_text(exact.py_cost_micro(row["connect_micro"], row["rate_micro"], b, a, d))
        out.append({"_row": i, "_b_txt": str(b), "_cost_txt": cost})
    return pl.DataFrame(out, schema=schema)


DECIMAL = pl.Decimal(18, 6)
_DECIMAL_LIMIT = 10**18  # micro-units that fit DECIMAL(18,6)
# Decimal literals from text: polars builds a literal from a Python Decimal through numpy, whose
# import alone is ~0.05 s of every `autobill rate`.
_MICRO = pl.lit("0.000001").cast(pl.Decimal(7, 6))


def _decimal(micro: pl.Expr) -> pl.Expr:
    """Integer micro-units as DECIMAL(18,6), exactly (an integer times 10^-6; callers check the range)."""
    return (micro.cast(pl.Decimal(18, 0)) * _MICRO).cast(DECIMAL)


def _status_text(coded: bool) -> pl.Expr:
    return pl.lit(pl.Series(STATUSES, dtype=pl.Enum(STATUSES) if coded else pl.String)).gather(pl.col("_code"))


def _coded(values: pl.Series, used: pl.Series) -> pl.Series:
    """`values` (one per tariff row) as an Enum over the distinct values of the rows `used` (a mask),
    null elsewhere (declared as text in the file: CODED_COLUMNS, io.write_table). Only the used ones: the writer repeats
    the whole category list as each row group's dictionary."""
    kept = pl.select(pl.when(pl.lit(used)).then(pl.lit(values))).to_series()
    return kept.cast(pl.Enum(kept.unique(maintain_order=True).drop_nulls()))


def _appended(
    core: pl.DataFrame,
    tariff: LoadedTariff,
    patches: pl.DataFrame,
    typed: bool,
    keep: Sequence[str] = (),
    coded: bool = False,
) -> pl.LazyFrame:
    """The columns `keep` of `core` (the input's), then the RATING.md output columns, lazily (so a
    file sink can stream them).

    `typed` (parquet, every value in range): billable_seconds Int64, rate / connect_fee / cost
    DECIMAL(18,6); else all text, as in CSV. `coded` (a parquet file): status, matched_prefix and
    description are Enums built from the codes already at hand (`_code`, `_tid`), which the parquet
    writer takes as its dictionary; as text it hashes every row's value to build one (a third of
    the write's CPU). io.write_table declares them as text, so every reader sees strings."""
    plan = core.lazy()
    kept = [pl.col(c) for c in keep]

    used = None
    if coded:  # the tariff rows some call matched (a scatter: no sort of the 5 M ids)
        used = pl.repeat(False, tariff.rows.height, eager=True).scatter(core.get_column("_tid").drop_nulls(), True)

    def by_tid(column: str) -> pl.Expr:
        if used is None:
            return _by_tid(tariff, column)
        return pl.lit(_coded(tariff.rows.get_column(column), used)).gather(pl.col("_tid"))

    common = [
        _status_text(coded).alias("status"),
        pl.col("_e164").alias("e164"),
        by_tid("prefix").alias("matched_prefix"),
        by_tid("description").alias("description"),
    ]
    unanswered, rated = pl.col("_code") == _CODES["unanswered"], pl.col("_code") == _CODES["rated"]
    if typed:
        money = tariff.rows.select(
            _decimal(pl.col("rate_micro")).alias("rate"), _decimal(pl.col("connect_micro")).alias("connect_fee")
        )
        return plan.select(
            *kept,
            *common,
            pl.col("_b").cast(pl.Int64).alias("billable_seconds"),
            pl.lit(money.get_column("rate")).gather(pl.col("_tid")).alias("rate"),
            pl.lit(money.get_column("connect_fee")).gather(pl.col("_tid")).alias("connect_fee"),
            pl.when(unanswered)
            .then(pl.lit("0").cast(DECIMAL))
            .when(rated)
            .then(_decimal(pl.col("_micro")))
            .alias("cost"),
        )
    b_txt = pl.col("_b").cast(pl.String)
    cost_txt = exact.micro_text_expr(pl.col("_micro"))
    if patches.height:
        plan = plan.with_row_index("_row").join(patches.lazy(), on="_row", how="left", maintain_order="left")
        b_txt = pl.coalesce("_b_txt", b_txt)
        cost_txt = pl.coalesce("_cost_txt", cost_txt)
    return plan.select(
        *kept,
        *common,
        b_txt.alias("billable_seconds"),
        _by_tid(tariff, "rate").alias("rate"),
        _by_tid(tariff, "connect_fee").alias("connect_fee"),
        pl.when(unanswered).then(pl.lit("0.000000")).when(rated).then(cost_txt).alias("cost"),
    )


def _typed_fits(core: pl.DataFrame, tariff: LoadedTariff, patches: pl.DataFrame) -> bool:
    """Parquet can take the typed columns: no Python-computed row, and every value in range."""
    if patches.height:
        return False
    money = tariff.rows.select(pl.max_horizontal(pl.col("rate_micro").max(), pl.col("connect_micro").max())).item()
    top = core.select(pl.col("_b").max(), pl.col("_micro").max()).row(0)
    return (money or 0) < _DECIMAL_LIMIT and (top[0] or 0) < 2**63 and (top[1] or 0) < _DECIMAL_LIMIT


@dataclass(frozen=True)
class _Rated:
    """What the rating computed, before the output columns are built."""

    kept: pl.DataFrame  # the input columns OUT repeats (those named like an output column dropped)
    core: pl.DataFrame  # per call, narrow (`_core`)
    tariff: LoadedTariff
    patches: pl.DataFrame  # the rows computed in Python (`_patches`)
    typed: bool  # billable_seconds an integer, money DECIMAL(18,6) (parquet, every value in range)
    coded: bool  # status, matched_prefix, description as Enums (a parquet OUT)
    counts: dict[str, int]  # rows per status

    def appended(self) -> pl.LazyFrame:
        """The RATING.md output columns alone."""
        return _appended(self.core, self.tariff, self.patches, self.typed, coded=self.coded)

    def whole(self) -> pl.LazyFrame:
        """Every output row: the input columns kept, then the output columns."""
        kept = self.kept
        if set(kept.columns) & (set(self.core.columns) | {"_row", "_b_txt", "_cost_txt"}):
            # an input column named like a working one: the two frames side by side instead
            return pl.concat([kept.lazy(), self.appended()], how="horizontal")
        # one frame, one projection: cheaper to stream than two frames joined side by side
        return _appended(
            kept.hstack(self.core), self.tariff, self.patches, self.typed, keep=kept.columns, coded=self.coded
        )


def _output(
    cdrs: pl.DataFrame,
    tariff: LoadedTariff,
    numbering: Numbering,
    markup: Decimal,
    source: str | Path,
    parquet: bool,
    steps: Steps | None = None,
) -> _Rated:
    require_columns(cdrs, source, CDR_REQUIRED)
    a, d = exact.cost_fraction(markup)
    core = _core(cdrs, tariff, numbering, a, d, steps)
    patches = _patches(core, cdrs, tariff, a, d)
    typed = parquet and _typed_fits(core, tariff, patches)
    kept = cdrs.drop([c for c in OUTPUT_COLUMNS if c in cdrs.columns])
    # one pass per status over a byte column: a hash group-by (value_counts) took 30x longer
    totals = core.select([(pl.col("_code") == code).sum().alias(name) for name, code in _CODES.items()])
    counts = {name: int(n) for name, n in totals.row(0, named=True).items()}
    return _Rated(kept, core, tariff, patches, typed, parquet, counts)


def rate_cdrs(
    cdrs: pl.DataFrame,
    tariff: LoadedTariff,
    *,
    numbering: Numbering = Numbering(),
    markup: Decimal = Decimal(0),
    source: str | Path = "<cdrs>",
) -> pl.DataFrame:
    """Rate a CDR table (RATING.md "CDR columns") against a tariff; see the module docstring."""
    return _output(cdrs, tariff, numbering, markup, source, parquet=False).whole().collect()


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
    steps: Steps | None = None,
) -> dict[str, int]:
    """`autobill rate`: read, rate, write OUT; returns the count of rows per status.

    `steps` (benchmarks only) collects the wall and CPU time of each step."""
    parquet = file_format(out_path) == ".parquet"  # refuse an unknown output type before any work
    # which file CDRS is before it is read: its chunks are copied into OUT only if it stays that one
    seen = passthrough.identity(cdrs_path) if parquet and file_format(cdrs_path) == ".parquet" else None
    tariff, cdrs = _concurrently(
        steps, {"load tariff": lambda: load_tariff(tariff_path), "read CDRs": lambda: read_table(cdrs_path)}
    )
    rated = _output(cdrs, tariff, numbering, markup, cdrs_path, parquet, steps)
    with _step(steps, "output columns + write"):
        source = passthrough.layout(cdrs_path, seen, cdrs.schema, rated.kept.columns)
        copied = source is not None and write_beside_input(
            source, rated.kept.schema, rated.appended().collect(), out_path, as_text=CODED_COLUMNS
        )
        if not copied:
            write_table(rated.whole(), out_path, as_text=CODED_COLUMNS)
    return rated.counts


__all__ = ["InputError", "Numbering", "parse_markup", "rate_cdrs", "rate_files", "summarise"]
