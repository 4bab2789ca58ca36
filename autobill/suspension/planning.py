"""Autosuspend planning: from decisions to the work of one cycle, and the cycle's report.

Pure: what each service is (`Target`), what the ledger says it is (`StateRow`), the decisions
for all of them (`decide_all`, the client-level alert flag), the PBX/WHMCS work, alerts and
re-arms they imply (`plan`), what an interrupted cycle left to complete (`recovery_work`), and
the report (`CycleReport`, with its markdown). Reading WHMCS is connectors/whmcs_accounts.py;
applying is autobill/suspension/apply.py; the steps are tasks/suspend.py.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from autobill.config import Service
from autobill.suspension.rules import Action, Decision, Policy, Snapshot, State, decide


@dataclass(frozen=True)
class Target:
    """One VoIP service autosuspend looks after, and how it would be suspended today."""

    client_id: int
    service_id: int
    mode: str
    configured: bool
    server: str | None = None
    tenant: str | None = None
    gateway_uuids: tuple[str, ...] = ()
    extensions: tuple[str, ...] = ()
    postpaid: bool = False
    credit_limit: Decimal = Decimal(0)
    threshold: Decimal | None = None

    @classmethod
    def from_service(cls, s: Service) -> Target:
        return cls(
            s.client_id, s.service_id, s.suspend_mode, True, s.server, s.tenant, tuple(s.gateway_uuids),
            tuple(s.extensions), s.postpaid, s.credit_limit, s.low_balance_threshold,
        )  # fmt: skip

    def intent(self) -> dict[str, Any]:
        """What a suspension of this service will touch (stored before touching it)."""
        if self.mode == "gateway":
            return {"mode": "gateway", "server": self.server, "gateway_uuids": list(self.gateway_uuids)}
        if self.mode == "extension":
            return {"mode": "extension", "server": self.server, "domain": self.tenant, "extensions": list(self.extensions)}
        return {"mode": self.mode}


@dataclass
class ReadResult:
    snapshots: list[Snapshot]
    targets: dict[int, Target]
    read_at: datetime
    clients_read: int = 0
    unreadable_clients: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class StateRow:
    service_id: int
    client_id: int
    suspended: bool
    mode: str | None
    detail: dict[str, Any] | None
    low_balance_alerted: bool
    alerted_levels: frozenset[Decimal] | None = None  # None: not recorded (a row from before #18)

    @property
    def pending(self) -> str | None:
        return (self.detail or {}).get("pending")


def decide_all(snapshots: Iterable[Snapshot], states: dict[int, StateRow], policy: Policy) -> list[Decision]:
    """`decide` for every service, with the client-level alert flag (any of its rows)."""
    alerted: dict[int, bool] = defaultdict(bool)
    levels: dict[int, frozenset[Decimal] | None] = {}
    for row in states.values():
        alerted[row.client_id] |= row.low_balance_alerted
        if row.alerted_levels is not None:
            levels[row.client_id] = levels.get(row.client_id, frozenset()) | row.alerted_levels
    out = []
    for snap in snapshots:
        row = states.get(snap.service_id)
        if row is not None and row.pending:
            out.append(
                Decision(snap.client_id, snap.service_id, Action.NONE, f"pending {row.pending} not completed yet; retried next cycle",
                         credit=snap.credit, unpaid=snap.unpaid)  # fmt: skip
            )
            continue
        state = State(
            suspended=bool(row and row.suspended), mode=row.mode if row else None, low_balance_alerted=alerted[snap.client_id],
            alerted_levels=levels.get(snap.client_id),
        )
        out.append(decide(snap, state, policy))
    return out


@dataclass
class Outcome:
    decision: Decision
    status: str  # done | failed | pending (completed next cycle)
    message: str = ""
    mode: str | None = None

    def row(self) -> dict[str, Any]:
        d = self.decision
        return {
            "client": d.client_id, "service": d.service_id, "action": str(d.action), "status": self.status,
            "mode": self.mode or d.mode or "", "reason": d.reason, "credit": "" if d.credit is None else str(d.credit),
            "unpaid": "" if d.unpaid is None else str(d.unpaid),
            "not_invoiced": "" if d.not_invoiced is None else str(d.not_invoiced),
            "unbilled": "" if d.unbilled is None else str(d.unbilled), "message": self.message,
        }  # fmt: skip


@dataclass
class Work:
    """One suspend/unsuspend to make on the PBX or through WHMCS."""

    decision: Decision
    intent: dict[str, Any]  # stored in `detail` (with "pending") before anything is touched
    mode: str | None
    previous: str | None = None  # detail to put back when an unsuspend definitely failed
    recovering: bool = False
    result: dict[str, Any] | None = None
    error: BaseException | None = None

    @property
    def suspend(self) -> bool:
        return self.decision.action == Action.SUSPEND


@dataclass
class Email:
    decision: Decision
    key: str
    template: str
    low_balance: bool
    status: str = ""  # sent | maybe | failed: ... | duplicate


def detail_summary(detail: dict[str, Any] | None) -> str:
    detail = detail or {}
    kind = detail.get("kind")
    if kind == "gateway":
        return f"gateways {[g['uuid'] for g in detail.get('gateways', [])]}"
    if kind == "extension":
        return f"extensions {[e['extension'] for e in detail.get('extensions', [])]}@{detail.get('domain')}"
    return str(kind or "")


def recovery_work(states: dict[int, StateRow]) -> list[Work]:
    """Intents a previous cycle left behind (crash or uncertain failure mid-change), to complete."""
    works = []
    for row in sorted(states.values(), key=lambda r: r.service_id):
        if not row.pending:
            continue
        detail = {k: v for k, v in (row.detail or {}).items() if k != "pending"}
        suspend = row.pending == "suspend"
        d = Decision(
            row.client_id, row.service_id, Action.SUSPEND if suspend else Action.UNSUSPEND,
            detail.get("reason") or detail.get("pending_reason") or f"completing the {row.pending} a previous cycle began",
            mode=detail.get("mode") if suspend else row.mode, notify=detail.get("notify") if suspend else None,
            low_balance_alerted=detail.get("alerted") if suspend else None,
        )  # fmt: skip
        previous = None if suspend else json.dumps({k: v for k, v in detail.items() if not k.startswith("pending")})
        works.append(Work(d, row.detail or {}, d.mode, previous=previous, recovering=True))
    return works


def plan(decisions: list[Decision], targets: dict[int, Target], states: dict[int, StateRow]):
    """Split decisions into PBX work, alerts and re-arms (one alert decision per client)."""
    works: list[Work] = []
    alerts: list[Decision] = []
    rearms: list[Decision] = []
    seen: set[int] = set()
    for d in decisions:
        if d.action == Action.SUSPEND:
            intent = {**targets[d.service_id].intent(), "pending": "suspend", "reason": d.reason, "notify": d.notify,
                      "alerted": d.low_balance_alerted}  # fmt: skip
            works.append(Work(d, intent, d.mode))
        elif d.action == Action.UNSUSPEND:
            row = states[d.service_id]
            detail = row.detail or {}
            works.append(Work(d, {**detail, "pending": "unsuspend", "pending_reason": d.reason}, row.mode,
                              previous=json.dumps(detail) if detail else None))  # fmt: skip
        elif d.action in (Action.ALERT_LOW_BALANCE, Action.REARM_ALERT) and d.client_id not in seen:
            seen.add(d.client_id)
            (alerts if d.action == Action.ALERT_LOW_BALANCE else rearms).append(d)
    return works, alerts, rearms


def services_by_client(targets: dict[int, Target]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = defaultdict(list)
    for t in targets.values():
        out[t.client_id].append(t.service_id)
    return dict(out)


@dataclass
class CycleReport:
    run_id: int | None
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None
    services: int
    clients_read: int
    unreadable_clients: int
    decisions: list[Decision]
    outcomes: list[Outcome]
    errors: list[str]
    usage: dict[str, Any] = field(default_factory=dict)  # #18: intraday read, fraud holds opened

    @property
    def counts(self) -> dict[str, int]:
        c: dict[str, int] = defaultdict(int)
        for d in self.decisions:
            c[str(d.action)] += 1
        return dict(sorted(c.items()))

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if o.status in ("failed", "pending"))

    @property
    def status(self) -> str:
        if self.errors and not self.clients_read:
            return "failed"
        usage_failed = bool(self.usage.get("errors"))  # some usage is stale: decided on what was read
        return "partial" if self.failed or self.unreadable_clients or usage_failed else "completed"

    def changed_rows(self) -> list[dict[str, Any]]:
        return [o.row() for o in self.outcomes]

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "dry_run": self.dry_run, "status": self.status, "services": self.services,
            "clients_read": self.clients_read, "unreadable_clients": self.unreadable_clients, "decisions": self.counts,
            "applied": sum(1 for o in self.outcomes if o.status == "done"), "failed": self.failed,
            "errors": self.errors[:10], **({"usage": self.usage} if self.usage else {}),
            "seconds": round((self.finished_at - self.started_at).total_seconds(), 3) if self.finished_at else None,
        }  # fmt: skip

    def log_line(self) -> str:
        """The cycle in one readable line (logs): no Python reprs."""
        s = self.summary()
        decided = ", ".join(f"{k} {v}" for k, v in s["decisions"].items()) or "nothing to decide"
        return (f"{s['status']}{' (dry run)' if self.dry_run else ''}: {s['services']} services "
                f"({s['clients_read']} clients read, {s['unreadable_clients']} unreadable); {decided}; "
                f"applied {s['applied']}, failed or pending {s['failed']}; {s['seconds']} s")

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "changes": self.changed_rows() if not self.dry_run else [],
                "would_change": [_decision_row(d) for d in self.decisions if d.changes] if self.dry_run else []}  # fmt: skip


def _decision_row(d: Decision) -> dict[str, Any]:
    def text(v):
        if isinstance(v, tuple | list):
            return [text(x) for x in v]
        return str(v) if isinstance(v, Decimal | Action) else v

    return {k: text(v) for k, v in asdict(d).items()}


def summary_markdown(report: CycleReport) -> str:
    """The `autosuspend-summary` artifact: counts, failures, unreadable clients."""
    s = report.summary()
    lines = [
        f"# Autosuspend cycle{' (dry run)' if report.dry_run else ''}: {s['status']}",
        "",
        f"- services checked: **{s['services']}** ({s['clients_read']} clients read, "
        f"{s['unreadable_clients']} unreadable: left unchanged)",
        f"- decisions: {', '.join(f'{k} {v}' for k, v in s['decisions'].items()) or 'none'}",
        f"- applied: **{s['applied']}**, failed or pending: **{s['failed']}**",
        f"- took {s['seconds']} s",
    ]
    u = report.usage
    if u:
        lines.append(f"- intraday usage: {u.get('servers', 0)} server(s) read, {u.get('rows_stored', 0)} new rated call(s), "
                     f"{u.get('unrated', 0)} unrated, {len(u.get('errors', []))} server error(s); "
                     f"{u.get('unbilled_clients', 0)} client(s) with unbilled usage")
        for e in u.get("errors", [])[:10]:
            lines.append(f"  - {e}")
        if u.get("not_invoiced_since"):
            lines.append(f"- not invoiced: charges not posted yet or posted since WHMCS's last daily cron "
                         f"({u['not_invoiced_since']})")
        for h in u.get("holds", []):
            lines.append(f"- **toll-fraud guard** suspended service {h['service']} (client {h['client']}): {h['reason']}")
            lines += [f"  - {c}" for c in h.get("calls", [])[:10]]
    if s["errors"]:
        lines += ["", "## Read errors (first 10)", *[f"- {e}" for e in s["errors"]]]
    failed = [o for o in report.outcomes if o.status != "done"]
    if failed:
        lines += ["", "## Not done (retried next cycle)", *[f"- service {o.decision.service_id}: {o.message}" for o in failed[:20]]]
    return "\n".join(lines)


def change_rows(report: CycleReport) -> list[dict[str, Any]]:
    """The `autosuspend-changes` artifact: what changed (or would have, in a dry run)."""
    if report.dry_run:
        return [r for r in report.to_json()["would_change"]][:500]
    return report.changed_rows()[:500]
