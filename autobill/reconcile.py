"""Deciding an uncertain charge from what WHMCS shows (pure: no I/O, no clock).

An `uncertain` charge is one whose AddBillableItem may or may not have been processed (the answer
was lost, or the run died mid-call). WHMCS cannot list billable items over its API, but its daily
cron turns every `invoiceaction=nextcron` item into an invoice line carrying our description, and
so our key `[ab-…]`. A read-only WHMCS database shows the billable-items table itself.

The rule, for one charge and one record source that is complete up to `as_of` (the start of the
last completed daily cron, for invoices; the moment of the query, for the database):

- the key is on exactly one line        -> `posted` (whatever the times: found is found);
- the key is on several lines           -> `undecided` (a duplicate in WHMCS: a person must look);
- the source could not be read in full  -> `undecided`;
- `as_of` unknown, or not later than the moment the charge became uncertain plus a margin
  (the item could still be stored, or stored after the cron's billable-items step)
                                        -> `undecided` (e.g. WHMCS's cron has not run since);
- otherwise, not found                  -> `pending`: certainly not in WHMCS, posted again.

A charge's call can no longer be in flight from our side once it is uncertain (the client gave up,
or the process that sent it is dead), which is why `uncertain_since` bounds when the item could
have been stored; `margin` covers a WHMCS still processing a request we stopped waiting for.

A correction that lowers a line was posted as a credit (AddCredit): it never shows on an invoice
or in the billable-items table, so its source is the client's credit log (GetCredits), which
AddCredit writes synchronously: the log read at moment T holds every credit WHMCS finished storing
before T. `as_of` is then the moment the read was sent, and the margin (`whmcs.credit_margin_seconds`)
covers an AddCredit we stopped waiting for that WHMCS is still running (PHP does not stop a request
when the client hangs up). The same rule applies: found once -> posted (credit id kept), several
times -> undecided, absent and read later than uncertain + margin -> pending.

WHMCS writes its times in its own server's timezone without an offset: they are read with
`whmcs_time`, never compared with UTC as they come.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

POSTED, PENDING, UNDECIDED = "posted", "pending", "undecided"


@dataclass(frozen=True)
class Line:
    """A place the key can be found: an invoice line (invoice_id, item_id, relid = billable item id for
    type "Item"), a billable item row (billable_id only) or a credit log entry (credit_id only)."""

    description: str
    invoice_id: int | None = None
    item_id: int | None = None
    billable_id: int | None = None
    credit_id: int | None = None


@dataclass(frozen=True)
class Evidence:
    source: str  # "invoices" | "database" | "credits"
    as_of: datetime | None  # UTC: the source shows every item stored before this moment
    as_of_source: str = ""  # how as_of was known, e.g. "GetAutomationLog" or "whmcs.cron_time 01:00 + 90 min"
    lines: tuple[Line, ...] = ()
    scanned: tuple[int, ...] = ()  # invoice ids read (empty for the database)
    complete: bool = True
    error: str | None = None


@dataclass(frozen=True)
class Decision:
    outcome: str  # posted | pending | undecided
    reason: str
    line: Line | None = None
    hits: tuple[Line, ...] = field(default=())


def marker(key: str) -> str:
    """How a key appears in a WHMCS description (autobill.ledger.charges.describe)."""
    return f"[{key}]"


def decide(key: str, uncertain_since: datetime, evidence: Evidence, margin: timedelta = timedelta(0)) -> Decision:
    if uncertain_since.tzinfo is None:
        raise ValueError("uncertain_since must be an aware (UTC) datetime")
    needle = marker(key)
    hits = tuple(ln for ln in evidence.lines if needle in ln.description)
    where = _where(evidence)
    if len(hits) == 1:
        return Decision(POSTED, f"found in {_line_text(hits[0])}", hits[0], hits)
    if len(hits) > 1:
        return Decision(UNDECIDED, f"found {len(hits)} times ({'; '.join(_line_text(h) for h in hits)}): "
                        "a duplicate in WHMCS, settle by hand", None, hits)
    if not evidence.complete:
        return Decision(UNDECIDED, f"could not read {where} in full: {evidence.error or 'unknown error'}")
    if evidence.as_of is None:
        return Decision(UNDECIDED, f"not in {where}, but it is not known when WHMCS's daily cron last ran"
                        f"{' (' + evidence.as_of_source + ')' if evidence.as_of_source else ''}")
    if evidence.as_of <= uncertain_since + margin:
        return Decision(UNDECIDED, f"not in {where}, but the last record ({_utc(evidence.as_of)}, "
                        f"{evidence.as_of_source}) is not after the charge became uncertain "
                        f"({_utc(uncertain_since)}{_margin(margin)}): {_wait(evidence)}")
    return Decision(PENDING, f"not in {where} although {evidence.as_of_source} at {_utc(evidence.as_of)} "
                    f"is after the charge became uncertain ({_utc(uncertain_since)}): never stored, post again")


def _where(evidence: Evidence) -> str:
    if evidence.source == "database":
        return "the WHMCS billable items table"
    if evidence.source == "credits":
        return "the client's credit log"
    return f"{len(evidence.scanned)} invoice(s) since the post"


def _wait(evidence: Evidence) -> str:
    if evidence.source == "credits":
        return "WHMCS may still be storing it, read the credit log again later"
    if evidence.source == "database":
        return "WHMCS may still be storing it, read the table again later"
    return "wait for WHMCS's next daily cron"


def _line_text(line: Line) -> str:
    if line.credit_id is not None:
        return f"credit log entry {line.credit_id}"
    if line.invoice_id is not None:
        return f"invoice {line.invoice_id} line {line.item_id}" + (
            f" (billable item {line.billable_id})" if line.billable_id else "")
    return f"billable item {line.billable_id}"


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _margin(margin: timedelta) -> str:
    return f" + {int(margin.total_seconds())} s margin" if margin else ""


# -- WHMCS times -------------------------------------------------------------------------------


def whmcs_time(text: str | None, tz: ZoneInfo) -> datetime | None:
    """A WHMCS 'YYYY-MM-DD HH:MM:SS' (its server's local time, no offset) as an aware UTC datetime;
    None for an empty or zero value. A local time that does not exist or repeats (DST) is read with
    fold=0, i.e. the earlier reading."""
    text = (text or "").strip()
    if not text or text.startswith("0000-00-00"):
        return None
    naive = datetime.strptime(text[:19], "%Y-%m-%d %H:%M:%S" if len(text) >= 19 else "%Y-%m-%d")
    return naive.replace(tzinfo=tz).astimezone(UTC)


def whmcs_date(moment: datetime, tz: ZoneInfo) -> date:
    """The WHMCS local calendar date of an aware moment (invoice dates are WHMCS-local dates)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: timestamps must carry an offset (store UTC)")
    return moment.astimezone(tz).date()


def assumed_cron_done(now: datetime, tz: ZoneInfo, cron_time: str, margin_minutes: int) -> datetime:
    """Fallback when WHMCS does not say: the latest moment <= now that is a WHMCS-local day's
    `cron_time` + margin (the cron invocation is assumed finished by then). UTC."""
    hh, mm = (int(x) for x in cron_time.split(":"))
    day = now.astimezone(tz).date()
    for back in range(0, 3):
        d = day - timedelta(days=back)
        start = datetime.combine(d, time(hh, mm), tzinfo=tz).astimezone(UTC)
        done = start + timedelta(minutes=margin_minutes)
        if done <= now:
            return done
    raise AssertionError("unreachable: a margin is at most a day")  # pragma: no cover
