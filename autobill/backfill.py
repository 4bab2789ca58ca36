"""A backfill's range and its summary across dates: which billing dates, what each child run did
(from the summary it stored in the ledger), totals summed exactly per currency, and the
`autobill-backfill-summary` markdown. Pure; the flow is flows/backfill.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

MAX_DAYS = 366


@dataclass
class DateResult:
    """One billing date of the range, as the summary shows it."""

    billing_date: str
    state: str  # the child flow run's state type (COMPLETED, FAILED, ..., or NOT_RUN)
    status: str  # the nightly summary's status (completed | partial), or "-" without a summary
    flow_run_id: str | None = None
    flow_run_name: str | None = None
    mode: str = "subflow"  # subflow | deployment
    extracted: int = 0
    billed: int = 0
    charges_created: int = 0
    charges_posted: int = 0
    amount_posted: dict[str, str] | None = None
    uncertain: int = 0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and self.status == "completed"


def billing_dates(start_date: date, end_date: date, max_days: int = MAX_DAYS) -> list[date]:
    """Every date of [start_date, end_date], oldest first; a backward or oversized range is an error
    (a typo in a year must not start four hundred runs)."""
    if end_date < start_date:
        raise ValueError(f"end date {end_date} is before start date {start_date}")
    n = (end_date - start_date).days + 1
    if n > max_days:
        raise ValueError(f"{n} dates ({start_date} .. {end_date}) is more than the {max_days} allowed; split the range")
    return [start_date + timedelta(days=i) for i in range(n)]


def summarise(results: list[DateResult]) -> dict[str, Any]:
    """Totals across the range; amounts are summed exactly per currency (decimal strings in, out)."""
    posted: dict[str, Decimal] = {}
    for r in results:
        for ccy, amount in (r.amount_posted or {}).items():
            posted[ccy] = posted.get(ccy, Decimal(0)) + Decimal(amount)
    not_ok = [r.billing_date for r in results if not r.ok]
    return {
        "dates": len(results),
        "completed": sum(r.ok for r in results),
        "not_completed": not_ok,
        "extracted": sum(r.extracted for r in results),
        "billed": sum(r.billed for r in results),
        "charges_created": sum(r.charges_created for r in results),
        "charges_posted": sum(r.charges_posted for r in results),
        "amount_posted": {k: str(v) for k, v in sorted(posted.items())},
        "uncertain": sum(r.uncertain for r in results),
        "results": [asdict(r) for r in results],
    }


def markdown(summary: dict[str, Any], first: date, last: date, dry_run: bool) -> str:
    amount = ", ".join(f"{v} {k}" for k, v in summary["amount_posted"].items()) or "0"
    lines = [
        f"# Backfill {first} .. {last}{' (dry run: nothing posted)' if dry_run else ''}",
        "",
        f"{summary['completed']} of {summary['dates']} dates completed; {summary['billed']} CDRs billed, "
        f"{summary['charges_created']} charge lines created, {summary['charges_posted']} posted ({amount}).",
    ]
    if summary["not_completed"]:
        lines.append(f"Not completed: {', '.join(summary['not_completed'])}; rerun those dates "
                     "(from the UI, or `autobill backfill`): they bill only what is missing.")
    if summary["uncertain"]:
        lines.append(f"{summary['uncertain']} uncertain charge(s): run `autobill charges reconcile`.")
    lines += ["", "| date | run | state | status | extracted | billed | charges | posted | amount |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in summary["results"]:
        amt = ", ".join(f"{v} {k}" for k, v in (r["amount_posted"] or {}).items()) or "0"
        lines.append(f"| {r['billing_date']} | {r['flow_run_name'] or '-'} | {r['state']} | {r['status']} "
                     f"| {r['extracted']} | {r['billed']} | {r['charges_created']} | {r['charges_posted']} | {amt} |")
    return "\n".join(lines) + "\n"


def result_for(day: date, state_type: str, flow_run_id: str | None, name: str | None, mode: str,
               summary: dict[str, Any] | None, message: str = "") -> DateResult:
    r = DateResult(day.isoformat(), state_type, "-", flow_run_id, name, mode, message=message[:300])
    if summary:
        r.status = summary.get("status", "-")
        r.extracted, r.billed = summary.get("extracted", 0), summary.get("billed", 0)
        r.charges_created, r.charges_posted = summary.get("charges_created", 0), summary.get("charges_posted", 0)
        r.amount_posted = {k: str(v) for k, v in (summary.get("amount_posted") or {}).items()}
        r.uncertain = len(summary.get("uncertain") or [])
    return r
