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

import functools
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from types import SimpleNamespace
from typing import Any

from sqlalchemy import delete, func, or_, select

from autobill.config import Service, Settings
from autobill.ledger.db import session_scope
from autobill.ledger.models import Notification, SuspensionLog, SuspensionState
from autobill.ledger.runs import finish_run as finish_ledger_run
from autobill.ledger.runs import start_exclusive_run
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
    status: str  # done | failed | pending (completed next cycle)
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


def _summary(detail: dict[str, Any] | None) -> str:
    detail = detail or {}
    kind = detail.get("kind")
    if kind == "gateway":
        return f"gateways {[g['uuid'] for g in detail.get('gateways', [])]}"
    if kind == "extension":
        return f"extensions {[e['extension'] for e in detail.get('extensions', [])]}@{detail.get('domain')}"
    return str(kind or "")


@dataclass
class Applier:
    """Applies one cycle's decisions in a few ledger transactions (module docstring: the order).

    1. one transaction: every intent, every low-balance claim + flag, every re-arm;
    2. the PBX / WHMCS changes (on `workers` threads, one WHMCS client per thread);
    3. one transaction: final states + suspension log, zero-balance claims;
    4. the emails; 5. one transaction: their log lines, and undo the claims that failed.
    """

    settings: Settings
    whmcs_factory: WhmcsFactory
    switch_factory: SwitchFactory
    run_id: int | None = None
    actor: str = "autosuspend"
    now: Callable[[], datetime] = utc_now
    workers: int = 4
    _switches: dict[str, FusionPBXSwitch] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ledger(self) -> str:
        return self.settings.ledger

    def switch(self, server_id: str | None) -> FusionPBXSwitch:
        if not server_id:
            raise SwitchError("no server recorded for this suspension")
        with self._lock:
            if server_id not in self._switches:
                self._switches[server_id] = self.switch_factory(server_id)
            return self._switches[server_id]

    def _log(self, s, d: Decision, action: str, reason: str, mode: str | None = None) -> None:
        s.add(
            SuspensionLog(
                at=self.now(), run_id=self.run_id, client_id=d.client_id, service_id=d.service_id, action=action,
                mode=mode, reason=reason, credit=d.credit, unpaid=d.unpaid, actor=self.actor,
            )  # fmt: skip
        )

    @staticmethod
    def _row(s, rows: dict[int, SuspensionState], service_id: int, client_id: int) -> SuspensionState:
        row = rows.get(service_id)
        if row is None:
            row = rows[service_id] = SuspensionState(
                service_id=service_id, client_id=client_id, suspended=False, low_balance_alerted=False
            )
            s.add(row)
        return row

    @staticmethod
    def _load(s, services: Iterable[int], clients: Iterable[int]) -> dict[int, SuspensionState]:
        services, clients = list(services), list(clients)
        rows: dict[int, SuspensionState] = {}
        for chunk in range(0, max(len(services), len(clients)), 500):
            cond = [SuspensionState.service_id.in_(services[chunk : chunk + 500])]
            if clients[chunk : chunk + 500]:
                cond.append(SuspensionState.client_id.in_(clients[chunk : chunk + 500]))
            for r in s.scalars(select(SuspensionState).where(or_(*cond))):
                rows[r.service_id] = r
        return rows

    # -- the whole batch ---------------------------------------------------------------------

    def apply(self, works: list[Work], alerts: list[Decision], rearms: list[Decision],
              services_of: dict[int, list[int]]) -> list[Outcome]:  # fmt: skip
        flag_clients = {d.client_id for d in alerts + rearms}
        emails: list[Email] = []
        outcomes: list[Outcome] = []
        # 1. intents, low-balance claims + flags, re-arms
        with session_scope(self.ledger) as s:
            wanted = {w.decision.service_id for w in works} | {sid for c in flag_clients for sid in services_of.get(c, [])}
            rows = self._load(s, wanted, flag_clients)
            for w in works:
                self._row(s, rows, w.decision.service_id, w.decision.client_id).detail = json.dumps(w.intent)
            emails = self._claim_low_balance(s, alerts)
            for d in alerts + rearms:
                for sid in services_of.get(d.client_id, [d.service_id]):
                    self._row(s, rows, sid, d.client_id)
                for r in rows.values():
                    if r.client_id == d.client_id:
                        r.low_balance_alerted = d.action == Action.ALERT_LOW_BALANCE
            for d in rearms:
                self._log(s, d, "rearm", d.reason)
                outcomes.append(Outcome(d, "done", "low-balance alert re-armed"))
        # 2. the PBX / WHMCS changes
        self._pool(self._change, works)
        # 3. final states and the log
        with session_scope(self.ledger) as s:
            rows = self._load(s, [w.decision.service_id for w in works], {w.decision.client_id for w in works})
            zero: dict[str, Email] = {}
            for w in works:
                outcomes.append(self._record(s, rows, w))
                key = f"zero:{w.decision.client_id}:{self.run_id}"  # one per client and cycle
                if w.error is None and w.suspend and w.decision.notify and key not in zero:
                    zero[key] = Email(w.decision, key, w.decision.notify, False)
            self._claim(s, list(zero.values()))
            emails += zero.values()
        # 4. the emails; 5. their log lines, undo the failed claims
        self._pool(self._send, [e for e in emails if not e.status])
        by_decision = {id(o.decision): o for o in outcomes}
        with session_scope(self.ledger) as s:
            for e in emails:
                failed = e.status.startswith("failed")
                if failed:
                    s.execute(delete(Notification).where(Notification.dedup_key == e.key))
                if e.low_balance:
                    if failed:
                        for r in self._load(s, services_of.get(e.decision.client_id, []), [e.decision.client_id]).values():
                            r.low_balance_alerted = False
                    self._log(s, e.decision, "error" if failed else "alert", f"{e.decision.reason}; {e.template!r} {e.status}")
                    outcomes.append(Outcome(e.decision, "failed" if failed else "done", f"{e.template!r} {e.status}"))
                else:
                    if failed:
                        self._log(s, e.decision, "error", f"{e.template!r} {e.status}")
                    o = by_decision.get(id(e.decision))
                    if o is not None:
                        o.message = f"{o.message}; {e.template!r} {e.status}"
        return outcomes

    # -- steps ----------------------------------------------------------------------------------

    def _claim_low_balance(self, s, alerts: list[Decision]) -> list[Email]:
        """Claims `low:<client>:<crossing>`; the crossing number counts the client's re-arms."""
        if not alerts:
            return []
        clients = [d.client_id for d in alerts]
        rearms = dict(
            s.execute(
                select(SuspensionLog.client_id, func.count()).where(
                    SuspensionLog.action == "rearm", SuspensionLog.client_id.in_(clients)
                ).group_by(SuspensionLog.client_id)
            ).all()
        )
        emails = [Email(d, f"low:{d.client_id}:{rearms.get(d.client_id, 0) + 1}", d.notify or "", True) for d in alerts]
        self._claim(s, emails)
        return emails

    def _claim(self, s, emails: list[Email]) -> None:
        keys = [e.key for e in emails]
        taken = set(s.scalars(select(Notification.dedup_key).where(Notification.dedup_key.in_(keys)))) if keys else set()
        for e in emails:
            if e.key in taken:
                e.status = "already sent"  # an interrupted earlier attempt claimed it: never twice
                continue
            taken.add(e.key)
            d = e.decision
            s.add(Notification(dedup_key=e.key, client_id=d.client_id, service_id=d.service_id, template=e.template,
                               reason=d.reason, run_id=self.run_id, sent_at=self.now()))  # fmt: skip

    def _change(self, w: Work, whmcs: WhmcsClient) -> None:
        d, intent = w.decision, w.intent
        try:
            if w.suspend:
                if w.mode in ("gateway", "extension"):
                    sw = self.switch(intent.get("server"))
                    if w.mode == "gateway":
                        w.result = sw.suspend_gateways(intent["gateway_uuids"], adopt=w.recovering).detail
                    else:
                        w.result = sw.suspend_extensions(intent["domain"], intent["extensions"], adopt=w.recovering).detail
                elif w.mode == "module":
                    whmcs.module_suspend(d.service_id, f"autosuspend: {d.reason}")
                    w.result = {"kind": "module"}
                else:
                    raise SwitchError(f"cannot suspend in mode {w.mode!r}")
            else:
                if w.mode in ("gateway", "extension"):
                    self.switch(intent.get("server")).restore(intent)
                elif w.mode == "module":
                    whmcs.module_unsuspend(d.service_id)
                else:
                    raise SwitchError(f"cannot unsuspend mode {w.mode!r}")
                w.result = intent
        except Exception as exc:  # noqa: BLE001 - recorded per service; `_record` judges certainty
            w.error = exc
            log.warning("service %s: %s (%s) failed: %s: %s", d.service_id, d.action, w.mode, type(exc).__name__, exc)

    def _record(self, s, rows: dict[int, SuspensionState], w: Work) -> Outcome:
        d = w.decision
        row = self._row(s, rows, d.service_id, d.client_id)
        what = f"{d.action} ({w.mode})"
        if w.error is not None:
            uncertain = isinstance(w.error, SwitchInconsistent | WhmcsTransportError | WhmcsUncertainError)
            if not uncertain:
                row.detail = w.previous
            msg = f"{what} failed: {w.error}"
            self._log(s, d, "error", msg + (" (will be completed next cycle)" if uncertain else ""), w.mode)
            return Outcome(d, "pending" if uncertain else "failed", msg, w.mode)
        note = " (completed after an interruption)" if w.recovering else ""
        row.reason, row.since, row.last_credit = d.reason, self.now(), d.credit
        if w.suspend:
            row.suspended, row.mode, row.detail = True, w.mode, json.dumps(w.result)
            if d.low_balance_alerted is not None:
                for r in rows.values():
                    if r.client_id == d.client_id:
                        r.low_balance_alerted = d.low_balance_alerted
                row.low_balance_alerted = d.low_balance_alerted
            self._log(s, d, "suspend", d.reason + note, w.mode)
            return Outcome(d, "done", _summary(w.result), w.mode)
        row.suspended, row.mode, row.detail = False, None, None
        self._log(s, d, "unsuspend", d.reason + note, w.mode)
        return Outcome(d, "done", f"restored {_summary(w.intent)}", w.mode)

    def _send(self, e: Email, whmcs: WhmcsClient) -> None:
        d = e.decision
        custom = {"autosuspend_reason": d.reason}
        if d.credit is not None:
            custom["voip_credit"] = str(d.credit)
        if d.unpaid is not None:
            custom["voip_unpaid"] = str(d.unpaid)
        try:
            whmcs.send_email(e.template, d.client_id, custom)
            e.status = "sent"
        except WhmcsUncertainError as exc:
            log.warning("client %s: %s may or may not have been sent (%s); recorded as sent", d.client_id, e.template, exc)
            e.status = "maybe sent (recorded as sent, not retried)"
        except WhmcsError as exc:
            e.status = f"failed: {exc}"

    def _pool(self, fn: Callable[[Any, WhmcsClient], None], items: list) -> None:
        """Run `fn(item, whmcs)` for every item on up to `workers` threads (one client each)."""
        if not items:
            return
        local = threading.local()
        made: list[WhmcsClient] = []

        def run(item) -> None:
            c = getattr(local, "client", None)
            if c is None:
                c = local.client = self.whmcs_factory()
                with self._lock:
                    made.append(c)
            fn(item, c)

        try:
            if self.workers <= 1 or len(items) == 1:
                for item in items:
                    run(item)
            else:
                with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="autosuspend-apply") as pool:
                    list(pool.map(run, items))
        finally:
            for c in made:
                c.close()


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
    """Record the run; refuse (RunBusy) when another non-dry cycle started less than
    `stale_after_seconds` ago and has not finished (the deployment's concurrency limit covers flow
    runs; this also covers `suspend-check` started by hand meanwhile)."""
    if dry_run:
        return None
    return start_exclusive_run(settings, "autosuspend", settings.autosuspend.stale_after_seconds, flow_run_id)


def finish_run(settings: Settings, report: CycleReport) -> None:
    if report.run_id is not None:
        finish_ledger_run(settings, report.run_id, report.status, report.summary())


def fail_run(settings: Settings, run_id: int | None, exc: BaseException) -> None:
    if run_id is not None:
        finish_ledger_run(settings, run_id, "failed", {"error": f"{type(exc).__name__}: {exc}"[:500]})


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


@dataclass
class CycleContext:
    """What every step of one cycle shares (the CLI and the flow build the same one)."""

    settings: Settings
    dry_run: bool = False
    run_id: int | None = None
    whmcs_factory: WhmcsFactory | None = None
    switch_factory: SwitchFactory | None = None
    now: Callable[[], datetime] = utc_now
    actor: str = "autosuspend"
    workers: int = READ_WORKERS
    started_at: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        self.whmcs_factory = self.whmcs_factory or default_whmcs_factory(self.settings)
        self.switch_factory = self.switch_factory or default_switch_factory(self.settings)

    def applier(self) -> Applier:
        return Applier(self.settings, self.whmcs_factory, self.switch_factory, self.run_id, self.actor, self.now,
                       workers=max(1, self.workers // 2))  # fmt: skip


def begin(ctx: CycleContext, flow_run_id: str | None = None) -> CycleContext:
    ctx.started_at = ctx.now()
    ctx.run_id = start_run(ctx.settings, ctx.dry_run, flow_run_id)
    return ctx


def recover(ctx: CycleContext) -> list[Outcome]:
    """Complete what an interrupted earlier cycle began (never in a dry run)."""
    works = [] if ctx.dry_run else recovery_work(load_states(ctx.settings.ledger))
    return ctx.applier().apply(works, [], [], {}) if works else []


def read(ctx: CycleContext) -> ReadResult:
    return read_snapshots(ctx.settings, ctx.whmcs_factory, ctx.now, ctx.workers)


def decide_cycle(ctx: CycleContext, result: ReadResult) -> tuple[list[Decision], dict[int, StateRow]]:
    states = load_states(ctx.settings.ledger)
    return decide_all(result.snapshots, states, Policy.from_settings(ctx.settings, ctx.now())), states


def apply_cycle(ctx: CycleContext, result: ReadResult, decisions: list[Decision], states: dict[int, StateRow]) -> list[Outcome]:
    if ctx.dry_run:
        return []
    works, alerts, rearms = plan(decisions, result.targets, states)
    return ctx.applier().apply(works, alerts, rearms, services_by_client(result.targets))


def finish(ctx: CycleContext, result: ReadResult, decisions: list[Decision], outcomes: list[Outcome]) -> CycleReport:
    report = CycleReport(ctx.run_id, ctx.dry_run, ctx.started_at, ctx.now(), len(result.snapshots), result.clients_read,
                         result.unreadable_clients, decisions, outcomes, result.errors)  # fmt: skip
    finish_run(ctx.settings, report)
    return report


def run_cycle(settings: Settings, dry_run: bool = False, *, flow_run_id: str | None = None, **context: Any) -> CycleReport:
    """One cycle with plain functions (the CLI's `suspend-check`); the flow runs the same steps
    as tasks. `context`: CycleContext fields (factories, clock, actor, workers) for tests."""
    ctx = begin(CycleContext(settings, dry_run, **context), flow_run_id)
    try:
        outcomes = recover(ctx)
        result = read(ctx)
        decisions, states = decide_cycle(ctx, result)
        outcomes += apply_cycle(ctx, result, decisions, states)
    except BaseException as exc:
        fail_run(settings, ctx.run_id, exc)
        raise
    return finish(ctx, result, decisions, outcomes)


@functools.cache
def prefect_tasks() -> SimpleNamespace:
    """Thin Prefect @task wrappers of the steps, built on first use so the CLI never imports
    Prefect. No retries: a failed step changes nothing and the next cycle (5 min) retries it;
    the WHMCS client already retries reads. NO_CACHE: every cycle must read afresh."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    def t(fn, name: str, timeout: float):
        return task(name=name, cache_policy=NO_CACHE, retries=0, timeout_seconds=timeout, log_prints=True)(fn)

    return SimpleNamespace(
        recover=t(recover, "autosuspend-recover", 120),
        read=t(read, "autosuspend-read-whmcs", 180),
        decide=t(decide_cycle, "autosuspend-decide", 60),
        apply=t(apply_cycle, "autosuspend-apply", 180),
        finish=t(finish, "autosuspend-record", 60),
    )
