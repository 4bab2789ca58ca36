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

from dataclasses import dataclass

import numpy as np
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

    `calls` has `_row` (UInt32, unique), `_e164` (digits) or `_v`/`_n` (its value and digit
    count), `_start` (Datetime UTC) and, when the
    tariff has bands, `_wk` (week minute of the start in the tariff's timezone). Calls with a
    null number or start never match."""
    bands = ["_wk"] if tariff.has_bands else []
    if "_v" in calls.columns:  # already as value and digit count (fast.numbers)
        remaining = calls.select("_row", "_start", *bands, "_n", "_v").filter(
            pl.col("_v").is_not_null() & pl.col("_start").is_not_null()
        )
    else:
        remaining = calls.select("_row", "_e164", "_start", *bands).filter(
            pl.col("_e164").is_not_null() & pl.col("_start").is_not_null()
        )
        # The number as an integer once; its first L digits are then one division (E.164 <= 15 digits).
        remaining = remaining.select(
            "_row", "_start", *bands,
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


# --- Direct lookup (the `autobill rate` path: no bands) ------------------------------------------
#
# A table indexed by the first D digits of a number (D = 6, or the longest prefix if shorter) holds
# the longest tariff prefix of at most D digits that starts those digits. For most calls that is
# the answer in one array lookup; a call goes to `match` above instead when its first D digits
# also start a longer prefix ("deep"), when the prefix found has no row in effect yet at the
# call's start (a shorter one may), or when the number has fewer than D digits. Among the rows
# of the prefix found, the latest in effect wins, as above.

DIRECT_DIGITS = 6
_POW10 = pl.Series("p", [10**i for i in range(20)], dtype=pl.UInt64)
_NEVER = -(2**63)  # "always in effect" as micros


_DEEP = -2  # table entry: a longer prefix starts with these digits


@dataclass(frozen=True)
class DirectIndex:
    digits: int
    table: pl.Series  # Int32, 10**digits entries: prefix id, -1 (no prefix) or _DEEP
    single_tid: pl.Series  # UInt32 per prefix id: its row when it has one row, else null
    activation: pl.Series  # Int64 per prefix id: micros of its earliest row (_NEVER: one row is always)
    latest_activation: int
    multi_rows: pl.DataFrame  # `_pid`, `_tid`, `_eff` (Int64 micros, _NEVER for always) of multi-row prefixes


def direct_index(tariff: LoadedTariff) -> DirectIndex | None:
    """The lookup table for `match_direct`; None for a banded or empty tariff."""
    rows = tariff.rows
    if tariff.has_bands or rows.height == 0:
        return None
    digits = min(DIRECT_DIGITS, max(tariff.lengths))
    eff = pl.col("effective_from").dt.epoch("us").fill_null(_NEVER)
    prefixes = (
        rows.group_by("prefix", maintain_order=True)
        .agg(
            pl.col("_len").first(),
            pl.col("_key").first(),
            pl.len().alias("rows"),
            pl.col("_tid").first(),
            eff.min().alias("act"),
        )
        .with_row_index("_pid")
    )
    table = np.full(10**digits, -1, dtype=np.int32)
    lens = prefixes.get_column("_len").to_numpy()
    keys = prefixes.get_column("_key").to_numpy().astype(np.int64)
    pids = prefixes.get_column("_pid").to_numpy().astype(np.int32)
    for length in range(1, digits + 1):  # shorter first: a longer prefix overwrites its range
        sel = lens == length
        if not sel.any():
            continue
        span = 10 ** (digits - length)
        starts = keys[sel] * span
        idx = (starts[:, None] + np.arange(span, dtype=np.int64)[None, :]).ravel()
        table[idx] = np.repeat(pids[sel], span)
    longer = lens > digits
    if longer.any():
        table[keys[longer] // (10 ** (lens[longer] - digits)).astype(np.int64)] = _DEEP
    multi = prefixes.filter(pl.col("rows") > 1).select("_pid", "prefix")
    multi_rows = rows.join(multi, on="prefix").select(pl.col("_pid").cast(pl.UInt32), pl.col("_tid"), eff.alias("_eff"))
    return DirectIndex(
        digits=digits,
        table=pl.Series("t", table),
        single_tid=prefixes.select(pl.when(pl.col("rows") == 1).then(pl.col("_tid"))).to_series(),
        activation=prefixes.get_column("act"),
        latest_activation=int(prefixes.get_column("act").max()),
        multi_rows=multi_rows,
    )


def match_direct(calls: pl.DataFrame, tariff: LoadedTariff, index: DirectIndex | None) -> pl.DataFrame:
    """The same (_row, _tid) pairs as `match` for `calls` with `_row`, `_v`, `_n`, `_start`."""
    if index is None:
        return match(calls, tariff)
    d = index.digits
    start_us = pl.col("_start").dt.epoch("us")
    valid = pl.col("_v").is_not_null() & pl.col("_start").is_not_null()
    long = valid & (pl.col("_n") >= d)
    key = pl.col("_v") // pl.lit(_POW10).gather((pl.col("_n") - d).clip(0))
    code = pl.when(long).then(pl.lit(index.table).gather(key)).otherwise(pl.when(valid).then(_DEEP))
    looked = calls.lazy().select("_row", code.alias("_pid"), "_start")
    # A prefix found is the answer when it is in effect at the call's start; unless every prefix
    # is in effect from before the first call, that is checked per call.
    first_us = calls.select(pl.col("_start").dt.epoch("us").min()).item()  # exact integer micros
    if first_us is None or index.latest_activation > first_us:
        pid = pl.col("_pid")
        late = (pid >= 0) & (pl.lit(index.activation).gather(pid.clip(0)) > start_us)
        looked = looked.with_columns(pl.when(late).then(_DEEP).otherwise(pid).alias("_pid"))
    looked = looked.collect()  # row for row with `calls`
    pid = pl.col("_pid")
    hit = looked.filter(pid >= 0).select(
        "_row", pid.cast(pl.UInt32).alias("_pid"), "_start",
        pl.lit(index.single_tid).gather(pid).alias("_tid"),
    )
    parts = [hit.filter(pl.col("_tid").is_not_null()).select("_row", "_tid")]
    multi = hit.filter(pl.col("_tid").is_null())
    if multi.height:
        parts.append(
            multi.select("_row", "_pid", start_us.alias("_us"))
            .join(index.multi_rows, on="_pid")
            .filter(pl.col("_eff") <= pl.col("_us"))
            .sort("_row", "_eff")
            .unique("_row", keep="last")
            .select("_row", "_tid")
        )
    rest = looked.get_column("_pid") == _DEEP
    if rest.any():
        parts.append(match(calls.filter(rest), tariff))
    return pl.concat([p.select(pl.col("_row"), pl.col("_tid").cast(pl.UInt32)) for p in parts])
