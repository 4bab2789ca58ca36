"""DDL for FusionPBX tables as a real install has them (reference/domain.md §1.2, §1.8, §1.9).

Two `v_xml_cdr` variants: the current 5.x schema (`xml_cdr_uuid`, timestamptz stamps, `status`,
`originating_leg_uuid`, ...) and the 4.4-era one (`uuid` primary key, `timestamp` without time
zone, none of the columns added later). Tests create them in their per-test schema and insert
rows with `insert_cdr`, so the connector is tested against the column names and types it will
meet, not against a schema written to suit it. Kept independent of `sandboxes.generate` on purpose.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg2
from psycopg2 import sql

V_XML_CDR_5X = """
CREATE TABLE {table} (
    xml_cdr_uuid uuid PRIMARY KEY,
    domain_uuid uuid,
    provider_uuid uuid,
    extension_uuid uuid,
    v_id text,
    sip_call_id text,
    domain_name text,
    accountcode text,
    direction text,
    default_language text,
    context text,
    caller_id_name text,
    caller_id_number text,
    caller_destination text,
    source_number text,
    destination_number text,
    start_epoch numeric,
    start_stamp timestamptz,
    answer_stamp timestamptz,
    answer_epoch numeric,
    end_epoch numeric,
    end_stamp timestamptz,
    duration numeric,
    mduration numeric,
    billsec numeric,
    billmsec numeric,
    hold_accum_seconds numeric,
    bridge_uuid text,
    read_codec text,
    read_rate text,
    write_codec text,
    write_rate text,
    remote_media_ip text,
    network_addr text,
    record_path text,
    record_name text,
    record_length numeric,
    record_transcription text,
    leg char(1),
    originating_leg_uuid uuid,
    pdd_ms numeric,
    rtp_audio_in_mos numeric,
    last_app text,
    last_arg text,
    voicemail_message boolean,
    missed_call boolean,
    call_center_queue_uuid uuid,
    cc_side text,
    cc_member_uuid uuid,
    cc_queue_joined_epoch numeric,
    cc_queue text,
    cc_member_session_uuid uuid,
    cc_agent_uuid uuid,
    cc_agent text,
    cc_agent_type text,
    cc_agent_bridged text,
    cc_queue_answered_epoch numeric,
    cc_queue_terminated_epoch numeric,
    cc_queue_canceled_epoch numeric,
    cc_cancel_reason text,
    cc_cause text,
    waitsec numeric,
    conference_name text,
    conference_uuid uuid,
    conference_member_id text,
    digits_dialed text,
    pin_number text,
    status text,
    hangup_cause text,
    hangup_cause_q850 numeric,
    sip_hangup_disposition text,
    ring_group_uuid uuid,
    ivr_menu_uuid uuid,
    call_flow jsonb,
    xml text,
    json jsonb,
    insert_date timestamptz,
    insert_user uuid,
    update_date timestamptz,
    update_user uuid
)
"""

V_XML_CDR_44 = """
CREATE TABLE {table} (
    uuid uuid PRIMARY KEY,
    domain_uuid uuid,
    extension_uuid uuid,
    domain_name text,
    accountcode text,
    direction text,
    default_language text,
    context text,
    xml_cdr text,
    json jsonb,
    caller_id_name text,
    caller_id_number text,
    caller_destination text,
    source_number text,
    destination_number text,
    start_epoch numeric,
    start_stamp timestamp,
    answer_stamp timestamp,
    answer_epoch numeric,
    end_epoch numeric,
    end_stamp timestamp,
    duration numeric,
    mduration numeric,
    billsec numeric,
    billmsec numeric,
    bridge_uuid text,
    read_codec text,
    read_rate text,
    write_codec text,
    write_rate text,
    remote_media_ip text,
    network_addr text,
    recording_file text,
    recording_name text,
    leg char(1),
    pdd_ms numeric,
    rtp_audio_in_mos numeric,
    last_app text,
    last_arg text,
    cc_side text,
    cc_member_uuid uuid,
    cc_queue_joined_epoch numeric,
    cc_queue text,
    cc_member_session_uuid uuid,
    cc_agent text,
    cc_agent_type text,
    waitsec numeric,
    conference_name text,
    conference_uuid uuid,
    conference_member_id text,
    digits_dialed text,
    pin_number text,
    hangup_cause text,
    hangup_cause_q850 numeric,
    sip_hangup_disposition text
)
"""

# The switch tables (autosuspend and the extension lookup). `enabled` is text ('true'/'false',
# FusionPBX <= 5.4) or boolean (5.5+): format with enabled_type="text" or "boolean".
V_DOMAINS = """
CREATE TABLE {table} (
    domain_uuid uuid PRIMARY KEY,
    domain_parent_uuid uuid,
    domain_name text,
    domain_enabled {enabled_type},
    domain_description text
)
"""

V_GATEWAYS = """
CREATE TABLE {table} (
    gateway_uuid uuid PRIMARY KEY,
    domain_uuid uuid,
    gateway text,
    username text,
    password text,
    proxy text,
    register text,
    profile text,
    hostname text,
    enabled {enabled_type},
    description text,
    update_date timestamptz
)
"""

V_EXTENSIONS = """
CREATE TABLE {table} (
    extension_uuid uuid PRIMARY KEY,
    domain_uuid uuid,
    extension text,
    number_alias text,
    password text,
    accountcode text,
    effective_caller_id_name text,
    effective_caller_id_number text,
    user_context text,
    enabled {enabled_type},
    description text
)
"""

VARIANTS = {"5x": V_XML_CDR_5X, "44": V_XML_CDR_44}


@contextmanager
def connect(schema: str) -> Iterator[Any]:
    """An autocommit connection with `search_path` set to `schema`, closed on exit."""
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        yield conn
    finally:
        conn.close()


def _qualified(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def create_cdr_table(schema: str, variant: str = "5x", name: str = "v_xml_cdr") -> str:
    """Create `schema.name` with the variant's DDL; returns the schema-qualified name."""
    with connect(schema) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL(VARIANTS[variant]).format(table=_qualified(schema, name)))
    return f"{schema}.{name}"


def create_extensions_table(schema: str, extensions: dict[str, str] | None = None) -> dict[str, str]:
    """v_extensions with rows {extension number: extension_uuid}; returns that mapping."""
    extensions = dict(extensions or {})
    with connect(schema) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL(V_EXTENSIONS).format(table=_qualified(schema, "v_extensions"), enabled_type=sql.SQL("text")))
        for number, ext_uuid in extensions.items():
            cur.execute(
                sql.SQL("INSERT INTO {} (extension_uuid, extension, enabled) VALUES (%s, %s, 'true')").format(
                    _qualified(schema, "v_extensions")
                ),
                (ext_uuid, number),
            )
    return extensions


def create_switch_tables(schema: str, enabled_type: str = "text") -> None:
    """v_domains, v_gateways and v_extensions in `schema` (autosuspend's FusionPBX side)."""
    with connect(schema) as conn, conn.cursor() as cur:
        for name, ddl in (("v_domains", V_DOMAINS), ("v_gateways", V_GATEWAYS), ("v_extensions", V_EXTENSIONS)):
            cur.execute(sql.SQL(ddl).format(table=_qualified(schema, name), enabled_type=sql.SQL(enabled_type)))


def epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def cdr_row(
    *,
    start: datetime,
    billsec: int,
    direction: str = "outbound",
    destination: str = "6135550123",
    caller_destination: str | None = None,
    caller: str = "1001",
    domain: str = "acme.example.com",
    leg: str = "a",
    hangup_cause: str | None = None,
    ring: int = 5,
    call_uuid: str | None = None,
    extension_uuid: str | None = None,
    accountcode: str | None = None,
    originating_leg_uuid: str | None = None,
    server_tz: str = "America/Toronto",
) -> dict[str, Any]:
    """One row as the FusionPBX importer writes it (stamps in the server's zone, epochs exact)."""
    tz = ZoneInfo(server_tz)
    start = start.astimezone(UTC)
    answered = billsec > 0
    answer_epoch = epoch(start) + ring if answered else 0
    end_epoch = (answer_epoch + billsec) if answered else epoch(start) + ring
    return {
        "call_uuid": call_uuid or str(uuid.uuid4()),
        "domain_name": domain,
        "accountcode": accountcode if accountcode is not None else domain,
        "extension_uuid": extension_uuid,
        "direction": direction,
        "caller_id_name": "Caller",
        "caller_id_number": caller,
        "caller_destination": caller_destination if caller_destination is not None else destination,
        "source_number": caller,
        "destination_number": destination,
        "start_epoch": epoch(start),
        "answer_epoch": answer_epoch,
        "end_epoch": end_epoch,
        "start_stamp": datetime.fromtimestamp(epoch(start), tz),
        # The importer's quirk: an unanswered call may get a 1970 answer stamp (domain.md §1.3).
        "answer_stamp": datetime.fromtimestamp(answer_epoch, tz),
        "end_stamp": datetime.fromtimestamp(end_epoch, tz),
        "duration": billsec,  # 5.2+: duration := billsec
        "billsec": billsec,
        "leg": leg,
        "hangup_cause": hangup_cause or ("NORMAL_CLEARING" if answered else "NO_ANSWER"),
        "originating_leg_uuid": originating_leg_uuid,
        "status": "answered" if answered else "no_answer",
    }


def insert_cdr(schema: str, table: str, row: dict[str, Any], variant: str = "5x") -> None:
    """Insert `row` (from `cdr_row`) into `schema.table`, keeping only the variant's columns."""
    row = dict(row)
    pk = "xml_cdr_uuid" if variant == "5x" else "uuid"
    row[pk] = row.pop("call_uuid")
    if variant == "44":
        for col in ("originating_leg_uuid", "status"):
            row.pop(col, None)
        for col in ("start_stamp", "answer_stamp", "end_stamp"):  # timestamp without time zone: local wall time
            row[col] = row[col].replace(tzinfo=None)
    cols = list(row)
    with connect(schema) as conn, conn.cursor() as cur:
        cur.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
                _qualified(schema, table),
                sql.SQL(", ").join(map(sql.Identifier, cols)),
                sql.SQL(", ").join(sql.Placeholder() * len(cols)),
            ),
            [row[c] for c in cols],
        )
