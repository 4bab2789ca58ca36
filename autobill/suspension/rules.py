"""The autosuspend rules: one pure function, `decide`, from what we read to what we do.

Why pure: this is the code that cuts a paying customer off. It must be testable as a table
of cases without WHMCS, a PBX, a database or Prefect, and it must give the same answer for
the same inputs. Everything it needs (the time, the margins) comes in as arguments.

The rules (issue #7, seeds 001 "Suspend"/"Custom Client Profile Fields"):

* Unreadable or stale data -> ``skip_unreadable``: nothing changes for that client this cycle
  (DESIGN.md invariant 5: never change a service's state on an error or on stale data).
* Services that are not Active/Suspended in WHMCS (Pending, Terminated, Cancelled, ...) are
  not managed: ``none``.
* What the service *should* be, first rule that applies:
  1. client field "Manual VoIP Suspend" = Yes -> suspended (an operator's explicit order).
  2. client field "VoIP Suspended" = Yes / No -> forced suspended / forced active (the seeds'
     override; None/blank = automatic).
  3. service ``overideautosuspend`` on (and ``overidesuspenduntil`` not passed) -> active:
     the service is exempt from automatic suspension.
  4. balance, prepaid (#18): available = credit - overdue - not invoiced - unbilled, where
     overdue is what is unpaid on invoices past their due date + grace (``unpaid``), not
     invoiced is what was charged to WHMCS but not invoiced yet, unbilled is today's calls rated
     intraday and not yet charged. Suspend when credit <= 0 or available < 0; unsuspend only
     when credit > 0, available >= ``unsuspend_margin`` and nothing is overdue; anything in
     between keeps the current state (hysteresis: a client hovering around zero does not flap).
  5. balance, postpaid: owed = overdue + not invoiced + unbilled - credit; suspend when owed >
     credit_limit; unsuspend when owed <= credit_limit - unsuspend_margin; in between keep.
  Every balance reason spells out each term, so a suspension explains itself.
* An open toll-fraud hold (the spend-velocity guard, #18) -> suspended, whatever the balance
  and the exemptions say (only "Manual VoIP Suspend" comes first, and it suspends too); the
  operator clears the hold (`autobill fraud clear`), then the rules above decide again.
* We only lift what we did: a service suspended outside autosuspend (WHMCS status Suspended,
  no suspension recorded by us) is never unsuspended, and never "re-suspended" by us either
  (we would then own, and later lift, an operator's or WHMCS's suspension).
* Unsuspend uses the mode recorded when we suspended, never today's product setting (seed
  001's warning: changing the mode while suspended left gateways or extensions disabled).
* Low-balance alerts, once per crossing of each level (``low_balance_threshold`` plus the
  ``low_balance_levels``, e.g. 20, 10, 5), on the prepaid *available* balance: when available <=
  a level the client has not been alerted at -> ``alert_low_balance`` for the lowest level
  crossed (one email when several are crossed at once; every crossed level is marked); a level
  is re-armed (``rearm_alert``) only once available rises above it + ``low_balance_hysteresis``.
  (At most one email per level and day is the applier's dedup key.) A balance suspension with the credit at or below the
  threshold counts as the crossing (the "VoIP Zero Balance" email is sent instead of the
  low-balance one); a suspension for unpaid invoices with plenty of credit does not. Postpaid services get no
  low-balance alerts (their credit is normally zero; the limit is what matters).

One action per service per cycle: when a service both changes state and would cross the
alert threshold, the state change wins and the alert is decided on the next cycle (5 min).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Literal
from zoneinfo import ZoneInfo

Mode = Literal["gateway", "extension", "module", "none"]

MANAGED_STATUSES = frozenset({"Active", "Suspended"})
ZERO_BALANCE_TEMPLATE = "VoIP Zero Balance"
FRAUD_TEMPLATE = "VoIP Fraud Alert"
LOW_BALANCE_TEMPLATE = "Low Balance Alert"


class Action(StrEnum):
    SUSPEND = "suspend"
    UNSUSPEND = "unsuspend"
    ALERT_LOW_BALANCE = "alert_low_balance"
    REARM_ALERT = "rearm_alert"
    NONE = "none"
    SKIP_UNREADABLE = "skip_unreadable"


@dataclass(frozen=True)
class Snapshot:
    """What one cycle read about one VoIP service and its client.

    `error` set (or `read_at` missing) means the reads failed: the client is unreadable.
    `low_balance_threshold` is already resolved (see `resolve_threshold`); None disables alerts.
    """

    client_id: int
    service_id: int
    read_at: datetime | None
    error: str | None = None
    credit: Decimal | None = None
    unpaid: Decimal | None = None
    service_status: str = "Active"
    mode: Mode = "none"  # today's configured suspend mode
    postpaid: bool = False
    credit_limit: Decimal = Decimal(0)
    manual_suspend: bool = False  # client field "Manual VoIP Suspend"
    suspended_override: bool | None = None  # client field "VoIP Suspended": Yes / No / None
    override_autosuspend: bool = False  # service overideautosuspend
    override_until: date | None = None  # service overidesuspenduntil
    low_balance_threshold: Decimal | None = None
    # -- #18: what the credit has to cover besides overdue invoices, and the fraud guard
    not_invoiced: Decimal = Decimal(0)  # charged to WHMCS (or about to be), not invoiced yet
    unbilled: Decimal = Decimal(0)  # today's calls rated intraday, not charged yet
    low_balance_levels: tuple[Decimal, ...] = ()  # more alert levels besides the threshold
    fraud: str | None = None  # an open toll-fraud hold: why
    fraud_evidence: tuple[str, ...] = ()  # the calls that tripped it, one line each

    @property
    def available(self) -> Decimal | None:
        """credit - overdue - not invoiced - unbilled (None when the balance was not read)."""
        if self.credit is None or self.unpaid is None:
            return None
        return self.credit - self.unpaid - self.not_invoiced - self.unbilled

    @property
    def levels(self) -> tuple[Decimal, ...]:
        """Every low-balance level, highest first (none when alerts are disabled)."""
        if self.low_balance_threshold is None and not self.low_balance_levels:
            return ()
        found = set(self.low_balance_levels)
        if self.low_balance_threshold is not None:
            found.add(self.low_balance_threshold)
        return tuple(sorted(found, reverse=True))


@dataclass(frozen=True)
class State:
    """What the ledger remembers about a service (`SuspensionState`)."""

    suspended: bool = False  # suspended *by autosuspend*
    mode: str | None = None  # the mode used to suspend
    low_balance_alerted: bool = False
    # levels alerted at (#18); None: not recorded (an older row): every level if alerted, else none
    alerted_levels: frozenset[Decimal] | None = None

    def alerted_at(self, levels: tuple[Decimal, ...]) -> frozenset[Decimal]:
        if self.alerted_levels is not None:
            return self.alerted_levels
        return frozenset(levels) if self.low_balance_alerted else frozenset()


@dataclass(frozen=True)
class Policy:
    now: datetime  # aware; the moment of the decision
    unsuspend_margin: Decimal = Decimal("1.00")
    low_balance_hysteresis: Decimal = Decimal("1.00")
    stale_after_seconds: int = 600
    timezone: str = "UTC"  # for overidesuspenduntil (a local date)
    fraud_template: str = FRAUD_TEMPLATE

    @classmethod
    def from_settings(cls, settings, now: datetime) -> Policy:
        a = settings.autosuspend
        return cls(
            now=now,
            unsuspend_margin=a.unsuspend_margin,
            low_balance_hysteresis=a.low_balance_hysteresis,
            stale_after_seconds=a.stale_after_seconds,
            timezone=settings.timezone,
            fraud_template=settings.fraud_guard.template,
        )

    @property
    def today(self) -> date:
        return self.now.astimezone(ZoneInfo(self.timezone)).date()


@dataclass(frozen=True)
class Decision:
    client_id: int
    service_id: int
    action: Action
    reason: str
    mode: str | None = None  # suspend: mode to use; unsuspend: mode recorded at suspension
    credit: Decimal | None = None  # balance seen
    unpaid: Decimal | None = None
    notify: str | None = None  # WHMCS email template to send with this action
    low_balance_alerted: bool | None = None  # new value of the alert flag; None = unchanged
    not_invoiced: Decimal | None = None
    unbilled: Decimal | None = None
    alerted_levels: tuple[Decimal, ...] | None = None  # new levels alerted at; None = unchanged
    alert_level: Decimal | None = None  # the level a low-balance alert is for
    evidence: tuple[str, ...] = ()  # a fraud suspension: the calls behind it

    @property
    def available(self) -> Decimal | None:
        if self.credit is None or self.unpaid is None:
            return None
        return self.credit - self.unpaid - (self.not_invoiced or 0) - (self.unbilled or 0)

    @property
    def changes(self) -> bool:
        """Whether applying this decision changes anything (PBX, WHMCS, ledger or email)."""
        return self.action not in (Action.NONE, Action.SKIP_UNREADABLE)


def resolve_threshold(
    whmcs_value: Decimal | None, service_value: Decimal | None, default: Decimal | None
) -> Decimal | None:
    """The low-balance threshold of a client: the WHMCS client field "Low Balance Threshold"
    when set, else the service's configured threshold, else the autosuspend default."""
    for value in (whmcs_value, service_value, default):
        if value is not None:
            return value
    return None


def _fmt(value: Decimal) -> str:
    return f"{value:.2f}" if value == value.quantize(Decimal("0.01")) else str(value)


def terms(s: Snapshot) -> str:
    """Each term of the balance, for the reason (DESIGN.md invariant 8)."""
    assert s.credit is not None and s.unpaid is not None
    if s.postpaid:
        owed = s.unpaid + s.not_invoiced + s.unbilled - s.credit
        return (f"owed {_fmt(owed)} = overdue {_fmt(s.unpaid)} + not invoiced {_fmt(s.not_invoiced)}"
                f" + unbilled {_fmt(s.unbilled)} - credit {_fmt(s.credit)}")
    return (f"available {_fmt(s.available)} = credit {_fmt(s.credit)} - overdue {_fmt(s.unpaid)}"
            f" - not invoiced {_fmt(s.not_invoiced)} - unbilled {_fmt(s.unbilled)}")  # fmt: skip


def _wanted(s: Snapshot, p: Policy) -> tuple[bool | None, str, bool]:
    """(should be suspended: True/False/None = keep as is, why, whether it is about money)."""
    if s.manual_suspend:
        return True, "Manual VoIP Suspend = Yes", False
    if s.fraud is not None:
        return True, f"toll-fraud guard: {s.fraud}", False
    if s.suspended_override is True:
        return True, "VoIP Suspended override = Yes", False
    if s.suspended_override is False:
        return False, "VoIP Suspended override = No", False
    if s.override_autosuspend and (s.override_until is None or p.today <= s.override_until):
        until = f" until {s.override_until.isoformat()}" if s.override_until else ""
        return False, f"overideautosuspend on{until}: exempt from autosuspend", False
    assert s.credit is not None and s.unpaid is not None and s.available is not None
    credit, unpaid, margin, why = s.credit, s.unpaid, p.unsuspend_margin, terms(s)
    if s.postpaid:
        owed = unpaid + s.not_invoiced + s.unbilled - credit
        if owed > s.credit_limit:
            return True, f"postpaid: {why} > credit limit {_fmt(s.credit_limit)}", True
        if owed <= s.credit_limit - margin:
            return False, f"postpaid: {why} <= credit limit {_fmt(s.credit_limit)} - margin {_fmt(margin)}", True
        return None, f"postpaid: {why}, in the hysteresis band below the credit limit", True
    available = s.available
    if credit <= 0:
        return True, f"credit {_fmt(credit)} <= 0 ({why})", True
    if available < 0:
        return True, f"{why} < 0", True
    if unpaid <= 0 and available >= margin:
        return False, f"{why} >= margin {_fmt(margin)} and nothing overdue", True
    if unpaid > 0:
        return None, f"{why}: covers overdue {_fmt(unpaid)} but something is outstanding", True
    return None, f"{why}: below the unsuspend margin {_fmt(margin)}", True


def _below_threshold(s: Snapshot) -> bool:
    a = s.available
    return bool(s.levels) and a is not None and a <= s.levels[0]


def _crossed(s: Snapshot) -> tuple[Decimal, ...]:
    """Every level at or above the available balance (all of them count as alerted)."""
    a = s.available
    return tuple(lv for lv in s.levels if a is not None and a <= lv)


def _alert(s: Snapshot, st: State, p: Policy, base: Decision) -> Decision | None:
    levels = s.levels
    available = s.available
    if not levels or s.postpaid or available is None:
        return None
    alerted = st.alerted_at(levels)
    crossed = set(_crossed(s))
    new = crossed - alerted
    if new:
        level = min(new)
        return replace(
            base,
            action=Action.ALERT_LOW_BALANCE,
            reason=f"available {_fmt(available)} <= low-balance threshold {_fmt(level)} ({terms(s)})",
            notify=LOW_BALANCE_TEMPLATE,
            low_balance_alerted=True,
            alerted_levels=tuple(sorted(alerted | crossed, reverse=True)),
            alert_level=level,
        )
    rearm = {lv for lv in alerted if available > lv + p.low_balance_hysteresis}
    if rearm:
        keep = alerted - rearm
        top = max(rearm)
        return replace(
            base,
            action=Action.REARM_ALERT,
            reason=f"available {_fmt(available)} > threshold {_fmt(top)} + hysteresis {_fmt(p.low_balance_hysteresis)}",
            low_balance_alerted=bool(keep),
            alerted_levels=tuple(sorted(keep, reverse=True)),
        )
    return None


def decide(snapshot: Snapshot, state: State | None, policy: Policy) -> Decision:
    """What to do with one service this cycle (module docstring: the rules)."""
    s, st, p = snapshot, state or State(), policy
    base = Decision(s.client_id, s.service_id, Action.NONE, "", credit=s.credit, unpaid=s.unpaid,
                    not_invoiced=s.not_invoiced, unbilled=s.unbilled)

    def none(reason: str) -> Decision:
        return replace(base, reason=reason)

    if s.error is not None:
        return replace(base, action=Action.SKIP_UNREADABLE, reason=f"unreadable: {s.error}")
    if s.read_at is None or s.credit is None or s.unpaid is None:
        return replace(base, action=Action.SKIP_UNREADABLE, reason="unreadable: no balance read this cycle")
    age = (p.now - s.read_at).total_seconds()
    if age > p.stale_after_seconds:
        return replace(
            base, action=Action.SKIP_UNREADABLE, reason=f"stale: read {int(age)} s ago (> {p.stale_after_seconds} s)"
        )
    if s.service_status not in MANAGED_STATUSES:
        return none(f"service status {s.service_status}: not managed by autosuspend")

    want, why, money = _wanted(s, p)
    external = s.service_status == "Suspended" and not st.suspended
    if want is True:
        if st.suspended:
            outcome = none(f"already suspended by autosuspend ({st.mode}): {why}")
        elif external:
            outcome = none(f"already suspended outside autosuspend (WHMCS status Suspended): {why}")
        elif s.mode == "none":
            outcome = none(f"would suspend ({why}) but the service's suspend_mode is none")
        else:
            crossed = money and _below_threshold(s)
            fraud = s.fraud is not None and not s.manual_suspend
            return replace(
                base,
                action=Action.SUSPEND,
                reason=why,
                mode=s.mode,
                notify=ZERO_BALANCE_TEMPLATE if money else (p.fraud_template if fraud else None),
                # the zero-balance email stands for the low-balance one when the balance did cross
                low_balance_alerted=True if crossed else None,
                alerted_levels=tuple(sorted(st.alerted_at(s.levels) | set(_crossed(s)), reverse=True))
                if crossed else None,
                evidence=s.fraud_evidence if fraud else (),
            )
    elif want is False:
        if st.suspended:
            if st.mode is None:
                return none(f"should unsuspend ({why}) but the suspension has no recorded mode: lift it by hand")
            return replace(base, action=Action.UNSUSPEND, reason=why, mode=st.mode)
        outcome = none(f"suspended outside autosuspend, not ours to lift: {why}" if external else why)
    else:
        outcome = none(why)
    return _alert(s, st, p, base) or outcome
