"""The mapping of one sync: every VoIP service as read, what it claims, and the conflicts (pure).

A claim is a key `(server, tenant, kind, value)`: `kind` is `extension`, `did` (value: the E.164
digits, normalised with the server's numbering, as CDRs' `rate_number`) or `tenant` (value '':
the catch-all of a service that lists no extensions). Only services in an owning status
(`service_sync.owning_statuses`, default Active and Suspended) claim anything.

Conflicts, reported and never guessed:
- `duplicate_claim`: two services claim one key; the key goes to nobody (a conflict claim), so
  its calls stay unrated until one of them lets go;
- `unparseable`: a field does not follow its format (parsers.py);
- `unknown_server`: the service's WHMCS server matches no configured server;
- `unknown_plan` / `no_plan`: the plan override names no plan, or the product maps to none;
- `bad_override`: included minutes / suspend mode / low-balance threshold that does not read.
A service with a problem claims nothing.

`services:` in YAML overrides: an entry with the same service id replaces what WHMCS says,
other entries are added (installations whose WHMCS lacks the fields).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from autobill.config import Service, Settings
from autobill.numbering import normalise
from autobill.services.parsers import FieldError, parse_service
from autobill.services.records import WhmcsService

SUSPEND_MODES = ("gateway", "extension", "module", "none")
PLAN_MINUTES_SEP = "+"


@dataclass(frozen=True)
class Claim:
    server: str
    tenant: str
    kind: str  # extension | did | tenant
    value: str
    service_id: int | None  # None: a conflict
    client_id: int | None
    plan: str | None
    conflict: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.server, self.tenant, self.kind, self.value)

    @property
    def owner(self) -> tuple:
        return (self.service_id, self.client_id, self.plan, self.conflict)


@dataclass(frozen=True)
class Conflict:
    kind: str
    service_ids: tuple[int, ...]
    detail: str

    def to_json(self) -> dict:
        return {"kind": self.kind, "service_ids": list(self.service_ids), "detail": self.detail}


@dataclass
class MappedService:
    service_id: int
    client_id: int
    source: str  # whmcs | yaml
    status: str = "Active"
    product: str = ""
    pid: int = 0
    whmcs_server: str = ""
    server: str | None = None
    tenant: str | None = None
    extensions: tuple[str, ...] = ()
    dids: tuple[str, ...] = ()
    plan: str | None = None
    included_minutes: int | None = None
    suspend_mode: str = "module"
    low_balance_threshold: Decimal | None = None
    owning: bool = True
    problem: str | None = None
    raw: dict = field(default_factory=dict)

    @property
    def billing_plan(self) -> str | None:
        """The plan calls are rated with: `plan+<N>min` when included minutes are overridden."""
        if self.plan is None or self.included_minutes is None:
            return self.plan
        return f"{self.plan}{PLAN_MINUTES_SEP}{self.included_minutes}min"

    def to_json(self) -> dict:
        return {
            "service_id": self.service_id, "client_id": self.client_id, "source": self.source, "status": self.status,
            "product": self.product, "pid": self.pid, "whmcs_server": self.whmcs_server, "server": self.server,
            "tenant": self.tenant, "extensions": list(self.extensions), "dids": list(self.dids), "plan": self.plan,
            "included_minutes": self.included_minutes, "suspend_mode": self.suspend_mode,
            "low_balance_threshold": None if self.low_balance_threshold is None else str(self.low_balance_threshold),
            "owning": self.owning, "problem": self.problem,
        }


@dataclass
class Mapping:
    services: list[MappedService]
    claims: list[Claim]
    conflicts: list[Conflict]
    not_voip: int = 0


def is_voip(svc: WhmcsService, settings: Settings) -> bool:
    sync = settings.service_sync
    if not sync.product_ids and not sync.product_groups:
        return True
    groups = {g.strip().lower() for g in sync.product_groups}
    return svc.pid in sync.product_ids or svc.group.strip().lower() in groups


def match_server(svc: WhmcsService, settings: Settings) -> str | None:
    ids = {s.id for s in settings.servers}
    names = [x for x in (svc.server_id, svc.server_name, svc.server_hostname) if x and x != "0"]
    for m in settings.service_sync.servers:
        if m.whmcs in names:
            return m.server
    for name in (svc.server_name, svc.server_hostname):  # by name or hostname; the id only through `servers`
        if name and name in ids:
            return name
    return None


def _product_plan(svc: WhmcsService, settings: Settings):
    for pp in settings.service_sync.products:
        if isinstance(pp.product, int) and pp.product == svc.pid:
            return pp
    for pp in settings.service_sync.products:
        if isinstance(pp.product, str) and pp.product.strip().lower() == svc.product.strip().lower():
            return pp
    return None


def read_service(svc: WhmcsService, settings: Settings) -> MappedService:
    """One WHMCS service as the mapping sees it; `problem` says why it claims nothing."""
    sync, fields = settings.service_sync, settings.service_sync.fields
    out = MappedService(service_id=svc.service_id, client_id=svc.client_id, source="whmcs", status=svc.status,
                        product=svc.product, pid=svc.pid,
                        whmcs_server=svc.server_name or svc.server_hostname or svc.server_id,
                        owning=svc.status.strip().lower() in {s.lower() for s in sync.owning_statuses},
                        raw={"domain": svc.domain, "dedicatedip": svc.dedicated_ip,
                             "customfields": dict(svc.custom_fields)})
    problems: list[str] = []
    out.server = match_server(svc, settings)
    if out.server is None:
        problems.append(f"unknown_server: WHMCS server {out.whmcs_server or '(none assigned)'!r} matches no "
                        "configured server (service_sync.servers)")
    product = _product_plan(svc, settings)
    plan_names = {p.name for p in settings.plans}
    override = svc.field(fields.plan).strip()
    if override:
        if override in plan_names:
            out.plan = override
        else:
            problems.append(f"unknown_plan: custom field {fields.plan!r} = {override!r} names no plan")
    elif product is not None:
        out.plan = product.plan
    else:
        problems.append(f"no_plan: product {svc.pid} {svc.product!r} has no plan (service_sync.products)")
    minutes = svc.field(fields.included_minutes).strip()
    if minutes:
        if minutes.isdigit():
            out.included_minutes = int(minutes)
        else:
            problems.append(f"bad_override: {fields.included_minutes!r} = {minutes!r} is not a whole number")
    mode = svc.field(fields.suspend_mode).strip().lower()
    if mode:
        if mode in SUSPEND_MODES:
            out.suspend_mode = mode
        else:
            problems.append(f"bad_override: {fields.suspend_mode!r} = {mode!r} is not one of {'/'.join(SUSPEND_MODES)}")
    elif product is not None and product.suspend_mode:
        out.suspend_mode = product.suspend_mode
    threshold = svc.field(fields.low_balance_threshold).strip()
    if threshold:
        try:
            out.low_balance_threshold = Decimal(threshold)
            if not out.low_balance_threshold.is_finite():
                raise InvalidOperation
        except InvalidOperation:
            out.low_balance_threshold = None
            problems.append(f"bad_override: {fields.low_balance_threshold!r} = {threshold!r} is not an amount")
    if out.server is not None:
        try:
            parsed = parse_service(settings.server(out.server).kind, svc, fields)
            out.tenant, out.extensions, out.dids = parsed.tenant, parsed.extensions, parsed.dids
        except FieldError as exc:
            problems.append(f"unparseable: {exc}")
    out.problem = "; ".join(problems) or None
    return out


def from_yaml(svc: Service) -> MappedService:
    return MappedService(service_id=svc.service_id, client_id=svc.client_id, source="yaml", server=svc.server,
                         tenant=svc.tenant, extensions=tuple(svc.extensions),
                         dids=tuple("".join(c for c in d if c.isdigit()) for d in svc.dids), plan=svc.plan,
                         suspend_mode=svc.suspend_mode, low_balance_threshold=svc.low_balance_threshold)


def did_key(did: str, settings: Settings, server: str) -> str | None:
    num = settings.server(server).numbering
    return normalise(did, num.country_code, num.effective_intl_prefix, num.effective_trunk_prefix)


def claims_of(services: Iterable[MappedService], settings: Settings) -> tuple[list[Claim], list[Conflict]]:
    """Every key claimed by an owning service without a problem; a key with two owners is a conflict."""
    by_key: dict[tuple, dict[int, MappedService]] = defaultdict(dict)
    for m in services:
        if not m.owning or m.problem or m.server is None or m.tenant is None:
            continue
        keys = [(m.server, m.tenant, "extension", e) for e in m.extensions]
        keys += [(m.server, m.tenant, "did", d) for d in (did_key(x, settings, m.server) for x in m.dids) if d]
        if not m.extensions:
            keys.append((m.server, m.tenant, "tenant", ""))
        for key in keys:
            by_key[key][m.service_id] = m
    # A DID rings in one place: the same DID claimed in two tenants of one server is a conflict too.
    did_owners: dict[tuple[str, str], set[int]] = defaultdict(set)
    for (server, _, kind, value), owners in by_key.items():
        if kind == "did":
            did_owners[(server, value)].update(owners)
    claims, conflicts = [], []
    for key, owners in sorted(by_key.items()):
        if key[2] == "did" and len(did_owners[(key[0], key[3])]) > len(owners):
            ids = tuple(sorted(did_owners[(key[0], key[3])]))
            claims.append(Claim(*key, None, None, None, ids))
            conflicts.append(Conflict("duplicate_claim", ids, f"services {list(ids)} all claim DID {key[3]} on "
                                      f"server {key[0]} (tenant {key[1]} here)"))
            continue
        if len(owners) == 1:
            (m,) = owners.values()
            claims.append(Claim(*key, m.service_id, m.client_id, m.billing_plan))
        else:
            ids = tuple(sorted(owners))
            claims.append(Claim(*key, None, None, None, ids))
            conflicts.append(Conflict("duplicate_claim", ids, f"services {list(ids)} all claim {key[2]} "
                                      f"{key[3] or '(whole tenant)'} of tenant {key[1]} on server {key[0]}"))
    return claims, conflicts


def build_mapping(records: Iterable[WhmcsService], settings: Settings) -> Mapping:
    services: dict[int, MappedService] = {}
    not_voip = 0
    for svc in records:
        if not is_voip(svc, settings):
            not_voip += 1
            continue
        services[svc.service_id] = read_service(svc, settings)
    for svc in settings.services:  # YAML overrides WHMCS, service by service
        services[svc.service_id] = from_yaml(svc)
    ordered = [services[k] for k in sorted(services)]
    claims, conflicts = claims_of(ordered, settings)
    problems = [Conflict(m.problem.split(":", 1)[0], (m.service_id,), m.problem)
                for m in ordered if m.owning and m.problem]
    return Mapping(ordered, claims, problems + conflicts, not_voip)


def as_config_services(services: Iterable[MappedService]) -> list[Service]:
    """The owning, problem-free services as `autobill.config.Service` (what autosuspend reads)."""
    out = []
    for m in services:
        if not m.owning or m.problem or m.server is None or m.tenant is None or m.plan is None:
            continue
        out.append(Service.model_construct(
            client_id=m.client_id, service_id=m.service_id, server=m.server, tenant=m.tenant,
            extensions=list(m.extensions), dids=list(m.dids), plan=m.billing_plan, suspend_mode=m.suspend_mode,
            gateway_uuids=[], low_balance_threshold=m.low_balance_threshold, postpaid=False,
            credit_limit=Decimal("0")))
    return out


def derived_plans(settings: Settings, names: Iterable[str | None]) -> Settings:
    """`settings` plus a plan for each `plan+<N>min` name (the base plan with N included minutes)."""
    known = {p.name for p in settings.plans}
    extra = []
    for name in sorted({n for n in names if n and n not in known and PLAN_MINUTES_SEP in n}):
        base, _, minutes = name.rpartition(PLAN_MINUTES_SEP)
        if base in known and minutes.endswith("min") and minutes[:-3].isdigit():
            extra.append(settings.plan(base).model_copy(update={"name": name, "included_minutes": int(minutes[:-3])}))
    return settings.model_copy(update={"plans": [*settings.plans, *extra]}) if extra else settings
