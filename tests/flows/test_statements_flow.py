"""The nightly flow writes each billed client's statement for the date and the month to date, and
they tie out to WHMCS; a rerun rewrites the same files and posts nothing."""

from __future__ import annotations

import subprocess
from datetime import date
from decimal import Decimal

import pytest

from autobill.ledger.runs import run_summary
from flows.autobill import nightly
from sandboxes.whmcs import WhmcsSandbox
from tasks.statements import out_dir
from tests.support.ops import WHMCS_ENV, BillingWorld

pytestmark = [pytest.mark.flow, pytest.mark.slow]
D1, D2 = date(2026, 11, 18), date(2026, 11, 19)


def test_nightly_writes_statements_that_tie_out(tmp_path, prefect_harness, monkeypatch):
    for k, v in WHMCS_ENV.items():
        monkeypatch.setenv(k, v)
    with WhmcsSandbox() as sandbox:
        w = BillingWorld(tmp_path, sandbox, D1, D2, clients=4, statements={"reseller_name": "Maple VoIP Inc.",
                                                                            "formats": ["pdf", "csv"], "workers": 1})
        for day in (D1, D2):
            w.drop(day)
            state = nightly(billing_date=day, config_path=str(w.config_path), return_state=True)
            assert run_summary(w.settings, str(state.state_details.flow_run_id))["status"] == "completed"
        items = sandbox.billable_items()
        root = out_dir(w.settings)
        for client_id in sorted({i["userid"] for i in items}):
            folder = root / f"client-{client_id}"
            assert (folder / f"{D2}.pdf").exists() and (folder / f"{D1}.csv").exists()
            mtd = (folder / "2026-11-to-date.csv").read_text().splitlines()
            lines = [r.split(",") for r in mtd if r.startswith("line,")]
            # line rows: record, ref, date, service, class, kind, calls, min, incl, exact, subtotal, whmcs_amount
            whmcs = sum((i["amount"] for i in items if i["userid"] == client_id), Decimal(0))
            assert sum((Decimal(r[11]) for r in lines), Decimal(0)) == whmcs
            posted = "".join(i["description"] for i in items)
            assert all(r[1] in posted for r in lines if Decimal(r[11]) != 0)  # the ref a client quotes
            text = subprocess.run(["pdftotext", str(folder / "2026-11-to-date.pdf"), "-"], capture_output=True,
                                  text=True, check=True).stdout
            assert "Maple VoIP Inc." in text and f"{whmcs:.2f}" in text
        before = len(items)
        nightly(billing_date=D2, config_path=str(w.config_path), return_state=True)
        assert len(sandbox.billable_items()) == before
        w.assert_exactly_once()
