"""The mapping's history in the ledger, and who owned a number when.

Each sync compares the claims it built (build.py) with the open claims in `service_claims` and
records only the differences, at the sync's time `t`:
- a key whose owner changed (a DID moved from A to B): A's row closes at `t`, B's opens at `t`;
- a key nobody claims any more (service terminated, DID removed): its row closes at `t`; calls
  that started before `t` are still the old owner's;
- a key claimed for the first time ever opens "since always" (`valid_from` NULL), so calls that
  came in before the first sync (or that waited unrated for a service to claim them) are billed;
- a conflict (several claimants) is a row without owner: its calls stay unrated. When the
  conflict ends with one claimant, that row gets this owner in place: the calls of the conflict
  window are billed to the service that kept the key (the fix decides), once.

The history resolution is the sync interval (every autosuspend cycle and every nightly run).
Open rows are trusted only up to the last successful sync (`confirmed_until`): a call after it
waits unrated (reason `service_unconfirmed`) until a sync has seen who owned its number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import polars as pl
from sqlalchemy import delete, func, insert, select, update

from autobill.ledger.db import session_scope
from autobill.ledger.models import ServiceClaim, ServiceRecord, ServiceSync
from autobill.services.build import Mapping

Key = tuple[str, str, str, str]
Owner = tuple  # (service_id, client_id, plan, conflict ids)


@dataclass(frozen=True)
class Change:
    op: str  # open | close | resolve
    key: Key
    owner: Owner | None = None
    since_always: bool = False


def diff(open_owners: dict[Key, Owner], current: dict[Key, Owner], seen: set[Key]) -> list[Change]:
    """What to record so that the open claims become `current` (pure). `seen`: keys with any row."""
    changes: list[Change] = []
    for key, owner in open_owners.items():
        new = current.get(key)
        if new == owner:
            continue
        if new is not None and owner[0] is None and new[0] is not None:
            changes.append(Change("resolve", key, new))
            continue
        changes.append(Change("close", key))
        if new is not None:
            changes.append(Change("open", key, new))
    for key, owner in current.items():
        if key not in open_owners:
            changes.append(Change("open", key, owner, since_always=key not in seen))
    return changes


def _owner(row) -> Owner:
    conflict = tuple(json.loads(row.conflict)) if row.conflict else ()
    return (row.service_id, row.client_id, row.plan, conflict)


def record_sync(url: str, mapping: Mapping, now: datetime, origin: str) -> tuple[int, int]:
    """Write one successful sync (claims diff, services read, the sync row) in one transaction.
    Returns (sync id, number of claim changes)."""
    current = {c.key: c.owner for c in mapping.claims}
    with session_scope(url) as s:
        sync = ServiceSync(at=now, origin=origin, ok=True, services=len(mapping.services), claims=len(mapping.claims),
                           conflicts=json.dumps([c.to_json() for c in mapping.conflicts]))
        s.add(sync)
        s.flush()
        cols = (ServiceClaim.id, ServiceClaim.server, ServiceClaim.tenant, ServiceClaim.kind, ServiceClaim.value,
                ServiceClaim.service_id, ServiceClaim.client_id, ServiceClaim.plan, ServiceClaim.conflict)
        open_rows = {tuple(r[1:5]): r for r in s.execute(select(*cols).where(ServiceClaim.valid_to.is_(None)))}
        seen = {tuple(k) for k in s.execute(
            select(ServiceClaim.server, ServiceClaim.tenant, ServiceClaim.kind, ServiceClaim.value).distinct())}
        changes = diff({k: _owner(r) for k, r in open_rows.items()}, current, seen)
        inserts, closes = [], []
        for ch in changes:
            if ch.op == "close":
                closes.append(open_rows[ch.key].id)
            elif ch.op == "resolve":
                s.execute(update(ServiceClaim).where(ServiceClaim.id == open_rows[ch.key].id).values(
                    service_id=ch.owner[0], client_id=ch.owner[1], plan=ch.owner[2], conflict=None))
            else:
                server, tenant, kind, value = ch.key
                sid, cid, plan, conflict = ch.owner
                inserts.append({"server": server, "tenant": tenant, "kind": kind, "value": value, "service_id": sid,
                                "client_id": cid, "plan": plan, "conflict": json.dumps(list(conflict)) if conflict else None,
                                "valid_from": None if ch.since_always else now, "valid_to": None, "sync_id": sync.id})
        for i in range(0, len(closes), 500):
            s.execute(update(ServiceClaim).where(ServiceClaim.id.in_(closes[i:i + 500])).values(valid_to=now))
        s.flush()
        if inserts:
            s.execute(insert(ServiceClaim), inserts)
        s.execute(delete(ServiceRecord))
        records = [{"service_id": m.service_id, "client_id": m.client_id, "source": m.source, "status": m.status,
                    "problem": m.problem, "data": json.dumps({**m.to_json(), "raw": m.raw}), "sync_id": sync.id}
                   for m in mapping.services]
        if records:
            s.execute(insert(ServiceRecord), records)
        sync.changes = len(changes)
        return sync.id, len(changes)


def record_failed_sync(url: str, now: datetime, origin: str, error: str) -> None:
    with session_scope(url) as s:
        s.add(ServiceSync(at=now, origin=origin, ok=False, services=0, claims=0, changes=0, error=error[:2000]))


def last_sync(url: str, ok_only: bool = True) -> ServiceSync | None:
    with session_scope(url) as s:
        q = select(ServiceSync).order_by(ServiceSync.id.desc()).limit(1)
        row = s.scalar(q.where(ServiceSync.ok.is_(True)) if ok_only else q)
        if row is not None:
            s.expunge(row)
        return row


HISTORY_SCHEMA = {
    "server": pl.String(), "tenant": pl.String(), "kind": pl.String(), "value": pl.String(),
    "client_id": pl.Int64(), "service_id": pl.Int64(), "plan": pl.String(), "conflict": pl.Boolean(),
    "valid_from": pl.Datetime("us", "UTC"), "valid_to": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True)
class History:
    claims: pl.DataFrame  # HISTORY_SCHEMA
    confirmed_until: datetime  # the last successful sync


def load_history(url: str) -> History | None:
    """Every claim row (open rows end at the last successful sync); None before the first sync."""
    last = last_sync(url)
    if last is None:
        return None
    with session_scope(url) as s:
        rows = s.execute(select(ServiceClaim.server, ServiceClaim.tenant, ServiceClaim.kind, ServiceClaim.value,
                                ServiceClaim.client_id, ServiceClaim.service_id, ServiceClaim.plan,
                                ServiceClaim.conflict.is_not(None), ServiceClaim.valid_from,
                                ServiceClaim.valid_to)).all()
    frame = pl.DataFrame([tuple(r) for r in rows], schema=HISTORY_SCHEMA, orient="row")
    return History(frame, last.at)


def open_claim_count(url: str) -> int:
    with session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(ServiceClaim).where(ServiceClaim.valid_to.is_(None))))


def current_services(url: str) -> list:
    """The services of the last successful sync that own numbers, as `autobill.config.Service`
    (problem-free and in an owning status): what autosuspend manages instead of config `services`."""
    from autobill.services.build import MappedService, as_config_services

    with session_scope(url) as s:
        rows = s.scalars(select(ServiceRecord.data).order_by(ServiceRecord.service_id)).all()
    mapped = []
    for text in rows:
        d = json.loads(text)
        mapped.append(MappedService(
            service_id=d["service_id"], client_id=d["client_id"], source=d["source"], status=d["status"],
            product=d["product"], pid=d["pid"], whmcs_server=d["whmcs_server"], server=d["server"], tenant=d["tenant"],
            extensions=tuple(d["extensions"]), dids=tuple(d["dids"]), plan=d["plan"],
            included_minutes=d["included_minutes"], suspend_mode=d["suspend_mode"],
            low_balance_threshold=None if d["low_balance_threshold"] is None else Decimal(d["low_balance_threshold"]),
            owning=d["owning"], problem=d["problem"]))
    return as_config_services(mapped)


def service_rows(url: str) -> list[dict]:
    """Every service of the last sync, as stored (JSON dicts, with `raw`: what WHMCS sent)."""
    with session_scope(url) as s:
        return [json.loads(t) for t in s.scalars(select(ServiceRecord.data).order_by(ServiceRecord.service_id))]
