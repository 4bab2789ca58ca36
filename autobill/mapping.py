"""Which WHMCS service a CDR belongs to (config `services`), as one vectorised join.

A service owns the calls of (server, tenant) that match one of its extensions, or, for inbound
calls, one of its DIDs; a service with no extensions owns the rest of the tenant. The most
specific match wins: extension, then DID, then the tenant catch-all. Two services claiming the
same extension or DID of one tenant is a config error, reported here, not billed twice.
"""

from __future__ import annotations

import polars as pl

from autobill.config import Settings

SERVICE_COLUMNS = {
    "client_id": pl.Int64(),
    "service_id": pl.Int64(),
    "plan": pl.String(),
}


class MappingError(ValueError):
    pass


def _digits(value: str) -> str:
    return "".join(ch for ch in value if ch.isdigit())


def service_keys(settings: Settings) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(by extension, by DID, by tenant catch-all) lookup tables."""
    ext_rows, did_rows, tenant_rows = [], [], []
    for svc in settings.services:
        base = {"server": svc.server, "tenant": svc.tenant, "client_id": svc.client_id,
                "service_id": svc.service_id, "plan": svc.plan}
        for ext in svc.extensions:
            ext_rows.append({**base, "extension": ext})
        for did in svc.dids:
            did_rows.append({**base, "rate_number": _digits(did)})
        if not svc.extensions:
            tenant_rows.append(base)
    schema = {"server": pl.String(), "tenant": pl.String(), **SERVICE_COLUMNS}
    by_ext = pl.DataFrame(ext_rows, schema={**schema, "extension": pl.String()})
    by_did = pl.DataFrame(did_rows, schema={**schema, "rate_number": pl.String()})
    by_tenant = pl.DataFrame(tenant_rows, schema=schema)
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


def assign_services(cdrs: pl.DataFrame, settings: Settings) -> pl.DataFrame:
    """`cdrs` plus client_id, service_id and plan (null when no service owns the call)."""
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
    out = idx.drop([c for c in SERVICE_COLUMNS if c in idx.columns]).join(matches, on="_row", how="left")
    return out.sort("_row").drop("_row").with_columns([pl.col(c).cast(t) for c, t in SERVICE_COLUMNS.items()])
