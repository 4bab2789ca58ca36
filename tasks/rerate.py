"""The re-rate step: re-rate billed CDRs of past dates from the raw lake, and record the differences.

`plan_rerate` reads the ledger (current prices, what is booked per line) and the lake, re-rates
with today's tariffs and plans (or named tariff versions) through autobill/rerating.py and returns
the correction lines (autobill/corrections.py) without writing anything: the dry run stops there.
`record_rerate` writes them (autobill/ledger/corrections.py); posting is the post step's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from autobill import lake
from autobill.cdr import CDR_SCHEMA
from autobill.config import Settings
from autobill.corrections import Change, Correction, changed, corrections, preview, top_destinations
from autobill.ledger.corrections import RerateRequest, booked, current_prices, record_corrections
from autobill.rating.archive import archive, load_version, parse_spec
from autobill.rating.billing import load_tariffs
from autobill.rerating import RATE_COLUMNS, period_span, rerate


@dataclass
class RerateResult:
    request: RerateRequest
    made: list[Correction]
    changes: list[Change]
    rerated: int  # CDRs of the range re-rated
    skipped: dict[str, str] = field(default_factory=dict)
    rerate_id: int | None = None
    correction_ids: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-able: the preview and what was (or would be) recorded."""
        reasons: dict[str, int] = {}
        for why in self.skipped.values():
            reasons[why] = reasons.get(why, 0) + 1
        return {
            "date_from": self.request.date_from.isoformat(), "date_to": self.request.date_to.isoformat(),
            "client_id": self.request.client_id, "reason": self.request.reason,
            "requested_by": self.request.requested_by, "tariff_versions": self.request.tariff_versions,
            "rerated": self.rerated, "changed_calls": len(self.changes), "corrections": len(self.made),
            "to_post": sum(1 for c in self.made if c.amount != 0),
            "billable_items": sum(1 for c in self.made if c.amount > 0),
            "credits": sum(1 for c in self.made if c.amount < 0),
            "skipped": len(self.skipped), "skipped_reasons": reasons,
            "clients": [{"client_id": p.client_id, "currency": p.currency, "old": str(p.old), "new": str(p.new),
                         "difference": str(p.difference), "calls": p.calls, "lines": p.lines}
                        for p in preview(self.made)],
            "destinations": top_destinations(self.changes),
            "lines": [{"key": c.idempotency_key, "client_id": c.line.client_id, "service_id": c.line.service_id,
                       "billing_date": c.line.billing_date.isoformat(), "class": c.line.charge_class,
                       "currency": c.line.currency, "was": str(c.was), "now": str(c.now), "amount": str(c.amount),
                       "posts_as": c.kind, "calls": c.calls, "corrects_charge_id": c.corrects_charge_id}
                      for c in self.made],
            "rerate_id": self.rerate_id,
        }


def tariffs_for(settings: Settings, specs: list[str] | None) -> dict:
    """Today's tariffs (archived as they are seen), with the named versions in place of their names."""
    tariffs = load_tariffs(settings)
    archive(settings, tariffs)
    for spec in specs or []:
        name, version = parse_spec(spec)
        tariffs[name] = load_version(settings, name, version)
    return tariffs


def _lake_rows(settings: Settings, servers: set[str], first: date, last: date, keys: set[str]) -> pl.DataFrame:
    """The canonical rows of these keys (only the columns rating needs), from the lake's UTC days
    around [first, last] (a local billing date spans two UTC days)."""
    labels = [(first - timedelta(days=1) + timedelta(days=i)).isoformat() for i in range((last - first).days + 3)]
    files = [str(p) for s in sorted(servers) for label in labels
             for p in sorted(lake.partition_dir(lake.cdr_root(settings.data_path), s, label).glob("*.parquet"))]
    if not files:
        return pl.DataFrame(schema={c: CDR_SCHEMA[c] for c in RATE_COLUMNS})
    frame = pl.concat([pl.read_parquet(f, columns=list(RATE_COLUMNS)) for f in files], how="vertical_relaxed")
    return frame.filter(pl.col("cdr_key").is_in(list(keys))).unique("cdr_key", keep="first", maintain_order=True)


def plan_rerate(settings: Settings, request: RerateRequest, tariff_specs: list[str] | None = None) -> RerateResult:
    tariffs = tariffs_for(settings, tariff_specs)
    request.tariff_versions.update({name: t.version for name, t in sorted(tariffs.items())})
    start, end = period_span(settings, request.date_from, request.date_to)
    prices = current_prices(settings, start, end, request.client_id)
    in_range = {lp.price.cdr_key for lp in prices if request.date_from <= lp.price.billing_date <= request.date_to}
    rows = _lake_rows(settings, {lp.server for lp in prices}, start, end, {lp.price.cdr_key for lp in prices})
    result = rerate(settings, prices, rows, tariffs, in_range)
    old = {lp.price.cdr_key: lp.price for lp in prices if lp.price.cdr_key in result.new}
    made = corrections(old, result.new, booked(settings, request.date_from, request.date_to, request.client_id))
    return RerateResult(request=request, made=made, changes=changed(old, result.new), rerated=len(result.new),
                       skipped=result.skipped)


def record_rerate(settings: Settings, plan: RerateResult, run_id: int | None = None) -> RerateResult:
    plan.rerate_id, plan.correction_ids = record_corrections(settings, plan.request, plan.made, plan.changes, run_id,
                                                             plan.summary())
    return plan


def markdown(summary: dict[str, Any], dry_run: bool) -> str:
    """The preview a billing engineer reads before (or after) posting."""
    head = "Re-rate preview (dry run: nothing recorded or posted)" if dry_run else "Re-rate"
    out = [f"# {head}: {summary['date_from']} .. {summary['date_to']}", "",
           f"- reason: {summary['reason']}", f"- requested by: {summary['requested_by']}",
           f"- client: {summary['client_id'] or 'all'}",
           f"- tariffs: {', '.join(f'{k}@{v}' for k, v in summary['tariff_versions'].items())}",
           f"- calls re-rated: {summary['rerated']}, changed: {summary['changed_calls']}, "
           f"kept at their price: {summary['skipped']}",
           f"- correction lines: {summary['corrections']} ({summary['billable_items']} billable item(s), "
           f"{summary['credits']} credit(s))", ""]
    for why, n in summary["skipped_reasons"].items():
        out.append(f"- not re-rated ({n}): {why}")
    out += ["", "## Per client", "", "| client | currency | billed | re-rated | difference | calls changed |",
            "|---|---|---:|---:|---:|---:|"]
    out += [f"| {c['client_id']} | {c['currency']} | {c['old']} | {c['new']} | {c['difference']} | {c['calls']} |"
            for c in summary["clients"]] or ["| - | - | 0 | 0 | 0 | 0 |"]
    out += ["", "## Destinations that changed most", "", "| destination | currency | calls | difference |",
            "|---|---|---:|---:|"]
    out += [f"| {d['destination']} | {d['currency']} | {d['calls']} | {d['difference']} |"
            for d in summary["destinations"]] or ["| - | - | 0 | 0 |"]
    return "\n".join(out) + "\n"


@task(name="rerate-plan", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def plan_rerate_task(settings: Settings, request: RerateRequest, tariff_specs: list[str] | None) -> RerateResult:
    plan = plan_rerate(settings, request, tariff_specs)
    get_run_logger().info("re-rated %s call(s): %s changed, %s correction line(s), %s kept at their price",
                          plan.rerated, len(plan.changes), len(plan.made), len(plan.skipped))
    return plan


@task(name="rerate-record", cache_policy=NO_CACHE, retries=0)
def record_rerate_task(settings: Settings, plan: RerateResult, run_id: int | None) -> RerateResult:
    """One ledger transaction; not retried as a task (a rerun of the flow recomputes from the ledger)."""
    return record_rerate(settings, plan, run_id)


@task(name="rerate-preview", cache_policy=NO_CACHE)
def publish_preview_task(summary: dict[str, Any], dry_run: bool) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(markdown(summary, dry_run), key="autobill-rerate-preview",
                             description="Re-rate: per client old/new amounts and the destinations that moved most")
    if summary["lines"]:
        create_table_artifact(summary["lines"], key="autobill-rerate-lines", description="Correction lines")

