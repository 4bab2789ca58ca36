"""Per-call steps of `autobill rate` for millions of rows: duplicate ids and dialled numbers.

Each function has one fast vectorised path for the common shape of the data and hands every other
row to the general path, so the two cannot disagree on what they both accept (the tests compare
them with the per-row rules):

- `duplicate_ids`: ids are hashed to 64 bits and only the rows whose hash repeats are compared
  as text (a hash collision only sends a row to the exact comparison; it never decides).
- `numbers`: a number that is ASCII digits with an optional leading `+` (what PBXs write) is
  normalised as an integer (value, digit count): RATING.md's steps are prefix tests and
  concatenations, i.e. divisions and multiplications by powers of ten. Anything else (spaces,
  dashes, letters, more than 19 digits) goes through `numbering.normalise_expr` as text.
"""

from __future__ import annotations

import polars as pl

from autobill.numbering import MAX_E164_DIGITS, default_intl_prefix, default_trunk_prefix, normalise_expr

POW10 = pl.Series("pow10", [10**i for i in range(20)], dtype=pl.UInt64)
U64 = pl.UInt64()
# Fast-path numbers have at most this many digits (10^19 < 2^64).
MAX_FAST_DIGITS = 19


def duplicate_ids(ids: pl.Series) -> tuple[pl.Series, pl.Series]:
    """(`dup`, `no_id`): a non-empty id seen earlier in the column; an id that is missing or blank."""
    text = ids if ids.dtype == pl.String else ids.cast(pl.String, strict=False)
    no_id = text.is_null() | (text.str.strip_chars() == "").fill_null(True)
    hashed = pl.DataFrame({"h": ids.hash(), "no": no_id}).lazy()
    repeated = (
        hashed.filter(~pl.col("no"))
        .select(pl.col("h").sort())
        .filter(pl.col("h") == pl.col("h").shift(1))
        .unique()
        .collect()
        .get_column("h")
    )
    dup = pl.repeat(False, ids.len(), eager=True)
    if repeated.len():
        cand = hashed.select(pl.col("h").is_in(repeated.implode()) & ~pl.col("no")).collect().to_series()
        idx = cand.arg_true()
        first = ids.gather(idx).is_first_distinct()  # exact, in file order, on the few candidates
        dup = dup.scatter(idx, ~first)
    return dup.alias("_dup"), no_id.alias("_no_id")


def _first_digits(v: pl.Expr, n: pl.Expr, k: int) -> pl.Expr:
    """The integer of the first k digits of a number (value v, n digits; callers ensure n >= k)."""
    return v // pl.lit(POW10).gather(n - k)


def numbers(dst: pl.Series, country_code: str, intl_prefix: str | None, trunk_prefix: str | None) -> pl.DataFrame:
    """`_v` (UInt64) and `_n` (Int32): the E.164 number as value and digit count, null when invalid.

    The digits of the E.164 text are `_v` written with `_n` digits (leading zeros kept)."""
    intl = default_intl_prefix(country_code) if intl_prefix is None else intl_prefix
    trunk = default_trunk_prefix(country_code) if trunk_prefix is None else trunk_prefix
    text = dst if dst.dtype == pl.String else dst.cast(pl.String, strict=False)
    t = pl.col("t")
    # polars reads `+?[0-9]+` as an unsigned integer and nothing else (no spaces, `-`, `_`, Unicode
    # digits); tests/autobill/test_rating_fast.py holds this to the regular expression.
    raw = t.cast(U64, strict=False)
    plus = t.str.starts_with("+")
    n_all = t.str.len_bytes().cast(pl.Int32) - plus.cast(pl.Int32)
    fast = raw.is_not_null() & (n_all <= MAX_FAST_DIGITS)
    frame = pl.DataFrame({"t": text}).lazy().select(
        pl.when(fast).then(raw).alias("v"), pl.when(fast).then(n_all).alias("n"), plus.alias("plus"), fast.alias("fast")
    )
    v, n = pl.col("v"), pl.col("n")
    k_intl, k_trunk, k_cc = len(intl), len(trunk), len(country_code)
    rule_v = pl.when(pl.col("plus")).then(v)
    rule_n = pl.when(pl.col("plus")).then(n)
    if intl:
        starts = (n >= k_intl) & (_first_digits(v, n, k_intl) == int(intl))
        rest = v % pl.lit(POW10).gather((n - k_intl).clip(0))
        rule_v, rule_n = rule_v.when(starts).then(rest), rule_n.when(starts).then(n - k_intl)
    if country_code == "1":
        nanp = (n == 10) & (_first_digits(v, n, 1) >= 2)
        rule_v = rule_v.when(nanp).then(v + 10**10)
        rule_n = rule_n.when(nanp).then(pl.lit(11, dtype=pl.Int32))
    if trunk:
        starts = (n >= k_trunk) & (_first_digits(v, n, k_trunk) == int(trunk))
        new_n = n - k_trunk + k_cc
        # beyond 15 digits the result is invalid anyway; don't multiply into an overflow
        cc_part = pl.lit(int(country_code), dtype=U64) * pl.lit(POW10).gather((n - k_trunk).clip(0, MAX_E164_DIGITS))
        rest = v % pl.lit(POW10).gather((n - k_trunk).clip(0))
        rule_v = rule_v.when(starts).then(pl.when(new_n <= MAX_E164_DIGITS).then(cc_part + rest))
        rule_n = rule_n.when(starts).then(new_n)
    out_n = rule_n.otherwise(n)
    ok = out_n.is_between(1, MAX_E164_DIGITS)
    result = frame.select(
        pl.when(ok).then(rule_v.otherwise(v)).alias("_v"), pl.when(ok).then(out_n).alias("_n"), "fast"
    ).collect()
    slow = ~result.get_column("fast") & text.is_not_null()
    out = result.drop("fast")
    if slow.any():  # spaces, dashes, letters, very long: the text rules, then the same two columns
        idx = slow.arg_true()
        e164 = pl.DataFrame({"d": text.gather(idx)}).select(
            normalise_expr(pl.col("d"), country_code, intl_prefix, trunk_prefix).alias("e")
        )
        parsed = e164.select(
            pl.col("e").cast(U64, strict=False).alias("_v"), pl.col("e").str.len_bytes().cast(pl.Int32).alias("_n")
        )
        out = out.with_columns(
            out.get_column("_v").scatter(idx, parsed.get_column("_v")),
            out.get_column("_n").scatter(idx, parsed.get_column("_n")),
        )
    return out


def e164_text(v: pl.Expr, n: pl.Expr) -> pl.Expr:
    """The E.164 digits as text (leading zeros restored)."""
    return v.cast(pl.String).str.zfill(n)
