"""Statements tie out: per charge line, the calls' costs rounded once = the ledger charge = the WHMCS item.

Calls go through the nightly's own rate / record / post functions into a WHMCS sandbox over HTTP
(tests/support/statements.py), on SQLite and PostgreSQL; hypothesis varies the world.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from collections import defaultdict
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from autobill.ledger.billed import billed_rows
from autobill.ledger.charges import statement_ref
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge
from autobill.statement import render
from autobill.statement.build import build_statement, build_statements
from autobill.statement.store import calls_root, ensure_calls, materialize_run
from tests.support.statements import StatementWorld
from tests.support.whmcs import new_sandbox

D1, D2, D3 = date(2026, 11, 18), date(2026, 11, 19), date(2026, 11, 20)


def _ledger(settings):
    with session_scope(settings.ledger) as s:
        charges = s.scalars(select(Charge)).all()
        for r in charges:
            s.expunge(r)
    return charges, billed_rows(settings)


def assert_ties_out(w: StatementWorld, first: date, last: date) -> int:
    """Every client's statement against the ledger and the sandbox; returns how many lines were checked."""
    charges, billed = _ledger(w.settings)
    items = {i["id"]: i for i in w.sandbox.billable_items()}
    in_period = [c for c in charges if first <= c.billing_date <= last]
    kept = [b for b in billed if first <= b.billing_date <= last and b.outcome in ("billed", "included")]
    statements = {s.client_id: s for s in build_statements(w.settings, first, last)}
    assert set(statements) == {c.client_id for c in in_period} | {b.client_id for b in kept}
    checked = 0
    for cid, stmt in statements.items():
        mine = {c.id: c for c in in_period if c.client_id == cid}
        assert {ln.charge_id for ln in stmt.lines} == set(mine)
        for line in stmt.lines:
            charge = mine[line.charge_id]
            # the reference rule: per call 6 dp (as billed), per line once to the cent, half-up
            costs = [b.cost for b in billed if b.charge_id == charge.id]
            expected = sum(costs, Decimal(0)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
            assert line.subtotal == expected == charge.amount, (line, charge.amount)
            assert line.calls == len(costs) == charge.cdr_count
            assert line.ref == statement_ref(charge.idempotency_key) and line.ref in charge.description
            if charge.state == "posted":
                item = items[charge.whmcs_billable_id]
                assert item["amount"] == line.amount and item["userid"] == cid
            checked += 1
        assert stmt.tied_out
        keys = stmt.calls["cdr_key"].to_list()
        assert sorted(keys) == sorted(b.cdr_key for b in kept if b.client_id == cid)
        # the calls listed under each line add up to its subtotal
        sums = defaultdict(Decimal)
        for ref, cost in stmt.calls.select("line_ref", "cost").iter_rows():
            sums[ref] += Decimal(cost)
        for line in stmt.lines:
            assert sums[line.ref] == line.subtotal_exact
        total = sum((c.amount for c in mine.values()), Decimal(0))
        assert sum((t["total"] for t in stmt.totals().values()), Decimal(0)) == total
        posted = [c for c in mine.values() if c.state == "posted"]
        assert sum((items[c.whmcs_billable_id]["amount"] for c in posted), Decimal(0)) == \
            sum((c.amount for c in posted), Decimal(0))
    return checked


def test_statements_tie_out_to_ledger_and_whmcs(tmp_path, sandbox, ledger_url):
    w = StatementWorld(tmp_path, sandbox, ledger_url=ledger_url)
    calls = w.calls(D1, D3, per_day=12)
    local = pl.col("start_utc").dt.convert_time_zone(w.world.timezone).dt.date()
    for day in (D1, D2, D3):
        w.bill(day, calls.filter(local == day))
    assert assert_ties_out(w, D1, D3) > 0
    assert assert_ties_out(w, D2, D2) > 0
    one = build_statement(w.settings, 1, D1, D3, client_name="Acme 1 Ltd")
    row = one.calls.row(0, named=True)
    assert row["local_time"][-6:] in ("-05:00", "-04:00")  # America/Toronto, with its offset
    for col in ("number", "destination", "matched_prefix", "tariff_version", "rate", "connect_fee", "cost"):
        assert one.calls.filter(pl.col("outcome") == "billed")[col].null_count() == 0, col


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(clients=st.integers(2, 5), seed=st.integers(0, 10_000), per_day=st.sampled_from([5, 12, 30]),
       days=st.integers(1, 3))
def test_statements_tie_out_on_random_worlds(tmp_path_factory, clients, seed, per_day, days):
    # (at least ~10 calls a day: sandboxes.generate.generate_calls panics in polars on an empty world)
    tmp = tmp_path_factory.mktemp("w")
    with new_sandbox() as sb:
        w = StatementWorld(tmp, sb, clients=clients, seed=seed)
        calls = w.calls(D1, date(2026, 11, 17 + days), per_day=per_day, seed=seed)
        local = pl.col("start_utc").dt.convert_time_zone(w.world.timezone).dt.date()
        for i in range(days):
            day = date(2026, 11, 18 + i)
            # late calls of an earlier day arrive with the next run: a date billed in two lines
            w.bill(day, calls.filter((local == day) & (pl.col("cdr_key").hash(seed) % 5 != 0)))
        w.bill(date(2026, 11, 18 + days), calls.filter(pl.col("cdr_key").hash(seed) % 5 == 0))
        assert_ties_out(w, D1, date(2026, 11, 18 + days))


def test_store_is_rebuilt_when_missing(tmp_path, sandbox):
    w = StatementWorld(tmp_path, sandbox)
    run = w.bill(D1, w.calls(D1, D1))
    first = list(build_statements(w.settings, D1, D1))
    shutil.rmtree(calls_root(w.settings))
    assert ensure_calls(w.settings, D1, D1) == [run]
    assert ensure_calls(w.settings, D1, D1) == []
    again = list(build_statements(w.settings, D1, D1))
    assert [s.calls.to_dicts() for s in first] == [s.calls.to_dicts() for s in again]
    assert materialize_run(w.settings, run) == sum(s.calls.height for s in again)


def test_pdf_reads_back_totals_first_then_calls(tmp_path, sandbox):
    if not shutil.which("pdftotext") or not shutil.which("pdftoppm"):
        pytest.fail("poppler-utils (pdftotext, pdftoppm) are needed: apt-get install poppler-utils")
    w = StatementWorld(tmp_path, sandbox)
    w.bill(D1, w.calls(D1, D1, per_day=40))
    charges, _ = _ledger(w.settings)
    cid = max(charges, key=lambda c: c.cdr_count).client_id
    stmt = build_statement(w.settings, cid, D1, D1, client_name=f"Acme {cid} Ltd (Ann{cid} Lee)")
    path = render.write(stmt, "pdf", tmp_path / "st.pdf")
    assert path.read_bytes()[:5] == b"%PDF-"
    text = subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout
    assert "Maple VoIP Inc." in text and f"Acme {cid} Ltd (Ann{cid} Lee)" in text
    assert text.index("Totals") < text.index("Charge lines") < text.index("Calls (")
    for line in stmt.lines:
        assert line.ref in text and f"{line.amount:.2f}" in text
    total = sum((t["total"] for t in stmt.totals().values()), Decimal(0))
    assert f"{total:.2f}" in text.split("Charge lines")[0]
    billed = stmt.calls.filter(pl.col("outcome") == "billed").row(0, named=True)
    assert billed["cost"] in text and billed["local_time"] in text
    assert "rounded once to 6 decimals" in " ".join(text.split())
    subprocess.run(["pdftoppm", "-r", "50", "-png", "-f", "1", "-l", "1", str(path), str(tmp_path / "page")],
                   check=True)
    pages = list(tmp_path.glob("page*.png"))
    assert len(pages) == 1 and pages[0].stat().st_size > 2000


def test_csv_has_every_call_and_every_line(tmp_path, sandbox):
    w = StatementWorld(tmp_path, sandbox)
    w.bill(D1, w.calls(D1, D1, per_day=20))
    stmt = build_statement(w.settings, 1, D1, D1)
    rows = list(csv.reader(io.StringIO(render.to_csv(stmt))))
    calls = [r for r in rows if r[0] == "call"]
    lines = [r for r in rows if r[0] == "line"]
    assert len(calls) == stmt.calls.height and len(lines) == len(stmt.lines)
    head = rows[0]
    cost_at, ref_at = head.index("cost"), head.index("line_ref")
    for line in [r for r in rows if r[0] == "line"]:
        ref, amount = line[1], Decimal(line[11])
        exact = sum((Decimal(c[cost_at]) for c in calls if c[ref_at] == ref), Decimal(0))
        assert exact.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) == amount
    assert "<table" in render.to_html(stmt)


_text = st.one_of(st.none(), st.text(alphabet=st.sampled_from(list('a,"\n\r Zoë Łódź;\'\t0')), max_size=12))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(_text, _text, st.one_of(st.none(), st.integers(-5, 10**9))), min_size=1, max_size=8))
def test_vectorised_csv_rows_equal_the_csv_writer(rows):
    """The bulk writer's CSV records (render.csv_row_expr, one expression for thousands of clients)
    are byte for byte what write_csv writes, and parse back to the same values."""
    from autobill.statement.build import CALL_COLUMNS, Statement

    data = {c: [None] * len(rows) for c in CALL_COLUMNS}
    data["destination_name"] = [r[0] for r in rows]
    data["number"] = [r[1] for r in rows]
    data["billsec"] = [r[2] for r in rows]
    frame = pl.DataFrame(data, schema={c: (pl.Int64 if c == "billsec" else pl.String) for c in CALL_COLUMNS})
    plain = Statement(client_id=1, first=D1, last=D1, lines=[], calls=frame)
    fast = Statement(client_id=1, first=D1, last=D1, lines=[], calls=frame.with_columns(render.csv_row_expr()))
    assert render.to_csv(fast) == render.to_csv(plain)
    parsed = [r for r in csv.reader(io.StringIO(render.to_csv(fast))) if r[0] == "call"]
    at = ["record", *CALL_COLUMNS].index
    assert [(r[at("destination_name")], r[at("number")]) for r in parsed] == \
        [(a or "", b or "") for a, b, _ in rows]
