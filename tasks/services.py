"""The services step: read every VoIP service from WHMCS and record the mapping's history.

Runs first in every nightly run (flows/autobill.py) and is meant to run first in every
autosuspend cycle: `sync_services(settings, origin="autosuspend")` (or the task), then
`services_settings(settings)` gives the settings whose `services` are what WHMCS says.

A WHMCS that cannot be read changes nothing: the failed sync is recorded, the history stays as
it was, and calls after the last successful sync wait unrated (autobill/services/history.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from autobill.config import Settings
from autobill.services.build import Conflict, build_mapping
from autobill.services.history import current_services, record_failed_sync, record_sync
from autobill.services.records import WhmcsService, from_whmcs
from autobill.timeutil import utc_now
from connectors.whmcs import WhmcsClient, WhmcsError

CONFLICTS_ARTIFACT = "autobill-service-conflicts"


@dataclass
class SyncResult:
    enabled: bool
    ok: bool = True
    error: str | None = None
    read: int = 0  # products WHMCS returned
    services: int = 0  # VoIP services (plus YAML ones)
    claims: int = 0
    changes: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    sync_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"enabled": self.enabled, "ok": self.ok, "error": self.error, "read": self.read,
                "services": self.services, "claims": self.claims, "changes": self.changes,
                "conflicts": list(self.conflicts), "sync_id": self.sync_id}


def read_whmcs(settings: Settings, client: WhmcsClient) -> tuple[list[WhmcsService], list[Conflict]]:
    """Every service of the VoIP products (one paginated sweep per product id when only ids are
    configured, else one sweep of every product, filtered by group in build.py)."""
    sync = settings.service_sync
    pages: Iterator[dict]
    if sync.product_ids and not sync.product_groups:
        pages = (p for pid in sync.product_ids for p in client.iter_clients_products(pid=pid))
    else:
        pages = client.iter_clients_products()
    records, bad = [], []
    for product in pages:
        try:
            records.append(from_whmcs(product))
        except ValueError as exc:
            bad.append(Conflict("unparseable", (), f"{exc} (service {product.get('id')!r})"))
    return records, bad


def sync_services(settings: Settings, origin: str = "cli", client_factory: Callable[[], Any] | None = None,
                  now: datetime | None = None) -> SyncResult:
    """One sync; never raises for WHMCS trouble (the result says what failed)."""
    if not settings.service_sync.enabled:
        return SyncResult(enabled=False)
    now = now or utc_now()
    if settings.whmcs is None and client_factory is None:
        error = "service_sync.enabled needs the whmcs section"
        record_failed_sync(settings.ledger, now, origin, error)
        return SyncResult(enabled=True, ok=False, error=error)
    factory = client_factory or (lambda: WhmcsClient.from_settings(settings.whmcs))
    try:
        client = factory()
        try:
            records, bad = read_whmcs(settings, client)
        finally:
            close = getattr(client, "close", None)
            if close:
                close()
    except WhmcsError as exc:
        record_failed_sync(settings.ledger, now, origin, str(exc))
        return SyncResult(enabled=True, ok=False, error=str(exc))
    mapping = build_mapping(records, settings)
    mapping.conflicts = bad + mapping.conflicts
    sync_id, changes = record_sync(settings.ledger, mapping, now, origin)
    return SyncResult(enabled=True, read=len(records) + len(bad), services=len(mapping.services),
                      claims=len(mapping.claims), changes=changes, sync_id=sync_id,
                      conflicts=[c.to_json() for c in mapping.conflicts])


def services_settings(settings: Settings) -> Settings:
    """`settings` whose `services` are the last successful sync's (unchanged when sync is off or
    has never succeeded). YAML services are already part of a sync (build.py)."""
    if not settings.service_sync.enabled:
        return settings
    synced = current_services(settings.ledger)
    return settings.model_copy(update={"services": synced}) if synced else settings


def refresh_services(settings: Settings, origin: str = "autosuspend") -> Settings:
    """Sync the services from WHMCS (when enabled) and return the settings whose `services` are the
    last successful sync's: what an autosuspend cycle manages (a failed sync keeps the last mapping)."""
    sync_services(settings, origin)
    return services_settings(settings)


def conflict_rows(result: SyncResult) -> list[dict[str, Any]]:
    return [{"kind": c["kind"], "services": ", ".join(str(s) for s in c["service_ids"]) or "-",
             "detail": c["detail"]} for c in result.conflicts]


@task(name="services-sync", cache_policy=NO_CACHE)
def sync_services_task(settings: Settings, origin: str = "nightly") -> SyncResult:
    """The step: sync, log, and publish the conflicts as a table artifact."""
    from prefect.artifacts import create_table_artifact

    result = sync_services(settings, origin)
    if not result.enabled:
        return result
    logger = get_run_logger()
    if result.ok:
        logger.info("services: %s read, %s VoIP, %s claims, %s changes, %s conflicts", result.read,
                    result.services, result.claims, result.changes, len(result.conflicts))
    else:
        logger.warning("services sync failed (the last successful sync's mapping is used): %s", result.error)
    create_table_artifact(conflict_rows(result) or [{"kind": "-", "services": "-", "detail": "no conflicts"}],
                          key=CONFLICTS_ARTIFACT, description="Service mapping conflicts: their calls stay unrated")
    return result


refresh_services_task = task(name="services-refresh", cache_policy=NO_CACHE)(refresh_services)
