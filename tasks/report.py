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
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import select

from autobill import charts
from autobill.config import Settings
from autobill.destinations import describe_destination, describe_reason
from autobill.ledger.db import session_scope
from autobill.ledger.models import ExtractionBatch
from autobill.ledger.runs import nightly_nights, run_started_at
from autobill.money import format_amounts, format_money
from autobill.timeutil import utc_now
from connectors.whmcs import WhmcsClient
from data_quality.quarantine import run_reasons
from data_quality.volume import Sample, volume_check, volume_history

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
    # Zero-amount charge lines (state `zero`, never posted) and why: `free` (every call within
    # included minutes or zero-cost) or `under_minor_unit` (a cost that rounds to 0.00).
    charges_zero: dict[str, int] = field(default_factory=dict)

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
            "reconciled_posted": self.reconciled_posted,
            "reconciled_pending": self.reconciled_pending,
            "reconcile_undecided": self.reconcile_undecided,
            "charges_zero": dict(sorted(self.charges_zero.items())),
            "amount_billed": {k: str(v) for k, v in sorted(self.amount_billed.items())},
            "amount_posted": {k: str(v) for k, v in sorted(self.amount_posted.items())},
            "uncertain": list(self.uncertain),
            "failed_posts": list(self.failed_posts),
            "failed_servers": self.failed_servers,
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


def outcome_counts(rated: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """(source, server, outcome, currency) -> calls and the exact sum of their costs, in one pass.
    The sum is polars' 128-bit decimal: exact, and no Python object per call."""
    rated = rated.lazy()  # a scan of the rated file is never read whole: only the groups are collected
    source = pl.col("source") if "source" in rated.collect_schema().names() else pl.lit("batch")
    return (
        rated.with_columns(source.alias("source"), pl.col("cost").cast(pl.String).cast(pl.Decimal(38, 6)))
        .group_by("source", "server", "outcome", "currency")
        .agg(pl.len().alias("calls"), pl.col("cost").sum().alias("amount"))
        .collect()
    )


def count_outcomes(line: ServerLine, rated: pl.DataFrame) -> None:
    """Add one server's rating outcomes (and billed amounts per currency) to its line."""
    for r in outcome_counts(rated).iter_rows(named=True):
        _add(line, r)


def _add(line: ServerLine, r: dict[str, Any]) -> None:
    setattr(line, r["outcome"], getattr(line, r["outcome"]) + r["calls"])
    if r["outcome"] == "billed":
        line.amount[r["currency"]] = line.amount.get(r["currency"], Decimal(0)) + Decimal(r["amount"] or 0)


ZERO_WHY = {
    "free": "every call was within included minutes or free",
    "under_minor_unit": "the calls cost less than one cent (the currency's smallest unit) once rounded",
}
SHORT_REASON = {"no_rate": "no rate", "invalid_number": "bad number", "invalid": "bad CDR"}
ATTENTION_ROWS = 5  # list items shown before "and N more" in the summary
TOP_UNRATED = 10  # unrated destinations in the summary (all of them are in their own table)


@dataclass
class Attention:
    """What the summary lists under "Needs attention" besides the summary's own fields."""

    quarantine: list[dict[str, Any]] = field(default_factory=list)  # data_quality.quarantine.run_reasons
    unrated: list[dict[str, Any]] = field(default_factory=list)  # unrated_destinations
    volume_drops: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. client names unavailable


def _n(value: int) -> str:
    return f"{value:,}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _calls_rows(summary: RunSummary) -> list[str]:
    """Calls in short cells: the artifact pane does not wrap table cells (checked at 1280 px)."""
    read = summary.total("extracted") + summary.total("carried_in")
    carried = f" ({_n(summary.total('carried_in'))} carried in)" if summary.total("carried_in") else ""
    rated = [f"{_n(summary.total(k))} {label}" for k, label in (
        ("billed", "billed"), ("included", "included"), ("zero_cost", "zero-cost"), ("unrated", "unrated"))
        if summary.total(k)]
    held = [f"{_n(summary.total(k))} {label}" for k, label in (
        ("quarantined", "quarantined"), ("duplicates", "duplicates"), ("deferred", "deferred"),
        ("already_billed", "billed earlier")) if summary.total(k)]
    rows = [f"| Calls read | {_n(read)}{carried} |", f"| Calls rated | {', '.join(rated) or 'none'} |"]
    if held:
        rows.append(f"| Not rated | {', '.join(held)} |")
    return rows


def _charges_line(summary: RunSummary) -> str:
    if summary.dry_run:
        return f"{_n(len(summary.preview))} would be created (dry run: nothing posted)"
    zero = sum(summary.charges_zero.values())
    parts = [f"{_n(summary.charges_posted)} posted"]
    if summary.uncertain:
        parts.append(f"**{_n(len(summary.uncertain))} uncertain**")
    if summary.failed_posts:
        parts.append(f"**{_n(len(summary.failed_posts))} refused**")
    if zero:
        parts.append(f"{_n(zero)} zero-amount")
    return f"{_n(summary.charges_created)} created: " + ", ".join(parts)


def _notes(summary: RunSummary) -> list[str]:
    """Sentences under the totals table (a paragraph wraps; a table cell does not)."""
    out = []
    if summary.charges_zero and not summary.dry_run:
        why = "; ".join(f"{n} because {ZERO_WHY.get(k, k)}" for k, n in sorted(summary.charges_zero.items()))
        out.append(f"Zero-amount charges are recorded, never posted to WHMCS: {why}.")
    if summary.reconciled_posted or summary.reconciled_pending or summary.reconcile_undecided:
        out.append(f"Reconciled from WHMCS: {summary.reconciled_posted} found (posted), "
                   f"{summary.reconciled_pending} not there (posted again), {summary.reconcile_undecided} undecided.")
    return out


def _server_table(summary: RunSummary) -> list[str]:
    """Narrow enough for the artifact pane at 1280 px (about 700 px): short headers, the currency
    in the header when there is one, the balance check folded into the status."""
    cols = [("extracted", "read"), ("billed", "billed"), ("included", "incl."), ("zero_cost", "free"),
            ("unrated", "unrated"), ("quarantined", "quar."), ("duplicates", "dup.")]
    for key, label in (("carried_in", "carried"), ("deferred", "deferred"), ("already_billed", "earlier")):
        if summary.total(key):  # rare columns only when they say something
            cols.append((key, label))
    totals = _server_amounts(summary)
    single = next(iter(totals)) if len(totals) == 1 else None

    def amount(amounts: dict[str, Decimal]) -> str:
        if single is not None:
            return format_money(amounts.get(single, Decimal(0)), single).removesuffix(f" {single}")
        return format_amounts(amounts, "-")

    def status(s: ServerLine) -> str:
        text = s.status if s.status == "ok" else f"**{s.status}**"
        return text if s.balanced else f"{text}, **NOT BALANCED**"

    rows = ["| server | status | " + " | ".join(label for _, label in cols) + f" | {single or 'amount'} |",
            "|---|---|" + "---:|" * len(cols) + "---:|"]
    for s in summary.servers:
        rows.append(f"| {_cell(s.server)} | {status(s)} | " + " | ".join(_n(getattr(s, k)) for k, _ in cols)
                    + f" | {amount(s.amount)} |")
    if len(summary.servers) > 1:
        rows.append("| **total** | | " + " | ".join(f"**{_n(summary.total(k))}**" for k, _ in cols)
                    + f" | **{amount(totals)}** |")
    return rows


def _server_amounts(summary: RunSummary) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for s in summary.servers:
        for c, v in s.amount.items():
            out[c] = out.get(c, Decimal(0)) + v
    return out


def _more(items: list[str], limit: int = ATTENTION_ROWS) -> list[str]:
    return items[:limit] + ([f"- … and {len(items) - limit} more"] if len(items) > limit else [])


def _attention(summary: RunSummary, extra: Attention) -> list[str]:
    out: list[str] = []
    unbalanced = [s.server for s in summary.servers if not s.balanced]
    if unbalanced:
        out.append(f"- **Counts do not balance** for {', '.join(unbalanced)}: a CDR was lost or counted twice; "
                   "the run is failed. Report it with this summary.")
    for s in summary.servers:
        if s.status != "ok":
            out.append(f"- **{_cell(s.server)} not billed ({s.status}):** {_cell(s.error or 'no detail')}. Its "
                       "watermark did not move: the next run bills its CDRs.")
    if summary.uncertain:
        keys = ", ".join(f"`{k}`" for k in summary.uncertain[:3]) + (" …" if len(summary.uncertain) > 3 else "")
        out.append(f"- **{len(summary.uncertain)} uncertain charge(s)** may or may not be in WHMCS ({keys}): "
                   "run `autobill charges reconcile`.")
    if summary.failed_posts:
        out.append(f"- **{len(summary.failed_posts)} charge(s) not posted** (WHMCS refused; retried next run):")
        out += _more([f"  - {_cell(e)}" for e in summary.failed_posts])
    out += [f"- **Volume drop:** {_cell(d)}" for d in extra.volume_drops]
    out += [f"- {_cell(n)}" for n in extra.notes]
    if extra.quarantine:
        out += ["", "**Top quarantine reasons this run** (`autobill quarantine list --rule RULE`):", "",
                "| rule | server | rows | example |", "|---|---|---:|---|"]
        out += [f"| {q['rule']} | {_cell(q['server'])} | {_n(q['rows'])} | {_cell(str(q['example'])[:70])} |"
                for q in extra.quarantine]
    if extra.unrated:
        total = sum(u["calls"] for u in extra.unrated)
        out += ["", f"**Top unrated destinations** ({_n(total)} call(s) in {len(extra.unrated)} destination(s); "
                "all in the `autobill-unrated-destinations` table):", "",
                "| destination | what | why | calls | servers |", "|---|---|---|---:|---|"]
        out += [f"| {'+' if u['destination'].isdigit() else ''}{u['destination']} | {_cell(u['description'])} | "
                f"{SHORT_REASON.get(u['reason'], u['reason'])} | {_n(u['calls'])} | {_cell(u['servers'])} |"
                for u in extra.unrated[:TOP_UNRATED]]
    return out


def markdown(summary: RunSummary, extra: Attention | None = None, images: dict[str, str] | None = None) -> str:
    """The run summary, for a 1280x800 screen: totals first, then the per-server table, then
    what needs attention, then the charts (`images`: title -> data URI)."""
    extra = extra or Attention()
    title = "Dry run (nothing posted)" if summary.dry_run else "Nightly run"
    posted = format_amounts(summary.amount_posted)
    billed = format_amounts(summary.amount_billed)
    lines = [f"# {title} {summary.billing_date}: {summary.status}", "", "| total | this run |", "|---|---|"]
    if summary.dry_run:
        lines.append(f"| **Would bill** | **{billed}** |")
    else:
        lines += [f"| **Posted to WHMCS** | **{posted}** |", f"| Billed (charge lines) | {billed} |"]
    lines += [f"| Charges | {_charges_line(summary)} |", *_calls_rows(summary), ""]
    notes = _notes(summary)
    if notes:
        lines += [" ".join(notes), ""]
    lines += ["## Servers", "", *_server_table(summary), "", "## Needs attention", ""]
    attention = _attention(summary, extra)
    lines += attention or ["Nothing: every server billed, every charge settled."]
    if summary.services is not None:
        lines += ["", _services_markdown(summary.services)]
    for name, uri in (images or {}).items():
        lines += ["", f"## {name}", "", f"![{name}]({uri})"]
    return "\n".join(lines) + "\n"


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


def client_name(client: dict[str, Any]) -> str:
    """WHMCS shows a client as its company, else first and last name."""
    company = (client.get("companyname") or "").strip()
    person = f"{client.get('firstname') or ''} {client.get('lastname') or ''}".strip()
    return company or person or f"client {client.get('id')}"


def client_names(whmcs: Any, ids: set[int]) -> dict[int, str]:
    """Names of `ids` from WHMCS: GetClientsDetails for a few, GetClients pages for many."""
    if len(ids) <= 10:
        return {cid: client_name(whmcs.get_clients_details(cid).get("client") or {"id": cid}) for cid in sorted(ids)}
    names: dict[int, str] = {}
    for c in whmcs.iter_clients():
        cid = int(c.get("id") or 0)
        if cid in ids:
            names[cid] = client_name(c)
            if len(names) == len(ids):
                break
    return names


def client_totals(lines: list, names: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """Per-client totals of the charge lines created this run, largest amount first within each
    currency, then a total row per currency (strings: table artifacts are plain JSON)."""
    names = names or {}
    totals: dict[tuple[int, str], dict[str, Any]] = {}
    for ln in lines:
        key = (ln.client_id, ln.currency)
        t = totals.setdefault(key, {"client_id": ln.client_id, "client": names.get(ln.client_id, "-"),
                                    "currency": ln.currency, "lines": 0, "calls": 0, "minutes": Decimal(0),
                                    "amount": Decimal(0)})
        t["lines"] += 1
        t["calls"] += ln.cdr_count
        t["minutes"] += Decimal(ln.charged_seconds) / 60
        t["amount"] += ln.amount
    out: list[dict[str, Any]] = []
    for ccy in sorted({c for _, c in totals}):
        rows = sorted((t for (_, c), t in totals.items() if c == ccy), key=lambda t: (-t["amount"], t["client_id"]))
        out += [{**t, "minutes": str(t["minutes"].quantize(Decimal("0.1"))), "amount": format_money(t["amount"], ccy)}
                for t in rows]
        out.append({"client_id": "", "client": f"TOTAL {ccy} ({len(rows)} clients)", "currency": ccy,
                    "lines": sum(t["lines"] for t in rows), "calls": sum(t["calls"] for t in rows),
                    "minutes": str(sum((t["minutes"] for t in rows), Decimal(0)).quantize(Decimal("0.1"))),
                    "amount": format_money(sum((t["amount"] for t in rows), Decimal(0)), ccy)})
    return out


def unrated_destinations(rated: pl.DataFrame | pl.LazyFrame, top: int | None = None) -> list[dict[str, Any]]:
    """The destinations that found no rate (by their first 6 digits), most frequent first, each
    with what it is (country / network from the E.164 code); all of them unless `top`."""
    if "outcome" not in rated.lazy().collect_schema().names():
        return []
    unrated = rated.lazy().filter(pl.col("outcome") == "unrated").collect()
    if unrated.height == 0:
        return []
    reason = pl.col("unrated_reason") if "unrated_reason" in unrated.columns else pl.lit("no_rate")
    grouped = (
        unrated.with_columns(pl.col("rate_number").str.slice(0, 6).fill_null("(none)").alias("destination"),
                             reason.fill_null("no_rate").alias("reason"))
        .group_by("destination", "reason")
        .agg(pl.len().alias("calls"), pl.col("server").unique().sort().str.join(",").alias("servers"))
        .sort("calls", "destination", descending=[True, False])
    )
    if top:
        grouped = grouped.head(top)
    return [{"destination": r["destination"], "description": describe_destination(r["destination"]),
             "reason": r["reason"], "calls": r["calls"], "servers": r["servers"]} for r in grouped.to_dicts()]


def unrated_table(unrated: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The unrated destinations as a table artifact: reasons in words, and a total row."""
    rows = [{**u, "reason": describe_reason(u["reason"])} for u in unrated]
    total = sum(u["calls"] for u in unrated)
    return rows + [{"destination": "TOTAL", "description": f"{len(unrated)} destination(s)", "reason": "",
                    "calls": total, "servers": ""}]


def publish(summary: RunSummary, clients: list[dict[str, Any]], unrated: list[dict[str, Any]],
            extra: Attention | None = None, images: dict[str, str] | None = None) -> None:
    """Prefect artifacts for the run (keys let the UI keep a history per artifact). The summary is
    published last so that it is the newest card of the run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    if clients:
        create_table_artifact(clients, key="autobill-client-totals",
                              description=f"Per-client totals for {summary.billing_date}, largest first")
    create_table_artifact(unrated_table(unrated), key="autobill-unrated-destinations",
                          description=f"Destinations without a rate ({summary.billing_date})")
    create_markdown_artifact(markdown(summary, extra, images), key="autobill-run-summary",
                             description=f"Autobill summary for {summary.billing_date}: {summary.status}")


def server_volumes(settings: Settings, run_id: int, now: Any) -> list[charts.ServerVolume]:
    """Each server's batch of run `run_id` against its usual volume (data_quality.volume)."""
    with session_scope(settings.ledger) as session:
        batches = session.execute(select(ExtractionBatch.id, ExtractionBatch.server, ExtractionBatch.rows,
                                         ExtractionBatch.window_start, ExtractionBatch.window_end)
                                  .where(ExtractionBatch.run_id == run_id)).all()
    out = []
    for bid, server, rows, ws, we in batches:
        history = volume_history(settings.ledger, server, now, settings.validation.volume_history_days, bid)
        current = Sample(rows or 0, ws, we)
        check = volume_check(current, history, settings.validation.volume_drop_fraction)
        unit = "rows/batch" if current.hours is None else "rows/h"
        tonight = check.rate_per_hour if check.rate_per_hour is not None else float(rows or 0)
        out.append(charts.ServerVolume(server, tonight, check.usual_per_hour, unit, check.status))
    return out


def trend_nights(settings: Settings, summary: RunSummary, run_minutes: float | None) -> list[charts.Night]:
    """The last 30 nights from the ledger, tonight's (not finished yet) from `summary`."""
    nights = {}
    for n in nightly_nights(settings, 30):
        s = n["summary"]
        nights[n["billing_date"]] = charts.Night(
            n["billing_date"], int(s.get("extracted", 0)) + int(s.get("carried_in", 0)), int(s.get("billed", 0)),
            {c: Decimal(v) for c, v in (s.get("amount_billed") or {}).items()}, n["minutes"], n["status"])
    if not summary.dry_run:
        nights[summary.billing_date] = charts.Night(
            summary.billing_date, summary.total("extracted") + summary.total("carried_in"), summary.total("billed"),
            dict(summary.amount_billed), run_minutes, summary.status)
    return [nights[d] for d in sorted(nights)[-30:]]


RELEASED = "(released from quarantine)"


def build_summary(
    billing_date: date,
    dry_run: bool,
    lines: dict[str, ServerLine],
    rated: pl.DataFrame | pl.LazyFrame,
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
    rated = rated.lazy()
    if already:
        hit = rated.filter(pl.col("cdr_key").is_in(list(already)))
        for server, n in hit.group_by("server").len().collect().iter_rows():
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
    if not dry_run:
        for ln in record.lines:
            if ln.amount == 0:
                why = "free" if ln.exact_amount == 0 else "under_minor_unit"
                summary.charges_zero[why] = summary.charges_zero.get(why, 0) + 1
    if dry_run:
        summary.preview = [
            {"client_id": ln.client_id, "service_id": ln.service_id, "billing_date": ln.billing_date.isoformat(),
             "class": ln.charge_class, "currency": ln.currency, "amount": str(ln.amount), "calls": ln.cdr_count,
             "description": ln.description}
            for ln in record.lines
        ]
    if posting is not None:
        summary.charges_posted = posting.posted
        summary.amount_posted = dict(posting.amount_posted)
        summary.uncertain += [k for k in posting.uncertain if k not in summary.uncertain]
        summary.failed_posts = [f"{key}: {err}" for key, err in posting.failed]
    if reconciled is not None:
        summary.reconciled_posted, summary.reconciled_pending = len(reconciled.posted), len(reconciled.pending)
        summary.reconcile_undecided = len(reconciled.undecided)
    return summary


@task(name="report", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def report_task(billing_date: date, dry_run: bool, lines: dict[str, ServerLine], rated_path: str,
                requeued: Any | None, record: Any, posting: Any | None, uncertain: list[str],
                reconciled: Any | None = None, settings: Settings | None = None,
                run_id: int | None = None, services: dict[str, Any] | None = None) -> RunSummary:
    """`uncertain`: every charge still waiting for reconciliation (not only this run's).
    With `settings` and `run_id` the summary also names clients, lists the run's top quarantine
    reasons and draws the charts; each of those is best effort (a WHMCS outage must not fail the
    report): what could not be done is said in the summary."""
    present = pl.read_parquet_schema(rated_path)
    # A scan: the summary's counts and the unrated destinations are grouped from the file, which
    # is never read whole (ten million rated calls would be gigabytes here).
    rated = pl.scan_parquet(rated_path).select([c for c in REPORT_COLUMNS if c in present])
    summary = build_summary(billing_date, dry_run, lines, rated, requeued, record, posting, uncertain, reconciled)
    summary.services = services
    unrated = unrated_destinations(rated)
    extra = Attention(unrated=unrated)
    names: dict[int, str] = {}
    images: dict[str, str] = {}
    if settings is not None:
        names, images = _context(settings, run_id, summary, record, extra)
    publish(summary, client_totals(record.lines, names), unrated, extra, images)
    return summary


def _context(settings: Settings, run_id: int | None, summary: RunSummary, record: Any,
             extra: Attention) -> tuple[dict[int, str], dict[str, str]]:
    logger = get_run_logger()
    names: dict[int, str] = {}
    images: dict[str, str] = {}
    ids = {ln.client_id for ln in record.lines}
    if ids and settings.whmcs is not None:
        try:
            with WhmcsClient.from_settings(settings.whmcs) as whmcs:
                names = client_names(whmcs, ids)
        except Exception as exc:  # noqa: BLE001 - names are a nicety; the report must go out
            extra.notes.append(f"Client names unavailable (WHMCS: {type(exc).__name__}); ids shown instead.")
            logger.warning("client names unavailable: %s", exc)
    now = utc_now()
    minutes = None
    if run_id is not None:
        extra.quarantine = run_reasons(settings, run_id)
        started = run_started_at(settings, run_id)
        minutes = (now - started).total_seconds() / 60 if started else None
    try:
        trend = charts.nightly_trend(trend_nights(settings, summary, minutes), settings.nightly_budget_minutes)
        if trend:
            images[f"Nightly trend (budget {settings.nightly_budget_minutes} min)"] = trend
        if run_id is not None:
            volumes = server_volumes(settings, run_id, now)
            extra.volume_drops = [f"{v.server}: {v.tonight:.1f} {v.unit}, usual {v.usual:.1f}"
                                  for v in volumes if v.status == "drop" and v.usual is not None]
            chart = charts.server_volumes(volumes)
            if chart:
                images["Volume per server"] = chart
    except Exception as exc:  # noqa: BLE001 - a chart must never fail billing's report
        logger.warning("charts not drawn: %s: %s", type(exc).__name__, exc)
        extra.notes.append(f"Charts not drawn ({type(exc).__name__}: {exc}).")
    return names, images
