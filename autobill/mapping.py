"""Which WHMCS service a CDR belongs to, as one vectorised join.

Where the services come from: with `service_sync.enabled` and at least one successful services
sync in the ledger, the claim history (autobill/services/history.py): a call belongs to the
service that owned its extension / DID / tenant at the call's START. Otherwise config `services`.

A service owns the calls of (server, tenant) that match one of its extensions, or, for inbound
calls, one of its DIDs; a service with no extensions owns the rest of the tenant. The most
specific match wins: extension, then DID, then the tenant catch-all. Two services claiming the
same extension or DID of one tenant is a config error, reported here, not billed twice.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from autobill.config import Settings
from autobill.services.history import History, load_history

SERVICE_COLUMNS = {
    "client_id": pl.Int64(),
    "service_id": pl.Int64(),
    "plan": pl.String(),
}


# Why a call has no service although one may own it: `conflict` (several services claim its
# number), `unconfirmed` (it started after the last successful services sync). Null otherwise.
ISSUE_COLUMN = "service_issue"
_AUTO = object()


class MappingError(ValueError):
    pass


def _digits(value: str) -> str:
    plain = value[1:] if value.startswith("+") else value
    if plain.isdigit():  # the usual DID (`+15551234567`, `5551234567`): nothing to drop
        return plain
    return "".join(ch for ch in value if ch.isdigit())


Keys = tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]
# The tables of the last services list asked for, with that list: every validation batch and
# rating chunk of a night asks (ten thousand services: 0.06 s each time). Settings are frozen
# models and a copy (`model_copy`, e.g. derived_plans) shares the list, so identity is the key.
_last_keys: tuple[list, Keys] | None = None


def service_keys(settings: Settings) -> Keys:
    """(by extension, by DID, by tenant catch-all) lookup tables."""
    global _last_keys
    last = _last_keys
    if last is not None and last[0] is settings.services:
        return last[1]
    keys = _service_keys(settings)
    _last_keys = (settings.services, keys)
    return keys


def _service_keys(settings: Settings) -> Keys:
    ext_rows, did_rows, tenant_rows = [], [], []
    for svc in settings.services:
        base = (svc.server, svc.tenant, svc.client_id, svc.service_id, svc.plan)
        ext_rows.extend((*base, ext) for ext in svc.extensions)
        did_rows.extend((*base, _digits(did)) for did in svc.dids)
        if not svc.extensions:
            tenant_rows.append(base)
    schema = {"server": pl.String(), "tenant": pl.String(), **SERVICE_COLUMNS}
    by_ext = pl.DataFrame(ext_rows, schema={**schema, "extension": pl.String()}, orient="row")
    by_did = pl.DataFrame(did_rows, schema={**schema, "rate_number": pl.String()}, orient="row")
    by_tenant = pl.DataFrame(tenant_rows, schema=schema, orient="row")
    for name, frame, keys in (
        ("extension", by_ext, ["server", "tenant", "extension"]),
        ("DID", by_did, ["server", "tenant", "rate_number"]),
        ("tenant catch-all", by_tenant, ["server", "tenant"]),
    ):
        dup = frame.group_by(keys).agg(pl.col("service_id").unique().alias("ids")).filter(pl.col("ids").list.len() > 1)
        if dup.height:
            first = dup.row(0, named=True)
            raise MappingError(
                f"services {sorted(first['ids'])} both claim {name} {[first[k] for k in keys]}: one owner each"
            )
    return by_ext, by_did, by_tenant


def assign_services(cdrs: pl.DataFrame, settings: Settings, history: History | None | object = _AUTO) -> pl.DataFrame:
    """`cdrs` plus client_id, service_id, plan (null when no service owns the call) and
    `service_issue`. `history`: the claim history to use (default: the ledger's, when
    `service_sync.enabled` and a sync has happened; None forces config `services`)."""
    if history is _AUTO:
        history = load_history(settings.ledger) if settings.service_sync.enabled else None
    if history is not None:
        return assign_from_history(cdrs, history)  # type: ignore[arg-type]
    by_ext, by_did, by_tenant = service_keys(settings)
    idx = cdrs.with_row_index("_row")
    ext = idx.join(by_ext, on=["server", "tenant", "extension"], how="inner").select("_row", *SERVICE_COLUMNS)
    did = (
        idx.filter(pl.col("direction") == "inbound")
        .join(by_did, on=["server", "tenant", "rate_number"], how="inner")
        .select("_row", *SERVICE_COLUMNS)
    )
    ten = idx.join(by_tenant, on=["server", "tenant"], how="inner").select("_row", *SERVICE_COLUMNS)
    matches = (
        pl.concat([ext.with_columns(pl.lit(0).alias("_rank")), did.with_columns(pl.lit(1).alias("_rank")),
                   ten.with_columns(pl.lit(2).alias("_rank"))])
        .sort("_row", "_rank")
        .unique("_row", keep="first")
        .drop("_rank")
    )
    out = idx.drop([c for c in (*SERVICE_COLUMNS, ISSUE_COLUMN) if c in idx.columns]).join(matches, on="_row",
                                                                                          how="left")
    return out.sort("_row").drop("_row").with_columns(
        [pl.col(c).cast(t) for c, t in SERVICE_COLUMNS.items()] + [pl.lit(None, pl.String).alias(ISSUE_COLUMN)])


def assign_from_history(cdrs: pl.DataFrame, history: History) -> pl.DataFrame:
    """As `assign_services`, from the claim history: the claim valid at each call's start
    (`valid_from <= start < valid_to`, open claims up to `confirmed_until`); most specific first
    (extension, DID for inbound calls, tenant). A conflict claim owns the call for nobody."""
    idx = cdrs.with_row_index("_row")
    confirmed = pl.lit(_utc(history.confirmed_until), dtype=pl.Datetime("us", "UTC"))
    start = pl.col("start_utc")
    in_force = ((pl.col("valid_from").is_null() | (start >= pl.col("valid_from")))
                & (pl.col("valid_to").is_null() | (start < pl.col("valid_to"))))
    claims = history.claims
    wanted = ["_row", *SERVICE_COLUMNS, "conflict"]
    calls = idx.filter(start.is_not_null() & (start <= confirmed)).select(
        "_row", *[pl.col(c).cast(pl.String) for c in ("server", "tenant", "extension", "direction", "rate_number")],
        "start_utc")

    def hits(kind: str, on: list[str], frame: pl.DataFrame, rank: int) -> pl.DataFrame:
        table = claims.filter(pl.col("kind") == kind).drop("kind")
        table = table.rename({"value": on[-1]}) if kind != "tenant" else table.drop("value")
        return frame.join(table, on=on, how="inner").filter(in_force).select(wanted).with_columns(
            pl.lit(rank).alias("_rank"))

    matches = (
        pl.concat([
            hits("extension", ["server", "tenant", "extension"], calls, 0),
            hits("did", ["server", "tenant", "rate_number"], calls.filter(pl.col("direction") == "inbound"), 1),
            hits("tenant", ["server", "tenant"], calls, 2),
        ])
        .sort("_row", "_rank")
        .unique("_row", keep="first")
        .drop("_rank")
    )
    late = idx.filter(start.is_not_null() & (start > confirmed)).select("_row")
    out = idx.drop([c for c in (*SERVICE_COLUMNS, ISSUE_COLUMN) if c in idx.columns]).join(matches, on="_row",
                                                                                          how="left")
    issue = (pl.when(pl.col("conflict").fill_null(False)).then(pl.lit("conflict"))
             .when(pl.col("_row").is_in(late["_row"].implode())).then(pl.lit("unconfirmed"))
             .otherwise(pl.lit(None, pl.String)))
    return (
        out.sort("_row")
        .with_columns(issue.alias(ISSUE_COLUMN))
        .with_columns([pl.when(pl.col("conflict").fill_null(False)).then(None).otherwise(pl.col(c)).cast(t).alias(c)
                       for c, t in SERVICE_COLUMNS.items()])
        .drop("_row", "conflict")
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
