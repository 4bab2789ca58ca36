"""A per-row reference rater in plain Python and Decimal, written straight from RATING.md.

It shares no code with autobill.rating (only the documented readings of silent points: how a
decimal, an integer, a start time and an effective date are written); the property tests compare
it with the vectorised engine on generated tariffs and CDRs. Slow and obvious on purpose.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

DEC = re.compile(r"^(?:[0-9]{1,25}(?:\.[0-9]{0,6})?|\.[0-9]{1,6})$")
INT = re.compile(r"^[0-9]+$")


class RefTariffError(ValueError):
    pass


@dataclass(frozen=True)
class RefRow:
    index: int
    prefix: str
    rate: Decimal
    description: str | None
    connect_fee: Decimal
    first: int
    nxt: int
    effective_from: datetime | None


def _blank(value: str | None) -> bool:
    return value is None or value.strip() == ""


def ref_decimal(value: str) -> Decimal:
    text = value.strip()
    if not DEC.match(text):
        raise RefTariffError(f"bad decimal {value!r}")
    return Decimal(text)


def ref_effective(value: str) -> datetime:
    moment = datetime.fromisoformat(value.strip())
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def ref_tariff(rows: list[dict[str, str | None]]) -> list[RefRow]:
    out: list[RefRow] = []
    seen: set[tuple[str, datetime | None]] = set()
    for i, row in enumerate(rows):
        prefix = (row.get("prefix") or "").strip()
        if not re.fullmatch(r"[0-9]{1,15}", prefix):
            raise RefTariffError(f"row {i + 1}: prefix")
        if _blank(row.get("rate")):
            raise RefTariffError(f"row {i + 1}: rate")
        rate = ref_decimal(row["rate"])
        fee = Decimal(0) if _blank(row.get("connect_fee")) else ref_decimal(row["connect_fee"])
        first = 1 if _blank(row.get("first_increment")) else int(row["first_increment"].strip())
        nxt = first if _blank(row.get("next_increment")) else int(row["next_increment"].strip())
        if first < 1 or nxt < 1:
            raise RefTariffError(f"row {i + 1}: increment")
        eff = None if _blank(row.get("effective_from")) else ref_effective(row["effective_from"])
        if (prefix, eff) in seen:
            raise RefTariffError(f"row {i + 1}: duplicate")
        seen.add((prefix, eff))
        out.append(RefRow(i, prefix, rate, row.get("description"), fee, first, nxt, eff))
    return out


def ref_normalise(number: str | None, cc: str = "1", intl: str | None = None, trunk: str | None = None) -> str | None:
    """RATING.md "Number normalisation", steps 1-6."""
    if number is None:
        return None
    intl = ("011" if cc == "1" else "00") if intl is None else intl
    trunk = ("" if cc == "1" else "0") if trunk is None else trunk
    plus = number.strip().startswith("+")
    digits = re.sub(r"[^0-9]", "", number)
    if plus:
        e164 = digits
    elif intl != "" and digits.startswith(intl):
        e164 = digits[len(intl) :]
    elif cc == "1" and len(digits) == 10 and digits[0] in "23456789":
        e164 = "1" + digits
    elif trunk != "" and digits.startswith(trunk):
        e164 = cc + digits[len(trunk) :]
    else:
        e164 = digits
    return e164 if 1 <= len(e164) <= 15 else None


def ref_start(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None


def ref_billsec(text: str | None) -> int | None:
    if text is None or not INT.match(text.strip()):
        return None
    return int(text.strip())


def ref_lookup(tariff: list[RefRow], e164: str, start: datetime) -> RefRow | None:
    """Longest prefix with a row in effect; among its rows in effect, the latest effective_from."""
    for length in range(len(e164), 0, -1):
        in_effect = [
            r for r in tariff if r.prefix == e164[:length] and (r.effective_from is None or r.effective_from <= start)
        ]
        if in_effect:
            return max(in_effect, key=lambda r: (r.effective_from is not None, r.effective_from or start))
    return None


def ref_billable(s: int, first: int, nxt: int) -> int:
    if s == 0:
        return 0
    if s <= first:
        return first
    return first + math.ceil(Fraction(s - first, nxt)) * nxt


def ref_cost(row: RefRow, b: int, markup: Decimal) -> Fraction:
    """The formula with exact fractions, rounded once, half-up, to 6 decimals."""
    cost = (Fraction(row.connect_fee) + Fraction(row.rate) * b / 60) * (1 + Fraction(markup) / 100)
    micro = math.floor(cost * 10**6 + Fraction(1, 2))
    return Fraction(micro, 10**6)


def six(value: Decimal | Fraction) -> str:
    """Exactly 6 decimals; the value must already be a whole number of micro-units."""
    micro = Fraction(value) * 10**6
    assert micro.denominator == 1, value
    m = int(micro)
    return f"{m // 10**6}.{m % 10**6:06d}"


def ref_rate(
    tariff_rows: list[dict[str, str | None]],
    cdrs: list[dict[str, str | None]],
    cc: str = "1",
    intl: str | None = None,
    trunk: str | None = None,
    markup: Decimal = Decimal(0),
) -> list[dict[str, str]]:
    """Output rows (input columns + RATING.md columns) as text; empty text for empty values."""
    tariff = ref_tariff(tariff_rows)
    seen: set[str | None] = set()
    out = []
    for cdr in cdrs:
        cid = cdr.get("cdr_id")
        empty_id = cid is None or str(cid).strip() == ""  # RATING.md: invalid, never a duplicate
        duplicate = not empty_id and cid in seen
        if not empty_id:
            seen.add(cid)
        start = ref_start(cdr.get("start"))
        s = ref_billsec(cdr.get("billsec"))
        e164 = ref_normalise(cdr.get("dst"), cc, intl, trunk)
        row = ref_lookup(tariff, e164, start) if e164 is not None and start is not None else None
        if duplicate:
            status = "duplicate"
        elif start is None or s is None or empty_id or s > 604800:
            status = "invalid"
        elif e164 is None:
            status = "invalid_number"
        elif s == 0:
            status = "unanswered"
        elif row is None:
            status = "no_rate"
        else:
            status = "rated"
        b = None
        if s == 0:
            b = 0
        elif s is not None and row is not None:
            b = ref_billable(s, row.first, row.nxt)
        cost = ""
        if status == "rated":
            cost = six(ref_cost(row, b, markup))
        elif status == "unanswered":
            cost = "0.000000"
        out.append(
            {
                **{k: ("" if v is None else v) for k, v in cdr.items()},
                "status": status,
                "e164": e164 or "",
                "matched_prefix": row.prefix if row else "",
                "description": (row.description or "") if row else "",
                "billable_seconds": "" if b is None else str(b),
                "rate": six(row.rate) if row else "",
                "connect_fee": six(row.connect_fee) if row else "",
                "cost": cost,
            }
        )
    return out


# --- the nightly rater (autobill.rating.billing), per row -------------------------------------

_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def ref_in_band(days: str | None, hours: str | None, local: datetime) -> bool:
    """Is the local start in the row's band? Empty days/hours mean every day / the whole day."""
    if days and days.strip():
        wanted = set()
        for item in days.lower().replace(" ", "").split(","):
            if "-" in item:
                a, b = (_DAYS.index(x[:3]) for x in item.split("-"))
                i = a
                while True:
                    wanted.add(i)
                    if i == b:
                        break
                    i = (i + 1) % 7
            else:
                wanted.add(_DAYS.index(item[:3]))
        if local.weekday() not in wanted:
            return False
    if hours and hours.strip():
        minute = local.hour * 60 + local.minute
        for item in hours.replace(" ", "").split(","):
            a_txt, b_txt = item.split("-")
            a = int(a_txt[:2]) * 60 + int(a_txt[3:])
            b = int(b_txt[:2]) * 60 + int(b_txt[3:])
            if (a < b and a <= minute < b) or (a > b and (minute >= a or minute < b)):
                return True
        return False
    return True


@dataclass(frozen=True)
class RefBillRow:
    prefix: str
    rate: Decimal
    fee: Decimal
    first: int
    nxt: int
    eff: datetime | None
    days: str | None
    hours: str | None
    cls: str | None
    description: str | None


def ref_bill_tariff(rows: list[dict[str, str | None]]) -> list[RefBillRow]:
    out = []
    for row in rows:
        first = 1 if _blank(row.get("first_increment")) else int(row["first_increment"])
        out.append(
            RefBillRow(
                prefix=row["prefix"],
                rate=Decimal(row["rate"]),
                fee=Decimal(0) if _blank(row.get("connect_fee")) else Decimal(row["connect_fee"]),
                first=first,
                nxt=first if _blank(row.get("next_increment")) else int(row["next_increment"]),
                eff=None if _blank(row.get("effective_from")) else ref_effective(row["effective_from"]),
                days=None if _blank(row.get("days")) else row["days"],
                hours=None if _blank(row.get("hours")) else row["hours"],
                cls=None if _blank(row.get("class")) else row["class"].strip(),
                description=None if _blank(row.get("description")) else row["description"],
            )
        )
    return out


def ref_bill_lookup(tariff: list[RefBillRow], e164: str, start: datetime, tz: str) -> RefBillRow | None:
    from zoneinfo import ZoneInfo

    local = start.astimezone(ZoneInfo(tz))
    for length in range(len(e164), 0, -1):
        ok = [
            r
            for r in tariff
            if r.prefix == e164[:length]
            and (r.eff is None or r.eff <= start)
            and (not (r.days or r.hours) or ref_in_band(r.days, r.hours, local))
        ]
        if ok:
            return max(ok, key=lambda r: (r.eff is not None, r.eff or start, bool(r.days or r.hours)))
    return None


def ref_bill(cdrs: list[dict], settings, tariffs: dict[str, tuple[list[dict], str, str | None]], included_used: dict) -> list[dict]:
    """tariffs: name -> (raw rows, currency, timezone or None). Returns one dict per CDR."""
    from zoneinfo import ZoneInfo

    from autobill.timeutil import period_bounds

    parsed = {name: ref_bill_tariff(rows) for name, (rows, _, _) in tariffs.items()}
    results: list[dict] = []
    chargeable: list[int] = []
    for i, c in enumerate(cdrs):
        r: dict = {"cdr_key": c["cdr_key"], "outcome": None, "unrated_reason": None, "matched_prefix": None,
                   "description": None, "billable_seconds": None, "included_seconds": None, "charged_seconds": None,
                   "rate": None, "connect_fee": None, "cost": None, "tariff_name": None, "period_start": None,
                   "currency": None, "charge_class": None}
        plan = None
        if c["plan"] is not None and any(p.name == c["plan"] for p in settings.plans):
            plan = settings.plan(c["plan"])
            r["currency"] = plan.currency
            if c["start_utc"] is not None:
                local_day = c["start_utc"].astimezone(ZoneInfo(settings.timezone)).date()
                r["period_start"] = period_bounds(local_day, plan.period_anchor_day)[0]
        direction, s, num, start = c["direction"], c["billsec"], c["rate_number"], c["start_utc"]
        use = None
        if plan is not None:
            if direction == "outbound":
                use = plan.tariff
            elif direction == "inbound" and plan.bill_inbound:
                use = plan.inbound_tariff or plan.tariff
            elif direction == "local" and plan.bill_local:
                use = plan.tariff
        row = None
        if use is not None and c["service_id"] is not None and s is not None and s > 0 and num and start is not None:
            row = ref_bill_lookup(parsed[use], num, start, tariffs[use][2] or settings.timezone)
        cc = next((sv.numbering.country_code for sv in settings.servers if sv.id == c["server"]), None)
        cls = {"inbound": "inbound", "local": "local"}.get(direction)
        if cls is None:
            cls = "international" if (cc is not None and num is not None and not num.startswith(cc)) else "outbound"
        if row is not None and row.cls:
            cls = row.cls
        r["charge_class"] = cls
        if row is not None:
            r.update(matched_prefix=row.prefix, description=row.description, rate=six(row.rate),
                     connect_fee=six(row.fee), tariff_name=use)
        if s is None or s < 0:
            r.update(outcome="unrated", unrated_reason="invalid_billsec")
        elif s == 0:
            r.update(outcome="zero_cost")
        elif c["service_id"] is None:
            r.update(outcome="unrated", unrated_reason="no_service")
        elif plan is None:
            r.update(outcome="unrated", unrated_reason="unknown_plan")
        elif direction not in ("inbound", "outbound", "local"):
            r.update(outcome="unrated", unrated_reason="invalid_direction")
        elif use is None:
            r.update(outcome="zero_cost")
        elif num is None:
            r.update(outcome="unrated", unrated_reason="invalid_number")
        elif start is None:
            r.update(outcome="unrated", unrated_reason="invalid_start")
        elif row is None:
            r.update(outcome="unrated", unrated_reason="no_rate")
        elif row.rate == 0 and row.fee == 0:
            r.update(outcome="zero_cost")
        else:
            r["outcome"] = "chargeable"
            chargeable.append(i)
        if r["outcome"] == "zero_cost":
            r.update(billable_seconds=0 if s == 0 else (ref_billable(s, row.first, row.nxt) if row else None),
                     included_seconds=0, charged_seconds=0, cost="0.000000")
        r["_row"] = row
        r["_use"] = use
        results.append(r)
    used: dict = {}
    for i in sorted(chargeable, key=lambda i: (cdrs[i]["service_id"], cdrs[i]["start_utc"], cdrs[i]["cdr_key"])):
        c, r = cdrs[i], results[i]
        plan = settings.plan(c["plan"])
        row = r["_row"]
        b = ref_billable(c["billsec"], row.first, row.nxt)
        key = (c["service_id"], r["period_start"])
        already = used.get(key, included_used.get(key, 0))
        covered = min(b, max(0, plan.included_minutes * 60 - already))
        used[key] = already + covered
        charged = b - covered
        fx = settings.rate(tariffs[r["_use"]][1], plan.currency)
        fee = Fraction(row.fee) if charged > 0 else Fraction(0)
        cost = (fee + Fraction(row.rate) * charged / 60) * (1 + Fraction(plan.markup_percent) / 100) * Fraction(fx)
        micro = math.floor(cost * 10**6 + Fraction(1, 2))
        r.update(outcome="billed" if charged else "included", billable_seconds=b, included_seconds=covered,
                 charged_seconds=charged, cost=six(Fraction(micro, 10**6)))
    for r in results:
        r.pop("_row")
        r.pop("_use")
    return results
