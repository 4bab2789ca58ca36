"""One autosuspend cycle: read WHMCS, decide (autobill.suspension), apply, notify, record.

Read, efficiently (a cycle runs every 5 minutes for every VoIP client):
  GetClientsProducts, GetClients and GetInvoices(status=Unpaid) are each paginated once for all
  clients; then one GetClientsDetails per VoIP client (credit + custom fields) on a small thread
  pool, one WHMCS client per worker thread. A client whose reads failed is unreadable this cycle
  and nothing is done to it; if a sweep fails, every client is unreadable.

Which services: every service mapped in config (`services`), plus, for clients whose custom field
"Has VoIP Service" is Yes, their services of the products listed in `autosuspend.voip_product_ids`
(suspended with ModuleSuspend). Custom fields are read only when `whmcs.custom_field_ids` is
configured; without it overrides are absent and only configured services are managed.

Apply, so that a failure never leaves the ledger and the PBX disagreeing:
  1. write an intent into the service's `suspension_state.detail` ("pending": suspend|unsuspend,
     with the targets), so a crash between the PBX change and the ledger write is completed by
     the next cycle (`recover_pending`) instead of being forgotten;
  2. change the PBX (FusionPBX gateway/extension via connectors.fusionpbx_switch, or WHMCS
     ModuleSuspend/ModuleUnsuspend);
  3. only when it confirmed: state + suspension log in one transaction. A definite failure clears
     the intent and logs an error (nothing changed, retried next cycle); an uncertain one (WHMCS
     transport failure, switch left half-done) keeps the intent for recovery.
Unsuspend always uses the mode and detail recorded at suspension, never today's config.

Notify: "VoIP Zero Balance" after a balance suspension, "Low Balance Alert" once per crossing.
Every email is claimed first in `notifications` (unique `dedup_key`), then sent; a definite
failure removes the claim (retried next cycle), an uncertain one (WhmcsUncertainError: maybe
sent) keeps it, so a client may miss an email but is never spammed. Alerts are per client (the
credit and the threshold are the client's): the flag lives on all of the client's state rows and
the key is `low:<client>:<crossing number>`, the number counting the client's re-arms.

`dry_run` reads and decides only: no PBX, WHMCS, email or ledger writes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from autobill.config import Service, Settings
from autobill.ledger.db import session_scope
from autobill.ledger.models import Notification, Run, SuspensionLog, SuspensionState
from autobill.suspension import Action, Decision, Policy, Snapshot, State, decide, resolve_threshold
from autobill.timeutil import utc_now
from connectors.fusionpbx_switch import FusionPBXSwitch, SwitchError, SwitchInconsistent
from connectors.whmcs import WhmcsClient, WhmcsError, WhmcsTransportError, WhmcsUncertainError, whmcs_flag

log = logging.getLogger(__name__)

HAS_VOIP, MANUAL, SUSPENDED, THRESHOLD = (
    "Has VoIP Service", "Manual VoIP Suspend", "VoIP Suspended", "Low Balance Threshold",
)  # fmt: skip
READ_WORKERS = 8

WhmcsFactory = Callable[[], WhmcsClient]
SwitchFactory = Callable[[str], FusionPBXSwitch]


# -- what we manage ---------------------------------------------------------------------------


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


def _override(value: str | None) -> bool | None:
    """The "VoIP Suspended" field: Yes / No / None (blank, "None": automatic)."""
    text = (value or "").strip().lower()
    if text in ("yes", "y", "on", "1", "true"):
        return True
    if text in ("no", "n", "off", "0", "false"):
        return False
    return None


def _decimal(value: str | None) -> Decimal | None:
    text = (value or "").strip().replace("$", "").replace(",", "")
    if not text:
        return None
    try:
        result = Decimal(text)
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def _date(value: str | None) -> date | None:
    try:
        return date.fromisoformat((value or "").strip()[:10])
    except ValueError:
        return None  # "0000-00-00" = not set


def read_snapshots(
    settings: Settings, whmcs_factory: WhmcsFactory, now: Callable[[], datetime] = utc_now, workers: int = READ_WORKERS
) -> ReadResult:
    """Everything `decide` needs, for every managed service (module docstring: how)."""
    configured = {s.service_id: Target.from_service(s) for s in settings.services}
    voip_pids = set(settings.autosuspend.voip_product_ids)
    read_at = now()
    main = whmcs_factory()
    try:
        products = {int(p["id"]): p for p in main.get_clients_products()}
        clients = {int(c["id"]) for c in main.iter_clients()}
        unpaid = main.unpaid_balances()
    except (WhmcsError, KeyError, ValueError) as exc:
        why = f"WHMCS sweep failed: {exc}"
        snaps = [Snapshot(t.client_id, t.service_id, read_at=None, error=why) for t in configured.values()]
        return ReadResult(snaps, configured, read_at, unreadable_clients=len({t.client_id for t in configured.values()}), errors=[why])
    finally:
        main.close()

    targets = dict(configured)
    for sid, p in products.items():
        if sid not in targets and voip_pids and int(p.get("pid") or 0) in voip_pids:
            targets[sid] = Target(int(p["clientid"]), sid, "module", False)
    wanted = sorted({t.client_id for t in targets.values() if t.client_id in clients})
    details = _read_details(wanted, whmcs_factory, workers)

    result = ReadResult([], {}, read_at, clients_read=len(wanted))
    bad_clients: set[int] = set()
    for sid, t in sorted(targets.items()):
        p = products.get(sid)
        credit, fields, error = details.get(t.client_id, (None, {}, None))
        if t.client_id not in clients:
            error = f"client {t.client_id} not found in WHMCS"
        elif p is None:
            error = f"service {sid} not found in WHMCS"
        elif int(p.get("clientid") or 0) != t.client_id:
            error = f"service {sid} belongs to client {p.get('clientid')} in WHMCS, config says {t.client_id}"
        if error is None and not t.configured and not whmcs_flag(fields.get(HAS_VOIP) or ""):
            continue  # a product of a VoIP pid, but the client is not a VoIP client
        result.targets[sid] = t
        if error is not None:
            bad_clients.add(t.client_id)
            result.snapshots.append(Snapshot(t.client_id, sid, read_at=None, error=error))
            continue
        result.snapshots.append(
            Snapshot(
                client_id=t.client_id,
                service_id=sid,
                read_at=read_at,
                credit=credit,
                unpaid=unpaid.get(t.client_id, Decimal(0)),
                service_status=str(p.get("status") or ""),
                mode=t.mode,  # type: ignore[arg-type]
                postpaid=t.postpaid,
                credit_limit=t.credit_limit,
                manual_suspend=whmcs_flag(fields.get(MANUAL) or ""),
                suspended_override=_override(fields.get(SUSPENDED)),
                override_autosuspend=whmcs_flag(p.get("overideautosuspend") or ""),
                override_until=_date(p.get("overidesuspenduntil")),
                low_balance_threshold=resolve_threshold(
                    _decimal(fields.get(THRESHOLD)), t.threshold, settings.autosuspend.low_balance_threshold
                ),
            )
        )
    result.unreadable_clients = len(bad_clients)
    result.errors = sorted({s.error for s in result.snapshots if s.error})[:20]
    return result


def _read_details(client_ids: list[int], factory: WhmcsFactory, workers: int) -> dict[int, tuple]:
    """GetClientsDetails per client on a thread pool: {client: (credit, fields by name, error)}."""
    local = threading.local()
    made: list[WhmcsClient] = []
    lock = threading.Lock()

    def fetch(cid: int) -> tuple[int, tuple]:
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = factory()
            with lock:
                made.append(c)
        try:
            client = c.get_clients_details(cid)["client"]
            credit = Decimal(str(client["credit"]))
            fields = c.named_custom_fields(client) if c.custom_field_ids else {}
            return cid, (credit, fields, None)
        except (WhmcsError, KeyError, InvalidOperation, TypeError) as exc:
            return cid, (None, {}, f"GetClientsDetails: {type(exc).__name__}: {exc}")

    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="whmcs-read") as pool:
            return dict(pool.map(fetch, client_ids))
    finally:
        for c in made:
            c.close()


# -- ledger state --------------------------------------------------------------------------------


@dataclass
class StateRow:
    service_id: int
    client_id: int
    suspended: bool
    mode: str | None
    detail: dict[str, Any] | None
    low_balance_alerted: bool

    @property
    def pending(self) -> str | None:
        return (self.detail or {}).get("pending")


def load_states(ledger_url: str) -> dict[int, StateRow]:
    with session_scope(ledger_url) as s:
        rows = s.scalars(select(SuspensionState)).all()
        return {
            r.service_id: StateRow(
                r.service_id, r.client_id, r.suspended, r.mode, json.loads(r.detail) if r.detail else None,
                r.low_balance_alerted,
            )  # fmt: skip
            for r in rows
        }


def decide_all(snapshots: Iterable[Snapshot], states: dict[int, StateRow], policy: Policy) -> list[Decision]:
    """`decide` for every service, with the client-level alert flag (any of its rows)."""
    alerted: dict[int, bool] = defaultdict(bool)
    for row in states.values():
        alerted[row.client_id] |= row.low_balance_alerted
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
            suspended=bool(row and row.suspended), mode=row.mode if row else None, low_balance_alerted=alerted[snap.client_id]
        )
        out.append(decide(snap, state, policy))
    return out


# -- applying --------------------------------------------------------------------------------


@dataclass
class Outcome:
    decision: Decision
    status: str  # done | failed | pending | dry-run | skipped
    message: str = ""
    mode: str | None = None

    def row(self) -> dict[str, Any]:
        d = self.decision
        return {
            "client": d.client_id, "service": d.service_id, "action": str(d.action), "status": self.status,
            "mode": self.mode or d.mode or "", "reason": d.reason, "credit": "" if d.credit is None else str(d.credit),
            "unpaid": "" if d.unpaid is None else str(d.unpaid), "message": self.message,
        }  # fmt: skip


@dataclass
class Applier:
    """Applies decisions; one per cycle. `switch_factory(server_id)` gives the FusionPBX switch."""

    settings: Settings
    whmcs: WhmcsClient | None
    switch_factory: SwitchFactory
    run_id: int | None = None
    actor: str = "autosuspend"
    now: Callable[[], datetime] = utc_now
    _switches: dict[str, FusionPBXSwitch] = field(default_factory=dict)

    @property
    def ledger(self) -> str:
        return self.settings.ledger

    def switch(self, server_id: str | None) -> FusionPBXSwitch:
        if not server_id:
            raise SwitchError("no server recorded for this suspension")
        if server_id not in self._switches:
            self._switches[server_id] = self.switch_factory(server_id)
        return self._switches[server_id]

    # -- ledger writes ---------------------------------------------------------------------

    def _log(self, s, d: Decision, action: str, reason: str, mode: str | None = None) -> None:
        s.add(
            SuspensionLog(
                at=self.now(), run_id=self.run_id, client_id=d.client_id, service_id=d.service_id, action=action,
                mode=mode, reason=reason, credit=d.credit, unpaid=d.unpaid, actor=self.actor,
            )  # fmt: skip
        )

    def _row(self, s, service_id: int, client_id: int) -> SuspensionState:
        row = s.get(SuspensionState, service_id)
        if row is None:
            row = SuspensionState(service_id=service_id, client_id=client_id, suspended=False, low_balance_alerted=False)
            s.add(row)
        row.client_id = client_id
        return row

    def _set_intent(self, d: Decision, detail: dict[str, Any]) -> None:
        with session_scope(self.ledger) as s:
            row = self._row(s, d.service_id, d.client_id)
            row.detail = json.dumps(detail)

    def _error(self, d: Decision, what: str, exc: BaseException, keep_intent: bool, previous: str | None) -> Outcome:
        msg = f"{what} failed: {exc}"
        with session_scope(self.ledger) as s:
            if not keep_intent:
                self._row(s, d.service_id, d.client_id).detail = previous
            self._log(s, d, "error", f"{msg}{' (will be completed next cycle)' if keep_intent else ''}", d.mode)
        log.warning("service %s: %s", d.service_id, msg)
        return Outcome(d, "pending" if keep_intent else "failed", msg, d.mode)

    # -- PBX / WHMCS --------------------------------------------------------------------------

    def _suspend_on_pbx(self, intent: dict[str, Any], d: Decision, adopt: bool) -> dict[str, Any]:
        mode = intent["mode"]
        if mode == "gateway":
            return self.switch(intent["server"]).suspend_gateways(intent["gateway_uuids"], adopt=adopt).detail
        if mode == "extension":
            return self.switch(intent["server"]).suspend_extensions(intent["domain"], intent["extensions"], adopt=adopt).detail
        if mode == "module":
            self._whmcs().module_suspend(d.service_id, f"autosuspend: {d.reason}")
            return {"kind": "module"}
        raise SwitchError(f"cannot suspend in mode {mode!r}")

    def _restore_on_pbx(self, mode: str | None, detail: dict[str, Any], service_id: int) -> None:
        if mode in ("gateway", "extension"):
            self.switch(detail.get("server")).restore(detail)
        elif mode == "module":
            self._whmcs().module_unsuspend(service_id)
        else:
            raise SwitchError(f"cannot unsuspend mode {mode!r}")

    def _whmcs(self) -> WhmcsClient:
        if self.whmcs is None:
            raise WhmcsError("Module", "no WHMCS client")
        return self.whmcs

    @staticmethod
    def _uncertain(exc: BaseException) -> bool:
        """True when the change may have happened: keep the intent for recovery."""
        return isinstance(exc, SwitchInconsistent | WhmcsTransportError | WhmcsUncertainError)

    # -- actions ------------------------------------------------------------------------------

    def suspend(self, d: Decision, target: Target, adopt_intent: dict[str, Any] | None = None) -> Outcome:
        intent = adopt_intent or {
            **target.intent(), "pending": "suspend", "reason": d.reason, "notify": d.notify, "alerted": d.low_balance_alerted,
        }  # fmt: skip
        self._set_intent(d, intent)
        try:
            detail = self._suspend_on_pbx(intent, d, adopt=adopt_intent is not None)
        except (SwitchError, WhmcsError, KeyError, ValueError, OSError) as exc:
            return self._error(d, f"suspend ({intent['mode']})", exc, self._uncertain(exc), None)
        now = self.now()
        with session_scope(self.ledger) as s:
            row = self._row(s, d.service_id, d.client_id)
            row.suspended, row.mode, row.detail = True, intent["mode"], json.dumps(detail)
            row.reason, row.since, row.last_credit = d.reason, now, d.credit
            if d.low_balance_alerted is not None:
                self._set_alert_flag(s, d.client_id, d.low_balance_alerted, d.service_id)
            self._log(s, d, "suspend", d.reason + (" (completed after an interruption)" if adopt_intent else ""), intent["mode"])
        out = Outcome(d, "done", _summary(detail), intent["mode"])
        if d.notify:
            # one zero-balance email per client and cycle, however many of its services were suspended
            out.message = f"{out.message}; {self.notify(d, f'zero:{d.client_id}:{self.run_id}')}"
        return out

    def unsuspend(self, d: Decision, row: StateRow, recovering: bool = False) -> Outcome:
        detail = dict(row.detail or {})
        previous = json.dumps({k: v for k, v in detail.items() if not k.startswith("pending")}) if detail else None
        self._set_intent(d, {**detail, "pending": "unsuspend", "pending_reason": d.reason})
        try:
            self._restore_on_pbx(row.mode, detail, d.service_id)
        except (SwitchError, WhmcsError, KeyError, ValueError, OSError) as exc:
            return self._error(d, f"unsuspend ({row.mode})", exc, self._uncertain(exc), previous)
        with session_scope(self.ledger) as s:
            state = self._row(s, d.service_id, d.client_id)
            state.suspended, state.mode, state.detail = False, None, None
            state.reason, state.since, state.last_credit = d.reason, self.now(), d.credit
            self._log(s, d, "unsuspend", d.reason + (" (completed after an interruption)" if recovering else ""), row.mode)
        return Outcome(d, "done", f"restored {_summary(detail)}", row.mode)

    def _set_alert_flag(self, s, client_id: int, value: bool, service_id: int | None = None) -> None:
        rows = s.scalars(select(SuspensionState).where(SuspensionState.client_id == client_id)).all()
        for r in rows:
            r.low_balance_alerted = value
        if service_id is not None and all(r.service_id != service_id for r in rows):
            self._row(s, service_id, client_id).low_balance_alerted = value

    def alert(self, d: Decision, services: list[int]) -> Outcome:
        with session_scope(self.ledger) as s:
            rearms = s.scalar(
                select(func.count()).select_from(SuspensionLog)
                .where(SuspensionLog.client_id == d.client_id, SuspensionLog.action == "rearm")
            )  # fmt: skip
        key = f"low:{d.client_id}:{int(rearms or 0) + 1}"
        sent = self.notify(d, key)
        if sent.startswith("failed"):
            with session_scope(self.ledger) as s:
                self._log(s, d, "error", f"low-balance alert {sent}")
            return Outcome(d, "failed", sent)
        with session_scope(self.ledger) as s:
            for sid in services:
                self._row(s, sid, d.client_id)
            s.flush()
            self._set_alert_flag(s, d.client_id, True)
            self._log(s, d, "alert", f"{d.reason}; {sent}")
        return Outcome(d, "done", sent)

    def rearm(self, d: Decision) -> Outcome:
        with session_scope(self.ledger) as s:
            self._set_alert_flag(s, d.client_id, False)
            self._log(s, d, "rearm", d.reason)
        return Outcome(d, "done", "low-balance alert re-armed")

    def notify(self, d: Decision, key: str) -> str:
        """Claim `key`, then send `d.notify`; see the module docstring for the failure rules."""
        template = d.notify or ""
        try:
            with session_scope(self.ledger) as s:
                s.add(Notification(dedup_key=key, client_id=d.client_id, service_id=d.service_id, template=template,
                                   reason=d.reason, run_id=self.run_id, sent_at=self.now()))  # fmt: skip
        except IntegrityError:
            return f"{template!r} already sent ({key})"
        custom = {"autosuspend_reason": d.reason}
        if d.credit is not None:
            custom["voip_credit"] = str(d.credit)
        if d.unpaid is not None:
            custom["voip_unpaid"] = str(d.unpaid)
        try:
            self._whmcs().send_email(template, d.client_id, custom)
        except WhmcsUncertainError as exc:
            log.warning("client %s: %s may or may not have been sent (%s); recorded as sent", d.client_id, template, exc)
            return f"{template!r} maybe sent (recorded as sent, not retried)"
        except WhmcsError as exc:
            with session_scope(self.ledger) as s:
                s.execute(delete(Notification).where(Notification.dedup_key == key))
            return f"failed to send {template!r}: {exc}"
        return f"{template!r} sent"


def _summary(detail: dict[str, Any]) -> str:
    kind = detail.get("kind")
    if kind == "gateway":
        return f"gateways {[g['uuid'] for g in detail.get('gateways', [])]}"
    if kind == "extension":
        return f"extensions {[e['extension'] for e in detail.get('extensions', [])]}@{detail.get('domain')}"
    return str(kind or "")


def recover_pending(applier: Applier, states: dict[int, StateRow]) -> list[Outcome]:
    """Complete intents a previous cycle left behind (crash or uncertain failure mid-change)."""
    out = []
    for row in sorted(states.values(), key=lambda r: r.service_id):
        if not row.pending:
            continue
        detail = row.detail or {}
        d = Decision(
            row.client_id, row.service_id, Action.SUSPEND if row.pending == "suspend" else Action.UNSUSPEND,
            detail.get("reason") or detail.get("pending_reason") or f"completing the {row.pending} a previous cycle began",
            mode=row.mode,
            notify=detail.get("notify"), low_balance_alerted=detail.get("alerted"),
        )  # fmt: skip
        if row.pending == "suspend":
            intent = {k: v for k, v in detail.items()}
            target = Target(row.client_id, row.service_id, str(intent.get("mode")), False)
            result = applier.suspend(d, target, adopt_intent=intent)
        else:
            result = applier.unsuspend(d, row, recovering=True)
        out.append(result)
    if out:  # the recovered rows (and their clients' alert flags) as they are now
        states.clear()
        states.update(load_states(applier.ledger))
    return out


def apply_decisions(applier: Applier, decisions: list[Decision], targets: dict[int, Target],
                    states: dict[int, StateRow]) -> list[Outcome]:  # fmt: skip
    """Apply every decision that changes something; alerts once per client."""
    out: list[Outcome] = []
    by_client: dict[int, list[int]] = defaultdict(list)
    for t in targets.values():
        by_client[t.client_id].append(t.service_id)
    alerted_clients: dict[int, Outcome] = {}
    for d in decisions:
        if not d.changes:
            continue
        try:
            if d.action == Action.SUSPEND:
                out.append(applier.suspend(d, targets[d.service_id]))
            elif d.action == Action.UNSUSPEND:
                out.append(applier.unsuspend(d, states[d.service_id]))
            elif d.action in (Action.ALERT_LOW_BALANCE, Action.REARM_ALERT):
                first = alerted_clients.get(d.client_id)
                if first is not None:
                    out.append(Outcome(d, first.status, f"same client as service {first.decision.service_id}"))
                    continue
                o = applier.alert(d, by_client[d.client_id]) if d.action == Action.ALERT_LOW_BALANCE else applier.rearm(d)
                alerted_clients[d.client_id] = o
                out.append(o)
        except Exception as exc:  # noqa: BLE001 - one service's surprise must not stop the cycle
            log.exception("service %s: %s failed unexpectedly", d.service_id, d.action)
            out.append(Outcome(d, "failed", f"unexpected {type(exc).__name__}: {exc}"))
    return out


# -- a whole cycle ----------------------------------------------------------------------------


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
        return "partial" if self.failed or self.unreadable_clients else "completed"

    def changed_rows(self) -> list[dict[str, Any]]:
        return [o.row() for o in self.outcomes]

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "dry_run": self.dry_run, "status": self.status, "services": self.services,
            "clients_read": self.clients_read, "unreadable_clients": self.unreadable_clients, "decisions": self.counts,
            "applied": sum(1 for o in self.outcomes if o.status == "done"), "failed": self.failed,
            "errors": self.errors[:10],
            "seconds": round((self.finished_at - self.started_at).total_seconds(), 3) if self.finished_at else None,
        }  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "changes": self.changed_rows() if not self.dry_run else [],
                "would_change": [_decision_row(d) for d in self.decisions if d.changes] if self.dry_run else []}  # fmt: skip


def _decision_row(d: Decision) -> dict[str, Any]:
    row = {k: (str(v) if isinstance(v, Decimal | Action) else v) for k, v in asdict(d).items()}
    return row


def start_run(settings: Settings, dry_run: bool, flow_run_id: str | None = None) -> int | None:
    if dry_run:
        return None
    with session_scope(settings.ledger) as s:
        run = Run(kind="autosuspend", dry_run=False, status="running", flow_run_id=flow_run_id, started_at=utc_now())
        s.add(run)
        s.flush()
        return run.id


def finish_run(settings: Settings, report: CycleReport) -> None:
    if report.run_id is None:
        return
    with session_scope(settings.ledger) as s:
        run = s.get(Run, report.run_id)
        run.status, run.finished_at = report.status, report.finished_at
        run.summary = json.dumps(report.summary(), default=str)


def fail_run(settings: Settings, run_id: int | None, exc: BaseException) -> None:
    if run_id is None:
        return
    with session_scope(settings.ledger) as s:
        run = s.get(Run, run_id)
        run.status, run.finished_at = "failed", utc_now()
        run.summary = json.dumps({"error": f"{type(exc).__name__}: {exc}"[:500]})


def default_whmcs_factory(settings: Settings) -> WhmcsFactory:
    if settings.whmcs is None:
        raise WhmcsError("config", "no `whmcs` section in the configuration")
    return lambda: WhmcsClient.from_settings(settings.whmcs)


def default_switch_factory(settings: Settings) -> SwitchFactory:
    def make(server_id: str) -> FusionPBXSwitch:
        server = settings.server(server_id)
        if server.kind != "fusionpbx":
            raise SwitchError(f"server {server_id} is {server.kind}: gateway/extension modes need FusionPBX")
        return FusionPBXSwitch.from_server(server)

    return make


def run_cycle(
    settings: Settings,
    dry_run: bool = False,
    *,
    whmcs_factory: WhmcsFactory | None = None,
    switch_factory: SwitchFactory | None = None,
    now: Callable[[], datetime] = utc_now,
    actor: str = "autosuspend",
    flow_run_id: str | None = None,
    workers: int = READ_WORKERS,
) -> CycleReport:
    """One cycle with plain functions (the CLI's `suspend-check`; the flow runs the same steps)."""
    whmcs_factory = whmcs_factory or default_whmcs_factory(settings)
    started = now()
    run_id = start_run(settings, dry_run, flow_run_id)
    applier = None
    try:
        states = load_states(settings.ledger)
        outcomes: list[Outcome] = []
        if not dry_run:
            applier = Applier(settings, whmcs_factory(), switch_factory or default_switch_factory(settings), run_id, actor, now)
            outcomes += recover_pending(applier, states)
        read = read_snapshots(settings, whmcs_factory, now, workers)
        decisions = decide_all(read.snapshots, states, Policy.from_settings(settings, now()))
        if applier is not None:
            outcomes += apply_decisions(applier, decisions, read.targets, states)
    except BaseException as exc:
        fail_run(settings, run_id, exc)
        raise
    finally:
        if applier is not None and applier.whmcs is not None:
            applier.whmcs.close()
    report = CycleReport(run_id, dry_run, started, now(), len(read.snapshots), read.clients_read,
                         read.unreadable_clients, decisions, outcomes, read.errors)  # fmt: skip
    finish_run(settings, report)
    return report
