"""Settle uncertain charges from what WHMCS shows, before posting (every nightly run).

For each uncertain charge (its AddBillableItem may or may not have created the item):

- with a read-only WHMCS database (`whmcs.database_url`): look for its key in the client's rows
  of `tblbillableitems`; the table holds every item whenever it was stored, so this settles it at once;
- otherwise, once WHMCS's daily cron has run after the charge became uncertain (GetAutomationLog's
  `lastDailyCronInvocationTime`, else the configured `whmcs.cron_time` + `cron_margin_minutes`),
  read that client's invoices dated since the post (GetInvoices, newest first; GetInvoice for
  the lines) and look for the key in the line descriptions.

A credit (a correction that lowers a line, posted with AddCredit: re-rate decreases, dispute
credits) never reaches an invoice or the billable-items table: its key is looked for in the
client's credit log (GetCredits), which AddCredit writes synchronously, so the log is complete as of
the moment it is read; absent counts as never stored only when that moment is at least
`whmcs.credit_margin_seconds` after the credit became uncertain.

Found -> `posted` (invoice, line and billable item recorded; for a credit, the credit log entry); certainly absent -> `pending`, posted
again by this run's post step; anything else stays `uncertain` with the reason (e.g. the cron has
not run yet) for the next run or an operator (`autobill charges reconcile`). The rule is
autobill/reconcile.py; every decision is kept with its evidence (autobill/ledger/reconciliation.py).
WHMCS times are read in the WHMCS timezone (`whmcs.timezone`, default the billing timezone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from autobill.config import Settings
from autobill.ledger.reconciliation import Uncertain, record_decision, uncertain_charges
from autobill.reconcile import (
    PENDING,
    POSTED,
    Decision,
    Evidence,
    Line,
    assumed_cron_done,
    decide,
    marker,
    whmcs_date,
    whmcs_time,
)
from autobill.timeutil import utc_now
from connectors.whmcs import WhmcsClient, WhmcsError
from connectors.whmcs_db import WhmcsDatabase, WhmcsDatabaseError


class InvoiceReader(Protocol):
    def get_automation_log(self) -> dict: ...
    def invoices_since(self, client_id: int, since: Any) -> list[dict]: ...
    def get_invoice(self, invoice_id: int) -> dict: ...
    def get_credits(self, client_id: int) -> list[dict]: ...


@dataclass
class ReconcileReport:
    checked: int = 0
    posted: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    undecided: list[tuple[str, str]] = field(default_factory=list)  # (key, why)
    cron: str | None = None  # what was known of WHMCS's last daily cron
    invoices_read: int = 0

    def add(self, key: str, decision: Decision) -> None:
        self.checked += 1
        if decision.outcome == POSTED:
            self.posted.append(key)
        elif decision.outcome == PENDING:
            self.pending.append(key)
        else:
            self.undecided.append((key, decision.reason))


def last_daily_cron(settings: Settings, client: InvoiceReader, now: datetime) -> tuple[datetime | None, str]:
    """(UTC start of WHMCS's last daily cron run, how that is known)."""
    tz, whmcs = settings.whmcs_tz, settings.whmcs
    try:
        raw = str(client.get_automation_log().get("lastDailyCronInvocationTime") or "")
        at = whmcs_time(raw, tz)
        if at is not None:
            return at, f"WHMCS's daily cron (GetAutomationLog: {raw} {tz.key})"
        return None, "GetAutomationLog shows no daily cron run yet"
    except (WhmcsError, ValueError) as exc:
        why = f"GetAutomationLog failed ({exc})"
    if whmcs is not None and whmcs.cron_time:
        at = assumed_cron_done(now, tz, whmcs.cron_time, whmcs.cron_margin_minutes)
        return at, (f"WHMCS's daily cron as configured (whmcs.cron_time {whmcs.cron_time} {tz.key} + "
                    f"{whmcs.cron_margin_minutes} min; {why})")
    return None, f"{why}; set whmcs.cron_time to fall back on the configured cron time"


def _from_database(db: WhmcsDatabase, charge: Uncertain, now: datetime) -> Evidence:
    try:
        rows = db.items_with(charge.client_id, marker(charge.key))
    except WhmcsDatabaseError as exc:
        return Evidence("database", None, complete=False, error=str(exc))
    return Evidence("database", now, "the WHMCS database read",
                    lines=tuple(Line(r.description, billable_id=r.id) for r in rows))


def _from_invoices(client: InvoiceReader, settings: Settings, charges: list[Uncertain], cron_at: datetime,
                   cron_source: str, report: ReconcileReport) -> Evidence:
    """Every line of the client's invoices dated since the earliest of these posts (WHMCS-local date)."""
    starts = [c.posting_started_at or c.uncertain_since for c in charges]
    since = whmcs_date(min(starts), settings.whmcs_tz)
    scanned: list[int] = []
    lines: list[Line] = []
    try:
        for inv in client.invoices_since(charges[0].client_id, since):
            invoice = client.get_invoice(int(inv["id"]))
            report.invoices_read += 1
            scanned.append(int(inv["id"]))
            for item in invoice["items"]:
                relid = int(str(item.get("relid") or 0) or 0)
                lines.append(Line(str(item.get("description") or ""), invoice_id=int(inv["id"]),
                                  item_id=int(item["id"]),
                                  billable_id=relid if str(item.get("type", "")).lower() == "item" and relid else None))
    except (WhmcsError, KeyError, ValueError, TypeError) as exc:
        return Evidence("invoices", cron_at, cron_source, tuple(lines), tuple(scanned), complete=False,
                        error=f"{type(exc).__name__}: {exc}"[:500])
    return Evidence("invoices", cron_at, cron_source, tuple(lines), tuple(scanned))


def _from_credits(client: InvoiceReader, client_id: int, now: datetime) -> Evidence:
    """The client's whole credit log. `as_of` is when the read was sent: the log holds every credit
    WHMCS finished storing before then (AddCredit writes it synchronously)."""
    as_of = utc_now() if now is None else now
    try:
        entries = client.get_credits(client_id)
        lines = tuple(Line(str(e.get("description") or ""), credit_id=int(str(e["id"]))) for e in entries)
    except (WhmcsError, KeyError, ValueError, TypeError) as exc:
        return Evidence("credits", None, "GetCredits", complete=False, error=f"{type(exc).__name__}: {exc}"[:500])
    return Evidence("credits", as_of, "the client's credit log (GetCredits)", lines=lines)


def reconcile_uncertain(
    settings: Settings, client: InvoiceReader, db: WhmcsDatabase | None = None, run_id: int | None = None,
    now: datetime | None = None, actor: str = "autobill",
) -> ReconcileReport:
    """Decide every uncertain charge that can be decided; record each decision with its evidence."""
    report = ReconcileReport()
    charges = uncertain_charges(settings)
    if not charges:
        return report
    read_at = now  # None: each credit log read is dated when it is sent
    now = now or utc_now()
    margin = timedelta(seconds=settings.whmcs.reconcile_margin_seconds if settings.whmcs else 0)
    credit_margin = timedelta(seconds=settings.whmcs.credit_margin_seconds if settings.whmcs else 60)
    credits: dict[int, list[Uncertain]] = {}
    for charge in charges:
        if charge.as_credit:
            credits.setdefault(charge.client_id, []).append(charge)
    for client_id, mine in credits.items():
        evidence = _from_credits(client, client_id, read_at)
        for charge in mine:
            decision = decide(charge.key, charge.uncertain_since, evidence, credit_margin)
            record_decision(settings, charge, decision, evidence, run_id=run_id, actor=actor)
            report.add(charge.key, decision)
    charges = [c for c in charges if not c.as_credit]
    rest: list[Uncertain] = []
    for charge in charges:
        if db is None:
            rest.append(charge)
            continue
        evidence = _from_database(db, charge, now)
        decision = decide(charge.key, charge.uncertain_since, evidence, margin)
        if not evidence.complete:
            rest.append(charge)  # the database could not answer: try the invoices
            continue
        record_decision(settings, charge, decision, evidence, run_id=run_id, actor=actor)
        report.add(charge.key, decision)
    if not rest:
        return report
    cron_at, cron_source = last_daily_cron(settings, client, now)
    report.cron = cron_source if cron_at is None else f"{cron_source} = {cron_at:%Y-%m-%d %H:%M:%S} UTC"
    by_client: dict[int, list[Uncertain]] = {}
    for charge in rest:
        by_client.setdefault(charge.client_id, []).append(charge)
    for mine in by_client.values():
        # Only what a cron after the charge became uncertain could show is worth reading.
        ripe = [c for c in mine if cron_at is not None and cron_at > c.uncertain_since + margin]
        evidence = (_from_invoices(client, settings, ripe, cron_at, cron_source, report) if ripe
                    else Evidence("invoices", cron_at, cron_source))
        for charge in mine:
            decision = decide(charge.key, charge.uncertain_since, evidence, margin)
            record_decision(settings, charge, decision, evidence, run_id=run_id, actor=actor)
            report.add(charge.key, decision)
    return report


@task(name="reconcile-uncertain", cache_policy=NO_CACHE, retries=0)
def reconcile_task(settings: Settings, run_id: int | None = None) -> ReconcileReport:
    """Not retried as a task: a decision already recorded is final, the rest is tried next run."""
    logger = get_run_logger()
    if settings.whmcs is None:
        return ReconcileReport()
    db = None
    try:
        if settings.whmcs.database_url is not None:
            db = WhmcsDatabase(settings.whmcs.database_url.get(), timeout_seconds=settings.whmcs.timeout_seconds)
        with WhmcsClient.from_settings(settings.whmcs) as client:
            report = reconcile_uncertain(settings, client, db, run_id)
    except (WhmcsError, WhmcsDatabaseError) as exc:
        logger.warning("reconciliation skipped this run: %s", exc)
        return ReconcileReport(cron=f"not reconciled: {exc}")
    finally:
        if db is not None:
            db.close()
    if report.checked:
        logger.info("reconciled %s uncertain charge(s): %s found in WHMCS, %s not (posted again), %s undecided; %s",
                    report.checked, len(report.posted), len(report.pending), len(report.undecided), report.cron)
        for key, why in report.undecided:
            logger.warning("still uncertain: %s: %s", key, why)
    return report
