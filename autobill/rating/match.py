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
# the longest tariff prefix of at most D digits that starts those digits. Where those D digits also
# start a longer prefix, the entry points instead to a block of a second table, indexed by the next
# E digits (E = 2: prefixes of up to 8 digits, which is nearly every carrier deck), that holds the
# longest prefix of at most D + E digits. For most calls that is the answer in one or two array
# lookups; a call goes to `match` above instead when its first D + E digits also start a longer
# prefix ("deep"), when the prefix found has no row in effect yet at the call's start (a shorter
# one may), or when the number is too short for the table it needs (fewer than D digits, or fewer
# than D + E under a block). Among the rows of the prefix found, the latest in effect wins, as above.

DIRECT_DIGITS = 6
BLOCK_DIGITS = 2
_POW10 = pl.Series("p", [10**i for i in range(20)], dtype=pl.UInt64)
_NEVER = -(2**63)  # "always in effect" as micros


_NONE = -1  # table entry: no prefix starts these digits
_DEEP = -2  # table entry: a longer prefix starts with these digits (the per-length join decides)
_BLOCK = -3  # first-table entries _BLOCK - b point to block b of the second table


@dataclass(frozen=True)
class DirectIndex:
    digits: int
    table: pl.Series  # Int32, 10**digits entries: prefix id, _NONE, _DEEP or _BLOCK - block
    blocks: pl.Series  # Int32, 10**BLOCK_DIGITS entries per block: prefix id, _NONE or _DEEP
    single_tid: pl.Series  # UInt32 per prefix id: its row when it has one row, else null
    activation: pl.Series  # Int64 per prefix id: micros of its earliest row (_NEVER: one row is always)
    latest_activation: int
    multi_rows: pl.DataFrame  # `_pid`, `_tid`, `_eff` (Int64 micros, _NEVER for always) of multi-row prefixes


def _cover(table: pl.Series, prefixes: pl.DataFrame, digits: int, base: pl.Expr) -> pl.Series:
    """Writes into `table` (indexed by `digits`-digit keys, offset by `base`) the id of the longest
    prefix in `prefixes` (`_len` <= digits here, `_k`: its digits as an integer, `_pid`) that starts
    each key. Shorter prefixes first, so a longer one overwrites its range; the prefixes of one
    length cover disjoint ranges, so no scatter writes one entry twice."""
    for length in sorted(set(prefixes.get_column("_len").to_list())):
        span = 10 ** (digits - length)
        level = prefixes.filter(pl.col("_len") == length).select(
            pl.int_ranges(base + pl.col("_k") * span, base + (pl.col("_k") + 1) * span, dtype=pl.Int64).alias("i"),
            pl.col("_pid").cast(pl.Int32),
        ).explode("i")
        table = table.scatter(level.get_column("i"), level.get_column("_pid"))
    return table


def direct_index(tariff: LoadedTariff) -> DirectIndex | None:
    """The lookup tables for `match_direct`; None for a banded or empty tariff."""
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
        .with_columns(pl.col("_key").cast(pl.Int64))
    )
    length, key = pl.col("_len"), pl.col("_key")

    def head(k: int) -> pl.Expr:  # the first k digits of a prefix of at least k digits
        return key // pl.lit(_POW10).gather(length - k).cast(pl.Int64)

    table = pl.repeat(_NONE, 10**digits, dtype=pl.Int32, eager=True)
    table = _cover(table, prefixes.filter(length <= digits).select("_len", key.alias("_k"), "_pid"), digits, pl.lit(0))
    # Keys that start a longer prefix get a block: its entries start as the key's own entry (the
    # longest prefix of at most `digits`), then the prefixes of up to digits + BLOCK_DIGITS are
    # written in, and the keys that start a longer one still are marked deep.
    deep = prefixes.filter(length > digits).select(head(digits).alias("k6")).unique().sort("k6")
    deep = deep.with_row_index("_b").with_columns(pl.col("_b").cast(pl.Int64))
    width = 10**BLOCK_DIGITS
    own = table.gather(deep.get_column("k6"))
    blocks = own.to_frame("p").select(pl.col("p").repeat_by(width).explode()).to_series().alias("b")
    inner = (
        prefixes.filter(length > digits, length <= digits + BLOCK_DIGITS)
        .with_columns(head(digits).alias("k6"))
        .join(deep, on="k6")
        .select(
            (length - digits).alias("_len"),
            (key - pl.col("k6") * pl.lit(_POW10).gather(length - digits).cast(pl.Int64)).alias("_k"),
            "_pid",
            "_b",
        )
    )
    for b_len in range(1, BLOCK_DIGITS + 1):  # per length, each with its own block offsets
        level = inner.filter(pl.col("_len") == b_len)
        if level.height:
            span = 10 ** (BLOCK_DIGITS - b_len)
            idx = level.select(
                pl.int_ranges(pl.col("_b") * width + pl.col("_k") * span, pl.col("_b") * width + (pl.col("_k") + 1) * span).alias("i"),
                pl.col("_pid").cast(pl.Int32),
            ).explode("i")
            blocks = blocks.scatter(idx.get_column("i"), idx.get_column("_pid"))
    deeper = (
        prefixes.filter(length > digits + BLOCK_DIGITS)
        .select(head(digits).alias("k6"), (head(digits + BLOCK_DIGITS) % width).alias("k2"))
        .join(deep, on="k6")
        .select(pl.col("_b") * width + pl.col("k2"))
        .to_series()
    )
    if deeper.len():
        blocks = blocks.scatter(deeper, _DEEP)
    if deep.height:
        table = table.scatter(deep.get_column("k6"), (_BLOCK - deep.get_column("_b")).cast(pl.Int32))
    else:  # one unused block, so that the lookup (computed for every row, used for none) has a target
        blocks = pl.repeat(_DEEP, width, dtype=pl.Int32, eager=True)
    multi = prefixes.filter(pl.col("rows") > 1).select("_pid", "prefix")
    multi_rows = rows.join(multi, on="prefix").select(pl.col("_pid").cast(pl.UInt32), pl.col("_tid"), eff.alias("_eff"))
    return DirectIndex(
        digits=digits,
        table=table.alias("t"),
        blocks=blocks.cast(pl.Int32).alias("b"),
        single_tid=prefixes.select(pl.when(pl.col("rows") == 1).then(pl.col("_tid"))).to_series(),
        activation=prefixes.get_column("act"),
        latest_activation=int(prefixes.get_column("act").max()),
        multi_rows=multi_rows,
    )


def match_direct(calls: pl.DataFrame, tariff: LoadedTariff, index: DirectIndex | None) -> pl.DataFrame:
    """The same (_row, _tid) pairs as `match` for `calls` with `_row`, `_v`, `_n`, `_start`."""
    tid = match_tids(calls, tariff, index)
    return calls.select("_row", tid.alias("_tid")).filter(pl.col("_tid").is_not_null())


def match_tids(calls: pl.DataFrame, tariff: LoadedTariff, index: DirectIndex | None) -> pl.Series:
    """`_tid` (UInt32) row for row with `calls` (`_v`, `_n`, `_start`): the tariff row that
    `match` finds for each call, null when none. Row-aligned, so the caller needs no join."""
    positions = pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row")
    if index is None:
        found = match(calls.with_columns(positions), tariff)
        return pl.repeat(None, calls.height, dtype=pl.UInt32, eager=True).scatter(found["_row"], found["_tid"]).alias("_tid")
    d, e = index.digits, index.digits + BLOCK_DIGITS
    start_us = pl.col("_start").dt.epoch("us")
    n, v = pl.col("_n"), pl.col("_v")
    valid = v.is_not_null() & pl.col("_start").is_not_null()
    long = valid & (n >= d)
    key = v // pl.lit(_POW10).gather((n - d).clip(0))
    first = pl.when(long).then(pl.lit(index.table).gather(key)).otherwise(pl.when(valid).then(_DEEP))
    block = _BLOCK - pl.col("_pid")  # for entries <= _BLOCK
    sub = (v // pl.lit(_POW10).gather((n - e).clip(0))) % (10**BLOCK_DIGITS)
    second = pl.lit(index.blocks).gather((block * 10**BLOCK_DIGITS + sub.cast(pl.Int64)).clip(0))
    looked = (
        calls.lazy()
        .select(first.alias("_pid"), "_start", n, v)
        .select(
            "_start",
            pl.when(pl.col("_pid") > _BLOCK)
            .then(pl.col("_pid"))
            .when(n >= e)
            .then(second)
            .otherwise(_DEEP)  # too short for its block: the per-length join
            .alias("_pid"),
        )
    )
    pid = pl.col("_pid")
    # A prefix found is the answer when it is in effect at the call's start; unless every prefix
    # is in effect from before the first call, that is checked per call.
    first_us = calls.select(pl.col("_start").dt.epoch("us").min()).item()  # exact integer micros
    if first_us is None or index.latest_activation > first_us:
        late = (pid >= 0) & (pl.lit(index.activation).gather(pid.clip(0)) > start_us)
        looked = looked.with_columns(pl.when(late).then(_DEEP).otherwise(pid).alias("_pid"))
    looked = looked.with_columns(pl.when(pid >= 0).then(pl.lit(index.single_tid).gather(pid.clip(0))).alias("_tid"))
    looked = looked.select(pid, "_tid", ((pid >= 0) & pl.col("_tid").is_null()).alias("_multi")).collect()
    tid = looked.get_column("_tid")
    multi = looked.get_column("_multi")
    if multi.any():  # a prefix with several rows: the latest in effect at the start
        idx = multi.arg_true()
        best = (
            pl.DataFrame({"_row": idx, "_pid": looked.get_column("_pid").gather(idx).cast(pl.UInt32)})
            .with_columns(calls.get_column("_start").gather(idx).dt.epoch("us").alias("_us"))
            .join(index.multi_rows, on="_pid")
            .filter(pl.col("_eff") <= pl.col("_us"))
            .sort("_row", "_eff")
            .unique("_row", keep="last")
        )
        tid = tid.scatter(best.get_column("_row"), best.get_column("_tid"))
    rest = looked.get_column("_pid") == _DEEP
    if rest.any():
        idx = rest.arg_true()
        found = match(calls[idx].with_columns(idx.alias("_row")), tariff)
        if found.height:
            tid = tid.scatter(found.get_column("_row"), found.get_column("_tid"))
    return tid.cast(pl.UInt32).alias("_tid")
