"""Exact money arithmetic for millions of calls, without binary floats.

Amounts are integer micro-units (value x 10^6, polars Int128). A call's cost

    cost = (connect_fee + rate * b / 60) * factor          factor = (1 + markup/100) [* fx rate]

is not exact in 6 decimals (rate * b / 60), so it is computed over a common denominator:

    cost_micro = round_half_up( (connect_micro * 60 + rate_micro * b) * A / D )

where A / D is the reduced fraction factor / 6000 (60 seconds x 100 percent x ... ), and the
half-up integer rounding of a non-negative n / d is (2n + d) // 2d. That is the one and only
rounding of a call (money.py states the rule).

Int128 overflows silently (it wraps), so every row is first checked against a bound. The check
uses a float *estimate* of the magnitude with a 2^7 safety margin; floats only decide which
path a row takes, they never carry an amount. Rows over the bound (absurd billsec, rates or
factors with very many digits) are computed exactly in Python integers instead; they are rare,
so the vectorised path keeps its speed and nothing is ever wrong.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import polars as pl

MICRO = 10**6
COST_DIGITS = 6
# Everything the vectorised path computes stays below this (Int128 holds up to ~2^127).
SAFE_BOUND = float(2**120)
I128 = pl.Int128()

# "decimal string, up to 6 decimals, >= 0" (RATING.md): digits, optionally a point and at most
# six digits. No sign, no exponent, no thousands separators. At most 25 integer digits keeps
# micro-units inside Int128 with room for the cost arithmetic.
DECIMAL_PATTERN = r"^(?:[0-9]{1,25}(?:\.[0-9]{0,6})?|\.[0-9]{1,6})$"
INTEGER_PATTERN = r"^[0-9]+$"


def lit128(value: int) -> pl.Expr:
    return pl.lit(value, dtype=I128)


def decimal_micro_expr(text: pl.Expr) -> pl.Expr:
    """Micro-units of a decimal text that matches DECIMAL_PATTERN (else null)."""
    parts = text.str.split_exact(".", 1)
    whole = parts.struct.field("field_0")
    frac = parts.struct.field("field_1").fill_null("").str.pad_end(COST_DIGITS, "0")
    whole_value = pl.when(whole == "").then(lit128(0)).otherwise(whole.cast(I128, strict=False))
    return pl.when(text.str.contains(DECIMAL_PATTERN)).then(whole_value * lit128(MICRO) + frac.cast(I128, strict=False))


def micro_text_expr(micro: pl.Expr) -> pl.Expr:
    """`123.456000`: a non-negative micro-unit amount as text with exactly 6 decimals."""
    whole = (micro // lit128(MICRO)).cast(pl.String)
    frac = (micro % lit128(MICRO)).cast(pl.String).str.pad_start(COST_DIGITS, "0")
    return whole + pl.lit(".") + frac


def micro_text(micro: int) -> str:
    return f"{micro // MICRO}.{micro % MICRO:06d}"


def decimal_to_micro(value: Decimal) -> int:
    """Exact micro-units of a Decimal that has at most 6 decimals (callers validate)."""
    scaled = value * MICRO
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more than 6 decimals")
    return int(scaled)


def cost_fraction(markup_percent: Decimal | Fraction | int = 0, fx: Decimal | Fraction | int = 1) -> tuple[int, int]:
    """(A, D) such that cost_micro = (connect_micro*60 + rate_micro*b) * A / D, before rounding."""
    factor = (Fraction(100) + Fraction(markup_percent)) * Fraction(fx) / 6000
    if factor < 0:
        raise ValueError("markup below -100 % would make calls pay the client")
    return factor.numerator, factor.denominator


def billable_expr(s: pl.Expr, first: pl.Expr, nxt: pl.Expr) -> pl.Expr:
    """RATING.md: b = 0 when s = 0; F when s <= F; else F + ceil((s - F) / N) * N (Int128).

    Callers keep s below 2^100 (F and N are Int64), so nothing here can overflow."""
    s, first, nxt = s.cast(I128), first.cast(I128), nxt.cast(I128)
    return (
        pl.when(s == 0)
        .then(lit128(0))
        .when(s <= first)
        .then(first)
        .otherwise(first + ((s - first + nxt - lit128(1)) // nxt) * nxt)
    )


def py_billable(s: int, first: int, nxt: int) -> int:
    if s == 0:
        return 0
    if s <= first:
        return first
    return first + -((first - s) // nxt) * nxt


def py_cost_micro(connect_micro: int, rate_micro: int, seconds: int, a: int, d: int) -> int:
    n = (connect_micro * 60 + rate_micro * seconds) * a
    return (2 * n + d) // (2 * d)


def _f(expr: pl.Expr | int) -> pl.Expr:
    return expr.cast(pl.Float64) if isinstance(expr, pl.Expr) else pl.lit(float(expr))


def _e(expr: pl.Expr | int) -> pl.Expr:
    return expr.cast(I128) if isinstance(expr, pl.Expr) else lit128(expr)


# A factor fraction whose terms exceed this cannot take the Int128 path at all.
FACTOR_LIMIT = 2**100


def cost_micro_exprs(
    seconds: pl.Expr, rate: pl.Expr, connect: pl.Expr, a: pl.Expr | int, d: pl.Expr | int
) -> tuple[pl.Expr, pl.Expr]:
    """(exact cost in micro-units, needs-Python flag) for Int128 seconds / micro-unit inputs.

    The micro-units are null where an input is null or where the row needs Python (flag True).
    Integer `a`/`d` beyond FACTOR_LIMIT send every row to Python; expression `a`/`d` must be
    below it (cost_text takes care of that)."""
    inputs = seconds.is_not_null() & rate.is_not_null() & connect.is_not_null()
    for x in (a, d):
        if isinstance(x, pl.Expr):
            inputs = inputs & x.is_not_null()
    if any(isinstance(x, int) and x >= FACTOR_LIMIT for x in (a, d)):
        return pl.lit(None, dtype=I128), inputs
    base_est = _f(connect) * 60.0 + _f(rate) * _f(seconds)
    safe = ((base_est < SAFE_BOUND) & (base_est * 2.0 * _f(a) + _f(d) < SAFE_BOUND)).fill_null(False)
    base = connect * lit128(60) + rate * seconds
    fast = (lit128(2) * base * _e(a) + _e(d)) // (lit128(2) * _e(d))
    return pl.when(inputs & safe).then(fast), inputs & ~safe


def cost_text(
    df: pl.DataFrame,
    *,
    seconds: str,
    rate: str,
    connect: str,
    factors: list[tuple[int, int]],
    factor: str | None = None,
) -> pl.Series:
    """Exact cost text (6 decimals) per row of `df`; null where any input is null.

    `seconds`, `rate` and `connect` name Int128 columns (the seconds charged, micro-units).
    `factors` are (A, D) fractions (see cost_fraction); `factor` names a column of indexes into
    it (one factor per row), or None to use `factors[0]` for every row."""
    if factor is None:
        a_expr: pl.Expr | int = factors[0][0]
        d_expr: pl.Expr | int = factors[0][1]
        oversize: pl.Expr = pl.lit(False)
    else:
        fits = [a < FACTOR_LIMIT and d < FACTOR_LIMIT for a, d in factors]
        idx = pl.col(factor)
        a_expr = pl.lit(pl.Series([a if ok else 0 for (a, _), ok in zip(factors, fits, strict=True)], dtype=I128)).gather(idx)
        d_expr = pl.lit(pl.Series([d if ok else 1 for (_, d), ok in zip(factors, fits, strict=True)], dtype=I128)).gather(idx)
        oversize = ~pl.lit(pl.Series(fits, dtype=pl.Boolean)).gather(idx)
    micro, slow = cost_micro_exprs(pl.col(seconds), pl.col(rate), pl.col(connect), a_expr, d_expr)
    frame = (
        df.lazy()
        .select(
            pl.when(~oversize.fill_null(False)).then(micro).alias("micro"),
            (slow | (oversize.fill_null(False) & pl.col(seconds).is_not_null())).alias("slow"),
        )
        .select(micro_text_expr(pl.col("micro")).alias("cost"), "slow")
        .collect()
    )
    out = frame.get_column("cost")
    slow_rows = frame.get_column("slow")
    if slow_rows.any():
        idx_rows = slow_rows.arg_true()
        cols = [seconds, rate, connect] + ([factor] if factor else [])
        values = []
        for row in df.select(cols)[idx_rows].iter_rows(named=True):
            a, d = factors[row[factor]] if factor else factors[0]
            if row[seconds] is None or row[rate] is None or row[connect] is None:
                values.append(None)
                continue
            values.append(micro_text(py_cost_micro(row[connect], row[rate], row[seconds], a, d)))
        out = out.scatter(idx_rows, pl.Series(values, dtype=pl.String))
    return out
