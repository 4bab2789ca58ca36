"""The canonical CDR: what every connector produces, whatever the source (DESIGN.md "Data").

`rate_number` is the E.164 number the call is rated on (the destination for outbound calls,
the dialled DID / caller destination for inbound ones), normalised once at extraction with
the server's numbering settings; null when it does not normalise.
"""

from __future__ import annotations

import polars as pl

DIRECTIONS = ("inbound", "outbound", "local")

CDR_SCHEMA: dict[str, pl.DataType] = {
    "cdr_key": pl.String(),  # stable: "<server id>:<source call id>"
    "server": pl.String(),
    "tenant": pl.String(),  # FusionPBX domain_name, Vodia domain, LesNet account, file tenant
    "account": pl.String(),  # accountcode, when the source has one
    "extension": pl.String(),  # extension number, when known
    "direction": pl.String(),  # inbound | outbound | local
    "src": pl.String(),
    "dst": pl.String(),
    "rate_number": pl.String(),
    "start_utc": pl.Datetime("us", "UTC"),
    "answer_utc": pl.Datetime("us", "UTC"),
    "end_utc": pl.Datetime("us", "UTC"),
    "billsec": pl.Int64(),
    "hangup_cause": pl.String(),
    "source_row": pl.String(),  # the source row as JSON, for audit and quarantine
}


def cdr_key(server: str, call_id: str) -> str:
    return f"{server}:{call_id}"


def empty_cdrs() -> pl.DataFrame:
    return pl.DataFrame(schema=CDR_SCHEMA)


def conform(df: pl.DataFrame) -> pl.DataFrame:
    """Columns in canonical order and types; a missing column is an error, extras are dropped."""
    missing = [c for c in CDR_SCHEMA if c not in df.columns]
    if missing:
        raise ValueError(f"canonical CDR frame lacks columns {missing}")
    return df.select([pl.col(c).cast(t) for c, t in CDR_SCHEMA.items()])
