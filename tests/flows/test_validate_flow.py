"""The validate task under a real Prefect engine: artifacts published, a bad server's task Failed,
the other server's task Completed."""

from __future__ import annotations

import pytest

from tests.support.dq import NOW, add_batch, cdr, dq_settings, good_rows

pytestmark = pytest.mark.flow


def test_validate_task_in_a_flow(tmp_path, prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.runtime import flow_run

    from tasks.validate import validate_batch_task

    settings = dq_settings(tmp_path, migrate=True)
    good_id = add_batch(settings, "pbx2", good_rows(5, server="pbx2"))
    bad_id = add_batch(settings, "pbx", good_rows(5) + [cdr(f"b{i}", billsec=-1) for i in range(6)])

    @flow(name="tiny-validation")
    def tiny() -> dict:
        futures = {"pbx2": validate_batch_task.submit(settings, good_id, now=NOW),
                   "pbx": validate_batch_task.submit(settings, bad_id, now=NOW)}
        for f in futures.values():
            f.wait()
        return {"flow_run_id": str(flow_run.id),
                **{k: (f.state.type.value, f.state.message or "") for k, f in futures.items()}}

    got = tiny()
    assert got["pbx2"][0] == "COMPLETED"
    assert got["pbx"][0] == "FAILED" and "batch rejected" in got["pbx"][1]

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[got["flow_run_id"]])))
    by_key = {a.key: a for a in artifacts}
    assert {"validation-pbx", "validation-pbx2"} <= set(by_key)
    assert not any(k.endswith("-file") for k in by_key)  # no link artifact a browser cannot open
    assert by_key["validation-pbx"].type == "markdown"
    assert "REJECTED" in by_key["validation-pbx"].data and "negative_billsec" in by_key["validation-pbx"].data
    assert "ACCEPTED" in by_key["validation-pbx2"].data
    assert "| rule | rows |" in by_key["validation-pbx"].data  # the report is tables, not a link
    assert all("file://" not in a.data for a in artifacts if a.data and isinstance(a.data, str))
    # The report files are named as text, for an operator with a shell on the worker.
    assert str((settings.data_path / "reports" / "validation" / f"batch-{bad_id}.md").absolute()) \
        in by_key["validation-pbx"].data
