"""What autosuspend reads from WHMCS, efficiently (a cycle runs every 5 minutes for every
VoIP client): GetClientsProducts, GetClients and GetInvoices(status=Unpaid) are each paginated
once for all clients (an unpaid invoice counts only once its due date + the plan's grace has
passed, in the WHMCS server's timezone: #18); then one GetClientsDetails per VoIP client (credit + custom fields) on a
small thread pool, one WHMCS client per worker thread. A client whose reads failed is unreadable
this cycle and nothing is done to it; if a sweep fails, every client is unreadable.

Which services: every service mapped in config (`services`), plus, for clients whose custom
field "Has VoIP Service" is Yes, their services of the products listed in
`autosuspend.voip_product_ids` (suspended with ModuleSuspend). Custom fields are read only when
`whmcs.custom_field_ids` is configured.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

from autobill.config import Settings
from autobill.suspension.credit import overdue_amount
from autobill.suspension.planning import ReadResult, Target
from autobill.suspension.rules import Snapshot, resolve_threshold
from autobill.timeutil import utc_now
from connectors.whmcs import WhmcsClient, WhmcsError, whmcs_flag

HAS_VOIP, MANUAL, SUSPENDED, THRESHOLD = (
    "Has VoIP Service", "Manual VoIP Suspend", "VoIP Suspended", "Low Balance Threshold",
)  # fmt: skip
READ_WORKERS = 8

WhmcsFactory = Callable[[], WhmcsClient]


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
        invoices = main.unpaid_invoices()
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
    default_grace, whmcs_tz = settings.autosuspend.overdue_grace_days, settings.whmcs_tz
    plan_grace = {p.name: p.overdue_grace_days for p in settings.plans if p.overdue_grace_days is not None}
    grace = {s.service_id: plan_grace[s.plan] for s in settings.services if s.plan in plan_grace}
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
                # overdue only: due date + the plan's grace passed, in WHMCS's timezone (#18)
                unpaid=overdue_amount(invoices.get(t.client_id, []), read_at, grace.get(sid, default_grace), whmcs_tz),
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


