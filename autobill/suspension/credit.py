"""The pure parts of credit control (#18): which invoices are overdue, since when charges count
as not invoiced, and whether a service's last hour looks like toll fraud.

Pure: the time, the timezones and the thresholds come in as arguments (tests: property tests
against a simple reference in tests/autobill/test_credit_control.py). Reading WHMCS is
connectors/whmcs_accounts.py; the ledger sums are autobill/ledger/intraday.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

DEFAULT_CRON_TIME = "09:00"  # WHMCS's shipped Automation Settings > Time of Day


def _due(text: str) -> date | None:
    try:
        return date.fromisoformat((text or "").strip()[:10])
    except ValueError:
        return None  # "0000-00-00", blank: no due date


def is_overdue(duedate: str, now: datetime, grace_days: int, whmcs_tz: ZoneInfo) -> bool:
    """An invoice is overdue once its due date (a WHMCS-local date, no offset) plus the grace has
    passed: on the local day after `due + grace`. An invoice without a readable due date counts
    as overdue (a client cannot escape suspension with a malformed invoice)."""
    due = _due(duedate)
    if due is None:
        return True
    return now.astimezone(whmcs_tz).date() > due + timedelta(days=grace_days)


def overdue_amount(invoices: Iterable[tuple[Decimal, str]], now: datetime, grace_days: int, whmcs_tz: ZoneInfo) -> Decimal:
    """What is unpaid on the overdue ones of (balance, duedate) invoices."""
    return sum((bal for bal, due in invoices if is_overdue(due, now, grace_days, whmcs_tz)), Decimal(0))


def last_cron(now: datetime, cron_time: str | None, whmcs_tz: ZoneInfo) -> datetime:
    """The most recent WHMCS daily cron at or before `now` (aware, in `whmcs_tz`'s wall time,
    returned in UTC). Charges posted after it are not invoiced yet. Swap this function for
    invoice reconciliation (#13) when that lands."""
    hh, mm = (int(x) for x in (cron_time or DEFAULT_CRON_TIME).split(":"))
    local = now.astimezone(whmcs_tz)
    at = datetime.combine(local.date(), time(hh, mm), whmcs_tz)
    if at > local:
        at = datetime.combine(local.date() - timedelta(days=1), time(hh, mm), whmcs_tz)
    return at.astimezone(ZoneInfo("UTC"))


# -- the spend-velocity guard ------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One rated call of the window, as evidence."""

    cdr_key: str
    start_utc: datetime
    number: str | None
    charge_class: str
    billsec: int
    cost: Decimal

    def line(self) -> str:
        return (f"{self.start_utc:%Y-%m-%d %H:%M:%S}Z to +{self.number or '?'} ({self.charge_class}) "
                f"{self.billsec}s {self.cost:.2f} [{self.cdr_key}]")  # fmt: skip


@dataclass(frozen=True)
class GuardPolicy:
    multiplier: Decimal = Decimal(10)
    min_spend: Decimal = Decimal("25.00")
    min_international_minutes: int = 60
    high_risk_prefixes: tuple[str, ...] = ()
    high_risk_calls: int = 0
    window_minutes: int = 60

    @classmethod
    def from_settings(cls, settings) -> GuardPolicy:
        g = settings.fraud_guard
        return cls(g.multiplier, g.min_spend, g.min_international_minutes, tuple(g.high_risk_prefixes),
                   g.high_risk_calls, g.window_minutes)  # fmt: skip


@dataclass(frozen=True)
class Baseline:
    """A service's own usual spend and international seconds per window, over the baseline days."""

    spend: Decimal = Decimal(0)
    international_seconds: int = 0


def high_risk(number: str | None, prefixes: tuple[str, ...]) -> bool:
    return bool(number) and any(number.startswith(p) for p in prefixes)


def spend_threshold(b: Baseline, p: GuardPolicy) -> Decimal:
    return max(p.min_spend, b.spend * p.multiplier)


def international_threshold(b: Baseline, p: GuardPolicy) -> Decimal:
    """In minutes."""
    return max(Decimal(p.min_international_minutes), Decimal(b.international_seconds) / 60 * p.multiplier)


def guard(calls: list[Call], baseline: Baseline, p: GuardPolicy) -> tuple[str, list[Call]] | None:
    """(why, evidence) when the window's calls are over a threshold, else None.

    Over = spend > max(min_spend, multiplier x baseline spend), or international minutes >
    max(min_international_minutes, multiplier x baseline), or more than `high_risk_calls`
    answered calls to a high-risk prefix. The evidence is the calls that count (high-risk ones
    first), most expensive first."""
    spend = sum((c.cost for c in calls), Decimal(0))
    intl = Decimal(sum(c.billsec for c in calls if c.charge_class == "international")) / 60
    risky = [c for c in calls if c.billsec > 0 and high_risk(c.number, p.high_risk_prefixes)]
    why = []
    if spend > spend_threshold(baseline, p):
        why.append(f"spend {spend:.2f} in {p.window_minutes} min > {spend_threshold(baseline, p):.2f} "
                   f"(baseline {baseline.spend:.2f} x {p.multiplier}, floor {p.min_spend:.2f})")  # fmt: skip
    if intl > international_threshold(baseline, p):
        why.append(f"international {intl:.1f} min in {p.window_minutes} min > {international_threshold(baseline, p):.1f} "
                   f"(baseline {Decimal(baseline.international_seconds) / 60:.1f} x {p.multiplier}, "
                   f"floor {p.min_international_minutes})")  # fmt: skip
    if p.high_risk_prefixes and len(risky) > p.high_risk_calls:
        why.append(f"{len(risky)} call(s) to high-risk prefixes > {p.high_risk_calls}")
    if not why:
        return None
    keys = {c.cdr_key for c in risky}
    evidence = risky + sorted((c for c in calls if c.cdr_key not in keys), key=lambda c: (-c.cost, c.cdr_key))
    return "; ".join(why), evidence
