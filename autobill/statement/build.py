"""One client's statement for a period: charge lines that tie out to WHMCS, corrections, calls.

The rounding rule (DESIGN.md invariant 3), as printed on every statement: a call's cost is
computed exactly and rounded once to 6 decimals, half-up; a charge line's amount is the exact sum
of its calls' costs rounded once to the currency's minor unit, half-up. So every usage line's
subtotal, recomputed here from its calls, equals the ledger's charge amount and the WHMCS item
amount to the cent; a line where it does not is flagged (`tied_out` false), never adjusted.

Corrections are their own lines, never edits: a charge whose `kind` is `correction` (issue 16's
re-rating, when its column exists) or whose class is `correction` (a dispute credit,
autobill/ledger/disputes.py), dated the day it was made, with a note saying what it corrects.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

import polars as pl
from sqlalchemy import select

from autobill.config import Settings
from autobill.ledger.charges import statement_ref
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge, DisputeItem
from autobill.money import round_minor
from autobill.statement.store import ensure_calls, scan_calls
from autobill.timeutil import utc_now

ROUNDING_RULE = ("Each call's cost is computed exactly and rounded once to 6 decimals (half-up); each charge line "
                 "is the exact sum of its calls' costs, rounded once to the currency's minor unit (half-up). "
                 "Nothing is rounded per billing increment.")
CORRECTION = "correction"
CALL_COLUMNS = ("line_ref", "cdr_key", "local_time", "service_id", "direction", "number", "destination",
                "destination_name", "e164", "matched_prefix", "tariff_version", "billsec", "billable_seconds",
                "included_seconds", "charged_seconds", "rate", "connect_fee", "rate_currency", "cost", "currency",
                "outcome")


@dataclass(frozen=True)
class StatementLine:
    """One charge line (a WHMCS billable item) on the statement."""

    ref: str
    charge_id: int
    idempotency_key: str
    service_id: int
    billing_date: date
    charge_class: str
    currency: str
    kind: str  # usage | correction
    calls: int
    charged_seconds: int
    included_seconds: int
    subtotal_exact: Decimal  # sum of the listed calls' costs (usage lines)
    subtotal: Decimal  # subtotal_exact rounded once to the minor unit; a correction's own amount
    amount: Decimal  # the ledger charge = the WHMCS item amount
    state: str
    whmcs_billable_id: int | None
    description: str
    note: str = ""

    @property
    def tied_out(self) -> bool:
        return self.subtotal == self.amount


@dataclass
class Statement:
    client_id: int
    first: date
    last: date
    lines: list[StatementLine]
    calls: pl.DataFrame  # CALL_COLUMNS, one row per billed or included call
    client_name: str = ""
    reseller_name: str = ""
    timezone: str = "UTC"
    generated_at: datetime = field(default_factory=utc_now)
    # included seconds per currency, when the builder summed them for many clients at once
    included: dict[str, int] | None = None

    @property
    def tied_out(self) -> bool:
        return all(line.tied_out for line in self.lines)

    def totals(self) -> dict[str, dict[str, Decimal | int]]:
        """Per currency: calls billed, charged and included seconds, usage, corrections and total."""
        out: dict[str, dict[str, Decimal | int]] = {}

        def of(ccy: str) -> dict[str, Decimal | int]:
            return out.setdefault(ccy, {"calls": 0, "charged_seconds": 0, "included_seconds": 0,
                                        "usage": Decimal(0), "corrections": Decimal(0), "total": Decimal(0)})

        for line in self.lines:
            if line.state == "void":
                continue
            t = of(line.currency)
            if line.kind == CORRECTION:
                t["corrections"] += line.amount
            else:
                t["calls"] += line.calls
                t["charged_seconds"] += line.charged_seconds
                t["usage"] += line.amount
            t["total"] += line.amount
        included = self.included
        if included is None:
            included = dict(self.calls.group_by("currency").agg(pl.col("included_seconds").sum()).iter_rows())
        for ccy, secs in included.items():
            if ccy is not None:
                of(ccy)["included_seconds"] = int(secs or 0)
        return out


def is_correction(kind: str | None, charge_class: str) -> bool:
    return kind == CORRECTION or charge_class == CORRECTION


def _charges(settings: Settings, first: date, last: date, client_ids: list[int] | None) -> list[dict]:
    """The charge lines dated in [first, last] (of `client_ids`), as dicts ordered by client, date, id,
    each with its statement reference (`line_ref`) and, for a dispute credit, a note."""
    table = Charge.__table__
    kind = table.c.get("kind")  # issue 16's corrections add it; absent before
    cols = [table.c.id, table.c.client_id, table.c.service_id, table.c.billing_date, table.c.charge_class,
            table.c.currency, table.c.amount, table.c.state, table.c.whmcs_billable_id, table.c.idempotency_key,
            table.c.description]
    query = select(*cols, *([kind] if kind is not None else [])).where(
        table.c.billing_date >= first, table.c.billing_date <= last)
    if client_ids is not None:
        query = query.where(table.c.client_id.in_(client_ids))
    with session_scope(settings.ledger) as session:
        rows = session.execute(query.order_by(table.c.client_id, table.c.billing_date, table.c.id)).tuples().all()
        credits = session.execute(
            select(DisputeItem.credit_charge_id, DisputeItem.dispute_id, DisputeItem.charge_id, DisputeItem.cdr_key)
            .where(DisputeItem.credit_charge_id.is_not(None))
        ).tuples().all()
        originals = {}
        if credits:
            ids = sorted({c[2] for c in credits if c[2] is not None})
            originals = dict(session.execute(
                select(Charge.id, Charge.idempotency_key).where(Charge.id.in_(ids))).tuples().all()) if ids else {}
    notes: dict[int, list] = {}
    for credit_id, dispute_id, charge_id, _key in credits:
        notes.setdefault(credit_id, []).append((dispute_id, originals.get(charge_id)))
    names = ("charge_id", "client_id", "service_id", "billing_date", "charge_class", "currency", "amount", "state",
             "whmcs_billable_id", "idempotency_key", "description")
    out = []
    for r in rows:
        note = ""
        if r[0] in notes:
            disputes = sorted({d for d, _ in notes[r[0]]})
            refs = sorted({statement_ref(k) for _, k in notes[r[0]] if k})
            note = (f"credit for {len(notes[r[0]])} disputed call(s) of {', '.join(refs)} "
                    f"(dispute {', '.join('#' + str(d) for d in disputes)})")
        row = dict(zip(names, r[:11], strict=True))
        row.update(kind=r[11] if len(r) > 11 else None, note=note, line_ref=statement_ref(r[9]))
        out.append(row)
    return out


def _ref_frame(charges: list[dict]) -> pl.DataFrame:
    return pl.DataFrame({"charge_id": [c["charge_id"] for c in charges], "line_ref": [c["line_ref"] for c in charges]},
                        schema={"charge_id": pl.Int64, "line_ref": pl.String})


def _local_time(settings: Settings) -> pl.Expr:
    """The call's start in its service's timezone (Service.timezone, default the billing timezone),
    as ISO-8601 with the UTC offset, so a statement is never ambiguous across DST."""
    by_tz: dict[str, list[int]] = {}
    for svc in settings.services:
        tz = svc.timezone or settings.timezone
        if tz != settings.timezone:
            by_tz.setdefault(tz, []).append(svc.service_id)
    start = pl.col("start_utc")
    fmt = "%Y-%m-%d %H:%M:%S%:z"
    expr = start.dt.convert_time_zone(settings.timezone).dt.strftime(fmt)
    for tz, ids in sorted(by_tz.items()):
        expr = pl.when(pl.col("service_id").is_in(ids)).then(start.dt.convert_time_zone(tz).dt.strftime(fmt)) \
            .otherwise(expr)
    return expr


def client_timezone(settings: Settings, client_id: int) -> str:
    zones = sorted({s.timezone or settings.timezone for s in settings.services if s.client_id == client_id})
    return zones[0] if len(zones) == 1 else (", ".join(zones) if zones else settings.timezone)


def display_calls(settings: Settings, calls: pl.DataFrame, charges: list[dict]) -> pl.DataFrame:
    """The calls of any number of clients as statements show them: `client_id` then CALL_COLUMNS, one row
    per call, ordered by client, billing date, start and key (vectorised over all the clients at once)."""
    return (
        calls.join(_ref_frame(charges), on="charge_id", how="left")
        .sort("client_id", "billing_date", "start_utc", "cdr_key")
        .select(
            "client_id",
            pl.when(pl.col("outcome") == "included").then(pl.lit("included")).otherwise(pl.col("line_ref"))
            .alias("line_ref"),
            "cdr_key", _local_time(settings).alias("local_time"), "service_id", "direction",
            pl.col("src").alias("number"), pl.col("dst").alias("destination"),
            pl.col("description").alias("destination_name"), pl.col("rate_number").alias("e164"),
            "matched_prefix", "tariff_version", "billsec", "billable_seconds", "included_seconds", "charged_seconds",
            "rate", "connect_fee", pl.col("tariff_currency").alias("rate_currency"), "cost", "currency", "outcome",
        )
    )


def line_sums(calls: pl.DataFrame) -> dict[int, tuple[int, int, int, Decimal]]:
    """Per charge id: (calls, charged seconds, included seconds, exact sum of the 6-dp costs)."""
    return {
        r[0]: (int(r[1]), int(r[2] or 0), int(r[3] or 0), Decimal(r[4] or 0))
        for r in calls.filter(pl.col("charge_id").is_not_null()).group_by("charge_id").agg(
            pl.len(), pl.col("charged_seconds").sum(), pl.col("included_seconds").sum(),
            pl.col("cost").cast(pl.Decimal(38, 6)).sum(),
        ).iter_rows()
    }


def _lines(charges: list[dict], sums: dict[int, tuple[int, int, int, Decimal]]) -> list[StatementLine]:
    lines = []
    for c in charges:
        correction = is_correction(c["kind"], c["charge_class"])
        n, secs, incl, exact = sums.get(c["charge_id"], (0, 0, 0, Decimal(0)))
        lines.append(StatementLine(
            ref=c["line_ref"], charge_id=c["charge_id"], idempotency_key=c["idempotency_key"],
            service_id=c["service_id"], billing_date=c["billing_date"], charge_class=c["charge_class"],
            currency=c["currency"], kind=CORRECTION if correction else "usage", calls=n,
            charged_seconds=secs, included_seconds=incl, subtotal_exact=exact,
            subtotal=c["amount"] if correction else round_minor(exact, c["currency"]), amount=c["amount"],
            state=c["state"], whmcs_billable_id=c["whmcs_billable_id"], description=c["description"],
            note=c["note"],
        ))
    return lines


def _statements(settings: Settings, first: date, last: date, ids: list[int], charges: list[dict],
                calls: pl.DataFrame, names: dict[int, str], columns: dict[str, pl.Expr] | None = None,
                ) -> Iterator[Statement]:
    """The statements of `ids` from their charges and their stored calls (one vectorised pass;
    `columns` are extra columns of `Statement.calls` computed for all the clients at once)."""
    sums = line_sums(calls)
    included: dict[int, dict[str, int]] = {}
    for cid, ccy, secs in calls.group_by("client_id", "currency").agg(pl.col("included_seconds").sum()).iter_rows():
        included.setdefault(cid, {})[ccy] = int(secs or 0)
    shown = display_calls(settings, calls, charges)
    if columns:
        shown = shown.with_columns(**columns)
    by_client = {k[0]: v for k, v in shown.partition_by("client_id", as_dict=True, include_key=False,
                                                          maintain_order=True).items()}
    empty = shown.drop("client_id").clear()
    del shown  # the partitions are copies: keep one
    mine: dict[int, list[dict]] = {}
    for c in charges:
        mine.setdefault(c["client_id"], []).append(c)
    for cid in ids:
        yield Statement(client_id=cid, first=first, last=last, lines=_lines(mine.get(cid, []), sums),
                        calls=by_client.pop(cid, empty), client_name=names.get(cid, ""), included=included.get(cid, {}),
                        reseller_name=settings.statements.reseller_name,
                        timezone=client_timezone(settings, cid))


def build_statement(settings: Settings, client_id: int, first: date, last: date, client_name: str = "") -> Statement:
    """One client's statement for billing dates [first, last] (local dates in the billing timezone)."""
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    ensure_calls(settings, first, last)
    charges = _charges(settings, first, last, [client_id])
    calls = scan_calls(settings, first, last, [client_id]).collect()
    return next(_statements(settings, first, last, [client_id], charges, calls, {client_id: client_name}))


def statement_clients(settings: Settings, first: date, last: date) -> list[int]:
    """Every client with a charge or a stored call in the period."""
    with session_scope(settings.ledger) as session:
        charged = set(session.scalars(select(Charge.client_id).where(
            Charge.billing_date >= first, Charge.billing_date <= last).distinct()))
    called = scan_calls(settings, first, last).select("client_id").unique().collect()["client_id"]
    return sorted(charged | set(called.drop_nulls().to_list()))


def build_statements(settings: Settings, first: date, last: date, client_ids: list[int] | None = None,
                     names: dict[int, str] | None = None, chunk: int = 1000,
                     columns: dict[str, pl.Expr] | None = None) -> Iterator[Statement]:
    """Statements of many clients (default: every client with a charge or a call in the period),
    `chunk` clients at a time (one read of their calls, vectorised per chunk) so memory stays bounded
    on a month of calls. `columns`: extra columns of `Statement.calls` (e.g. the PDF's text rows)."""
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    ensure_calls(settings, first, last)
    if client_ids is None:
        client_ids = statement_clients(settings, first, last)
    for i in range(0, len(client_ids), chunk):
        ids = client_ids[i : i + chunk]
        charges = _charges(settings, first, last, ids)
        calls = scan_calls(settings, first, last, ids).collect()
        yield from _statements(settings, first, last, ids, charges, calls, names or {}, columns)
        del charges, calls  # before the next chunk is read: one chunk in memory at a time
