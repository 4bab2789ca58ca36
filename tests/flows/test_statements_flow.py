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


def test_a_failed_upload_fails_the_statements_task_not_the_billing(tmp_path, prefect_harness, monkeypatch):
    """statements.upload to a bucket that does not exist (S3 over loopback HTTP): the run is billed and
    completed, the statements are written locally, the `statements` task ends Failed saying how many
    files were not uploaded and why, and they wait in `.upload-pending` for the next run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from tasks.statements import PENDING
    from tests.support.s3 import KEY_ID, SECRET, local_s3

    for k, v in {**WHMCS_ENV, "FLOW_S3_KEY_ID": KEY_ID, "FLOW_S3_SECRET": SECRET}.items():
        monkeypatch.setenv(k, v)
    with WhmcsSandbox() as sandbox, local_s3() as s3:
        upload = {"url": "s3://missing-bucket/st", "endpoint_url": s3.endpoint, "region": "us-east-1", "retries": 0,
                  "access_key_id": {"env": "FLOW_S3_KEY_ID"}, "secret_access_key": {"env": "FLOW_S3_SECRET"}}
        w = BillingWorld(tmp_path, sandbox, D1, D1, clients=3, statements={"formats": ["csv"], "workers": 1,
                                                                            "upload": upload})
        w.drop(D1)
        state = nightly(billing_date=D1, config_path=str(w.config_path), return_state=True)
        flow_run_id = state.state_details.flow_run_id
        assert run_summary(w.settings, str(flow_run_id))["status"] == "completed"
        assert sandbox.billable_items()  # the billing stands
        written = [p for p in out_dir(w.settings).rglob("*.csv")]
        assert written
        pending = (out_dir(w.settings) / PENDING).read_text().split()
        assert len(pending) == len(written)

        async def statements_runs():
            # Task runs reach the API through the events worker, so a busy harness records them late:
            # wait (bounded) until the statements task run is there in a final state.
            async with get_client() as client:
                for _ in range(240):
                    runs = await client.read_task_runs(
                        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
                    found = [r for r in runs if r.name.startswith("statements")]
                    if found and all(r.state and r.state.is_final() for r in found):
                        return found
                    await asyncio.sleep(0.5)
                return found

        import asyncio

        (run,) = asyncio.run(statements_runs())
        assert run.state.is_failed()
        assert f"{len(written)} statement file(s) not uploaded to s3://missing-bucket/st" in run.state.message
        assert "NoSuchBucket" in run.state.message
        assert run.run_count == 1  # an upload failure is not retried by re-rendering everything
