"""The nightly rater: RATING.md's engine plus what billing a client needs.

`rate_for_billing` takes canonical CDRs (autobill/cdr.py) already joined with client_id,
service_id and plan (autobill/mapping.py) and returns one row per CDR with its outcome:

- `billed`    charged (possibly partly, after the included allowance), cost > 0 or not;
- `included`  fully covered by the service's included minutes (cost 0);
- `zero_cost` nothing to bill: unanswered, an inbound/local call the plan does not bill, or a
              free destination (rate 0 and connect fee 0);
- `unrated`   cannot be billed now, with `unrated_reason`: `no_service`, `invalid_number`,
              `no_rate`, `invalid_billsec`, `invalid_start`, `invalid_direction`, `unknown_plan`.

Rules, and the choices made where the brief is silent:
- Precedence: invalid_billsec, zero_cost (billsec 0), no_service, unknown_plan,
  invalid_direction, zero_cost (direction not billed by the plan), invalid_number,
  invalid_start, no_rate, zero_cost (free destination), then included/billed. An unanswered call
  costs nothing whoever owns it, so it is zero_cost before the service check (it would otherwise
  sit in the unrated list forever).
- Which tariff: outbound -> plan.tariff; inbound -> plan.inbound_tariff or plan.tariff, only when
  plan.bill_inbound; local -> plan.tariff, only when plan.bill_local. Always on `rate_number`.
- Time bands: a tariff row with `days`/`hours` applies only when the call's START, in the
  tariff's timezone (else settings.timezone), is in the band (see bands.py, tariff.py).
- Included minutes: per service and billing period (period_bounds of the local start date in
  settings.timezone, plan.period_anchor_day), `included_minutes * 60` billable seconds, minus
  `included_used[(service_id, period_start)]`, consumed by chargeable calls of every class in
  call-start order (tie: cdr_key). The call that crosses the allowance is split: its covered
  seconds are free, the rest is charged at the rate, and the connect fee is charged only when
  some part is charged. Free destinations do not consume the allowance.
- cost = (connect_fee [if charged] + rate * charged_seconds / 60) * (1 + markup/100) * fx,
  exact, rounded once half-up to 6 decimals (exact.py), in the plan currency; fx is
  settings.rate(tariff currency, plan currency), applied before that single rounding.
  `rate`/`connect_fee` are the tariff row's values, in the tariff currency (`tariff_currency`).
- charge_class: `inbound` / `local` by direction; outbound calls are `international` when the
  number does not begin with the server's numbering country code (country codes are
  prefix-free, so this is "the country code differs"), else `outbound`. A non-empty `class` on
  the matched tariff row replaces it (e.g. NANP Caribbean prefixes marked international).
- billable_seconds: the increment-rounded seconds when a tariff row applied, 0 for billsec 0,
  else null; included_seconds + charged_seconds = billable_seconds for billed/included rows,
  both 0 for zero_cost rows and null for unrated rows.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl

from autobill.config import Settings
from autobill.rating import exact
from autobill.rating.match import match
from autobill.rating.tariff import LoadedTariff, load_tariff, tariff_from_frame

OUTCOMES = ("billed", "included", "zero_cost", "unrated")
OUTPUT_SCHEMA: dict[str, pl.DataType] = {
    "cdr_key": pl.String(),
    "client_id": pl.Int64(),
    "service_id": pl.Int64(),
    "plan": pl.String(),
    "server": pl.String(),
    "direction": pl.String(),
    "rate_number": pl.String(),
    "start_utc": pl.Datetime("us", "UTC"),
    "billsec": pl.Int64(),
    "outcome": pl.String(),
    "charge_class": pl.String(),
    "matched_prefix": pl.String(),
    "description": pl.String(),
    "billable_seconds": pl.Int64(),
    "included_seconds": pl.Int64(),
    "charged_seconds": pl.Int64(),
    "rate": pl.String(),
    "connect_fee": pl.String(),
    "tariff_currency": pl.String(),
    "cost": pl.String(),
    "currency": pl.String(),
    "tariff_name": pl.String(),
    "tariff_version": pl.String(),
    "period_start": pl.Date(),
    "unrated_reason": pl.String(),
}
_I128 = pl.Int128()


def load_tariffs(settings: Settings) -> dict[str, LoadedTariff]:
    """Every tariff of the config, validated, with the nightly extensions (bands, class)."""
    return {
        t.name: load_tariff(
            settings.resolve_path(Path(t.path)),
            name=t.name,
            currency=t.currency,
            timezone=t.timezone or settings.timezone,
            with_bands=True,
        )
        for t in settings.tariffs
    }


def _plans(settings: Settings, tariffs: dict[str, LoadedTariff]) -> pl.DataFrame:
    """One row per plan: its tariffs, allowance, inbound/local rules, anchor day, currency."""
    rows = []
    for p in settings.plans:
        for name in {p.tariff, p.inbound_tariff or p.tariff}:
            if name not in tariffs:
                raise KeyError(f"plan {p.name!r} needs tariff {name!r}, which was not loaded")
        fx_out = settings.rate(tariffs[p.tariff].currency, p.currency)
        inbound = p.inbound_tariff or p.tariff
        fx_in = settings.rate(tariffs[inbound].currency, p.currency)
        if fx_out is None or fx_in is None:
            raise ValueError(f"plan {p.name!r}: no currency rate to {p.currency}")
        rows.append(
            {
                "plan": p.name,
                "_out_tariff": p.tariff,
                "_in_tariff": inbound,
                "_allow": p.included_minutes * 60,
                "_bill_inbound": p.bill_inbound,
                "_bill_local": p.bill_local,
                "_anchor": p.period_anchor_day,
                "currency": p.currency,
            }
        )
    schema = {
        "plan": pl.String, "_out_tariff": pl.String, "_in_tariff": pl.String, "_allow": pl.Int64,
        "_bill_inbound": pl.Boolean, "_bill_local": pl.Boolean, "_anchor": pl.Int32, "currency": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)


def _factors(settings: Settings, tariffs: dict[str, LoadedTariff]) -> tuple[pl.DataFrame, list[tuple[int, int]]]:
    """(plan, tariff_name) -> index of its cost fraction A/D (exact.py): markup and fx together."""
    rows, fractions = [], []
    for p in settings.plans:
        for name in sorted({p.tariff, p.inbound_tariff or p.tariff}):
            fx = settings.rate(tariffs[name].currency, p.currency)
            rows.append({"plan": p.name, "tariff_name": name, "_factor": len(fractions)})
            fractions.append(exact.cost_fraction(p.markup_percent, fx))
    schema = {"plan": pl.String, "tariff_name": pl.String, "_factor": pl.UInt32}
    return pl.DataFrame(rows, schema=schema), fractions


def _countries(settings: Settings) -> pl.DataFrame:
    return pl.DataFrame(
        {"server": [s.id for s in settings.servers], "_cc": [s.numbering.country_code for s in settings.servers]},
        schema={"server": pl.String, "_cc": pl.String},
    )


def _period_start(local_day: pl.Expr, anchor: pl.Expr) -> pl.Expr:
    """autobill.timeutil.period_bounds(day, anchor)[0], vectorised."""
    y, m, d = local_day.dt.year(), local_day.dt.month(), local_day.dt.day()
    prev_y = pl.when(m == 1).then(y - 1).otherwise(y)
    prev_m = pl.when(m == 1).then(12).otherwise(m - 1)
    return pl.when(d >= anchor).then(pl.date(y, m, anchor)).otherwise(pl.date(prev_y, prev_m, anchor))


def _match_tariff(calls: pl.DataFrame, tariff: LoadedTariff, default_tz: str) -> pl.DataFrame:
    """(_row, tariff columns) for the calls rated with this tariff."""
    frame = calls.select(pl.col("_row"), pl.col("rate_number").alias("_e164"), pl.col("start_utc").alias("_start"))
    if tariff.has_bands:
        local = pl.col("_start").dt.convert_time_zone(tariff.timezone or default_tz)
        frame = frame.with_columns(
            ((local.dt.weekday().cast(pl.Int32) - 1) * 1440 + local.dt.hour().cast(pl.Int32) * 60
             + local.dt.minute().cast(pl.Int32)).alias("_wk")
        )
    found = match(frame, tariff)
    cols = tariff.rows.select(
        "_tid",
        pl.col("prefix").alias("matched_prefix"),
        "description",
        "rate",
        "connect_fee",
        "rate_micro",
        "connect_micro",
        "first_increment",
        "next_increment",
        pl.col("class").alias("_class"),
    )
    return found.join(cols, on="_tid", how="left").drop("_tid").with_columns(
        pl.lit(tariff.name).alias("tariff_name"),
        pl.lit(tariff.version).alias("tariff_version"),
        pl.lit(tariff.currency).alias("tariff_currency"),
    )


def _allowance(df: pl.DataFrame, included_used: dict[tuple[int, date], int]) -> pl.DataFrame:
    """`_covered` seconds per chargeable call: the allowance left, consumed in start order."""
    used = pl.DataFrame(
        [{"service_id": k[0], "period_start": k[1], "_used": int(v)} for k, v in included_used.items()],
        schema={"service_id": pl.Int64, "period_start": pl.Date, "_used": pl.Int64},
    )
    elig = df.filter(pl.col("_chargeable") & (pl.col("_allow") > 0)).select(
        "_row", "service_id", "period_start", "start_utc", "cdr_key", "_allow", "_b"
    )
    if elig.height == 0:
        return df.with_columns(pl.lit(0, dtype=pl.Int64).alias("_covered"))
    elig = (
        elig.join(used, on=["service_id", "period_start"], how="left")
        .sort(["service_id", "period_start", "start_utc", "cdr_key"])
        .with_columns(
            (pl.col("_b").cum_sum().over(["service_id", "period_start"]) - pl.col("_b")).alias("_before"),
        )
        .with_columns(
            (pl.col("_allow") - pl.col("_used").fill_null(0) - pl.col("_before")).clip(lower_bound=0).alias("_left")
        )
        .select("_row", pl.min_horizontal("_left", "_b").alias("_covered"))
    )
    return df.join(elig, on="_row", how="left", maintain_order="left").with_columns(
        pl.col("_covered").fill_null(0)
    )


def _outcome() -> tuple[pl.Expr, pl.Expr]:
    """(outcome, unrated_reason) by the precedence in the module docstring."""
    direction = pl.col("direction")
    not_billed = ((direction == "inbound") & ~pl.col("_bill_inbound")) | (
        (direction == "local") & ~pl.col("_bill_local")
    )
    steps = [
        (pl.col("billsec").is_null() | (pl.col("billsec") < 0), "unrated", "invalid_billsec"),
        (pl.col("billsec") == 0, "zero_cost", None),
        (pl.col("service_id").is_null(), "unrated", "no_service"),
        (pl.col("_out_tariff").is_null(), "unrated", "unknown_plan"),
        (~direction.is_in(["inbound", "outbound", "local"]).fill_null(False), "unrated", "invalid_direction"),
        (not_billed, "zero_cost", None),
        (pl.col("rate_number").is_null(), "unrated", "invalid_number"),
        (pl.col("start_utc").is_null(), "unrated", "invalid_start"),
        (pl.col("matched_prefix").is_null(), "unrated", "no_rate"),
        ((pl.col("rate_micro") == 0) & (pl.col("connect_micro") == 0), "zero_cost", None),
    ]
    outcome = pl.when(steps[0][0]).then(pl.lit(steps[0][1]))
    reason = pl.when(steps[0][0]).then(pl.lit(steps[0][2], dtype=pl.String))
    for cond, out, why in steps[1:]:
        outcome = outcome.when(cond).then(pl.lit(out))
        reason = reason.when(cond).then(pl.lit(why, dtype=pl.String))
    return outcome.otherwise(pl.lit("chargeable")), reason.otherwise(pl.lit(None, dtype=pl.String))


def rate_for_billing(
    cdrs: pl.DataFrame,
    settings: Settings,
    tariffs: dict[str, LoadedTariff],
    included_used: dict[tuple[int, date], int],
) -> pl.DataFrame:
    """One row per input CDR (same order) with its outcome and exact cost; see the docstring.

    `cdrs`: canonical CDR columns (at least cdr_key, server, direction, rate_number, start_utc,
    billsec) plus client_id, service_id, plan. `tariffs`: by config name (see load_tariffs).
    `included_used`: (service_id, period_start) -> included seconds already consumed."""
    plans = _plans(settings, tariffs)
    factors, fractions = _factors(settings, tariffs)
    tz = settings.timezone
    df = (
        cdrs.select(
            "cdr_key", "client_id", "service_id", "plan", "server", "direction", "rate_number", "start_utc", "billsec"
        )
        .with_columns(
            pl.col("start_utc").cast(pl.Datetime("us", "UTC")),
            pl.col("billsec").cast(pl.Int64),
            pl.col("client_id").cast(pl.Int64),
            pl.col("service_id").cast(pl.Int64),
        )
        .with_row_index("_row")
        .join(plans, on="plan", how="left", maintain_order="left")
        .join(_countries(settings), on="server", how="left", maintain_order="left")
    )
    direction = pl.col("direction")
    df = df.with_columns(
        pl.when(direction == "outbound")
        .then(pl.col("_out_tariff"))
        .when((direction == "inbound") & pl.col("_bill_inbound"))
        .then(pl.col("_in_tariff"))
        .when((direction == "local") & pl.col("_bill_local"))
        .then(pl.col("_out_tariff"))
        .alias("_use_tariff"),
        _period_start(pl.col("start_utc").dt.convert_time_zone(tz).dt.date(), pl.col("_anchor")).alias("period_start"),
    )
    to_rate = df.filter(
        pl.col("_use_tariff").is_not_null()
        & pl.col("service_id").is_not_null()
        & (pl.col("billsec") > 0)
        & pl.col("rate_number").is_not_null()
        & pl.col("start_utc").is_not_null()
    )
    parts = [
        _match_tariff(to_rate.filter(pl.col("_use_tariff") == name), tariffs[name], tz)
        for name in to_rate.get_column("_use_tariff").unique().sort().to_list()
    ]
    matched = pl.concat(parts) if parts else _match_tariff(to_rate.clear(), _empty_tariff(), tz)
    df = df.join(matched, on="_row", how="left", maintain_order="left")
    outcome, reason = _outcome()
    b = exact.billable_expr(pl.col("billsec"), pl.col("first_increment"), pl.col("next_increment"))
    df = df.with_columns(outcome.alias("_stage"), reason.alias("unrated_reason")).with_columns(
        pl.when(pl.col("matched_prefix").is_not_null() & (pl.col("billsec") >= 0))
        .then(b)
        .when(pl.col("billsec") == 0)
        .then(exact.lit128(0))
        .cast(pl.Int64)
        .alias("_b"),
        (pl.col("_stage") == "chargeable").alias("_chargeable"),
    )
    df = _allowance(df, included_used)
    charged = pl.col("_b") - pl.col("_covered")
    df = df.with_columns(
        pl.when(pl.col("_chargeable")).then(charged).cast(_I128).alias("_charged128"),
        pl.when(pl.col("_chargeable") & (charged > 0)).then(pl.col("connect_micro")).otherwise(exact.lit128(0)).alias(
            "_fee"
        ),
    ).join(factors, on=["plan", "tariff_name"], how="left", maintain_order="left")
    cost = exact.cost_text(
        df, seconds="_charged128", rate="rate_micro", connect="_fee", factors=fractions or [(0, 1)], factor="_factor"
    )
    cc = pl.col("_cc")
    computed_class = (
        pl.when(direction == "inbound")
        .then(pl.lit("inbound"))
        .when(direction == "local")
        .then(pl.lit("local"))
        .when(cc.is_not_null() & pl.col("rate_number").is_not_null() & ~pl.col("rate_number").str.starts_with(cc))
        .then(pl.lit("international"))
        .otherwise(pl.lit("outbound"))
    )
    chargeable = pl.col("_chargeable")
    out = df.with_columns(cost.alias("_cost")).with_columns(
        pl.when(~chargeable)
        .then(pl.col("_stage"))
        .when(charged == 0)
        .then(pl.lit("included"))
        .otherwise(pl.lit("billed"))
        .alias("outcome"),
        pl.when(pl.col("matched_prefix").is_not_null() & pl.col("_class").is_not_null())
        .then(pl.col("_class"))
        .otherwise(computed_class)
        .alias("charge_class"),
        pl.when(chargeable).then(pl.col("_b")).when(pl.col("_stage") == "zero_cost").then(pl.col("_b")).alias(
            "billable_seconds"
        ),
        pl.when(chargeable).then(pl.col("_covered")).when(pl.col("_stage") == "zero_cost").then(0).alias(
            "included_seconds"
        ),
        pl.when(chargeable).then(charged).when(pl.col("_stage") == "zero_cost").then(0).alias("charged_seconds"),
        pl.when(chargeable & (charged > 0))
        .then(pl.col("_cost"))
        .when(chargeable | (pl.col("_stage") == "zero_cost"))
        .then(pl.lit("0.000000"))
        .alias("cost"),
    )
    return out.select([pl.col(c).cast(t) for c, t in OUTPUT_SCHEMA.items()])


def _empty_tariff() -> LoadedTariff:
    return tariff_from_frame(pl.DataFrame(schema={"prefix": pl.String, "rate": pl.String}), name="")
