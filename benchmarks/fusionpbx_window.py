"""Reading one day's calls from a FusionPBX `v_xml_cdr` that keeps history (issue #15, target 3).

FusionPBX keeps 730 days of calls by default, and a run reads only the calls that ended since the
last one. The table grows by `--per-day` calls a day (with a 600-byte `json` column, as FusionPBX
stores the raw CDR) up to each `--days` step; at each step the connector reads the last day:

- baseline: the window as it was first written, a CASE over end_epoch/start_epoch (same rows; no
  index can serve it, so PostgreSQL reads the whole table);
- ours: `connectors.fusionpbx.window_condition`, plain ranges, with an index on `end_epoch` (what
  docs/OPERATING.md §11 asks the operator to create; without it a run says so in its notes).

Prints, per step: each variant's time (best of `--repeat`), rows read, throughput, the ratio
ours/baseline; then the peak RSS of this process. Each step's ratio of ours to the first step's
time says whether a run grows with the table's history.

    .venv/bin/python benchmarks/fusionpbx_window.py [--days 1 10 30] [--per-day 200000] [--pg-url URL]
"""

from __future__ import annotations

import argparse
import resource
import time
from datetime import UTC, datetime, timedelta

import psycopg2
from psycopg2 import sql

import connectors.fusionpbx as fusionpbx
from autobill.config import FusionPBXServer
from sandboxes.generate import FUSIONPBX_DDL

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMA = "autobill_bench_window"


def case_window(end: sql.Composable, start: sql.Composable) -> sql.Composed:
    """The baseline: the window as a CASE (the connector's before a59f210)."""
    return sql.SQL(
        "CASE WHEN abs({end}) < {m} THEN ({end} >= %(low)s OR %(low)s IS NULL) AND {end} < %(high)s "
        "WHEN abs({start}) < {m} THEN ({start} >= %(low)s OR %(low)s IS NULL) AND {start} < %(high)s ELSE TRUE END"
    ).format(end=end, start=start, m=sql.Literal(fusionpbx.MAX_EPOCH))


def add_days(cur, first: int, n: int, per_day: int) -> None:
    step = 86_400 / per_day
    cur.execute(sql.SQL(
        "INSERT INTO {s}.v_xml_cdr (xml_cdr_uuid, domain_name, accountcode, direction, destination_number, "
        "caller_id_number, start_epoch, answer_epoch, end_epoch, billsec, leg, hangup_cause, json) "
        "SELECT gen_random_uuid(), 'acme.example.com', 'acme.example.com', 'outbound', '6135550123', '1001', "
        "%(t0)s + g * %(step)s, %(t0)s + g * %(step)s + 5, %(t0)s + g * %(step)s + 65, 60, 'a', 'NORMAL_CLEARING', "
        "jsonb_build_object('variables', jsonb_build_object('uuid', g::text, 'pad', repeat('x', 600))) "
        "FROM generate_series(%(a)s, %(b)s - 1) AS g").format(s=sql.Identifier(SCHEMA)),
        {"t0": fusionpbx.epoch_seconds(T0), "step": step, "a": first * per_day, "b": (first + n) * per_day})
    cur.execute(sql.SQL("VACUUM ANALYZE {}.v_xml_cdr").format(sql.Identifier(SCHEMA)))


def read_day(server: FusionPBXServer, day: int, window) -> tuple[float, int]:
    fusionpbx.window_condition = window
    since = T0 + timedelta(days=day)
    started = time.perf_counter()
    got = fusionpbx.FusionPBXConnector(server).extract(since, since + timedelta(days=1))
    return time.perf_counter() - started, got.cdrs.height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, nargs="+", default=[1, 10, 30])
    parser.add_argument("--per-day", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    ours = fusionpbx.window_condition
    conn = psycopg2.connect(args.pg_url)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}").format(s=sql.Identifier(SCHEMA)))
    cur.execute(sql.SQL(FUSIONPBX_DDL).format(table=sql.SQL("{}.v_xml_cdr").format(sql.Identifier(SCHEMA))))
    cur.execute(sql.SQL("CREATE INDEX ON {}.v_xml_cdr (end_epoch)").format(sql.Identifier(SCHEMA)))
    dsn = conn.get_dsn_parameters()
    server = FusionPBXServer(id="pbx1", kind="fusionpbx", host=dsn.get("host", "127.0.0.1"),
                             port=int(dsn.get("port", 5432)), database=dsn["dbname"], user=dsn["user"],
                             sslmode="disable", table=f"{SCHEMA}.v_xml_cdr", timeout_seconds=600)
    first_ours = None
    try:
        have = 0
        for days in sorted(set(args.days)):
            add_days(cur, have, days - have, args.per_day)
            have = days
            cur.execute(sql.SQL("SELECT pg_size_pretty(pg_table_size({}))").format(
                sql.Literal(f"{SCHEMA}.v_xml_cdr")))
            size = cur.fetchone()[0]
            runs = {name: min(read_day(server, days - 1, window) for _ in range(args.repeat))
                    for name, window in (("baseline", case_window), ("ours", ours))}
            (base_s, rows), (ours_s, ours_rows) = runs["baseline"], runs["ours"]
            if rows != ours_rows:
                raise SystemExit(f"the two windows read different rows: {rows} vs {ours_rows}")
            first_ours = first_ours or ours_s
            print(f"history {days:3d} day(s), {size}: baseline (CASE) {base_s:6.2f} s, ours (ranges + index) "
                  f"{ours_s:6.2f} s, ratio {ours_s / base_s:.2f}x; {rows:,} rows ({rows / ours_s:,.0f}/s); "
                  f"ours against the first step {ours_s / first_ours:.2f}x", flush=True)
    finally:
        fusionpbx.window_condition = ours
        cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA)))
        conn.close()
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")


if __name__ == "__main__":
    main()
