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
  4. balance, prepaid: suspend when credit <= 0 or unpaid > credit; unsuspend only when
     credit > 0, credit >= ``unsuspend_margin`` and nothing is unpaid; anything in between
     keeps the current state (hysteresis: a client hovering around zero does not flap).
  5. balance, postpaid: owed = unpaid - credit; suspend when owed > credit_limit; unsuspend
     when owed <= credit_limit - unsuspend_margin; in between keep the current state.
* We only lift what we did: a service suspended outside autosuspend (WHMCS status Suspended,
  no suspension recorded by us) is never unsuspended, and never "re-suspended" by us either
  (we would then own, and later lift, an operator's or WHMCS's suspension).
* Unsuspend uses the mode recorded when we suspended, never today's product setting (seed
  001's warning: changing the mode while suspended left gateways or extensions disabled).
* Low-balance alert, once per crossing: when credit <= threshold and the client has not been
  alerted -> ``alert_low_balance``; re-armed (``rearm_alert``) only once credit rises above
  threshold + ``low_balance_hysteresis``. A balance suspension with the credit at or below the
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


@dataclass(frozen=True)
class State:
    """What the ledger remembers about a service (`SuspensionState`)."""

    suspended: bool = False  # suspended *by autosuspend*
    mode: str | None = None  # the mode used to suspend
    low_balance_alerted: bool = False


@dataclass(frozen=True)
class Policy:
    now: datetime  # aware; the moment of the decision
    unsuspend_margin: Decimal = Decimal("1.00")
    low_balance_hysteresis: Decimal = Decimal("1.00")
    stale_after_seconds: int = 600
    timezone: str = "UTC"  # for overidesuspenduntil (a local date)

    @classmethod
    def from_settings(cls, settings, now: datetime) -> Policy:
        a = settings.autosuspend
        return cls(
            now=now,
            unsuspend_margin=a.unsuspend_margin,
            low_balance_hysteresis=a.low_balance_hysteresis,
            stale_after_seconds=a.stale_after_seconds,
            timezone=settings.timezone,
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


def _wanted(s: Snapshot, p: Policy) -> tuple[bool | None, str, bool]:
    """(should be suspended: True/False/None = keep as is, why, whether it is about money)."""
    if s.manual_suspend:
        return True, "Manual VoIP Suspend = Yes", False
    if s.suspended_override is True:
        return True, "VoIP Suspended override = Yes", False
    if s.suspended_override is False:
        return False, "VoIP Suspended override = No", False
    if s.override_autosuspend and (s.override_until is None or p.today <= s.override_until):
        until = f" until {s.override_until.isoformat()}" if s.override_until else ""
        return False, f"overideautosuspend on{until}: exempt from autosuspend", False
    assert s.credit is not None and s.unpaid is not None
    credit, unpaid, margin = s.credit, s.unpaid, p.unsuspend_margin
    if s.postpaid:
        owed = unpaid - credit
        if owed > s.credit_limit:
            return True, f"postpaid: owed {_fmt(owed)} > credit limit {_fmt(s.credit_limit)}", True
        if owed <= s.credit_limit - margin:
            return False, f"postpaid: owed {_fmt(owed)} <= credit limit {_fmt(s.credit_limit)} - margin {_fmt(margin)}", True
        return None, f"postpaid: owed {_fmt(owed)} in the hysteresis band below the credit limit", True
    if credit <= 0:
        return True, f"credit {_fmt(credit)} <= 0", True
    if unpaid > credit:
        return True, f"unpaid {_fmt(unpaid)} > credit {_fmt(credit)}", True
    if unpaid <= 0 and credit >= margin:
        return False, f"credit {_fmt(credit)} >= margin {_fmt(margin)} and nothing unpaid", True
    if unpaid > 0:
        return None, f"credit {_fmt(credit)} covers unpaid {_fmt(unpaid)} but something is outstanding", True
    return None, f"credit {_fmt(credit)} below the unsuspend margin {_fmt(margin)}", True


def _below_threshold(s: Snapshot) -> bool:
    return s.low_balance_threshold is not None and s.credit is not None and s.credit <= s.low_balance_threshold


def _alert(s: Snapshot, st: State, p: Policy, base: Decision) -> Decision | None:
    threshold = s.low_balance_threshold
    if threshold is None or s.postpaid or s.credit is None:
        return None
    if not st.low_balance_alerted and s.credit <= threshold:
        return replace(
            base,
            action=Action.ALERT_LOW_BALANCE,
            reason=f"credit {_fmt(s.credit)} <= low-balance threshold {_fmt(threshold)}",
            notify=LOW_BALANCE_TEMPLATE,
            low_balance_alerted=True,
        )
    rearm_at = threshold + p.low_balance_hysteresis
    if st.low_balance_alerted and s.credit > rearm_at:
        return replace(
            base,
            action=Action.REARM_ALERT,
            reason=f"credit {_fmt(s.credit)} > threshold {_fmt(threshold)} + hysteresis {_fmt(p.low_balance_hysteresis)}",
            low_balance_alerted=False,
        )
    return None


def decide(snapshot: Snapshot, state: State | None, policy: Policy) -> Decision:
    """What to do with one service this cycle (module docstring: the rules)."""
    s, st, p = snapshot, state or State(), policy
    base = Decision(s.client_id, s.service_id, Action.NONE, "", credit=s.credit, unpaid=s.unpaid)

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
            return replace(
                base,
                action=Action.SUSPEND,
                reason=why,
                mode=s.mode,
                notify=ZERO_BALANCE_TEMPLATE if money else None,
                # the zero-balance email stands for the low-balance one when the credit did cross
                low_balance_alerted=True if money and _below_threshold(s) else None,
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
