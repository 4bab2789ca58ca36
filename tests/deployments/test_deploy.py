"""prefect.yaml against a real `prefect server` on loopback: deploy, schedule, worker, backfill, serve.

The slow tests share one server (module fixture) and run in file order: `autobill deploy`
(work pool + `prefect deploy --all`), a nightly run triggered through the API and executed by a
`prefect worker --run-once`; a backfill whose children run on a worker, fail, and are retried the
way the UI's Retry does; and `deployments/serve.py` serving and executing a run without a pool.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import date
from zoneinfo import ZoneInfo

import pytest
import yaml

from cli.local_prefect import LocalPrefectServer, ManagedProcess, start_worker
from deployments.spec import check_timezone, load_specs, runner_deployments
from tests.support.ops import ROOT, WHMCS_ENV, BillingWorld, summary_for

D1, D2 = date(2026, 11, 16), date(2026, 11, 17)
POOL = "autobill-process"
NAMES = {"autobill/nightly", "autosuspend/every-5-min", "autobill-backfill/backfill", "rerate/rerate"}

# -- the YAML itself (fast) ---------------------------------------------------------------------


def test_prefect_yaml_declares_the_three_deployments_with_their_schedules_and_limits():
    specs = {s.name: s for s in load_specs()}
    assert set(specs) == {"nightly", "every-5-min", "backfill", "rerate"}
    assert specs["rerate"].schedules == [] and specs["rerate"].entrypoint == "flows/rerate.py:rerate"
    example_tz = yaml.safe_load((ROOT / "autobill.example.yaml").read_text())["timezone"]
    assert check_timezone(list(specs.values()), example_tz) == []
    assert check_timezone(list(specs.values()), "Europe/Paris")  # a different billing zone is refused
    nightly, five, backfill = specs["nightly"], specs["every-5-min"], specs["backfill"]
    assert [s["cron"] for s in nightly.schedules] == ["55 0 * * *"]
    assert nightly.concurrency_limit == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert [s["cron"] for s in five.schedules] == ["*/5 * * * *"]
    assert five.concurrency_limit == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert backfill.schedules == [] and {s.work_pool for s in specs.values()} == {POOL}
    assert nightly.entrypoint == "flows/autobill.py:nightly" and five.entrypoint == "flows/autosuspend.py:autosuspend"
    assert all(s.enforce_parameter_schema for s in specs.values())


def test_serve_builds_the_same_deployments_in_the_configured_timezone():
    deps = {d.name: d for d in runner_deployments(load_specs(), timezone="Europe/Berlin")}
    assert set(deps) == {"nightly", "every-5-min", "backfill", "rerate"}
    assert {"start_date", "end_date", "reason"} <= set(deps["rerate"]._parameter_openapi_schema.required)
    (sched,) = deps["nightly"].schedules
    assert sched.schedule.cron == "55 0 * * *" and sched.schedule.timezone == "Europe/Berlin"
    assert deps["every-5-min"].concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert deps["every-5-min"].concurrency_limit == 1 and deps["nightly"].concurrency_limit == 1
    assert deps["backfill"].schedules == []
    assert "billing_date" in deps["nightly"]._parameter_openapi_schema.properties


def test_deploy_check_refuses_a_timezone_that_differs_from_the_config(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    cfg = tmp_path / "autobill.yaml"
    cfg.write_text("timezone: Europe/Paris\n")
    result = CliRunner().invoke(app, ["deploy", "--check", "-c", str(cfg)])
    assert result.exit_code == 1 and "differs from the configured timezone Europe/Paris" in result.output


# -- against a real server (slow) ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    with LocalPrefectServer(home, extra_env={"PREFECT_LOGGING_LEVEL": "INFO"}) as srv:
        yield srv


@pytest.fixture
def api(server):
    """Point this process's Prefect client at the server (flows run here report there)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield server


@pytest.fixture
def whmcs(monkeypatch):
    from sandboxes.whmcs import WhmcsSandbox

    for k, v in WHMCS_ENV.items():
        monkeypatch.setenv(k, v)
    with WhmcsSandbox() as sb:
        yield sb


def _wait_final(flow_run_id, timeout: float = 240):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} not final after {timeout} s: {run.state}")


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_autobill_deploy_then_a_worker_completes_a_run_triggered_through_the_api(api, tmp_path, whmcs):
    from prefect.client.orchestration import get_client

    world = BillingWorld(tmp_path, whmcs, D1, D1)
    world.drop(D1)
    env = {**api.env(), **WHMCS_ENV, "AUTOBILL_CONFIG": str(world.config_path)}
    out = subprocess.run([sys.executable, "-m", "cli", "deploy"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "work pool autobill-process: created" in out.stdout

    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
        by_name = {f"{flows[d.flow_id]}/{d.name}": d for d in deployments}
        assert set(by_name) == NAMES
        nightly = by_name["autobill/nightly"]
        (sched,) = nightly.schedules
        assert (sched.schedule.cron, sched.schedule.timezone) == ("55 0 * * *", "America/Toronto")
        assert nightly.work_pool_name == POOL and nightly.concurrency_options.collision_strategy.value == "ENQUEUE"
        five = by_name["autosuspend/every-5-min"]
        assert five.concurrency_options.collision_strategy.value == "CANCEL_NEW"
        assert five.global_concurrency_limit.limit == 1
        assert {"billing_date", "dry_run", "servers", "config_path"} <= set(nightly.parameter_openapi_schema["properties"])
        client.pause_deployment(five.id)  # keep its 5-minute runs off the worker below

        # The scheduler turns the cron into runs at 00:55 in the billing timezone.
        deadline, upcoming = time.monotonic() + 60, []
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        while time.monotonic() < deadline and not upcoming:
            upcoming = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id])))
            time.sleep(1)
        assert upcoming, "the scheduler created no nightly run"
        local = [r.expected_start_time.astimezone(ZoneInfo("America/Toronto")) for r in upcoming]
        assert all((t.hour, t.minute) == (0, 55) for t in local), local

        run = client.create_flow_run_from_deployment(
            nightly.id, parameters={"billing_date": D1.isoformat(), "config_path": str(world.config_path)})
    worker = start_worker(api, POOL, tmp_path / "worker.log", run_once=True, cwd=ROOT, extra_env=env)
    try:
        done = _wait_final(run.id)
        assert done.state.type.value == "COMPLETED", (done.state, worker.tail())
    finally:
        worker.stop()
    summary = summary_for(world.settings, str(run.id))
    assert summary and summary["status"] == "completed" and summary["charges_posted"] > 0
    world.assert_exactly_once()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_backfill_children_run_on_a_worker_and_a_retried_failed_child_bills_only_what_is_missing(
    api, tmp_path, whmcs, pg_url
):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from autobill.timeutil import utc_now
    from flows.backfill import NIGHTLY_DEPLOYMENT, backfill, run_child_deployment

    world = BillingWorld(tmp_path, whmcs, D1, D2, kind="fusionpbx", pg_url=pg_url)
    down = world.server_ids[1]
    world.drop(D1, [world.server_ids[0]])
    world.drop(D2, [world.server_ids[0]])  # the other PBX's database is not there yet: its extraction fails
    env = {**api.env(), **WHMCS_ENV, "AUTOBILL_CONFIG": str(world.config_path)}
    worker = start_worker(api, POOL, tmp_path / "worker.log", cwd=ROOT, extra_env=env)
    try:
        state = backfill(start_date=D1, end_date=D2, config_path=str(world.config_path), child_timeout_minutes=4,
                         return_state=True)
        first = state.result(raise_on_failure=False)
        assert state.type.value == "FAILED" and first["not_completed"] == [str(D1), str(D2)], (first, worker.tail())
        assert [r["mode"] for r in first["results"]] == ["deployment", "deployment"]
        assert all(r["status"] == "partial" and r["billed"] > 0 for r in first["results"])
        parent_id = state.state_details.flow_run_id
        child1, child2 = (r["flow_run_id"] for r in first["results"])
        with get_client(sync_client=True) as client:
            c1 = client.read_flow_run(child1)
            assert c1.parent_task_run_id is not None and c1.name == f"autobill-{D1}" and "backfill" in c1.tags
            assert c1.idempotency_key == f"backfill/{parent_id}/{D1}"
        world.assert_exactly_once()
        billed_before = {b.cdr_key for b in world.billed()}

        # The PBX is back. An operator retries the D1 child from the UI (what the Retry button does).
        world.drop(D1, [down])
        world.drop(D2, [down])
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(c1.id, Scheduled(message="Retry from the UI"), force=True)
        retried = _wait_final(c1.id)
        assert retried.state.type.value == "COMPLETED" and retried.run_count == 2, worker.tail()
        new = [b for b in world.billed() if b.cdr_key not in billed_before]
        assert new and {b.server for b in new} == {down} and {b.billing_date for b in new} == {D1}
        world.assert_exactly_once()

        # A retry of the backfill run itself: same keys; the completed child is reused, the failed one rescheduled.
        @flow(name="backfill-retry-probe")
        def probe() -> list:
            started = utc_now()
            params = {"dry_run": False, "servers": None, "config_path": str(world.config_path)}
            return [run_child_deployment(world.settings, NIGHTLY_DEPLOYMENT, d,
                                         {**params, "billing_date": d.isoformat()},
                                         f"backfill/{parent_id}/{d}", started, 240) for d in (D1, D2)]

        again = probe()
        assert [r.flow_run_id for r in again] == [child1, child2]
        assert [r.state for r in again] == ["COMPLETED", "COMPLETED"], (again, worker.tail())
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(child1).run_count == 2  # not run a third time
            assert client.read_flow_run(child2).run_count == 2
        later = [b for b in world.billed() if b.cdr_key not in billed_before and b.billing_date == D2]
        assert later and {b.server for b in later} == {down}
        world.assert_exactly_once()
        generated_down = world.calls.filter(world.calls["server"] == down)["cdr_key"].to_list()
        assert {b.cdr_key for b in world.billed() if b.server == down} <= set(generated_down)
    finally:
        worker.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_serve_registers_the_deployments_and_runs_one_without_a_work_pool(api, tmp_path, whmcs):
    from prefect.client.orchestration import get_client

    world = BillingWorld(tmp_path, whmcs, D1, D1)
    world.drop(D1)
    env = {**api.env(), **WHMCS_ENV, "PYTHONUNBUFFERED": "1"}
    with get_client(sync_client=True) as client:  # a machine that serves instead of running workers
        try:
            client.delete_deployment(client.read_deployment_by_name("autobill/nightly").id)
        except Exception:  # noqa: BLE001 - not deployed by the earlier tests (run alone)
            pass
    proc = ManagedProcess([sys.executable, str(ROOT / "deployments" / "serve.py"), "-c", str(world.config_path),
                           "--only", "nightly"], env, tmp_path / "serve.log", cwd=ROOT)
    try:
        with get_client(sync_client=True) as client:
            deadline, dep = time.monotonic() + 120, None
            while time.monotonic() < deadline:
                assert proc.alive(), proc.tail()
                try:
                    dep = client.read_deployment_by_name("autobill/nightly")
                    if dep.schedules:
                        break
                except Exception:  # noqa: BLE001 - not registered yet
                    pass
                time.sleep(0.5)
            assert dep is not None and dep.work_pool_name is None, proc.tail()
            (sched,) = dep.schedules
            assert (sched.schedule.cron, sched.schedule.timezone) == ("55 0 * * *", world.settings.timezone)
            run = client.create_flow_run_from_deployment(
                dep.id, parameters={"billing_date": D1.isoformat(), "config_path": str(world.config_path)})
        done = _wait_final(run.id)
        assert done.state.type.value == "COMPLETED", (done.state, proc.tail())
    finally:
        proc.stop()
    assert not proc.alive()
    summary = summary_for(world.settings, str(run.id))
    assert summary and summary["charges_posted"] > 0
    world.assert_exactly_once()
