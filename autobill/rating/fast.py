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
    # Blank means empty or only white space; only a text that starts with a control or space
    # byte or a non-ASCII one (Unicode spaces) can be blank, so only those are stripped.
    first = text.cast(pl.Binary).bin.get(0, null_on_oob=True)
    maybe = first.is_null() | (first <= 0x20) | (first >= 0x7F)
    no_id = maybe.fill_null(True)
    if no_id.any():
        idx = no_id.arg_true()
        blank = text.gather(idx).str.strip_chars().fill_null("") == ""
        no_id = no_id.scatter(idx, blank)
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
    plus = t.str.starts_with("+")
    stage1 = (
        pl.DataFrame({"t": text})
        .lazy()
        .select(t.cast(U64, strict=False).alias("raw"), (t.str.len_bytes().cast(pl.Int32) - plus.cast(pl.Int32)).alias("n"), plus.alias("plus"))
        .with_columns((pl.col("raw").is_not_null() & (pl.col("n") <= MAX_FAST_DIGITS)).alias("fast"))
        .select(
            "fast",
            pl.when(pl.col("fast")).then(pl.col("raw")).alias("v"),  # null v and n: not for this path
            pl.when(pl.col("fast")).then(pl.col("n")).alias("n"),
            "plus",
        )
    )
    v, n = pl.col("v"), pl.col("n")
    k_intl, k_trunk, k_cc = len(intl), len(trunk), len(country_code)
    # One column per rule of RATING.md (in its order), each computed once; then the case that applies.
    rules: list[tuple[str, pl.Expr, pl.Expr, pl.Expr]] = []  # name, test, value, digits
    if intl:
        rules.append((
            "intl",
            (n >= k_intl) & (_first_digits(v, n, k_intl) == int(intl)),
            v % pl.lit(POW10).gather((n - k_intl).clip(0)),
            n - k_intl,
        ))
    if country_code == "1":
        rules.append(("nanp", (n == 10) & (v >= 2 * 10**9), v + 10**10, pl.lit(11, dtype=pl.Int32)))
    if trunk:
        new_n = n - k_trunk + k_cc
        # beyond 15 digits the result is invalid anyway; don't multiply into an overflow
        cc_part = pl.lit(int(country_code), dtype=U64) * pl.lit(POW10).gather((n - k_trunk).clip(0, MAX_E164_DIGITS))
        rules.append((
            "trunk",
            (n >= k_trunk) & (_first_digits(v, n, k_trunk) == int(trunk)),
            pl.when(new_n <= MAX_E164_DIGITS).then(cc_part + v % pl.lit(POW10).gather((n - k_trunk).clip(0))),
            new_n,
        ))
    stage2 = stage1.with_columns([test.alias(f"is_{name}") for name, test, *_ in rules])
    rule_v = pl.when(pl.col("plus")).then(v)
    rule_n = pl.when(pl.col("plus")).then(n)
    for name, _, value, digits in rules:
        flag = pl.col(f"is_{name}")
        rule_v, rule_n = rule_v.when(flag).then(value), rule_n.when(flag).then(digits)
    stage3 = stage2.select(
        "fast",
        rule_v.otherwise(v).alias("_v"),
        rule_n.otherwise(n).alias("_n"),
    )
    ok = pl.col("_n").is_between(1, MAX_E164_DIGITS) & pl.col("fast")
    result = stage3.select(
        pl.when(ok).then(pl.col("_v")).alias("_v"),
        pl.when(ok).then(pl.col("_n")).alias("_n"),
        "fast",
    ).collect()
    slow = ~result.get_column("fast") & text.is_not_null()
    out = result.drop("fast")
    if slow.any():  # spaces, dashes, letters, very long: the text rules, then the same columns
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


def e164_column(dst: pl.Series, nums: pl.DataFrame) -> pl.Series:
    """The E.164 text of every row (null when invalid): the digits of `_v` written with `_n` digits.

    An integer's text is one cheap cast; only the rare numbers with leading zeros (fewer digits in
    `_v` than `_n`) are padded, as a patch."""
    v, n = nums.get_column("_v"), nums.get_column("_n")
    text = v.cast(pl.String)
    padded = (text.str.len_bytes().cast(pl.Int32) < n).fill_null(False)
    if padded.any():
        idx = padded.arg_true()
        sub = pl.DataFrame({"_v": v.gather(idx), "_n": n.gather(idx)}).select(e164_text(pl.col("_v"), pl.col("_n")))
        text = text.scatter(idx, sub.to_series())
    return text.alias("e164")


def e164_text(v: pl.Expr, n: pl.Expr) -> pl.Expr:
    """The E.164 digits as text (leading zeros restored)."""
    return v.cast(pl.String).str.zfill(n)
