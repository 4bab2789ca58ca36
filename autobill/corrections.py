"""Corrections: the difference between what was billed and what a re-rate says, as new lines.

Pure functions, no I/O (DESIGN.md invariant 7: what was posted is never edited).

A *line* is what the nightly bills as one charge: client / service / billing date / class /
currency (`LineId`). What is *booked* on a line is the sum of every charge and correction already
in the ledger for it (pending, posting, uncertain or posted: each will be or was sent once).

`corrections(old, new, booked)` compares, per CDR, its current price (`old`: the nightly price or
the price of its latest correction) with its re-rated price (`new`). A CDR changed when its
outcome, class, currency, cost or included seconds differ. For each line touched by a changed
CDR (its old line, its new line: a CDR whose class changed moves from one line to another):

    new exact   = booked exact + sum(new costs of changed CDRs now on the line)
                               - sum(old costs of changed CDRs that were on it)
    new amount  = round_minor(new exact)            (a line is rounded once, as the nightly does)
    correction  = new amount - booked amount        (> 0: billable item, < 0: credit, 0: recorded only)

So billed(T1) + corrections(T1 -> T2) + corrections(T2 -> T3) = billed(T3) to the cent per line,
and a re-rate that changes no CDR produces nothing (an unchanged tariff posts nothing, the same
re-rate twice posts nothing the second time). Only CDRs with outcome `billed` are on a line;
included and zero-cost calls carry no money but their included seconds are tracked (they decide
how much allowance later calls of the period get).

Idempotency key of a correction: `rc-<client>-<service>-<date>-<class>-<ccy>-<n>-<digest>`, `n`
the line's n-th correction and the digest over (cdr_key, old cost, new cost) of its changed
CDRs: the same ledger state always gives the same key, two different corrections never share one.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from autobill.money import round_minor

ZERO = Decimal(0)


@dataclass(frozen=True)
class LineId:
    client_id: int
    service_id: int
    billing_date: date
    charge_class: str
    currency: str


@dataclass(frozen=True)
class Price:
    """One CDR's price: current (in the ledger) or re-rated."""

    cdr_key: str
    client_id: int
    service_id: int
    billing_date: date
    outcome: str  # billed | included | zero_cost
    charge_class: str  # "" when unknown (an included / zero-cost call of the nightly)
    currency: str  # "" when unknown
    cost: Decimal
    included_seconds: int = 0
    billable_seconds: int = 0
    charge_id: int | None = None  # the nightly charge the CDR was billed on
    tariff_version: str | None = None
    destination: str | None = None  # tariff description / matched prefix, for the preview

    @property
    def line(self) -> LineId | None:
        if self.outcome != "billed":
            return None
        return LineId(self.client_id, self.service_id, self.billing_date, self.charge_class, self.currency)

    def same_price(self, other: Price) -> bool:
        return (self.outcome, self.cost, self.included_seconds) == (other.outcome, other.cost, other.included_seconds) \
            and (self.outcome != "billed" or (self.charge_class, self.currency) == (other.charge_class, other.currency))


@dataclass
class Booked:
    """What the ledger holds for one line: every charge and correction, whatever its state."""

    amount: Decimal = ZERO
    exact: Decimal = ZERO
    first_charge_id: int | None = None  # the nightly charge a correction points at
    corrections: int = 0  # corrections already made on the line
    versions: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Change:
    old: Price
    new: Price

    @property
    def delta(self) -> Decimal:
        return (self.new.cost if self.new.line else ZERO) - (self.old.cost if self.old.line else ZERO)


@dataclass(frozen=True)
class Correction:
    line: LineId
    was: Decimal  # booked amount before
    now: Decimal  # the line's amount after (rounded once)
    exact_was: Decimal
    exact_now: Decimal
    corrects_charge_id: int | None
    sequence: int
    changes: tuple[Change, ...] = field(repr=False)
    idempotency_key: str = ""
    old_versions: tuple[str, ...] = ()
    new_versions: tuple[str, ...] = ()

    @property
    def amount(self) -> Decimal:
        return self.now - self.was

    @property
    def exact_amount(self) -> Decimal:
        return self.exact_now - self.exact_was

    @property
    def kind(self) -> str:
        """How it is posted: `billable_item` (increase), `credit` (decrease) or `none` (rounds to 0)."""
        return "billable_item" if self.amount > 0 else "credit" if self.amount < 0 else "none"

    @property
    def calls(self) -> int:
        return len(self.changes)

    @property
    def description(self) -> str:
        ln = self.line
        return (f"Correction for {ln.billing_date:%Y-%m-%d}: {ln.charge_class}, {self.calls} call(s), "
                f"was {self.was} now {self.now} {ln.currency} [{self.idempotency_key}]")


def correction_key(line: LineId, sequence: int, changes: Iterable[Change]) -> str:
    parts = sorted(f"{c.old.cdr_key}|{c.old.cost}|{c.new.cost}|{c.old.charge_class}|{c.new.charge_class}"
                   for c in changes)
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return (f"rc-{line.client_id}-{line.service_id}-{line.billing_date:%Y%m%d}-{line.charge_class}-"
            f"{line.currency}-{sequence}-{digest}")


def changed(old: Mapping[str, Price], new: Mapping[str, Price]) -> list[Change]:
    """Every CDR priced in both whose price differs, in key order."""
    return [Change(old[k], new[k]) for k in sorted(old.keys() & new.keys()) if not old[k].same_price(new[k])]


def corrections(old: Mapping[str, Price], new: Mapping[str, Price], booked: Mapping[LineId, Booked]) -> list[Correction]:
    """The correction lines that take `booked` from the `old` prices to the `new` ones (module doc).

    `old` must hold every CDR of each line it touches (the caller re-rates whole billing dates)."""
    by_line: dict[LineId, list[Change]] = defaultdict(list)
    for ch in changed(old, new):
        for line in {ch.old.line, ch.new.line} - {None}:
            by_line[line].append(ch)
    out = []
    for line in sorted(by_line, key=lambda ln: (ln.client_id, ln.service_id, ln.billing_date, ln.charge_class,
                                                 ln.currency)):
        changes = tuple(by_line[line])
        book = booked.get(line, Booked())
        delta = sum((c.new.cost for c in changes if c.new.line == line), ZERO) \
            - sum((c.old.cost for c in changes if c.old.line == line), ZERO)
        exact_now = book.exact + delta
        sequence = book.corrections + 1
        new_versions = {c.new.tariff_version for c in changes if c.new.line == line and c.new.tariff_version}
        out.append(Correction(
            line=line, was=book.amount, now=round_minor(exact_now, line.currency), exact_was=book.exact,
            exact_now=exact_now, corrects_charge_id=book.first_charge_id, sequence=sequence, changes=changes,
            idempotency_key=correction_key(line, sequence, changes), old_versions=tuple(sorted(book.versions)),
            new_versions=tuple(sorted(new_versions)),
        ))
    return out


def line_of_change(change: Change, made: Mapping[LineId, int]) -> int | None:
    """The correction (id in `made`) a changed CDR is linked to: its new line, else its old one."""
    for line in (change.new.line, change.old.line):
        if line is not None and line in made:
            return made[line]
    return None


def apply(booked: Mapping[LineId, Booked], made: Iterable[Correction]) -> dict[LineId, Booked]:
    """`booked` after the corrections are recorded (what the ledger will hold)."""
    out = {k: Booked(v.amount, v.exact, v.first_charge_id, v.corrections, set(v.versions)) for k, v in booked.items()}
    for c in made:
        b = out.setdefault(c.line, Booked())
        b.amount += c.amount
        b.exact += c.exact_amount
        b.corrections += 1
        b.versions |= set(c.new_versions)
    return out


# -- the preview ------------------------------------------------------------------------------


@dataclass
class ClientPreview:
    client_id: int
    currency: str
    old: Decimal = ZERO
    new: Decimal = ZERO
    calls: int = 0  # calls whose price changed
    lines: int = 0

    @property
    def difference(self) -> Decimal:
        return self.new - self.old


def preview(made: Iterable[Correction]) -> list[ClientPreview]:
    """Per client and currency: booked and corrected amounts of the lines touched, calls changed."""
    out: dict[tuple[int, str], ClientPreview] = {}
    seen: dict[tuple[int, str], set[str]] = defaultdict(set)
    for c in made:
        key = (c.line.client_id, c.line.currency)
        p = out.setdefault(key, ClientPreview(*key))
        p.old += c.was
        p.new += c.now
        p.lines += 1
        seen[key] |= {ch.old.cdr_key for ch in c.changes}
    for key, p in out.items():
        p.calls = len(seen[key])
    return [out[k] for k in sorted(out)]


def top_destinations(changes: Iterable[Change], limit: int = 10) -> list[dict]:
    """The destinations whose calls changed most in money (absolute), with their call counts."""
    money: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    calls: dict[tuple[str, str], int] = defaultdict(int)
    for ch in changes:
        key = (ch.new.destination or ch.old.destination or "?", ch.new.currency or ch.old.currency)
        money[key] += ch.delta
        calls[key] += 1
    ranked = sorted(money, key=lambda k: (-abs(money[k]), k))[:limit]
    return [{"destination": d, "currency": ccy, "calls": calls[(d, ccy)], "difference": str(money[(d, ccy)])}
            for d, ccy in ranked]
