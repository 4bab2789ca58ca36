"""The terms autosuspend decides on besides what WHMCS says (#18), added to each snapshot:
not-invoiced charges and unbilled intraday usage (per client: the credit is the client's), the
low-balance levels, and the toll-fraud guard's holds (opened here, with the calls as evidence).

Ledger reads and writes only (autobill/ledger/intraday.py); the rules stay pure
(autobill/suspension/rules.py, credit.py). Called by the `usage` step of tasks/suspend.py.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from autobill.config import Settings
from autobill.ledger.intraday import (
    baselines,
    last_cleared,
    not_invoiced_by_client,
    open_hold,
    open_holds,
    unbilled_by_service,
    window_calls,
)
from autobill.suspension.credit import Call, DailyCron, GuardPolicy, daily_cron, guard
from autobill.suspension.planning import ReadResult

EVIDENCE_LINES = 20


@dataclass
class NewHold:
    hold_id: int | None  # None in a dry run
    client_id: int
    service_id: int
    reason: str
    evidence: list[Call]


@dataclass
class UsageResult:
    result: ReadResult
    new_holds: list[NewHold] = field(default_factory=list)
    unbilled_clients: int = 0
    cron: str = ""  # how the last WHMCS daily cron was known (the "not invoiced" cut-off)


def _candidates(calls: list[Call], p: GuardPolicy) -> bool:
    """Cheap pre-check: only a window over the floors can be over the baseline threshold."""
    spend = sum((c.cost for c in calls), Decimal(0))
    intl = sum(c.billsec for c in calls if c.charge_class == "international")
    risky = p.high_risk_prefixes and any(c.billsec > 0 and c.number and c.number.startswith(p.high_risk_prefixes) for c in calls)
    return spend > p.min_spend or intl > p.min_international_minutes * 60 or bool(risky)


def run_guard(settings: Settings, result: ReadResult, now: datetime, run_id: int | None, dry_run: bool) -> list[NewHold]:
    """Open a hold for every service whose last window is over a threshold (module docstring)."""
    g = settings.fraud_guard
    if not g.enabled:
        return []
    p = GuardPolicy.from_settings(settings)
    since = now - timedelta(minutes=g.window_minutes)
    cleared = last_cleared(settings)
    held = open_holds(settings)
    calls = window_calls(settings, since, result.targets.keys())
    picked: dict[int, list[Call]] = {}
    for sid, cs in calls.items():
        after = cleared.get(sid)
        cs = [c for c in cs if after is None or c.start_utc > after]  # a cleared hold's calls do not trip it again
        if sid not in held and cs and _candidates(cs, p):
            picked[sid] = cs
    if not picked:
        return []
    base = baselines(settings, sorted(picked), since)
    out = []
    for sid, cs in sorted(picked.items()):
        found = guard(cs, base[sid], p)
        if found is None:
            continue
        why, evidence = found
        t = result.targets[sid]
        hold_id = None if dry_run else open_hold(settings, t.client_id, sid, why, evidence, run_id, now)
        if hold_id is not None or dry_run:
            out.append(NewHold(hold_id, t.client_id, sid, why, evidence))
    return out


def with_usage(settings: Settings, result: ReadResult, now: datetime, run_id: int | None = None,
               dry_run: bool = False, cron: DailyCron | None = None) -> UsageResult:
    """The snapshots with not invoiced, unbilled, levels and fraud holds (module docstring).
    `cron`: WHMCS's last daily cron as read this cycle (tasks/suspend.py, GetAutomationLog once);
    None: the configured `whmcs.cron_time` alone."""
    if settings.intraday.enabled:
        per_service = unbilled_by_service(settings)
    else:
        per_service = {}
    unbilled: dict[int, Decimal] = defaultdict(lambda: Decimal(0))
    for _sid, (cid, cost) in per_service.items():
        unbilled[cid] += cost
    whmcs = settings.whmcs
    if cron is None:
        cron = daily_cron(None, "not read", now, settings.whmcs_tz, whmcs.cron_time if whmcs else None,
                          whmcs.cron_margin_minutes if whmcs else 0)
    margin = timedelta(seconds=whmcs.reconcile_margin_seconds if whmcs else 0)
    not_invoiced = not_invoiced_by_client(settings, cron.started, margin)
    new = run_guard(settings, result, now, run_id, dry_run)
    holds = {sid: (h.reason, _evidence(json.loads(h.evidence))) for sid, h in open_holds(settings).items()}
    for h in new:
        holds.setdefault(h.service_id, (h.reason, tuple(c.line() for c in h.evidence[:EVIDENCE_LINES])))
    levels = tuple(settings.autosuspend.low_balance_thresholds)
    snaps = []
    for s in result.snapshots:
        if s.error is not None or s.read_at is None:
            snaps.append(s)
            continue
        fraud = holds.get(s.service_id)
        snaps.append(replace(
            s,
            # the client's figures, rounded to the cent (what WHMCS will invoice is rounded per line)
            unbilled=unbilled.get(s.client_id, Decimal(0)).quantize(Decimal("0.01")),
            not_invoiced=not_invoiced.get(s.client_id, Decimal(0)),
            low_balance_levels=levels,
            fraud=fraud[0] if fraud else None,
            fraud_evidence=fraud[1] if fraud else (),
        ))  # fmt: skip
    return UsageResult(replace(result, snapshots=snaps), new, len(unbilled), cron.source)


def _evidence(rows: list[dict]) -> tuple[str, ...]:
    return tuple(
        f"{r['start_utc'][:19]}Z to +{r.get('number') or '?'} ({r.get('class')}) {r.get('billsec')}s "
        f"{Decimal(r.get('cost') or 0):.2f} [{r['cdr_key']}]"
        for r in rows[:EVIDENCE_LINES]
    )
