"""Row rules: which extracted CDRs may go on to rating, which are duplicates, which are quarantined.

Pure polars, no I/O: `check_rows` splits a batch of canonical CDRs into three frames whose
heights add up to the input (DESIGN.md invariant 2, "nothing disappears"):

- `good`: canonical rows that may be rated (unanswered calls included: they rate to zero);
- `quarantined`: one record per bad row (`cdr_key, server, billing_date, rule, reason, row`);
  `rule` is the FIRST failing rule in `RULE_ORDER`, `reason` lists every failing rule, and
  `row` is the whole canonical row as JSON (the same encoding as `unrated_cdrs.row`);
- `duplicates`: rows already accounted for, with `duplicate_of` saying where: `batch` (an
  identical earlier row of this batch) or the ledger state of the key (`billed`, `unrated`,
  `quarantine:held`, `quarantine:released`, `quarantine:requeued`). Counted, never billed.

Order of decisions, and why:
1. A row without a usable key (`missing_key`, `unknown_server`, `malformed_key`,
   `wrong_server`) is quarantined first: without a key it cannot be de-duplicated.
2. A key the ledger already knows is a duplicate, whatever its content: the earlier copy is
   already billed / unrated / quarantined, and quarantining the re-read would let an operator
   "release" it into a second bill.
3. A key repeated inside the batch: identical content (every canonical column but
   `source_row`, which carries source noise) is a duplicate; different content quarantines
   the LATER occurrence as `conflicting_duplicate` while the first occurrence goes on through
   the rules (the first is what the source wrote first; the operator sees both side by side).
4. Content rules, in `RULE_ORDER`. Structural rules apply to every row. Billing rules
   (`missing_tenant`, `unknown_service`, `invalid_number`) apply only to answered calls
   (billsec > 0): an unanswered call costs nothing whoever owns it and whatever was dialled,
   so it is zero-cost, not quarantined (quarantining would bury real problems under noise).
   `invalid_number` applies only when the number is rated: outbound always, inbound when the
   service's plan bills inbound, local when the server or plan bills local calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from autobill.cdr import CDR_SCHEMA, DIRECTIONS, conform
from autobill.config import Settings
from autobill.mapping import ISSUE_COLUMN, assign_services
from autobill.services.build import derived_plans
from autobill.timeutil import as_utc, day_bounds_utc, local_today

MAX_KEY_LENGTH = 200  # ledger column width of cdr_key
PROBLEM_KEY = "_error"  # connectors.base.PROBLEM_KEY: why a source row could not be read
PROBLEM_PATTERN = r'"_error"\s*:\s*"'
# FreeSWITCH writes whole-second epochs, so billsec may exceed end - answer by one second.
BILLSEC_SLACK_SECONDS = 1

# Rule names are stable (they are stored in the ledger and used by `autobill quarantine --rule`).
KEY_RULES = ("missing_key", "unknown_server", "malformed_key", "wrong_server")
STRUCTURAL_RULES = (
    "unreadable_row", "missing_start", "missing_end", "missing_billsec", "end_before_start", "answer_before_start",
    "answer_after_end", "negative_billsec", "billsec_exceeds_call", "call_too_long", "future_timestamp",
    "before_lookback", "unknown_direction",
)
BILLING_RULES = ("missing_tenant", "unknown_service", "invalid_number")
RULE_ORDER = (*KEY_RULES, "conflicting_duplicate", *STRUCTURAL_RULES, *BILLING_RULES)

QUARANTINE_SCHEMA: dict[str, pl.DataType] = {
    "cdr_key": pl.String(), "server": pl.String(), "billing_date": pl.Date(), "rule": pl.String(),
    "reason": pl.String(), "row": pl.String(),
}
DUPLICATE_COLUMN = "duplicate_of"
CONTENT_COLUMNS = [c for c in CDR_SCHEMA if c != "source_row"]


@dataclass
class RowCheck:
    good: pl.DataFrame
    quarantined: pl.DataFrame
    duplicates: pl.DataFrame

    def __iter__(self):  # so callers can write `good, quarantined, duplicates = check_rows(...)`
        return iter((self.good, self.quarantined, self.duplicates))

    @property
    def counts(self) -> dict[str, int]:
        return {"good": self.good.height, "quarantined": self.quarantined.height,
                "duplicates": self.duplicates.height}

    def by_rule(self) -> dict[str, int]:
        return dict(sorted(self.quarantined.group_by("rule").len().iter_rows()))


KnownKeys = pl.DataFrame | Mapping[str, str] | Iterable[str] | None


def known_frame(known_keys: KnownKeys) -> pl.DataFrame:
    """`known_keys` as a frame (cdr_key, state): a frame passes through, a mapping gives the
    state per key, a plain iterable of keys means state `billed` (already final)."""
    schema = {"cdr_key": pl.String(), "state": pl.String()}
    if known_keys is None:
        return pl.DataFrame(schema=schema)
    if isinstance(known_keys, pl.DataFrame):
        return known_keys.select(pl.col("cdr_key").cast(pl.String), pl.col("state").cast(pl.String))
    if isinstance(known_keys, Mapping):
        return pl.DataFrame({"cdr_key": list(known_keys), "state": list(known_keys.values())}, schema=schema)
    keys = list(known_keys)
    return pl.DataFrame({"cdr_key": keys, "state": ["billed"] * len(keys)}, schema=schema)


def row_json(cdrs: pl.DataFrame) -> pl.Expr:
    """The canonical row as JSON (timestamps ISO-8601 with offset), as stored in the ledger."""
    return pl.struct([pl.col(c) for c in CDR_SCHEMA if c in cdrs.columns]).struct.json_encode()


def _seconds(later: str, earlier: str) -> pl.Expr:
    return (pl.col(later) - pl.col(earlier)).dt.total_microseconds() / 1_000_000


def _key_rules(expected_server: str | None, servers: list[str]) -> list[tuple[str, pl.Expr, pl.Expr]]:
    key, server = pl.col("cdr_key"), pl.col("server")
    blank_key = key.is_null() | (key.str.strip_chars() == "")
    call_id = key.str.slice(server.str.len_chars() + 1)
    rules = [
        ("missing_key", blank_key, pl.lit("cdr_key is empty")),
        ("unknown_server", server.is_null() | ~server.is_in(servers),
         pl.format("server {} is not configured", server.fill_null("(empty)"))),
        ("malformed_key",
         ~key.str.starts_with(server + ":") | (call_id.str.len_chars() == 0)
         | key.str.contains(r"[\s\x00-\x1f]") | (key.str.len_chars() > MAX_KEY_LENGTH),
         pl.format("cdr_key {} is not '<server>:<call id>' (no spaces, at most {} characters)",
                   key.str.slice(0, 80), pl.lit(MAX_KEY_LENGTH))),
    ]
    if expected_server is not None:
        rules.append(("wrong_server", server != expected_server,
                      pl.format("row of server {} in a batch of server {}", server, pl.lit(expected_server))))
    return rules


def _structural_rules(settings: Settings, now: datetime) -> list[tuple[str, pl.Expr, pl.Expr]]:
    v = settings.validation
    horizon = now + timedelta(seconds=v.future_tolerance_seconds)
    cutoff = lookback_cutoff(settings, now)
    start, answer, end, billsec = pl.col("start_utc"), pl.col("answer_utc"), pl.col("end_utc"), pl.col("billsec")
    call = _seconds("end_utc", "start_utc")
    answered_part = _seconds("end_utc", "answer_utc")
    late = pl.max_horizontal(start, answer, end)
    source = pl.col("source_row")
    problem = source.str.json_path_match(f"$.{PROBLEM_KEY}")
    return [
        # The connector could not read this source row as a call (source_row says why and keeps it).
        ("unreadable_row", source.str.contains(PROBLEM_PATTERN),
         problem.fill_null("the source row could not be read")),
        ("missing_start", start.is_null(), pl.lit("start_utc is empty")),
        ("missing_end", end.is_null(), pl.lit("end_utc is empty")),
        ("missing_billsec", billsec.is_null(), pl.lit("billsec is empty")),
        ("end_before_start", end < start, pl.format("end {} is before start {}", end, start)),
        ("answer_before_start", answer < start, pl.format("answer {} is before start {}", answer, start)),
        ("answer_after_end", answer > end, pl.format("answer {} is after end {}", answer, end)),
        ("negative_billsec", billsec < 0, pl.format("billsec {} is negative", billsec)),
        ("billsec_exceeds_call",
         (billsec > call + BILLSEC_SLACK_SECONDS) | (billsec > answered_part + BILLSEC_SLACK_SECONDS),
         pl.format("billsec {} exceeds the call ({} s start to end, {} s answer to end)", billsec,
                   call.round(0).cast(pl.Int64), answered_part.round(0).cast(pl.Int64))),
        ("call_too_long", (call > v.max_call_seconds) | (billsec > v.max_call_seconds),
         pl.format("call lasted {} s (billsec {}), more than validation.max_call_seconds {}",
                   call.round(0).cast(pl.Int64), billsec, pl.lit(v.max_call_seconds))),
        ("future_timestamp", late > horizon,
         pl.format("timestamp {} is in the future (now {} + {} s tolerance)", late, pl.lit(now.isoformat()),
                   pl.lit(v.future_tolerance_seconds))),
        ("before_lookback", start < cutoff,
         pl.format("start {} is before the lookback cutoff {} ({} days)", start, pl.lit(cutoff.isoformat()),
                   pl.lit(v.lookback_days))),
        ("unknown_direction", pl.col("direction").is_null() | ~pl.col("direction").is_in(DIRECTIONS),
         pl.format("direction {} is not one of {}", pl.col("direction").fill_null("(empty)"),
                   pl.lit("/".join(DIRECTIONS)))),
    ]


def _billing_rules(settings: Settings) -> list[tuple[str, pl.Expr, pl.Expr]]:
    answered = pl.col("billsec") > 0
    tenant = pl.col("tenant")
    direction = pl.col("direction")
    number_rated = (
        (direction == "outbound")
        | ((direction == "inbound") & pl.col("_bill_inbound"))
        | ((direction == "local") & (pl.col("_bill_local") | pl.col("_server_bills_local")))
    )
    valid_number = pl.col("rate_number").str.contains(r"^[0-9]{1,15}$")
    return [
        ("missing_tenant", answered & (tenant.is_null() | (tenant.str.strip_chars() == "")),
         pl.lit("tenant is empty")),
        # A call whose number is in a mapping conflict, or after the last services sync, is not
        # bad data: it stays unrated (rated again next run), never quarantined.
        ("unknown_service", answered & pl.col("service_id").is_null() & ~pl.col("_service_pending"),
         pl.format("no service maps server {} tenant {} extension {} (number {})", pl.col("server"),
                   tenant.fill_null("(empty)"), pl.col("extension").fill_null("(none)"),
                   pl.col("rate_number").fill_null("(none)"))),
        ("invalid_number", answered & number_rated & valid_number.fill_null(False).not_(),
         pl.format("{} number {} (dst {}) does not normalise to 1-15 digits", direction,
                   pl.col("rate_number").fill_null("(none)"), pl.col("dst").fill_null("(empty)"))),
    ]


def lookback_cutoff(settings: Settings, now: datetime) -> datetime:
    """Local midnight `lookback_days` before today in the billing timezone, as UTC: a row that
    started earlier belongs to a period long closed (the first billed period it could join)."""
    day = local_today(settings.tz, now) - timedelta(days=settings.validation.lookback_days)
    return day_bounds_utc(day, settings.tz)[0]


def _plan_flags(settings: Settings) -> pl.DataFrame:
    return pl.DataFrame(
        {"plan": [p.name for p in settings.plans], "_bill_inbound": [p.bill_inbound for p in settings.plans],
         "_bill_local": [p.bill_local for p in settings.plans]},
        schema={"plan": pl.String(), "_bill_inbound": pl.Boolean(), "_bill_local": pl.Boolean()},
    )


def _server_flags(settings: Settings) -> pl.DataFrame:
    return pl.DataFrame(
        {"server": [s.id for s in settings.servers],
         "_server_bills_local": [bool(getattr(s, "bill_local", False)) for s in settings.servers]},
        schema={"server": pl.String(), "_server_bills_local": pl.Boolean()},
    )


FAILURE_SCHEMA = {"_row": pl.UInt32(), "_rule": pl.String(), "_reason": pl.String(), "_stage": pl.Int32()}


def _failures(frame: pl.DataFrame, rules: list[tuple[str, pl.Expr, pl.Expr]], stage: int) -> pl.DataFrame:
    """(_row, _rule, _reason, _stage) of the rows of `frame` failing any of `rules`.

    Cheap boolean flags first on every row; the rule names and messages (string formatting,
    the expensive part) only for the few rows that failed."""
    if frame.height == 0 or not rules:
        return pl.DataFrame(schema=FAILURE_SCHEMA)
    flags = [f"_f{i}" for i in range(len(rules))]
    flagged = frame.with_columns([cond.fill_null(False).alias(f) for f, (_, cond, _) in zip(flags, rules, strict=True)])
    bad = flagged.filter(pl.any_horizontal(flags))
    if bad.height == 0:
        return pl.DataFrame(schema=FAILURE_SCHEMA)
    rule = pl.coalesce([pl.when(pl.col(f)).then(pl.lit(name)) for f, (name, _, _) in zip(flags, rules, strict=True)])
    reason = pl.concat_str(
        [pl.when(pl.col(f)).then(pl.lit(f"{name}: ") + msg) for f, (name, _, msg) in zip(flags, rules, strict=True)],
        separator="; ", ignore_nulls=True,
    )
    return bad.select("_row", rule.alias("_rule"), reason.alias("_reason"), pl.lit(stage, dtype=pl.Int32).alias("_stage"))


def _repeats(keyed: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """In-batch repeats of keys: (identical later rows: _row, conflicting later rows: failures)."""
    none = pl.DataFrame(schema={"_row": pl.UInt32()}), pl.DataFrame(schema=FAILURE_SCHEMA)
    if keyed.height == 0 or keyed["cdr_key"].n_unique() == keyed.height:  # the usual case, and cheap
        return none
    repeated = keyed.filter(pl.col("cdr_key").is_duplicated())
    first = repeated.sort("_row").unique("cdr_key", keep="first", maintain_order=True)
    later = repeated.filter(~pl.col("_row").is_in(first["_row"].implode()))
    cmp = later.join(first.select(["_row", *CONTENT_COLUMNS]), on="cdr_key", suffix="_first")
    differs = [c for c in CONTENT_COLUMNS if c != "cdr_key"]
    diff = pl.concat_str([pl.when(~pl.col(c).eq_missing(pl.col(f"{c}_first"))).then(pl.lit(c)) for c in differs],
                         separator=",", ignore_nulls=True)
    cmp = cmp.with_columns(diff.alias("_diff"))
    identical = cmp.filter(pl.col("_diff") == "").select("_row")
    conflicting = cmp.filter(pl.col("_diff") != "").select(
        "_row",
        pl.lit("conflicting_duplicate").alias("_rule"),
        pl.format("conflicting_duplicate: same cdr_key as batch row {} (0-based) but different {}",
                  pl.col("_row_first"), pl.col("_diff")).alias("_reason"),
        pl.lit(1, dtype=pl.Int32).alias("_stage"),
    )
    return identical, conflicting


def _with_billing_context(rows: pl.DataFrame, settings: Settings) -> pl.DataFrame:
    """`rows` plus the owning service (autobill.mapping) and the flags saying which numbers are rated."""
    mapped = assign_services(rows.select(list(CDR_SCHEMA)), settings).select(
        "client_id", "service_id", "plan", pl.col(ISSUE_COLUMN).is_not_null().alias("_service_pending"))
    settings = derived_plans(settings, mapped["plan"].unique().to_list())  # per-service included minutes
    return (
        pl.concat([rows, mapped], how="horizontal")
        .join(_plan_flags(settings), on="plan", how="left", maintain_order="left")
        .join(_server_flags(settings), on="server", how="left", maintain_order="left")
        .with_columns(pl.col("_bill_inbound", "_bill_local", "_server_bills_local").fill_null(False))
    )


def check_rows(
    cdrs: pl.DataFrame,
    settings: Settings,
    now: datetime,
    known_keys: KnownKeys = None,
    server: str | None = None,
    skip_rules: Iterable[str] = (),
) -> RowCheck:
    """Split `cdrs` (canonical columns) into good, quarantined and duplicate rows.

    `now` is the validation time (UTC-aware); `known_keys` the ledger's knowledge of this
    batch's keys (see `data_quality.known.load_known_keys`); `server`, when given, is the
    batch's server: a row of another server is quarantined as `wrong_server`; `skip_rules`
    names content rules not to apply (re-queued rows skip `before_lookback`).
    """
    now = as_utc(now)
    # rechunk: polars 2.1 panics ("assertion failed: i < self.len()") formatting reasons over a
    # filtered multi-chunk frame (a batch read from several day files); one chunk avoids it.
    idx = conform(cdrs).rechunk().with_row_index("_row")
    servers = [s.id for s in settings.servers]
    skip = set(skip_rules)

    # 1. keys
    key_fail = _failures(idx, _key_rules(server, servers), stage=0)
    keyed = idx.filter(~pl.col("_row").is_in(key_fail["_row"].implode())) if key_fail.height else idx

    # 2. keys the ledger already knows: duplicates, whatever their content
    known = known_frame(known_keys).unique("cdr_key", keep="first")
    dup_known = pl.DataFrame(schema={"_row": pl.UInt32(), DUPLICATE_COLUMN: pl.String()})
    if known.height:
        hit = keyed.select("_row", "cdr_key").join(known, on="cdr_key", how="inner")
        dup_known = hit.select("_row", pl.col("state").alias(DUPLICATE_COLUMN))
        keyed = keyed.filter(~pl.col("_row").is_in(dup_known["_row"].implode()))

    # 3. repeats inside the batch
    identical, conflicting = _repeats(keyed)
    if identical.height:
        keyed = keyed.filter(~pl.col("_row").is_in(identical["_row"].implode()))

    # 4. content rules on the rest (a conflicting repeat also gets its own faults listed)
    structural = [r for r in _structural_rules(settings, now) if r[0] not in skip]
    content_fail = _failures(keyed, structural, stage=2)
    answered = keyed.filter(pl.col("billsec") > 0)
    billing = [r for r in _billing_rules(settings) if r[0] not in skip]
    billing_fail = _failures(_with_billing_context(answered, settings), billing, stage=3) if answered.height else None

    parts = [f for f in (key_fail, conflicting, content_fail, billing_fail) if f is not None and f.height]
    failures = (
        pl.concat(parts).sort("_row", "_stage")
        .group_by("_row", maintain_order=True)
        .agg(pl.col("_rule").first(), pl.col("_reason").str.join("; "))
        if parts else pl.DataFrame(schema={"_row": pl.UInt32(), "_rule": pl.String(), "_reason": pl.String()})
    )

    dups = pl.concat([dup_known, identical.with_columns(pl.lit("batch").alias(DUPLICATE_COLUMN))])
    canonical = list(CDR_SCHEMA)
    duplicates = idx.join(dups, on="_row", how="inner").sort("_row").select([*canonical, DUPLICATE_COLUMN])
    bad = idx.join(failures, on="_row", how="inner").sort("_row")
    taken = pl.concat([dups["_row"], failures["_row"]])
    good = (idx.filter(~pl.col("_row").is_in(taken.implode())) if taken.len() else idx).select(canonical)
    quarantined = bad.select(
        pl.col("cdr_key"),
        pl.col("server").fill_null(pl.lit(server, dtype=pl.String)),
        pl.col("start_utc").dt.convert_time_zone(settings.timezone).dt.date().alias("billing_date"),
        pl.col("_rule").alias("rule"),
        pl.col("_reason").alias("reason"),
        row_json(bad).alias("row"),
    )
    return RowCheck(good=good, quarantined=quarantined.cast(QUARANTINE_SCHEMA), duplicates=duplicates)


def decode_rows(rows: Iterable[str]) -> pl.DataFrame:
    """Canonical CDRs back from their stored JSON (`row_json`, `unrated_cdrs.row`)."""
    texts = pl.Series("row", list(rows), dtype=pl.String)
    if texts.len() == 0:
        return conform(pl.DataFrame(schema=CDR_SCHEMA))
    string_schema = pl.Struct({c: (pl.Int64() if c == "billsec" else pl.String()) for c in CDR_SCHEMA})
    frame = texts.str.json_decode(string_schema).struct.unnest()
    return conform(frame.with_columns(
        [pl.col(c).str.to_datetime(time_zone="UTC") for c in ("start_utc", "answer_utc", "end_utc")]
    ))
