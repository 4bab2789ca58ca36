"""The pure parts of credit control (#18): which invoices are overdue, which charges count as not
invoiced yet (from what WHMCS says of its daily cron and what reconciliation found), and whether a service's last hour looks like toll fraud.

Pure: the time, the timezones and the thresholds come in as arguments (tests: property tests
against a simple reference in tests/autobill/test_credit_control.py). Reading WHMCS is
connectors/whmcs_accounts.py; the ledger sums are autobill/ledger/intraday.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from autobill.reconcile import assumed_cron_done, whmcs_time

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


# -- posted but not invoiced yet ---------------------------------------------------------------


@dataclass(frozen=True)
class DailyCron:
    """What is known of WHMCS's last completed daily cron: its start (UTC; None = none has run)."""

    started: datetime | None
    source: str  # how it is known, for the cycle's log


def daily_cron(log_time: str | None, log_error: str | None, now: datetime, whmcs_tz: ZoneInfo,
               cron_time: str | None, margin_minutes: int) -> DailyCron:
    """The last daily cron from GetAutomationLog's `lastDailyCronInvocationTime` (`log_time`, WHMCS
    local time without an offset; "" = no cron has run), or, when the log could not be read
    (`log_error`) or says the cron ran in the future (a wrong `whmcs.timezone`), the configured
    `whmcs.cron_time` (default 09:00): the latest configured start whose start + `margin_minutes`
    (assumed finished by then) is not after `now`."""
    if log_error is None:
        started = whmcs_time(log_time, whmcs_tz)
        if started is None:
            return DailyCron(None, "GetAutomationLog: no daily cron has run")
        if started <= now + timedelta(minutes=1):
            return DailyCron(started, f"GetAutomationLog: last daily cron {log_time} {whmcs_tz.key}")
        log_error = f"its last daily cron {log_time} {whmcs_tz.key} is in the future: check whmcs.timezone"
    at = cron_time or DEFAULT_CRON_TIME
    started = assumed_cron_done(now, whmcs_tz, at, margin_minutes) - timedelta(minutes=margin_minutes)
    return DailyCron(started, f"whmcs.cron_time {at} {whmcs_tz.key} + {margin_minutes} min "
                              f"(GetAutomationLog failed: {log_error})")


@dataclass(frozen=True)
class ChargeFacts:
    """What the ledger knows of one charge, for `not_invoiced`."""

    state: str  # pending | posting | uncertain | posted | ...
    amount: Decimal
    kind: str = "charge"  # charge | correction
    posted_at: datetime | None = None
    uncertain_at: datetime | None = None  # kept when reconciliation found it (posted_at = reconciliation time)
    on_invoice: bool = False  # reconciliation found it on a WHMCS invoice line


NOT_POSTED = ("pending", "posting", "uncertain")


def not_invoiced(c: ChargeFacts, cron: datetime | None, margin: timedelta = timedelta(0)) -> bool:
    """Whether a charge counts as charged but not invoiced yet (autosuspend's "not invoiced" term).

    - a correction that lowers a line is posted with AddCredit: WHMCS's credit shows it, never an
      invoice, so it never counts here (not even before it is posted: no credit before WHMCS has it);
    - not posted yet (pending, posting, uncertain): counts;
    - posted and seen on a WHMCS invoice line by reconciliation: invoiced;
    - posted: counts until a daily cron started after it reached WHMCS (`cron`, the last completed
      cron's start; None = no cron has run) by more than `margin` (whmcs.reconcile_margin_seconds).
      When it reached WHMCS: its `posted_at`, or for a charge settled by reconciliation (posted_at
      is then the reconciliation time) the moment it became uncertain, after which it could not be
      stored any more.
    Anything else (e.g. a state no posting reached) does not count."""
    if c.kind == "correction" and c.amount < 0:
        return False
    if c.state in NOT_POSTED:
        return True
    if c.state != "posted" or c.on_invoice:
        return False
    stored = c.uncertain_at or c.posted_at
    if cron is None or stored is None:
        return True
    return not cron > stored + margin


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
