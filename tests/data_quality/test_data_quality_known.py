"""The ledger key probe (cross-batch duplicates) on SQLite and PostgreSQL."""

from __future__ import annotations

from autobill.ledger.db import session_scope
from autobill.ledger.models import QuarantinedRow, UnratedCDR
from data_quality.known import load_known_keys
from tests.support import make_final
from tests.support.dq import START

ODD = 'pbx:q"uote\\back/slash-é-☎'


def test_known_keys_states_and_priority(ledger_url, tmp_path):
    day = START.date()
    make_final(ledger_url, tmp_path, [("pbx:billed", "pbx", day, "billed", "1.000000"),
                                      (ODD, "pbx", day, "zero_cost", "0.000000")])
    with session_scope(ledger_url) as s:
        s.add_all([
            UnratedCDR(cdr_key="pbx:unrated", server="pbx", billing_date=day, reason="no_rate"),
            # billed AND held in quarantine (a stale record): billed wins
            QuarantinedRow(cdr_key="pbx:billed", server="pbx", rule="x", reason="x", row="{}", status="held"),
            QuarantinedRow(cdr_key="pbx:held", server="pbx", rule="x", reason="x", row="{}", status="held"),
            QuarantinedRow(cdr_key="pbx:rel", server="pbx", rule="x", reason="x", row="{}", status="released"),
            QuarantinedRow(cdr_key="pbx:req", server="pbx", rule="x", reason="x", row="{}", status="requeued"),
        ])
    keys = ["pbx:billed", ODD, "pbx:unrated", "pbx:held", "pbx:rel", "pbx:req", "pbx:new", None, "pbx:a b",
            "pbx:billed"]
    got = dict(load_known_keys(ledger_url, keys).iter_rows())
    assert got == {"pbx:billed": "billed", ODD: "billed", "pbx:unrated": "unrated", "pbx:held": "quarantine:held",
                   "pbx:rel": "quarantine:released", "pbx:req": "quarantine:requeued"}
    assert "pbx:req" not in dict(load_known_keys(ledger_url, keys, include_requeued=False).iter_rows())
    assert set(dict(load_known_keys(ledger_url, keys, include_quarantine=False).iter_rows())) == {
        "pbx:billed", ODD, "pbx:unrated"}
    assert load_known_keys(ledger_url, []).height == 0
