"""Longest-prefix match with effective dates (and, for the nightly rater, time bands), vectorised.

For each prefix length present in the tariff, longest first, the first L digits of every still
unmatched number are joined (as an integer key) to the tariff rows of length L. A candidate row
applies when its effective_from is empty or not after the call's start, and its band (if any)
contains the start. Among the applicable rows of one prefix, the latest effective_from wins,
then a banded row over an unbanded one (the tariff loader guarantees that leaves one row).
A call with no applicable row at length L stays unmatched and tries the next shorter length,
which is exactly RATING.md's "a prefix none of whose rows is in effect yet does not match
(a shorter prefix may)".

Prefixes with a single row (the common case) need no ranking: they go through a plain join.
"""

from __future__ import annotations

import polars as pl

from autobill.rating.bands import WEEK_MINUTES
from autobill.rating.tariff import LoadedTariff

MATCH_SCHEMA = {"_row": pl.UInt32(), "_tid": pl.UInt32()}


def _ranked(rows: pl.DataFrame) -> pl.DataFrame:
    """Rows of multi-row prefixes with `_prio`: 0 for the row to prefer, then 1, 2, ..."""
    return rows.sort(
        ["_key", "effective_from", "_band"], descending=[False, True, False], nulls_last=[False, True, True]
    ).with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("_key").alias("_prio"))


def _applicable(cand: pl.DataFrame, tariff: LoadedTariff, with_eff: bool, with_band: bool) -> pl.DataFrame:
    if with_eff:
        cand = cand.filter(pl.col("effective_from").is_null() | (pl.col("effective_from") <= pl.col("_start")))
    if with_band and tariff.band_masks is not None:
        flat = pl.Series("m", tariff.band_masks.reshape(-1))
        idx = (pl.col("_band").cast(pl.Int64) * WEEK_MINUTES + pl.col("_wk")).cast(pl.UInt32)
        cand = cand.with_columns(pl.lit(flat).gather(idx).alias("_in_band")).filter(
            pl.col("_band").is_null() | pl.col("_in_band").fill_null(False)
        )
    return cand


def match(calls: pl.DataFrame, tariff: LoadedTariff) -> pl.DataFrame:
    """(_row, _tid) for every call that matches a tariff row.

    `calls` has `_row` (UInt32, unique), `_e164` (digits), `_start` (Datetime UTC) and, when the
    tariff has bands, `_wk` (week minute of the start in the tariff's timezone). Calls with a
    null number or start never match."""
    need = ["_row", "_e164", "_start"] + (["_wk"] if tariff.has_bands else [])
    remaining = calls.select(need).filter(pl.col("_e164").is_not_null() & pl.col("_start").is_not_null())
    # The number as an integer once; its first L digits are then one division (E.164 <= 15 digits).
    remaining = remaining.select(
        "_row", "_start", *(["_wk"] if tariff.has_bands else []),
        pl.col("_e164").str.len_bytes().cast(pl.Int32).alias("_n"),
        pl.col("_e164").cast(pl.UInt64).alias("_v"),
    )
    pow10 = pl.Series("p", [10**i for i in range(16)], dtype=pl.UInt64)
    found: list[pl.DataFrame] = []
    rows = tariff.rows
    for length in tariff.lengths:
        if remaining.height == 0:
            break
        level = rows.filter(pl.col("_len") == length).select("_key", "_tid", "effective_from", "_band")
        with_eff = level.get_column("effective_from").null_count() < level.height
        with_band = level.get_column("_band").null_count() < level.height
        counts = level.get_column("_key").value_counts()
        multi_keys = counts.filter(pl.col("count") > 1).get_column("_key")
        left = remaining.filter(pl.col("_n") >= length).with_columns(
            (pl.col("_v") // pl.lit(pow10).gather(pl.col("_n") - length)).alias("_key")
        )
        if multi_keys.len() == 0:
            single = level
            multi = level.clear()
        else:
            is_multi = pl.col("_key").is_in(multi_keys.implode())
            single, multi = level.filter(~is_multi), level.filter(is_multi)
        parts = []
        if single.height:
            cand = left.join(single, on="_key", how="inner")
            parts.append(_applicable(cand, tariff, with_eff, with_band).select(MATCH_SCHEMA.keys()))
        if multi.height:
            cand = left.join(_ranked(multi), on="_key", how="inner")
            cand = _applicable(cand, tariff, with_eff, with_band)
            best = cand.sort(["_row", "_prio"]).unique("_row", keep="first").select(MATCH_SCHEMA.keys())
            parts.append(best)
        matched = pl.concat(parts) if parts else pl.DataFrame(schema=MATCH_SCHEMA)
        if matched.height:
            found.append(matched)
            remaining = remaining.join(matched.select("_row"), on="_row", how="anti")
    if not found:
        return pl.DataFrame(schema=MATCH_SCHEMA)
    return pl.concat(found)
