"""FusionPBX connector against a real PostgreSQL `v_xml_cdr` (both documented schema variants)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import polars as pl
import psycopg2
import pytest
from psycopg2 import sql

import tests.support.fusionpbx_schema as fx
from autobill.config import FusionPBXServer
from connectors.base import SourceError
from connectors.fusionpbx import FusionPBXConnector, epoch_seconds
from tests.support import closed_port
from tests.support.extract import fusion_server

pytestmark = pytest.mark.postgres

UNTIL = datetime(2026, 6, 2, tzinfo=UTC)
T0 = datetime(2026, 6, 1, 14, 0, tzinfo=UTC)


def connector(schema: str, **extra) -> FusionPBXConnector:
    return FusionPBXConnector(FusionPBXServer(**fusion_server(schema, **extra)))


def by_key(df: pl.DataFrame) -> dict[str, dict]:
    return {r["cdr_key"]: r for r in df.iter_rows(named=True)}


@pytest.mark.parametrize("variant", ["5x", "44"])
def test_a_legs_only_billsec_and_numbers(pg_schema: str, variant: str) -> None:
    table = fx.create_cdr_table(pg_schema, variant)
    rows = {
        "out": fx.cdr_row(start=T0, billsec=125, destination="6135550123", caller="2125550000"),
        "bleg": fx.cdr_row(start=T0, billsec=125, destination="1001", leg="b"),
        "race": fx.cdr_row(start=T0, billsec=0, destination="1002", hangup_cause="LOSE_RACE"),
        "noans": fx.cdr_row(start=T0 + timedelta(minutes=1), billsec=0, destination="011442079460000"),
        "in": fx.cdr_row(start=T0 + timedelta(minutes=2), billsec=30, direction="inbound",
                         destination="1001", caller_destination="+1 (613) 555-0100", caller="4165550199"),
        "local": fx.cdr_row(start=T0 + timedelta(minutes=3), billsec=12, direction="local", destination="1002"),
    }  # fmt: skip
    if variant == "5x":
        rows["ringgroup"] = fx.cdr_row(start=T0, billsec=40, originating_leg_uuid=str(uuid.uuid4()))
    for row in rows.values():
        fx.insert_cdr(pg_schema, table.split(".")[1], row, variant)

    got = connector(pg_schema).extract(None, UNTIL, None)
    keys = {f"pbx1:{rows[k]['call_uuid']}": k for k in rows}
    found = {keys[k]: r for k, r in by_key(got.cdrs).items()}
    assert set(found) == {"out", "noans", "in", "local"}
    out, noans, inbound, local = found["out"], found["noans"], found["in"], found["local"]
    # billsec, never duration; epochs give exact UTC times
    assert out["billsec"] == 125 and out["start_utc"] == T0
    assert out["answer_utc"] == T0 + timedelta(seconds=5)
    assert out["end_utc"] == T0 + timedelta(seconds=130)
    assert out["rate_number"] == "16135550123" and out["dst"] == "6135550123" and out["src"] == "2125550000"
    assert out["tenant"] == "acme.example.com" and out["direction"] == "outbound"
    # unanswered: extracted, billsec 0, no answer time (even though the stamp says 1970)
    assert noans["billsec"] == 0 and noans["answer_utc"] is None and noans["rate_number"] == "442079460000"
    # inbound is rated on the caller destination (the DID), not destination_number (the extension)
    assert inbound["rate_number"] == "16135550100" and inbound["dst"] == "1001"
    assert local["direction"] == "local" and local["rate_number"] == "1002"
    # the source row is the audit trail, as JSON with the real column names
    src = json.loads(out["source_row"])
    assert src["billsec"] == 125 and src["destination_number"] == "6135550123"
    assert ("xml_cdr_uuid" if variant == "5x" else "uuid") in src
    assert got.watermark == max(r["end_utc"] for r in found.values())
    note = " ".join(got.notes)
    assert "1 B-leg" in note and "1 LOSE_RACE" in note
    if variant == "5x":
        assert "1 rows with an originating_leg_uuid" in note


# Every source column, each of a type family the connector writes differently (text-like,
# number or boolean, anything else), so that `source_row` meets all three ways and their edges.
ODD_TYPES_TABLE = """
CREATE TABLE v_xml_cdr (
    xml_cdr_uuid uuid PRIMARY KEY, domain_uuid uuid, domain_name text, extension_uuid uuid,
    accountcode varchar(40), direction text, context char(40), caller_id_name text, caller_id_number varchar,
    caller_destination text, source_number text, destination_number text, start_epoch numeric,
    answer_epoch numeric, end_epoch numeric, start_stamp timestamptz, answer_stamp timestamp,
    end_stamp timestamptz, duration double precision, billsec numeric, leg char(1), originating_leg_uuid uuid,
    hangup_cause text, hangup_cause_q850 integer, status varchar(60), missed_call boolean, sip_call_id text,
    cc_side jsonb
)
"""
ODD_TEXTS = ['quote " backslash \\ slash /', "tab\tcr\rlf\nbs\bff\f", "".join(map(chr, range(1, 32))) + "\x7f",
             "accents é ß, emoji 😀, CJK 電話", "", "  padded  ", None]
ODD_DURATIONS = [float("nan"), float("inf"), float("-inf"), 1.5e-07, 1e20, -0.0, None]


def test_source_row_is_the_very_text_to_json_gives_for_every_type_and_odd_value(pg_schema: str) -> None:
    """`source_row` is assembled from the columns' text, not built by PostgreSQL (issue #15): it
    must be byte for byte what `to_json` of the row's source columns gives, for text with
    quotes, backslashes, every control character and non-ASCII, NaN and +-Infinity in numbers,
    booleans, padded char(n), timestamps with and without a zone, jsonb, and NULL in each."""
    from connectors.fusionpbx import SOURCE_COLUMNS

    n = len(ODD_TEXTS)
    with fx.connect(pg_schema) as conn, conn.cursor() as cur:
        cur.execute(ODD_TYPES_TABLE)
        for i in range(n):
            text, duration = ODD_TEXTS[i], ODD_DURATIONS[i]
            start = fx.epoch(T0) + i
            cur.execute(
                "INSERT INTO v_xml_cdr VALUES (%s, %s, 'acme.example.com', %s, %s, 'outbound', %s, %s, %s, %s, %s, "
                "'6135550123', %s, %s, %s, to_timestamp(%s), to_timestamp(%s), to_timestamp(%s), %s, %s, 'a', NULL, "
                "%s, %s, %s, %s, %s, %s)",
                (str(uuid.uuid4()), None if i % 3 else str(uuid.uuid4()), None if i == 1 else str(uuid.uuid4()),
                 text, text, text, text, text, text, start, None if i == 2 else start + 0.5, start + 61.25, start,
                 start, start + 61.25, duration, 61, text, None if i == 3 else 16 + i, text,
                 None if i == 4 else bool(i % 2), text, None if i == 5 else json.dumps({"side": text, "n": i})))
        cur.execute(sql.SQL("SELECT xml_cdr_uuid::text, to_json((SELECT x FROM (SELECT {}) AS x))::text "
                            "FROM v_xml_cdr AS c").format(sql.SQL(", ").join(
                                sql.SQL("c.{} AS {}").format(sql.Identifier(c), sql.Identifier(c))
                                for c in SOURCE_COLUMNS if c != "uuid")))
        expected = {f"pbx1:{k}": v for k, v in cur.fetchall()}
    got = connector(pg_schema).extract(None, UNTIL, None).cdrs
    assert got.height == n == len(expected)
    assert dict(got.select("cdr_key", "source_row").iter_rows()) == expected
    assert {json.loads(v)["duration"] for v in expected.values() if v} >= {"NaN", "Infinity", "-Infinity"}


def test_rows_come_in_the_lake_order_end_then_call_id_with_unusable_ends_last(pg_schema: str) -> None:
    """The query has no ORDER BY (PostgreSQL's sort was a quarter of the COPY); the connector
    sorts: by end, then call id by its bytes, a row without a usable end last."""
    table = fx.create_cdr_table(pg_schema).split(".")[1]
    ids = [f"{i:08x}-0000-4000-8000-000000000000" for i in (5, 3, 9, 1, 7, 2)]
    ends = [30, 10, None, 30, 10, 20]  # seconds of billsec, so ties in the end; None: end_epoch NaN
    for call_id, billsec in zip(ids, ends, strict=True):
        fx.insert_cdr(pg_schema, table, fx.cdr_row(start=T0, billsec=billsec or 40, call_uuid=call_id))
        if billsec is None:
            with fx.connect(pg_schema) as conn, conn.cursor() as cur:
                cur.execute("UPDATE v_xml_cdr SET end_epoch = 'NaN' WHERE xml_cdr_uuid = %s", (call_id,))
    got = connector(pg_schema).extract(None, UNTIL, None).cdrs
    order = [k.split(":", 1)[1][:8] for k in got["cdr_key"]]
    assert order == ["00000003", "00000007", "00000002", "00000001", "00000005", "00000009"]


def test_extension_via_v_extensions_else_numeric_accountcode(pg_schema: str) -> None:
    table = fx.create_cdr_table(pg_schema).split(".")[1]
    ext_uuid = str(uuid.uuid4())
    a = fx.cdr_row(start=T0, billsec=10, extension_uuid=ext_uuid, accountcode="acme.example.com")
    b = fx.cdr_row(start=T0, billsec=10, extension_uuid=str(uuid.uuid4()), accountcode="2001")
    c = fx.cdr_row(start=T0, billsec=10, accountcode="acme.example.com")
    for row in (a, b, c):
        fx.insert_cdr(pg_schema, table, row)
    # without v_extensions: only the per-extension account code gives an extension
    before = by_key(connector(pg_schema).extract(None, UNTIL, None).cdrs)
    assert [before[f"pbx1:{r['call_uuid']}"]["extension"] for r in (a, b, c)] == [None, "2001", None]
    fx.create_extensions_table(pg_schema, {"1001": ext_uuid})
    after = by_key(connector(pg_schema).extract(None, UNTIL, None).cdrs)
    assert [after[f"pbx1:{r['call_uuid']}"]["extension"] for r in (a, b, c)] == ["1001", "2001", None]
    assert after[f"pbx1:{a['call_uuid']}"]["account"] == "acme.example.com"


@pytest.mark.parametrize("variant", ["5x", "44"])
def test_dst_days_use_exact_epochs(pg_schema: str, variant: str) -> None:
    """Calls across the spring-forward gap and in the repeated fall-back hour (America/Toronto)."""
    table = fx.create_cdr_table(pg_schema, variant).split(".")[1]
    spring = datetime(2026, 3, 8, 6, 59, 30, tzinfo=UTC)  # 01:59:30 EST, the clock jumps to 03:00
    fall_edt = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    fall_est = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST, same wall time an hour later
    rows = [fx.cdr_row(start=t, billsec=120) for t in (spring, fall_edt, fall_est)]
    for row in rows:
        fx.insert_cdr(pg_schema, table, row, variant)
    got = by_key(connector(pg_schema).extract(None, datetime(2026, 12, 1, tzinfo=UTC), None).cdrs)
    starts = [got[f"pbx1:{r['call_uuid']}"]["start_utc"] for r in rows]
    assert starts == [spring, fall_edt, fall_est]
    assert got[f"pbx1:{rows[0]['call_uuid']}"]["end_utc"] == spring + timedelta(seconds=125)


def test_window_is_end_epoch_with_overlap(pg_schema: str) -> None:
    table = fx.create_cdr_table(pg_schema).split(".")[1]
    since = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    ends = {  # start so that end_epoch = the given time (5 s ring + billsec 55)
        "long_before": since - timedelta(hours=3),
        "in_overlap": since - timedelta(minutes=30),
        "inside": since + timedelta(hours=1),
        "at_until": UNTIL,
    }
    rows = {k: fx.cdr_row(start=v - timedelta(seconds=60), billsec=55) for k, v in ends.items()}
    for row in rows.values():
        fx.insert_cdr(pg_schema, table, row)
    got = connector(pg_schema, overlap_minutes=60).extract(since, UNTIL, None)
    keys = {r["cdr_key"].split(":", 1)[1] for r in got.cdrs.iter_rows(named=True)}
    assert keys == {rows["in_overlap"]["call_uuid"], rows["inside"]["call_uuid"]}
    assert got.watermark == ends["inside"]


def test_numbers_are_normalised_with_the_servers_numbering(pg_schema: str) -> None:
    table = fx.create_cdr_table(pg_schema).split(".")[1]
    national = fx.cdr_row(start=T0, billsec=10, destination="020 7946 0000")
    abroad = fx.cdr_row(start=T0, billsec=10, destination="0033123456789")
    for row in (national, abroad):
        fx.insert_cdr(pg_schema, table, row)
    got = by_key(connector(pg_schema, numbering={"country_code": "44"}).extract(None, UNTIL, None).cdrs)
    assert got[f"pbx1:{national['call_uuid']}"]["rate_number"] == "442079460000"  # trunk prefix 0 -> 44
    assert got[f"pbx1:{abroad['call_uuid']}"]["rate_number"] == "33123456789"  # international prefix 00


def test_connection_is_read_only_with_statement_timeout(pg_schema: str) -> None:
    fx.create_cdr_table(pg_schema)
    conn = connector(pg_schema, timeout_seconds=7).connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            assert cur.fetchone()[0] == "7s"
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cur.execute(sql.SQL("DELETE FROM {}.v_xml_cdr").format(sql.Identifier(pg_schema)))
    finally:
        conn.close()


def test_down_server_missing_table_and_column_raise_source_error(pg_schema: str) -> None:
    with pytest.raises(SourceError, match="cannot connect"):
        connector(pg_schema, port=closed_port()).extract(None, UNTIL, None)
    with pytest.raises(SourceError, match="not found"):
        connector(pg_schema).extract(None, UNTIL, None)
    with fx.connect(pg_schema) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE v_xml_cdr (xml_cdr_uuid uuid, domain_name text, direction text, "
                    "destination_number text, start_epoch numeric, end_epoch numeric)")  # fmt: skip
    with pytest.raises(SourceError, match="lacks column.*billsec"):
        connector(pg_schema).extract(None, UNTIL, None)


def test_epoch_seconds_is_exact() -> None:
    moment = datetime(2026, 3, 8, 7, 0, 0, 123456, tzinfo=UTC)
    assert str(epoch_seconds(moment)) == "1772953200.123456"
    with pytest.raises(ValueError):
        epoch_seconds(datetime(2026, 1, 1))


@pytest.mark.parametrize("variant", ["5x", "44"])
def test_source_row_is_the_json_object_postgresql_builds_for_the_row(pg_schema: str, variant: str) -> None:
    """`source_row` is built with to_json of a sub-select (cheaper); it must be the very object
    json_build_object gives for the same columns: same keys in the same order, same values
    (numbers as PostgreSQL prints them, times as JSON text), nulls kept."""
    from connectors.fusionpbx import SOURCE_COLUMNS

    table = fx.create_cdr_table(pg_schema, variant)
    rows = [fx.cdr_row(start=T0 + timedelta(seconds=i), billsec=i * 7, destination=f"61355501{i:02d}",
                       caller_destination=None if i % 2 else 'odd "quoted", text\nwith a line break')
            for i in range(5)]
    for row in rows:
        fx.insert_cdr(pg_schema, table.split(".")[1], row, variant)
    got = connector(pg_schema).extract(None, UNTIL, None).cdrs
    id_col = "xml_cdr_uuid" if variant == "5x" else "uuid"
    with fx.connect(pg_schema) as conn, conn.cursor() as cur:
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                    (pg_schema, table.split(".")[1]))
        present = {r[0] for r in cur.fetchall()}
        pairs = sql.SQL(", ").join(sql.SQL("{}, {}").format(sql.Literal(c), sql.Identifier(c))
                                   for c in SOURCE_COLUMNS if c in present)
        cur.execute(sql.SQL("SELECT {}::text, json_build_object({})::text FROM {}").format(
            sql.Identifier(id_col), pairs, sql.SQL(table)))
        expected = {f"pbx1:{k}": v for k, v in cur.fetchall()}
    assert got.height == len(rows)
    for key, source in got.select("cdr_key", "source_row").iter_rows():
        ours, theirs = json.loads(source), json.loads(expected[key])
        assert list(ours.items()) == list(theirs.items())
