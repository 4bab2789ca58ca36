"""The embedded-default demo: the whole job on this machine, from nothing but the package.

What it does, in order (each step prints what it did):

1. generates a month of calls for ~50 clients on three servers of different kinds: a CSV drop
   folder, a LesNet carrier file (served over HTTP by the offline LesNet sandbox) and a Vodia PBX
   (the offline Vodia REST sandbox), plus the matching autobill.yaml and tariff;
2. starts the WHMCS API sandbox (SQLite state in the demo directory) holding the same clients,
   and a real `prefect server` on 127.0.0.1 (UI at :4200 when free) with its own PREFECT_HOME;
3. registers the deployments of prefect.yaml (so the UI lists them; the autosuspend schedule is
   paused, as no worker runs here);
4. runs the nightly flow for the last day of the month (it bills the whole month: nothing was
   billed before), then a short backfill after a late CDR file arrived (the late calls become
   new charge lines, the dates already billed post nothing), then one autosuspend cycle (a few
   clients are out of credit or low); last, more late calls whose rerun loses one WHMCS answer
   (sandbox fault switch): that charge waits `uncertain` until WHMCS's daily cron
   (`WhmcsSandbox.run_daily_cron`) invoices it and the next rerun settles it by itself;
5. prints where to look: flow-run pages, artifact keys, the ledger, the log file, and what the
   WHMCS sandbox now holds as billable items.

Everything it starts is stopped at the end (process groups, sandboxes), unless `keep_ui`,
which keeps the server and the WHMCS sandbox up until Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from autobill.money import format_money

DEMO_SECRETS = {"AUTOBILL_DEMO_WHMCS_ID": "demo", "AUTOBILL_DEMO_WHMCS_SECRET": "demo-secret",
                "AUTOBILL_DEMO_VODIA_PASSWORD": "demo-vodia"}
OWNED = ("autobill.yaml", "tariffs", "drop", "lesnet", "vodia", "data", "prefect", "logs", "whmcs.db", "staging")
DEMO_POOL = "autobill-process"  # the work pool the demo registers its deployments on
ARTIFACT_KEYS = ("autobill-run-summary", "autobill-client-totals", "autobill-service-conflicts", "autobill-backfill-summary",
                 "autosuspend-summary", "autosuspend-changes", "autobill-run-durations")
BROKE, LOW = 3, 3  # clients with no credit (suspended) and with low credit (alerted)


@dataclass
class DemoResult:
    workdir: Path
    config_path: Path
    ui_url: str
    ledger: str
    log_file: Path
    first: date
    last: date
    calls: int = 0
    flow_runs: dict[str, str] = field(default_factory=dict)  # step -> flow run id
    nightly: dict[str, Any] | None = None
    backfill: dict[str, Any] | None = None
    autosuspend: dict[str, Any] | None = None
    billable_items: int = 0
    billed_total: dict[str, Decimal] = field(default_factory=dict)
    seconds: float = 0.0

    def run_url(self, flow_run_id: str) -> str:
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}"


def _clean(workdir: Path) -> None:
    """Remove what an earlier demo wrote here (only the demo's own entries: never a whole directory
    someone pointed --dir at)."""
    for name in OWNED:
        path = workdir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _prepare_environment(workdir: Path, api_url: str, log_file: Path) -> None:
    """Settings for this process's Prefect client. Environment variables work when Prefect is not
    imported yet (the CLI); `_client_settings` covers a process that imported it already (tests)."""
    import sys

    os.environ.update(DEMO_SECRETS)
    if "prefect" not in sys.modules:
        from autobill.logging_setup import prefect_logging_env

        os.environ.update({"PREFECT_API_URL": api_url, "PREFECT_HOME": str(workdir / "prefect" / "client"),
                           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                           # run logs go to the UI and the log file; the terminal shows the demo's own lines
                           "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "ERROR",
                           **prefect_logging_env(log_file)})


def _client_settings(api_url: str):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: api_url})


def build_world(workdir: Path, clients: int, days: int, last: date, lesnet_url: str) -> tuple[Any, Any, dict]:
    """Calls, on-disk sources and the config dict (before the sandboxes' URLs are filled in)."""
    from sandboxes.generate import generate_calls, make_world, write_outputs

    world = make_world(clients=clients, servers_per_kind=1, kinds=("file", "lesnet", "vodia"), seed=42)
    first = last - timedelta(days=days - 1)
    calls = generate_calls(world, first, last, calls_per_client_day=20)
    out = write_outputs(workdir, world, calls, lesnet_base_url=lesnet_url)
    config = yaml.safe_load(Path(out["config"]).read_text())
    return world, calls, config


def run_demo(workdir: Path, keep_ui: bool = False, clients: int = 50, days: int = 30, port: int = 4200,
             echo: Callable[[str], None] = print, stop_event: threading.Event | None = None) -> DemoResult:
    """The demo (module docstring); returns what it did, for the CLI's summary and the tests."""
    t0 = time.monotonic()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    _clean(workdir)
    from cli.local_prefect import LocalPrefectServer, free_port

    chosen = free_port(port)
    if chosen != port:
        echo(f"port {port} is busy: the Prefect UI will be on {chosen}")
    server = LocalPrefectServer(workdir / "prefect" / "server", port=chosen,
                                extra_env={"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true"})
    log_file = workdir / "logs" / "autobill.log"
    _prepare_environment(workdir, server.api_url, log_file)
    from autobill.timeutil import yesterday
    from sandboxes.lesnet import LesNetSandbox
    from sandboxes.vodia import VodiaSandbox
    from sandboxes.whmcs import WhmcsSandbox

    tz = "America/Toronto"
    from zoneinfo import ZoneInfo

    last = yesterday(ZoneInfo(tz))
    echo("Autobill demo")
    echo(f"  starting the Prefect server on {server.ui_url} (first start migrates its database) ...")
    server_thread = threading.Thread(target=server.start, name="prefect-server-start", daemon=True)
    server_thread.start()  # in parallel with generating the month
    lesnet = LesNetSandbox().start()
    whmcs = vodia = None
    try:
        world, calls, config = build_world(workdir, clients, days, last, lesnet.url)
        first = last - timedelta(days=days - 1)
        result = DemoResult(workdir, workdir / "autobill.yaml", server.ui_url, "", log_file, first, last,
                            calls=calls.height)
        echo(f"  generated {calls.height} calls for {clients} clients, {first} .. {last} ({tz}), on "
             + ", ".join(f"{sid} ({kind})" for sid, kind in world.servers.iter_rows()))
        for sid, kind in world.servers.iter_rows():
            if kind == "lesnet":
                lesnet.put(f"lesnet/{sid}.txt", workdir / "lesnet" / f"{sid}.txt")
        vodia_id = next(sid for sid, kind in world.servers.iter_rows() if kind == "vodia")
        vodia = VodiaSandbox(calls.filter(calls["server"] == vodia_id), username="admin",
                             password=DEMO_SECRETS["AUTOBILL_DEMO_VODIA_PASSWORD"]).start()
        whmcs = WhmcsSandbox(db_path=workdir / "whmcs.db", identifier=DEMO_SECRETS["AUTOBILL_DEMO_WHMCS_ID"],
                             secret=DEMO_SECRETS["AUTOBILL_DEMO_WHMCS_SECRET"], timezone=tz).start()
        _seed_whmcs(whmcs, config, world)
        _finish_config(config, whmcs, vodia, vodia_id)
        result.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        from autobill.config import load_settings

        settings = load_settings(result.config_path)
        result.ledger = settings.ledger
        echo(f"  WHMCS sandbox at {whmcs.url} with {clients} clients; config {result.config_path}")
        server_thread.join()
        if server.process is None:
            raise RuntimeError("the Prefect server did not start: see " + str(server.home / "server.log"))
        echo(f"  Prefect server up in {server.started_in:.1f} s")
        with _client_settings(server.api_url):
            from autobill.logging_setup import use_file_logging

            use_file_logging(log_file)
            _register_deployments(settings.timezone, echo)
            _run_steps(result, settings, world, echo, whmcs, vodia)
            _drain_logs()
        items = whmcs.billable_items()
        result.billable_items = len(items)
        for i in items:
            result.billed_total["USD"] = result.billed_total.get("USD", Decimal(0)) + i["amount"]
        result.seconds = time.monotonic() - t0
        _where_to_look(result, whmcs, echo)
        if not keep_ui:
            echo("  (the UI stops with the demo; `autobill demo --keep-ui` keeps it up until Ctrl-C)")
        if keep_ui:
            echo(f"\nThe UI stays up at {server.ui_url} (and the WHMCS sandbox at {whmcs.url}). Press Ctrl-C to stop.")
            _wait_for_stop(stop_event)
        return result
    finally:
        for sandbox in (lesnet, vodia):
            if sandbox is not None:
                sandbox.stop()
        if whmcs is not None:
            whmcs.close()
        server_thread.join(timeout=200)
        server.stop()
        echo("demo stopped: nothing left running")


def _seed_whmcs(whmcs, config: dict, world) -> None:
    """One WHMCS client per generated client (a few out of credit, a few low) and its VoIP service
    kept in WHMCS as the ictVoIP guides do (server assignment, Domain, DIDs custom field): the
    config has no `services:` list, the nightly run reads them (`service_sync`)."""
    from sandboxes.generate import PLAN_PRODUCTS, seed_whmcs_services, service_sync_section

    ids = world.clients["client_id"].to_list()
    broke, low = set(ids[1 : 1 + BROKE]), set(ids[1 + BROKE : 1 + BROKE + LOW])
    for cid in ids:
        credit = "0.00" if cid in broke else "3.00" if cid in low else f"{50 + (cid * 37) % 150}.00"
        got = whmcs.add_client(firstname=f"Client{cid}", lastname="Demo", credit=credit,
                               custom_fields={"Has VoIP Service": "on"})
        if got != cid:
            raise RuntimeError(f"WHMCS sandbox gave client id {got} for generated client {cid} (sandbox not empty?)")
    seed_whmcs_services(whmcs, world)
    config["services"] = []
    config["service_sync"] = service_sync_section()
    # Autosuspend manages the VoIP products' services of "Has VoIP Service" clients (ModuleSuspend).
    config.setdefault("autosuspend", {})["voip_product_ids"] = sorted(pid for pid, _ in PLAN_PRODUCTS.values())


def _finish_config(config: dict, whmcs, vodia, vodia_id: str) -> None:
    for server in config["servers"]:
        if server["id"] == vodia_id:
            server.update({"url": vodia.url, "username": "admin", "verify_tls": False,
                           "password": {"env": "AUTOBILL_DEMO_VODIA_PASSWORD"}})
        if server["kind"] == "file":
            server["settle_seconds"] = 0
    config["whmcs"] = {"url": whmcs.url, "identifier": {"env": "AUTOBILL_DEMO_WHMCS_ID"},
                       "secret": {"env": "AUTOBILL_DEMO_WHMCS_SECRET"}, "timeout_seconds": 10,
                       "custom_field_ids": dict(whmcs.custom_field_ids)}
    config["nightly_budget_minutes"] = 45


def _register_deployments(timezone: str, echo: Callable[[str], None]) -> None:
    from prefect.client.orchestration import get_client

    from deployments.spec import load_specs, runner_deployments
    from deployments.work_pool import ensure_work_pool

    pool = DEMO_POOL
    ensure_work_pool(pool)
    ids = {}
    for dep in runner_deployments(load_specs(), timezone=timezone):
        ids[dep.name] = dep.apply(work_pool_name=pool)
    with get_client(sync_client=True) as client:
        client.pause_deployment(ids["every-5-min"])  # no worker here: its 5-minute runs would only pile up
    echo(f"  deployments registered on pool {pool}: {', '.join(sorted(ids))} (autosuspend schedule paused)")


def _run_steps(result: DemoResult, settings, world, echo: Callable[[str], None], whmcs=None, vodia=None) -> None:
    from autobill.ledger.runs import run_summary
    from flows.autobill import nightly
    from flows.autosuspend import autosuspend
    from flows.backfill import backfill
    from flows.runners import with_runner

    echo(f"\n== nightly run for {result.last} (bills the whole month: nothing was billed before) ==")
    state = with_runner(nightly, settings)(billing_date=result.last, config_path=str(result.config_path),
                                           return_state=True)
    result.flow_runs["nightly"] = str(state.state_details.flow_run_id)
    result.nightly = run_summary(settings, result.flow_runs["nightly"])
    if result.nightly:
        from cli.run_cmd import print_summary

        print_summary(result.nightly)
    else:
        echo(f"nightly run ended {state.type.value}: {state.message}")

    late_day = result.last - timedelta(days=2)
    late = _late_file(result.workdir, world, late_day)
    echo(f"\n== backfill {late_day} .. {result.last - timedelta(days=1)} after {late} late call(s) of {late_day} "
         "arrived ==")
    state = backfill(start_date=late_day, end_date=result.last - timedelta(days=1), deployment="",
                     config_path=str(result.config_path), return_state=True)
    result.flow_runs["backfill"] = str(state.state_details.flow_run_id)
    result.backfill = state.result(raise_on_failure=False) if state.is_completed() or state.is_failed() else None
    if isinstance(result.backfill, dict):
        from cli.backfill_cmd import print_backfill

        print_backfill(result.backfill)

    prepaid = _prepaid_runs_out_today(settings, world, whmcs, vodia, echo) if whmcs and vodia else None
    echo("\n== one autosuspend cycle ==")
    state = autosuspend(config_path=str(result.config_path), return_state=True)
    result.flow_runs["autosuspend"] = str(state.state_details.flow_run_id)
    result.autosuspend = state.result(raise_on_failure=False) if state.is_completed() else None
    if isinstance(result.autosuspend, dict):
        s = result.autosuspend
        echo(f"  {s.get('services')} services checked; decisions "
             + ", ".join(f"{k} {v}" for k, v in (s.get("decisions") or {}).items()) + f"; applied {s.get('applied')}")
    else:
        echo(f"  autosuspend ended {state.type.value}: {state.message}")
    if prepaid is not None:
        _show_cut_off(settings, prepaid, echo)
    if whmcs is not None:
        _lost_answer_settles(result, settings, world, whmcs, echo)


# -- a prepaid client runs out during the day (#18): cut off within one autosuspend cycle ----------


def _prepaid_runs_out_today(settings, world, whmcs, vodia, echo: Callable[[str], None]) -> int:
    """Today's calls for one prepaid client on the Vodia server (read intraday by the next cycle),
    with its WHMCS credit set 2.00 above what it already owes: the calls cost more than that."""
    from autobill.ledger.intraday import not_invoiced_by_client
    from autobill.timeutil import utc_now
    from sandboxes.generate import todays_calls

    ids = world.clients.filter(world.clients["kind"] == "vodia")["client_id"].to_list()
    cid = ids[-1]
    calls = todays_calls(world, cid, utc_now())
    vodia.add(calls)
    # No WHMCS daily cron has run in the sandbox, so every charge posted tonight is not invoiced yet.
    owed = not_invoiced_by_client(settings, None).get(cid, Decimal(0))
    whmcs.set_credit(cid, owed + Decimal("2.00"))
    echo(f"\n== a prepaid client runs out during the day ==\n  client {cid} (prepaid) has {owed + 2:.2f} of WHMCS "
         f"credit, {owed:.2f} charged and not invoiced yet; it makes {calls.height} calls to +{calls['dst'][0]} "
         f"({calls['billsec'].sum() // 60} min) on {calls['server'][0]} today, {calls['start_utc'].min():%H:%M}-"
         f"{calls['end_utc'].max():%H:%M} UTC: the next cycle reads them from the PBX intraday")
    return cid


def _show_cut_off(settings, cid: int, echo: Callable[[str], None]) -> None:
    from sqlalchemy import select

    from autobill.ledger.db import session_scope
    from autobill.ledger.models import SuspensionLog

    with session_scope(settings.ledger) as s:
        rows = s.scalars(select(SuspensionLog).where(SuspensionLog.client_id == cid, SuspensionLog.action == "suspend")
                         .order_by(SuspensionLog.id)).all()
        lines = [f"  client {cid} service {r.service_id} SUSPENDED ({r.mode}) in this cycle: {r.reason}" for r in rows]
    echo("\n".join(lines) if lines else f"  client {cid} was NOT suspended (see the autosuspend-summary artifact)")


def _lost_answer_settles(result: DemoResult, settings, world, whmcs, echo: Callable[[str], None]) -> None:
    """More late calls of the last day; the rerun posting them loses one WHMCS answer (the item is
    stored, the reply never arrives): that charge is `uncertain`, never re-posted blindly. WHMCS's
    daily cron then invoices it, and the next rerun finds its key on the new invoice: posted."""
    from autobill.ledger.runs import run_summary
    from flows.autobill import nightly
    from flows.runners import with_runner

    late = _late_file(result.workdir, world, result.last, seed=4343)
    echo(f"\n== {late} more late call(s) of {result.last}; the rerun posting them loses one WHMCS answer ==")
    whmcs.fail_next(1, "drop_after_store", action="AddBillableItem")
    for step in ("lost answer", "after cron"):
        if step == "after cron":
            ran = whmcs.run_daily_cron()
            echo(f"  WHMCS daily cron ran: {ran.get('items', 0)} billable item(s) -> {ran.get('invoices', 0)} "
                 "invoice(s); rerun:")
        state = with_runner(nightly, settings)(billing_date=result.last, config_path=str(result.config_path),
                                               return_state=True)
        result.flow_runs[step] = str(state.state_details.flow_run_id)
        summary = run_summary(settings, result.flow_runs[step]) or {}
        echo(f"  {step}: posted {summary.get('charges_posted', 0)}, reconciled from WHMCS "
             f"{summary.get('reconciled_posted', 0)} found / {summary.get('reconciled_pending', 0)} not there, "
             f"uncertain left {len(summary.get('uncertain') or [])}; status {summary.get('status', state.type.value)}")


def _late_file(workdir: Path, world, day: date, seed: int = 4242) -> int:
    """A PBX delivering calls of `day` late: a new CSV in the drop folder of the file server."""
    from sandboxes.generate import generate_calls, write_drop_folder

    sid = next(s for s, k in world.servers.iter_rows() if k == "file")
    late = generate_calls(world, day, day, calls_per_client_day=2, seed=seed)
    late = late.filter(late["server"] == sid)
    staging = workdir / "staging"
    for path in write_drop_folder(staging, late, world.timezone):
        path.replace(workdir / "drop" / sid / f"late-{path.name}")
    shutil.rmtree(staging, ignore_errors=True)
    return late.height


def _drain_logs() -> None:
    """Ship the buffered run logs and events before the server stops (else they are retried at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.instance().drain()
        except RuntimeError:  # never started
            pass


def _where_to_look(result: DemoResult, whmcs, echo: Callable[[str], None]) -> None:
    ui = result.ui_url
    echo("\n== where to look ==")
    echo(f"  Prefect UI        {ui}   (deployments: {ui}/deployments)")
    for step, run_id in result.flow_runs.items():
        echo(f"  {step:<17} {result.run_url(run_id)}")
    if "nightly" in result.flow_runs:
        echo(f"  its artifacts     {ui}/v2/runs/flow-run/{result.flow_runs['nightly']}?tab=Artifacts")
    echo("  artifacts         " + ", ".join(ARTIFACT_KEYS) + f"   ({ui}/artifacts)")
    echo(f"  ledger            {result.ledger}")
    echo(f"  run history       autobill runs -c {result.config_path}")
    echo(f"  services (WHMCS)  autobill services list -c {result.config_path}")
    echo(f"  log file          {result.log_file}")
    items = whmcs.billable_items()
    per_client: dict[int, Decimal] = {}
    for i in items:
        per_client[i["userid"]] = per_client.get(i["userid"], Decimal(0)) + i["amount"]
    total = sum(per_client.values(), Decimal(0))
    echo(f"  WHMCS sandbox     {len(items)} billable items for {len(per_client)} clients, total "
         f"{format_money(total, 'USD')} (invoiceaction nextcron), {len(whmcs.module_calls())} module suspensions, "
         f"{len(whmcs.emails())} emails")
    for cid, amount in sorted(per_client.items(), key=lambda kv: -kv[1])[:5]:
        echo(f"                    client {cid}: {format_money(amount, 'USD')}")
    echo("  deployments       shown \"Not Ready\" in the UI: no worker polls their pool in the demo (its runs")
    echo("                    ran in this process). To run them from the UI, start one:")
    echo(f"                    PREFECT_API_URL={ui}/api prefect worker start --pool {DEMO_POOL}")
    echo("  lost answer       one WHMCS answer was lost mid-post: the charge waited `uncertain` (never")
    echo("                    re-posted blindly) until WHMCS's daily cron invoiced it; the next run found its")
    echo("                    key on the invoice and settled it: no `autobill charges reconcile` by hand")
    echo(f"  finished in {result.seconds:.0f} s")
    echo("\n== explore the demo's ledger and runs (copy and paste) ==")
    echo(f"  export AUTOBILL_CONFIG={result.config_path}")
    for command in ("autobill runs", "autobill charges list", "autobill charges list --state zero --all",
                    "autobill charges reconcile", "autobill quarantine list", "autobill runs --json"):
        echo(f"  {command}")


def _wait_for_stop(stop_event: threading.Event | None) -> None:
    """Until Ctrl-C, SIGTERM or `stop_event` (a process started in the background ignores SIGINT by
    inheritance, so both signals get an explicit handler)."""
    event = stop_event or threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    for sig in previous:
        signal.signal(sig, lambda *_: event.set())
    try:
        while not event.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
