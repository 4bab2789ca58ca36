"""Autosuspend steps: recover, read WHMCS, decide, apply, record — plain functions and their
thin Prefect tasks. The sequence is flows/autosuspend.py's (`cycle`), run with these tasks by the
flow and with the plain functions by `autobill suspend-check`.

Apply, so that a failure never leaves the ledger and the PBX disagreeing:
  1. write an intent into the service's `suspension_state.detail` ("pending": suspend|unsuspend,
     with the targets), so a crash between the PBX change and the ledger write is completed by
     the next cycle (`recover`) instead of being forgotten;
  2. change the PBX (FusionPBX gateway/extension via connectors.fusionpbx_switch, or WHMCS
     ModuleSuspend/ModuleUnsuspend);
  3. only when it confirmed: state + suspension log in one transaction. A definite failure clears
     the intent and logs an error (nothing changed, retried next cycle); an uncertain one (WHMCS
     transport failure, switch left half-done) keeps the intent for recovery.
Unsuspend always uses the mode and detail recorded at suspension, never today's config.

Notify: "VoIP Zero Balance" after a balance suspension, "Low Balance Alert" once per crossing.
Every email is claimed first in `notifications` (unique `dedup_key`), then sent; a definite
failure removes the claim (retried next cycle), an uncertain one (WhmcsUncertainError: maybe
sent) keeps it, so a client may miss an email but is never spammed.

`dry_run` reads and decides only: no PBX, WHMCS, email or ledger writes.
No retries on the tasks: a failed step changes nothing and the next cycle (5 min) retries it;
the WHMCS client already retries reads. NO_CACHE: every cycle must read afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from autobill.config import Settings
from autobill.ledger.runs import finish_run as finish_ledger_run
from autobill.ledger.runs import start_exclusive_run
from autobill.reconcile import whmcs_time
from autobill.suspension.apply import Applier, ChangeError, SwitchFactory, load_states, record_admin_alerts
from autobill.suspension.credit import DailyCron, daily_cron
from autobill.suspension.planning import (
    CycleReport,
    Outcome,
    ReadResult,
    StateRow,
    change_rows,
    decide_all,
    plan,
    recovery_work,
    services_by_client,
    summary_markdown,
)
from autobill.suspension.rules import Decision, Policy
from autobill.suspension.usage import NewHold, UsageResult, with_usage
from autobill.timeutil import utc_now
from connectors.fusionpbx_switch import FusionPBXSwitch, SwitchInconsistent
from connectors.whmcs import WhmcsClient, WhmcsError, WhmcsTransportError, WhmcsUncertainError
from connectors.whmcs_accounts import READ_WORKERS, WhmcsFactory, read_snapshots


def change_uncertain(exc: BaseException) -> bool:
    """A failed suspend/unsuspend that may have taken effect anyway: its intent is kept."""
    return isinstance(exc, SwitchInconsistent | WhmcsTransportError | WhmcsUncertainError)


def email_outcome(exc: BaseException) -> str | None:
    """An email that raised: maybe sent (WhmcsUncertainError), failed (any other WHMCS error), or
    a bug (None: re-raised)."""
    if isinstance(exc, WhmcsUncertainError):
        return "maybe"
    return "failed" if isinstance(exc, WhmcsError) else None


def start_run(settings: Settings, dry_run: bool, flow_run_id: str | None = None) -> int | None:
    """Record the run; refuse (RunBusy) when another non-dry cycle started less than
    `stale_after_seconds` ago and has not finished (the deployment's concurrency limit covers flow
    runs; this also covers `suspend-check` started by hand meanwhile)."""
    if dry_run:
        return None
    return start_exclusive_run(settings, "autosuspend", settings.autosuspend.stale_after_seconds, flow_run_id)


def finish_run(settings: Settings, report: CycleReport) -> None:
    if report.run_id is not None:
        finish_ledger_run(settings, report.run_id, report.status, report.summary())


def fail_run(settings: Settings, run_id: int | None, exc: BaseException) -> None:
    if run_id is not None:
        finish_ledger_run(settings, run_id, "failed", {"error": f"{type(exc).__name__}: {exc}"[:500]})


def default_whmcs_factory(settings: Settings) -> WhmcsFactory:
    if settings.whmcs is None:
        raise WhmcsError("config", "no `whmcs` section in the configuration")
    return lambda: WhmcsClient.from_settings(settings.whmcs)


def default_switch_factory(settings: Settings) -> SwitchFactory:
    def make(server_id: str) -> FusionPBXSwitch:
        server = settings.server(server_id)
        if server.kind != "fusionpbx":
            raise ChangeError(f"server {server_id} is {server.kind}: gateway/extension modes need FusionPBX")
        return FusionPBXSwitch.from_server(server)

    return make


@dataclass
class CycleContext:
    """What every step of one cycle shares (the CLI and the flow build the same one)."""

    settings: Settings
    dry_run: bool = False
    run_id: int | None = None
    whmcs_factory: WhmcsFactory | None = None
    switch_factory: SwitchFactory | None = None
    now: Callable[[], datetime] = utc_now
    actor: str = "autosuspend"
    workers: int = READ_WORKERS
    started_at: datetime = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        self.whmcs_factory = self.whmcs_factory or default_whmcs_factory(self.settings)
        self.switch_factory = self.switch_factory or default_switch_factory(self.settings)

    def applier(self) -> Applier:
        return Applier(self.settings, self.whmcs_factory, self.switch_factory, self.run_id, self.actor, self.now,
                       workers=max(1, self.workers // 2), is_uncertain=change_uncertain,
                       email_outcome=email_outcome)  # fmt: skip


def begin(ctx: CycleContext, flow_run_id: str | None = None) -> CycleContext:
    ctx.started_at = ctx.now()
    ctx.run_id = start_run(ctx.settings, ctx.dry_run, flow_run_id)
    return ctx


def recover(ctx: CycleContext) -> list[Outcome]:
    """Complete what an interrupted earlier cycle began (never in a dry run)."""
    works = [] if ctx.dry_run else recovery_work(load_states(ctx.settings.ledger))
    return ctx.applier().apply(works, [], [], {}) if works else []


def read(ctx: CycleContext) -> ReadResult:
    return read_snapshots(ctx.settings, ctx.whmcs_factory, ctx.now, ctx.workers)


def usage(ctx: CycleContext, result: ReadResult) -> UsageResult:
    """Add not-invoiced charges, unbilled intraday usage, alert levels and toll-fraud holds to the
    snapshots (autobill/suspension/usage.py), and alert the operator of each new hold."""
    found = with_usage(ctx.settings, result, ctx.now(), ctx.run_id, ctx.dry_run, last_daily_cron(ctx))
    if found.new_holds and not ctx.dry_run and ctx.settings.fraud_guard.admin_email:
        alert_operator(ctx, found.new_holds)
    return found


def last_daily_cron(ctx: CycleContext) -> DailyCron:
    """WHMCS's last daily cron, read once per cycle (GetAutomationLog); on any WHMCS error the
    configured `whmcs.cron_time` (autobill.suspension.credit.daily_cron)."""
    s, raw, error = ctx.settings, None, None
    client = ctx.whmcs_factory()
    try:
        raw = str(client.get_automation_log().get("lastDailyCronInvocationTime") or "")
        whmcs_time(raw, s.whmcs_tz)  # unreadable -> the configured time
    except (WhmcsError, ValueError) as exc:
        error = str(exc)[:200] or type(exc).__name__
    finally:
        client.close()
    w = s.whmcs
    return daily_cron(raw, error, ctx.now(), s.whmcs_tz, w.cron_time if w else None, w.cron_margin_minutes if w else 0)


def alert_operator(ctx: CycleContext, holds: list[NewHold]) -> None:
    """SendAdminEmail per new hold, claimed once (`fraud-admin:<hold>`); a failure is logged in
    the suspension log, never retried into a second email."""
    def send(client) -> list[tuple[NewHold, str]]:
        out = []
        for h in holds:
            lines = "\n".join(c.line() for c in h.evidence[:20])
            try:
                client.send_admin_email(
                    f"Toll-fraud guard: service {h.service_id} (client {h.client_id}) suspended",
                    f"{h.reason}\n\nCalls in the window:\n{lines}\n\nClear with: autobill fraud clear {h.service_id}",
                )
                out.append((h, "sent"))
            except WhmcsError as exc:
                out.append((h, f"failed: {exc}"))
        return out

    client = ctx.whmcs_factory()
    try:
        results = send(client)
    finally:
        client.close()
    record_admin_alerts(ctx.settings, ctx.run_id, results, ctx.now())


def decide_cycle(ctx: CycleContext, result: ReadResult) -> tuple[list[Decision], dict[int, StateRow]]:
    states = load_states(ctx.settings.ledger)
    return decide_all(result.snapshots, states, Policy.from_settings(ctx.settings, ctx.now())), states


def apply_cycle(ctx: CycleContext, result: ReadResult, decisions: list[Decision], states: dict[int, StateRow]) -> list[Outcome]:
    if ctx.dry_run:
        return []
    works, alerts, rearms = plan(decisions, result.targets, states)
    return ctx.applier().apply(works, alerts, rearms, services_by_client(result.targets))


def finish(ctx: CycleContext, result: ReadResult, decisions: list[Decision], outcomes: list[Outcome],
           usage_summary: dict | None = None) -> CycleReport:
    report = CycleReport(ctx.run_id, ctx.dry_run, ctx.started_at, ctx.now(), len(result.snapshots), result.clients_read,
                         result.unreadable_clients, decisions, outcomes, result.errors, usage_summary or {})  # fmt: skip
    finish_run(ctx.settings, report)
    return report


def publish(report: CycleReport) -> None:
    """The cycle's artifacts: `autosuspend-changes` (table) and `autosuspend-summary` (markdown)."""
    rows = change_rows(report)
    if rows:
        create_table_artifact(rows, key="autosuspend-changes", description="Decisions that changed something")
    create_markdown_artifact(summary_markdown(report), key="autosuspend-summary", description="Autosuspend cycle")


def _task(fn, name: str, timeout: float):
    return task(name=name, cache_policy=NO_CACHE, retries=0, timeout_seconds=timeout, log_prints=True)(fn)


recover_task = _task(recover, "autosuspend-recover", 120)
read_task = _task(read, "autosuspend-read-whmcs", 180)
usage_task = _task(usage, "autosuspend-usage-and-guard", 60)
decide_task = _task(decide_cycle, "autosuspend-decide", 60)
apply_task = _task(apply_cycle, "autosuspend-apply", 180)
finish_task = _task(finish, "autosuspend-record", 60)
publish_task = _task(publish, "autosuspend-publish", 60)
