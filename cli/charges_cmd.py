"""`autobill charges list|reconcile`: see charge lines and settle the uncertain ones."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated

import typer

from autobill.money import format_amounts, format_money
from cli.common import ConfigOption, check_choice, fail, parse_day, settings_or_exit, usage
from cli.tables import DEFAULT_LIMIT, AllOption, Column, JsonOption, LimitOption, print_listing, row_limit

CHARGE_STATES = ("pending", "posting", "posted", "uncertain", "zero")

charges_app = typer.Typer(help="Charge lines posted (or to post) to WHMCS.", no_args_is_help=True)

RECONCILE_HELP = """\
Each nightly run settles uncertain charges itself once WHMCS's daily cron has run after them
(the key [ab-...] is looked for on the client's new invoices), or at once with whmcs.database_url.
What is listed here could not be decided yet; the reason says why. To settle by hand, search
WHMCS (Billing > Billable Items, or the client's invoices) for the key, then:
  found      autobill charges reconcile KEY [KEY ...] --posted --billable-id N [--billable-id M ...]
             (one --billable-id per billable item, in order; a credit needs none)
  not found  autobill charges reconcile KEY [KEY ...] --not-posted      (posted by the next run)
  ask WHMCS  autobill charges reconcile --check                          (what the nightly run does)
Corrections (keys rc-...) too; one with a negative amount was an AddCredit: each run looks for
its key in the client's credit log (GetCredits) itself; by hand, look in the client's credit log
(Billing > Credit) and settle it with --posted alone.
"""


CHARGE_COLUMNS = (
    Column("id", "id", right=True), Column("state", "state"), Column("billing_date", "date"),
    Column("client_id", "client", right=True), Column("service_id", "service", right=True),
    Column("class", "class"), Column("money", "amount", right=True), Column("cdrs", "calls", right=True),
    Column("key", "key", max_width=44),
)


UNCERTAIN_COLUMNS = (
    Column("key", "key", max_width=44), Column("client_id", "client", right=True),
    Column("money", "amount", right=True), Column("last_error", "last error", max_width=40),
)


def _row(c) -> dict:
    return {
        "id": c.id, "key": c.idempotency_key, "state": c.state, "client_id": c.client_id,
        "service_id": c.service_id, "billing_date": c.billing_date.isoformat(), "class": c.charge_class,
        "currency": c.currency, "amount": str(c.amount), "cdrs": c.cdr_count,
        "whmcs_billable_id": c.whmcs_billable_id, "last_error": c.last_error,
        "kind": c.kind, "corrects": c.corrects_charge_id, "rerate_id": c.rerate_id,
    }


def beside(rows: list[dict]) -> list[dict]:
    """Each correction right after the line it corrects (when that line is listed), in id order."""
    listed = {r["id"] for r in rows}
    under: dict[int, list[dict]] = {}
    for r in rows:
        if r["kind"] == "correction" and r["corrects"] in listed:
            under.setdefault(r["corrects"], []).append(r)
    out = []
    for r in rows:
        if r["kind"] == "correction" and r["corrects"] in listed:
            continue
        out.append(r)
        out.extend(sorted(under.get(r["id"], []), key=lambda x: x["id"]))
    return out


def register(app: typer.Typer) -> None:
    @charges_app.command("list")
    def list_(
        config: ConfigOption = None,
        state: Annotated[str | None, typer.Option(help="pending|posting|posted|uncertain|zero")] = None,
        on: Annotated[str | None, typer.Option("--date", help="Billing date YYYY-MM-DD.")] = None,
        limit: LimitOption = DEFAULT_LIMIT,
        show_all: AllOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """List charge lines, newest first, with a total per state and currency; each correction right
        under the line it corrects, with who, when and why."""
        from sqlalchemy import func, select

        from autobill.ledger.db import ensure_current, session_scope
        from autobill.ledger.models import Charge, Rerate

        check_choice(state, CHARGE_STATES, "--state")
        day = parse_day(on, "--date") if on is not None else None
        settings = settings_or_exit(config)
        ensure_current(settings.ledger)
        where = []
        if state:
            where.append(Charge.state == state)
        if day:
            where.append(Charge.billing_date == day)
        query = select(Charge).where(*where).order_by(Charge.id.desc()).limit(row_limit(limit, show_all))
        with session_scope(settings.ledger) as session:
            rows = [_row(c) for c in session.scalars(query)]
            sums = session.execute(select(Charge.state, Charge.currency, func.count(), func.sum(Charge.amount))
                                   .where(*where).group_by(Charge.state, Charge.currency)).all()
            audits = {a.id: a for a in session.scalars(
                select(Rerate).where(Rerate.id.in_({r["rerate_id"] for r in rows if r["rerate_id"]})))}
        for r in rows:
            if r["rerate_id"] in audits:  # who, when, why, which tariff versions
                a = audits[r["rerate_id"]]
                r.update(reason=a.reason, requested_by=a.requested_by, requested_at=a.requested_at.isoformat(),
                         tariff_versions=json.loads(a.tariff_versions), old_versions=json.loads(a.old_versions))
            r["money"] = format_money(r["amount"], r["currency"])
            if r["kind"] == "correction" and not as_json:  # shown right under the line it corrects
                r["class"] = f"\u21b3 {r['class']}"
        corrections = [
            f"#{r['id']} correction of #{r['corrects'] or '-'}: {r['money']} by {r.get('requested_by') or '-'} "
            f"at {(r.get('requested_at') or '')[:16]}: {r.get('reason') or '-'}"
            for r in rows if r["kind"] == "correction"
        ]
        total = sum(n for _, _, n, _ in sums)
        amounts: dict[str, Decimal] = {}
        for _, ccy, _, amount in sums:
            amounts[ccy] = amounts.get(ccy, Decimal(0)) + Decimal(str(amount or 0))
        by_state = ", ".join(f"{n} {st} {format_money(Decimal(str(a or 0)), c)}" for st, c, n, a in sorted(sums))
        print_listing(beside(rows), CHARGE_COLUMNS, title="Charges", total=total, as_json=as_json,
                      totals={"state": "total", "money": format_amounts(amounts, "0")},
                      notes=[f"by state: {by_state}"] if by_state else [])
        if corrections and not as_json:  # who, when and why of each correction, one line each (never wrapped)
            typer.echo("corrections (\u21b3 rows, each under the line it corrects):")
            for line in corrections:
                typer.echo(f"  {line}")

    @charges_app.command("reconcile")
    def reconcile_(
        refs: Annotated[list[str] | None, typer.Argument(
            help="Charge ids or idempotency keys; omit to list the uncertain ones with their evidence.")] = None,
        posted: Annotated[bool | None, typer.Option("--posted/--not-posted", help="Your finding in WHMCS.")] = None,
        billable_id: Annotated[list[int] | None, typer.Option(
            help="With --posted: the WHMCS billable item id, once per billable-item charge, in the same order "
                 "(none for a credit: it has no id).")] = None,
        note: Annotated[str, typer.Option(help="Free text kept with the decision.")] = "",
        check: Annotated[bool, typer.Option("--check", help="Ask WHMCS now, as the nightly run does.")] = False,
        config: ConfigOption = None,
    ) -> None:
        """Settle charges whose WHMCS call may or may not have happened."""
        from autobill.ledger.db import ensure_current

        settings = settings_or_exit(config)
        ensure_current(settings.ledger)
        if check:
            raise typer.Exit(_check(settings))
        if not refs:
            _list_uncertain(settings)
            return
        from autobill.ledger.charges import ReconcileError, find_charge, posts_as_credit, reconcile

        found = {}
        for ref in dict.fromkeys(refs):  # an unknown id or key is bad usage, like any unknown id
            try:
                found[ref] = find_charge(settings, ref)
            except ReconcileError as exc:
                raise usage(f"{exc} (see `autobill charges list` or `autobill charges reconcile`)") from None
        if posted is None:
            raise usage("say what you found in WHMCS: --posted (with --billable-id) or --not-posted")
        ids = billable_id or []
        if not posted and ids:
            raise usage("--billable-id goes with --posted")
        for ref, charge in found.items():  # every reference is checked before any is settled
            if charge.state != "uncertain":
                raise fail(f"charge {ref} is {charge.state}, not uncertain: nothing to reconcile")
        # A credit (AddCredit) has no billable item id: the ids go, in order, to the other charges.
        items = [ref for ref in refs if not posts_as_credit(found[ref])]
        if posted and len(ids) != len(items):
            raise usage(f"--posted needs one --billable-id per billable-item charge, in order, none for a credit "
                        f"({len(items)} billable-item charge(s), {len(refs) - len(items)} credit(s), {len(ids)} id(s))")
        given = dict(zip(items, ids, strict=True)) if posted else {}
        for ref in refs:
            try:
                charge = reconcile(settings, ref, posted=posted, billable_id=given.get(ref), note=note)
            except ReconcileError as exc:
                raise fail(str(exc)) from None
            typer.echo(f"{charge.idempotency_key}: {charge.state}")

    app.add_typer(charges_app, name="charges")


def _list_uncertain(settings) -> None:
    from sqlalchemy import select

    from autobill.ledger.db import session_scope
    from autobill.ledger.models import Charge
    from autobill.ledger.reconciliation import latest_decisions

    with session_scope(settings.ledger) as session:
        rows = [_row(c) for c in session.scalars(select(Charge).where(Charge.state == "uncertain").order_by(Charge.id))]
    decided = latest_decisions(settings, [r["id"] for r in rows])
    for r in rows:
        typer.echo(f"{r['key']}  client {r['client_id']}  {r['amount']} {r['currency']}  ({r['last_error']})")
        d = decided.get(r["id"])
        if d is None:
            typer.echo("    not checked yet: the next nightly run (or --check) looks for it in WHMCS")
        else:
            scanned = json.loads(d.invoices_scanned) if d.invoices_scanned else []
            typer.echo(f"    last checked {d.decided_at:%Y-%m-%d %H:%M} UTC ({d.source}): {d.reason}")
            if scanned:
                typer.echo(f"    invoices read: {', '.join(str(i) for i in scanned)}")
    typer.echo(f"{len(rows)} uncertain charge(s)")
    if rows:
        typer.echo(RECONCILE_HELP)


def _check(settings) -> int:
    """Run the nightly run's reconciliation now; exit 0 when nothing is left uncertain, else 2."""
    if settings.whmcs is None:
        raise fail("whmcs: not configured; cannot ask WHMCS")
    from connectors.whmcs import WhmcsClient, WhmcsError
    from connectors.whmcs_db import WhmcsDatabase, WhmcsDatabaseError
    from tasks.reconcile import reconcile_uncertain

    db = None
    try:
        if settings.whmcs.database_url is not None:
            db = WhmcsDatabase(settings.whmcs.database_url.get(), timeout_seconds=settings.whmcs.timeout_seconds)
        with WhmcsClient.from_settings(settings.whmcs) as client:
            report = reconcile_uncertain(settings, client, db, actor="autobill charges reconcile --check")
    except (WhmcsError, WhmcsDatabaseError) as exc:
        raise fail(str(exc)) from None
    finally:
        if db is not None:
            db.close()
    for key in report.posted:
        typer.echo(f"{key}: posted (found in WHMCS)")
    for key in report.pending:
        typer.echo(f"{key}: pending (not in WHMCS: posted by the next run)")
    for key, why in report.undecided:
        typer.echo(f"{key}: still uncertain: {why}")
    typer.echo(f"{report.checked} checked: {len(report.posted)} posted, {len(report.pending)} pending, "
               f"{len(report.undecided)} undecided")
    return 2 if report.undecided else 0
