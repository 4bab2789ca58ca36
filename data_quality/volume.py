"""Volume check: is tonight's batch far smaller than this server usually sends?

A PBX whose CDR table stopped filling, or a provider file cut short, still produces a
"valid" batch, just a tiny one. We compare with the server's own history: the committed
batches of the last `validation.volume_history_days` days (ledger `extraction_batches`).

Normalisation: batches do not cover equal windows (the first run after an outage covers three
days, a manual rerun ten minutes), so volumes are compared as rows per hour of extraction
window. Windows shorter than `MIN_WINDOW_HOURS` are not judged (a short window at night is
naturally quiet); a batch without a window (a file drop) is compared per batch instead. The
usual rate is the MEDIAN of the history, robust to one holiday or one busy day; with fewer
than `MIN_HISTORY` comparable batches there is nothing to compare with and the check is
skipped (said so in the report). A drop is `rate < (1 - volume_drop_fraction) * usual`, i.e.
with the default 0.9, a night with 90 % fewer CDRs than usual is flagged.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import aliased

from autobill.ledger.db import session_scope
from autobill.ledger.models import ExtractionBatch, Run

MIN_WINDOW_HOURS = 6.0
MIN_HISTORY = 3


@dataclass
class VolumeCheck:
    status: str  # ok | drop | skipped
    rows: int
    rate_per_hour: float | None  # rows per window hour (per batch when windowless)
    usual_per_hour: float | None
    history_batches: int
    detail: str


@dataclass(frozen=True)
class Sample:
    rows: int
    window_start: datetime | None
    window_end: datetime | None

    @property
    def hours(self) -> float | None:
        if self.window_start is None or self.window_end is None:
            return None
        return (self.window_end - self.window_start).total_seconds() / 3600


def _rate(sample: Sample, per_batch: bool) -> float | None:
    if per_batch:
        return float(sample.rows)
    hours = sample.hours
    if hours is None or hours < MIN_WINDOW_HOURS:
        return None
    return sample.rows / hours


def volume_check(current: Sample, history: list[Sample], drop_fraction: float) -> VolumeCheck:
    """Compare `current` with `history` (pure function; see the module docstring)."""
    per_batch = current.hours is None
    unit = "rows per batch" if per_batch else "rows/hour"
    rate = _rate(current, per_batch)
    if rate is None:
        return VolumeCheck("skipped", current.rows, None, None, 0,
                           f"window of {current.hours:.1f} h is shorter than {MIN_WINDOW_HOURS:g} h: not judged")
    rates = [r for r in (_rate(s, per_batch) for s in history if (s.hours is None) == per_batch) if r is not None]
    if len(rates) < MIN_HISTORY:
        return VolumeCheck("skipped", current.rows, rate, None, len(rates),
                           f"only {len(rates)} comparable batch(es) in the history (need {MIN_HISTORY}): not judged")
    usual = statistics.median(rates)
    floor = (1.0 - drop_fraction) * usual
    if rate < floor:
        return VolumeCheck("drop", current.rows, rate, usual, len(rates),
                           f"{rate:.1f} {unit} is below {floor:.1f} ({(1 - drop_fraction):.0%} of the usual "
                           f"{usual:.1f} over {len(rates)} batches): about {1 - rate / usual:.0%} fewer CDRs than usual")
    return VolumeCheck("ok", current.rows, rate, usual, len(rates),
                       f"{rate:.1f} {unit} vs usual {usual:.1f} over {len(rates)} batches")


def volume_history(ledger_url: str, server: str, now: datetime, days: int, exclude_batch: int | None = None
                   ) -> list[Sample]:
    """Committed batches of `server` created in the last `days` days (the comparison base)."""
    since = now - timedelta(days=days)
    with session_scope(ledger_url) as session:
        query = select(ExtractionBatch.id, ExtractionBatch.rows, ExtractionBatch.window_start,
                       ExtractionBatch.window_end).where(
            ExtractionBatch.server == server, ExtractionBatch.status == "committed",
            ExtractionBatch.created_at >= since)
        return [Sample(rows or 0, ws, we) for bid, rows, ws, we in session.execute(query) if bid != exclude_batch]


def is_rerun(ledger_url: str, batch_id: int) -> bool:
    """True when batch `batch_id` belongs to a run of a billing date that this server already
    committed a batch for (a rerun): an empty batch then means "nothing new since", not an empty
    night, and is not judged (no volume or empty-batch warning)."""
    this_run, other_run = aliased(Run), aliased(Run)
    other = aliased(ExtractionBatch)
    with session_scope(ledger_url) as session:
        query = (
            select(other.id)
            .join(other_run, other.run_id == other_run.id)
            .join(ExtractionBatch, ExtractionBatch.id == batch_id)
            .join(this_run, ExtractionBatch.run_id == this_run.id)
            .where(other.server == ExtractionBatch.server, other.status == "committed", other.id != batch_id,
                   other_run.billing_date == this_run.billing_date, other_run.dry_run.is_(False))
            .limit(1)
        )
        return session.scalar(query) is not None
