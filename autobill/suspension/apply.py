"""Apply one autosuspend cycle's work so that a failure never leaves the ledger and the PBX
disagreeing (the order is in `Applier`'s docstring and tasks/suspend.py's module docstring).

The PBX and WHMCS come in as ports (factories), and whether a failure may have taken effect
anyway comes in as `is_uncertain` / `email_outcome`: the core knows the rule ("an uncertain
change keeps its intent for recovery; a maybe-sent email counts as sent"), the connectors know
which of their errors are which (tasks/suspend.py wires them).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from sqlalchemy import delete, or_, select

from autobill.config import Settings
from autobill.ledger.db import session_scope
from autobill.ledger.models import Notification, SuspensionLog, SuspensionState
from autobill.suspension.planning import Email, Outcome, StateRow, Work, detail_summary
from autobill.suspension.rules import Decision
from autobill.timeutil import utc_now

log = logging.getLogger(__name__)


def _level_key(level: Decimal | None) -> str:
    return "-" if level is None else f"{level:.2f}"


class ChangeError(Exception):
    """A suspension that cannot even be attempted (no server recorded, an unknown mode)."""


class Switch(Protocol):
    def suspend_gateways(self, uuids: list[str], adopt: bool = False) -> Any: ...
    def suspend_extensions(self, domain: str, extensions: list[str], adopt: bool = False) -> Any: ...
    def restore(self, detail: dict[str, Any]) -> Any: ...


class WhmcsPort(Protocol):
    def module_suspend(self, service_id: int, reason: str) -> Any: ...
    def module_unsuspend(self, service_id: int) -> Any: ...
    def send_email(self, template: str, client_id: int, custom: dict[str, str]) -> Any: ...
    def close(self) -> None: ...


WhmcsFactory = Callable[[], WhmcsPort]
SwitchFactory = Callable[[str], Switch]


def _never_uncertain(exc: BaseException) -> bool:
    return False


def _email_failed(exc: BaseException) -> str | None:
    return "failed"


def _levels(text: str | None) -> frozenset[Decimal] | None:
    return None if text is None else frozenset(Decimal(x) for x in json.loads(text))


def _levels_text(levels) -> str:
    return json.dumps([str(x) for x in sorted(levels, reverse=True)])


def load_states(ledger_url: str) -> dict[int, StateRow]:
    with session_scope(ledger_url) as s:
        rows = s.scalars(select(SuspensionState)).all()
        return {
            r.service_id: StateRow(
                r.service_id, r.client_id, r.suspended, r.mode, json.loads(r.detail) if r.detail else None,
                r.low_balance_alerted, _levels(r.alerted_levels),
            )  # fmt: skip
            for r in rows
        }


def record_admin_alerts(settings: Settings, run_id: int | None, results, now: datetime) -> None:
    """The operator's toll-fraud alerts: one `notifications` row per hold (`fraud-admin:<hold>`)
    and a suspension-log line each (action alert / error)."""
    with session_scope(settings.ledger) as s:
        for h, status in results:
            if h.hold_id is None:
                continue
            if status == "sent":
                s.add(Notification(dedup_key=f"fraud-admin:{h.hold_id}", client_id=h.client_id, service_id=h.service_id,
                                   template="SendAdminEmail", reason=h.reason, run_id=run_id, sent_at=now))  # fmt: skip
            s.add(SuspensionLog(at=now, run_id=run_id, client_id=h.client_id, service_id=h.service_id,
                                action="alert" if status == "sent" else "error", mode=None, actor="fraud-guard",
                                reason=f"toll-fraud guard (hold {h.hold_id}): {h.reason}; operator email {status}"))  # fmt: skip


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
    is_uncertain: Callable[[BaseException], bool] = _never_uncertain  # may the failed change have happened?
    email_outcome: Callable[[BaseException], str | None] = _email_failed  # "maybe" | "failed" | None: re-raise
    _switches: dict[str, Switch] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ledger(self) -> str:
        return self.settings.ledger

    def switch(self, server_id: str | None) -> Switch:
        if not server_id:
            raise ChangeError("no server recorded for this suspension")
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
                        r.low_balance_alerted = bool(d.low_balance_alerted)
                        if d.alerted_levels is not None:
                            r.alerted_levels = _levels_text(d.alerted_levels)
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
                            r.alerted_levels = None
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
        """Claims `low:<client>:<level>:<local day>`: at most one email per level and day; the
        rules already allow one per crossing (a level is re-armed only above it + hysteresis)."""
        if not alerts:
            return []
        day = self.now().astimezone(ZoneInfo(self.settings.timezone)).date().isoformat()
        emails = [Email(d, f"low:{d.client_id}:{_level_key(d.alert_level)}:{day}", d.notify or "", True) for d in alerts]
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

    def _change(self, w: Work, whmcs: WhmcsPort) -> None:
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
                    raise ChangeError(f"cannot suspend in mode {w.mode!r}")
            else:
                if w.mode in ("gateway", "extension"):
                    self.switch(intent.get("server")).restore(intent)
                elif w.mode == "module":
                    whmcs.module_unsuspend(d.service_id)
                else:
                    raise ChangeError(f"cannot unsuspend mode {w.mode!r}")
                w.result = intent
        except Exception as exc:  # noqa: BLE001 - recorded per service; `_record` judges certainty
            w.error = exc
            log.warning("service %s: %s (%s) failed: %s: %s", d.service_id, d.action, w.mode, type(exc).__name__, exc)

    def _record(self, s, rows: dict[int, SuspensionState], w: Work) -> Outcome:
        d = w.decision
        row = self._row(s, rows, d.service_id, d.client_id)
        what = f"{d.action} ({w.mode})"
        if w.error is not None:
            uncertain = self.is_uncertain(w.error)
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
                        if d.alerted_levels is not None:
                            r.alerted_levels = _levels_text(d.alerted_levels)
                row.low_balance_alerted = d.low_balance_alerted
                if d.alerted_levels is not None:
                    row.alerted_levels = _levels_text(d.alerted_levels)
            self._log(s, d, "suspend", d.reason + note, w.mode)
            return Outcome(d, "done", detail_summary(w.result), w.mode)
        row.suspended, row.mode, row.detail = False, None, None
        self._log(s, d, "unsuspend", d.reason + note, w.mode)
        return Outcome(d, "done", f"restored {detail_summary(w.intent)}", w.mode)

    def _send(self, e: Email, whmcs: WhmcsPort) -> None:
        d = e.decision
        custom = {"autosuspend_reason": d.reason}
        if d.available is not None:
            custom["voip_available"] = f"{d.available:.2f}"
        if d.unbilled is not None:
            custom["voip_unbilled"] = str(d.unbilled)
        if d.not_invoiced is not None:
            custom["voip_not_invoiced"] = str(d.not_invoiced)
        if d.alert_level is not None:
            custom["voip_alert_level"] = f"{d.alert_level:.2f}"
        if d.evidence:
            custom["voip_fraud_calls"] = "\n".join(d.evidence)
        if d.credit is not None:
            custom["voip_credit"] = str(d.credit)
        if d.unpaid is not None:
            custom["voip_unpaid"] = str(d.unpaid)
        try:
            whmcs.send_email(e.template, d.client_id, custom)
            e.status = "sent"
        except Exception as exc:
            outcome = self.email_outcome(exc)
            if outcome is None:
                raise
            if outcome == "maybe":
                log.warning("client %s: %s may or may not have been sent (%s); recorded as sent", d.client_id,
                            e.template, exc)
                e.status = "maybe sent (recorded as sent, not retried)"
            else:
                e.status = f"failed: {exc}"

    def _pool(self, fn: Callable[[Any, WhmcsPort], None], items: list) -> None:
        """Run `fn(item, whmcs)` for every item on up to `workers` threads (one client each)."""
        if not items:
            return
        local = threading.local()
        made: list[WhmcsPort] = []

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


