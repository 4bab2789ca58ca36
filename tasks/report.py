"""The run report: a summary that must balance, per-client totals, unrated destinations.

Invariant 2 (nothing disappears) is checked here, per server: every CDR that entered the run
(extracted this run, or carried in: still unrated from earlier runs, or released from
quarantine) ends in exactly one of billed, included, zero-cost, unrated, quarantined, duplicate:

    extracted + carried_in = billed + included + zero_cost + unrated + quarantined + duplicates + deferred

`deferred` are the rows of a batch the batch checks rejected: not billed, the server's watermark
did not move, and the same window is read again by the next run.

A summary that does not balance is reported as such (and fails the run): it means a bug lost
or invented a CDR, which is exactly what an operator must not have to find by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

INPUTS = ("extracted", "carried_in")
OUTPUTS = ("billed", "included", "zero_cost", "unrated", "quarantined", "duplicates", "deferred")


@dataclass
class ServerLine:
    server: str
    status: str = "ok"  # ok | failed | rejected
    error: str | None = None
    extracted: int = 0
    carried_in: int = 0
    quarantined: int = 0
    duplicates: int = 0
    deferred: int = 0
    unrated: int = 0
    included: int = 0
    zero_cost: int = 0
    billed: int = 0
    already_billed: int = 0  # rated again but already final in the ledger: counted once, as billed earlier
    files_quarantined: int = 0  # drop files unreadable as a whole (not rows: outside the balance); run is partial
    amount: dict[str, Decimal] = field(default_factory=dict)  # exact sum of billed calls' costs

    @property
    def balanced(self) -> bool:
        return sum(getattr(self, k) for k in INPUTS) == sum(getattr(self, k) for k in OUTPUTS) + self.already_billed


@dataclass
class RunSummary:
    billing_date: date
    dry_run: bool
    servers: list[ServerLine]
    charges_created: int = 0
    charges_posted: int = 0
    amount_posted: dict[str, Decimal] = field(default_factory=dict)
    amount_billed: dict[str, Decimal] = field(default_factory=dict)  # charge lines created (rounded)
    uncertain: list[str] = field(default_factory=list)
    failed_posts: list[str] = field(default_factory=list)
    preview: list[dict[str, Any]] = field(default_factory=list)  # dry run: the lines that would be posted
    # Uncertain charges settled from WHMCS before posting (tasks/reconcile.py): found / not found / left.
    reconciled_posted: int = 0
    reconciled_pending: int = 0
    reconcile_undecided: int = 0
    services: dict[str, Any] | None = None  # the services sync of this run (tasks/services.py), when enabled

    def total(self, key: str) -> int:
        return sum(getattr(s, key) for s in self.servers)

    @property
    def failed_servers(self) -> list[str]:
        return [s.server for s in self.servers if s.status != "ok"]

    @property
    def balanced(self) -> bool:
        return all(s.balanced for s in self.servers)

    @property
    def files_quarantined(self) -> int:
        return self.total("files_quarantined")

    @property
    def status(self) -> str:
        if not self.balanced:
            return "failed"
        if self.failed_servers or self.uncertain or self.failed_posts or self.files_quarantined:
            return "partial"
        return "completed"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"billing_date": self.billing_date.isoformat(), "dry_run": self.dry_run,
                               "status": self.status, "balanced": self.balanced}
        for key in (*INPUTS, *OUTPUTS, "already_billed", "files_quarantined"):
            out[key] = self.total(key)
        out.update({
            "charges_created": self.charges_created,
            "charges_posted": self.charges_posted,
            "amount_billed": {k: str(v) for k, v in sorted(self.amount_billed.items())},
            "amount_posted": {k: str(v) for k, v in sorted(self.amount_posted.items())},
            "uncertain": list(self.uncertain),
            "failed_posts": list(self.failed_posts),
            "failed_servers": self.failed_servers,
            "reconciled_posted": self.reconciled_posted,
            "reconciled_pending": self.reconciled_pending,
            "reconcile_undecided": self.reconcile_undecided,
            "servers": {
                s.server: {**{k: v for k, v in asdict(s).items() if k not in ("server", "amount")},
                           "amount": {c: str(a) for c, a in s.amount.items()}, "balanced": s.balanced}
                for s in self.servers
            },
        })
        if self.services is not None:
            out["services"] = self.services
        if self.dry_run:
            out["preview"] = self.preview
        return out


REPORT_COLUMNS = ("cdr_key", "server", "source", "outcome", "currency", "cost", "rate_number", "unrated_reason")


def outcome_counts(rated: pl.DataFrame) -> pl.DataFrame:
    """(source, server, outcome, currency) -> calls and the exact sum of their costs, in one pass.
    The sum is polars' 128-bit decimal: exact, and no Python object per call."""
    source = pl.col("source") if "source" in rated.columns else pl.lit("batch")
    return (
        rated.with_columns(source.alias("source"), pl.col("cost").cast(pl.String).cast(pl.Decimal(38, 6)))
        .group_by("source", "server", "outcome", "currency")
        .agg(pl.len().alias("calls"), pl.col("cost").sum().alias("amount"))
    )


def count_outcomes(line: ServerLine, rated: pl.DataFrame) -> None:
    """Add one server's rating outcomes (and billed amounts per currency) to its line."""
    for r in outcome_counts(rated).iter_rows(named=True):
        _add(line, r)


def _add(line: ServerLine, r: dict[str, Any]) -> None:
    setattr(line, r["outcome"], getattr(line, r["outcome"]) + r["calls"])
    if r["outcome"] == "billed":
        line.amount[r["currency"]] = line.amount.get(r["currency"], Decimal(0)) + Decimal(r["amount"] or 0)


def markdown(summary: RunSummary) -> str:
    cols = ("extracted", "carried_in", "quarantined", "duplicates", "deferred", "unrated", "included", "zero_cost",
            "billed")
    head = "| server | status | " + " | ".join(cols) + " | amount | balances |"
    rows = [head, "|" + "---|" * (len(cols) + 4)]
    for s in summary.servers:
        amount = ", ".join(f"{v:.2f} {k}" for k, v in sorted(s.amount.items())) or "0"
        rows.append(
            f"| {s.server} | {s.status}{' (' + s.error + ')' if s.error else ''} | "
            + " | ".join(str(getattr(s, c)) for c in cols)
            + f" | {amount} | {'yes' if s.balanced else '**NO**'} |"
        )
    posted = ", ".join(f"{v} {k}" for k, v in sorted(summary.amount_posted.items())) or "nothing"
    lines = [
        f"# Autobill {'dry run (nothing posted)' if summary.dry_run else 'run'} for {summary.billing_date}",
        "",
        f"**Status:** {summary.status}. Charges created: {summary.charges_created}; "
        f"posted: {summary.charges_posted} ({posted}).",
        "",
        *rows,
    ]
    if summary.reconciled_posted or summary.reconciled_pending or summary.reconcile_undecided:
        lines += ["", f"**Reconciled from WHMCS:** {summary.reconciled_posted} found (posted), "
                  f"{summary.reconciled_pending} not there (posted again), {summary.reconcile_undecided} undecided."]
    if summary.uncertain:
        lines += ["", f"**{len(summary.uncertain)} uncertain charge(s)** — run `autobill charges reconcile`:", ""]
        lines += [f"- `{k}`" for k in summary.uncertain]
    if summary.failed_posts:
        lines += ["", "**Not posted (WHMCS error; retried next run):**", ""]
        lines += [f"- {e}" for e in summary.failed_posts]
    if summary.services is not None:
        lines += ["", _services_markdown(summary.services)]
    if summary.failed_servers:
        lines += ["", f"**Servers not billed this run:** {', '.join(summary.failed_servers)} — their watermarks did "
                  "not move; their CDRs are billed by the next run."]
    return "\n".join(lines)


def _services_markdown(sync: dict[str, Any]) -> str:
    if not sync.get("ok"):
        return (f"**Services sync failed** ({sync.get('error')}): the last successful sync's mapping was used; "
                "calls after it stay unrated until a sync succeeds.")
    head = (f"**Services from WHMCS:** {sync['services']} services, {sync['claims']} claims, "
            f"{sync['changes']} change(s) since the last sync, {len(sync['conflicts'])} conflict(s)")
    if not sync["conflicts"]:
        return head + "."
    rows = [head + " — their calls stay unrated until fixed (`autobill services list --conflicts`):", ""]
    rows += [f"- {c['kind']}: {c['detail']}" for c in sync["conflicts"][:50]]
    if len(sync["conflicts"]) > 50:
        rows.append(f"- ... and {len(sync['conflicts']) - 50} more (artifact `autobill-service-conflicts`)")
    return "\n".join(rows)


def client_totals(lines: list) -> list[dict[str, Any]]:
    """Per-client totals of the charge lines created this run (strings: artifacts are plain JSON)."""
    totals: dict[tuple[int, str], dict[str, Any]] = {}
    for ln in lines:
        key = (ln.client_id, ln.currency)
        t = totals.setdefault(key, {"client_id": ln.client_id, "currency": ln.currency, "lines": 0, "calls": 0,
                                    "minutes": Decimal(0), "amount": Decimal(0)})
        t["lines"] += 1
        t["calls"] += ln.cdr_count
        t["minutes"] += Decimal(ln.charged_seconds) / 60
        t["amount"] += ln.amount
    return [
        {**t, "minutes": str(t["minutes"].quantize(Decimal("0.1"))), "amount": str(t["amount"])}
        for _, t in sorted(totals.items())
    ]


def unrated_destinations(rated: pl.DataFrame, top: int = 50) -> list[dict[str, Any]]:
    """The destinations that found no rate (by their first 6 digits), most frequent first."""
    if rated.height == 0 or "outcome" not in rated.columns:
        return []
    unrated = rated.filter(pl.col("outcome") == "unrated")
    if unrated.height == 0:
        return []
    reason = pl.col("unrated_reason") if "unrated_reason" in unrated.columns else pl.lit("no_rate")
    return (
        unrated.with_columns(pl.col("rate_number").str.slice(0, 6).fill_null("(none)").alias("destination"),
                             reason.fill_null("no_rate").alias("reason"))
        .group_by("destination", "reason")
        .agg(pl.len().alias("calls"), pl.col("server").unique().sort().str.join(",").alias("servers"))
        .sort("calls", "destination", descending=[True, False])
        .head(top)
        .to_dicts()
    )


def publish(summary: RunSummary, clients: list[dict[str, Any]], unrated: list[dict[str, Any]]) -> None:
    """Prefect artifacts for the run (keys let the UI keep a history per artifact)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_markdown_artifact(markdown(summary), key="autobill-run-summary",
                             description=f"Autobill summary for {summary.billing_date}")
    if clients:
        create_table_artifact(clients, key="autobill-client-totals",
                              description=f"Per-client totals for {summary.billing_date}")
    create_table_artifact(unrated or [{"destination": "-", "reason": "-", "calls": 0, "servers": "-"}],
                          key="autobill-unrated-destinations",
                          description=f"Destinations without a rate ({summary.billing_date})")


RELEASED = "(released from quarantine)"


def build_summary(
    billing_date: date,
    dry_run: bool,
    lines: dict[str, ServerLine],
    rated: pl.DataFrame,
    requeued: Any | None,
    record: Any,
    posting: Any | None,
    uncertain: list[str],
    reconciled: Any | None = None,
) -> RunSummary:
    """Assemble the run summary from each step's output (pure: no I/O)."""
    lines = dict(lines)

    def line(server: str) -> ServerLine:
        return lines.setdefault(server, ServerLine(server))

    already = set(record.already_final_keys)
    if already:
        hit = rated.filter(pl.col("cdr_key").is_in(list(already)))
        for server, n in hit.group_by("server").len().iter_rows():
            line(server).already_billed += n
        rated = rated.filter(~pl.col("cdr_key").is_in(list(already)))
    for r in outcome_counts(rated).iter_rows(named=True):
        target = line(RELEASED) if r["source"] == "requeued" else line(r["server"])
        if r["source"] == "unrated":
            target.carried_in += r["calls"]
        _add(target, r)
    if requeued is not None and requeued.rows:
        released = line(RELEASED)
        released.carried_in += requeued.rows
        released.quarantined += requeued.quarantined
        released.duplicates += requeued.duplicates
    summary = RunSummary(billing_date=billing_date, dry_run=dry_run, servers=list(lines.values()),
                         charges_created=0 if dry_run else len(record.lines),
                         amount_billed=record.amount_by_currency, uncertain=list(uncertain))
    if dry_run:
        summary.preview = [
            {"client_id": ln.client_id, "service_id": ln.service_id, "billing_date": ln.billing_date.isoformat(),
             "class": ln.charge_class, "currency": ln.currency, "amount": str(ln.amount), "calls": ln.cdr_count,
             "description": ln.description}
            for ln in record.lines
        ]
    if reconciled is not None:
        summary.reconciled_posted, summary.reconciled_pending = len(reconciled.posted), len(reconciled.pending)
        summary.reconcile_undecided = len(reconciled.undecided)
    if posting is not None:
        summary.charges_posted = posting.posted
        summary.amount_posted = dict(posting.amount_posted)
        summary.uncertain += [k for k in posting.uncertain if k not in summary.uncertain]
        summary.failed_posts = [f"{key}: {err}" for key, err in posting.failed]
    return summary


@task(name="report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def report_task(billing_date: date, dry_run: bool, lines: dict[str, ServerLine], rated_path: str,
                requeued: Any | None, record: Any, posting: Any | None, uncertain: list[str],
                reconciled: Any | None = None, services: dict[str, Any] | None = None) -> RunSummary:
    """`uncertain`: every charge still waiting for reconciliation (not only this run's)."""
    present = pl.read_parquet_schema(rated_path)
    rated = pl.read_parquet(rated_path, columns=[c for c in REPORT_COLUMNS if c in present])
    summary = build_summary(billing_date, dry_run, lines, rated, requeued, record, posting, uncertain, reconciled)
    summary.services = services
    publish(summary, client_totals(record.lines), unrated_destinations(rated))
    return summary
