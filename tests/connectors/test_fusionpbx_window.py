"""The FusionPBX window: the same rows as the rule it states, read from an index on end_epoch.

v_xml_cdr keeps years of calls; a run must read its window, not the table (issue #15)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from psycopg2 import sql

import tests.support.fusionpbx_schema as fx
from autobill.config import FusionPBXServer
from connectors.fusionpbx import MAX_EPOCH, FusionPBXConnector, epoch_seconds, window_condition
from tests.support.extract import fusion_server

pytestmark = pytest.mark.postgres

# The rule as first written (a CASE: what the window means, but no index can serve it): a usable
# end_epoch decides; else a usable start_epoch; else the row is read every run.
REFERENCE = """CASE WHEN abs(end_epoch) < {max} THEN (end_epoch >= %(low)s OR %(low)s IS NULL) AND end_epoch < %(high)s
WHEN abs(start_epoch) < {max} THEN (start_epoch >= %(low)s OR %(low)s IS NULL) AND start_epoch < %(high)s
ELSE TRUE END"""

LOW, HIGH = 1_780_000_000, 1_780_086_400
EDGES = [None, "NaN", "Infinity", "-Infinity", str(MAX_EPOCH), str(-MAX_EPOCH), str(MAX_EPOCH - 1),
         str(-MAX_EPOCH + 1), "0", "-5", str(LOW - 1), str(LOW), "1780000000.5", str(HIGH - 1), "1780086399.999999",
         str(HIGH), str(HIGH + 1)]  # fmt: skip


def test_the_window_keeps_exactly_the_rows_of_the_rule_on_every_edge_value(pg_schema: str) -> None:
    with fx.connect(pg_schema) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE w (id int, end_epoch numeric, start_epoch numeric)")
        pairs = list(itertools.product(EDGES, EDGES))
        cur.executemany("INSERT INTO w VALUES (%s, %s::numeric, %s::numeric)",
                        [(i, e, s) for i, (e, s) in enumerate(pairs)])
        ours = window_condition(sql.Identifier("end_epoch"), sql.Identifier("start_epoch"))
        for low, high in ((LOW, HIGH), (None, HIGH), (None, LOW), (LOW, LOW), (HIGH, LOW), (-10, 1)):
            params = {"low": low, "high": high}
            got = []
            for condition in (ours, sql.SQL(REFERENCE.format(max=MAX_EPOCH))):
                cur.execute(sql.SQL("SELECT id FROM w WHERE {} ORDER BY id").format(condition), params)
                got.append([r[0] for r in cur.fetchall()])
            assert got[0] == got[1], (low, high, sorted(set(got[0]) ^ set(got[1])))
            assert got[1], "a window that keeps no row tells nothing"  # the unusable rows are always read


def _history(schema: str, days: int, per_day: int, index: bool) -> str:
    """v_xml_cdr with `days` days of calls (one call every 86400/per_day s), analysed."""
    table = fx.create_cdr_table(schema).split(".")[1]
    with fx.connect(schema) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL(
            "INSERT INTO {t} (xml_cdr_uuid, domain_name, accountcode, direction, destination_number, start_epoch, "
            "answer_epoch, end_epoch, billsec, leg, hangup_cause) "
            "SELECT gen_random_uuid(), 'acme.example.com', 'acme.example.com', 'outbound', '6135550123', "
            "%(t0)s + g * %(step)s, %(t0)s + g * %(step)s + 5, %(t0)s + g * %(step)s + 65, 60, 'a', 'NORMAL_CLEARING' "
            "FROM generate_series(0, %(n)s - 1) AS g").format(t=sql.Identifier(table)),
            {"t0": epoch_seconds(T0), "step": 86_400 // per_day, "n": days * per_day})
        if index:
            cur.execute(sql.SQL("CREATE INDEX ON {} (end_epoch)").format(sql.Identifier(table)))
        cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    return table


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _ending_in(schema: str, table: str, since: datetime, until: datetime) -> int:
    """Rows a run from `since` to `until` must read: those ending in [since - overlap, until)."""
    overlap = FusionPBXServer(**fusion_server(schema)).overlap_minutes
    with fx.connect(schema) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE end_epoch >= %s AND end_epoch < %s").format(
            sql.Identifier(table)), (epoch_seconds(since - timedelta(minutes=overlap)), epoch_seconds(until)))
        return cur.fetchone()[0]


def _plan(schema: str, table: str, low: datetime, high: datetime) -> str:
    connector = FusionPBXConnector(FusionPBXServer(**fusion_server(schema)))
    with fx.connect(schema) as conn, conn.cursor() as cur:
        columns = connector._columns(cur, schema, table)
        query, count_query = connector._queries(cur, schema, table, columns)
        params = {"low": epoch_seconds(low), "high": epoch_seconds(high)}
        plans = []
        for q in (query, count_query):
            cur.execute(sql.SQL("EXPLAIN {}").format(sql.SQL(cur.mogrify(q, params).decode())))
            plans.append("\n".join(r[0] for r in cur.fetchall()))
    return "\n".join(plans)


def test_with_an_index_on_end_epoch_a_run_reads_its_window_not_the_table(pg_schema: str) -> None:
    table = _history(pg_schema, days=60, per_day=2_000, index=True)
    day = T0 + timedelta(days=59)
    plan = _plan(pg_schema, table, day, day + timedelta(days=1))
    assert "Seq Scan" not in plan and "Index" in plan, plan

    got = FusionPBXConnector(FusionPBXServer(**fusion_server(pg_schema))).extract(day, day + timedelta(days=1))
    assert got.cdrs.height == _ending_in(pg_schema, table, day, day + timedelta(days=1)) > 1_000
    assert not [n for n in got.notes if "no index" in n]


def test_without_an_index_the_run_says_so_and_how_to_add_one(pg_schema: str) -> None:
    table = _history(pg_schema, days=3, per_day=100, index=False)
    day = T0 + timedelta(days=2)
    assert "Seq Scan" in _plan(pg_schema, table, day, day + timedelta(days=1))
    got = FusionPBXConnector(FusionPBXServer(**fusion_server(pg_schema))).extract(day, day + timedelta(days=1))
    assert got.cdrs.height == _ending_in(pg_schema, table, day, day + timedelta(days=1)) > 50  # read the slow way
    [note] = [n for n in got.notes if "no index on end_epoch" in n]
    assert f"CREATE INDEX CONCURRENTLY ON {pg_schema}.{table} (end_epoch)" in note
