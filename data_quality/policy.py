"""Policy: when does a server's batch stop instead of going on to billing?

Bad rows alone never stop a batch: they are quarantined and the rest is billed. A batch is
REJECTED (watermark stays, its task fails visibly, other servers go on) when:

1. the bad-row fraction exceeds `validation.max_bad_row_fraction` AND at least
   `validation.min_bad_rows` rows are bad (so one odd call on a tiny PBX does not stop it);
2. or a `critical` batch check failed or crashed (see `data_quality.suites`); the volume
   check is critical only with `validation.volume_drop_blocks`, else a flagged warning.

Bad-row fraction = bad / judged, where bad = rows quarantined now + re-reads of rows still
HELD in quarantine, and judged = good + bad. Duplicates of billed/unrated/released rows are
neither (every extraction re-reads its overlap; those rows say nothing about tonight's data).
Counting held re-reads as bad matters: a rejected batch is extracted again the next night, and
its bad rows are then already in quarantine; without them the second attempt would pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from autobill.config import Settings
from data_quality.rules import RowCheck
from data_quality.suites import BatchReport

HELD = "quarantine:held"


@dataclass
class Decision:
    accepted: bool
    bad_rows: int
    judged_rows: int
    reasons: list[str] = field(default_factory=list)  # why it was rejected
    warnings: list[str] = field(default_factory=list)

    @property
    def bad_fraction(self) -> float:
        return self.bad_rows / self.judged_rows if self.judged_rows else 0.0


def decide(rows: RowCheck, report: BatchReport | None, settings: Settings) -> Decision:
    v = settings.validation
    held_again = rows.duplicates.filter(rows.duplicates["duplicate_of"] == HELD).height
    bad = rows.quarantined.height + held_again
    judged = rows.good.height + bad
    decision = Decision(accepted=True, bad_rows=bad, judged_rows=judged)
    if bad and bad > v.max_bad_row_fraction * judged:
        text = (f"{bad} of {judged} rows are bad ({decision.bad_fraction:.1%}, {held_again} of them still held "
                f"in quarantine from earlier runs), above max_bad_row_fraction {v.max_bad_row_fraction:.1%}")
        if bad >= v.min_bad_rows:
            decision.reasons.append(text)
        else:
            decision.warnings.append(f"{text}; not rejected: fewer than min_bad_rows {v.min_bad_rows}")
    if report is not None:
        for check in report.hard_failures:
            what = f"check crashed: {check.error}" if check.error else f"observed {check.observed}"
            decision.reasons.append(f"{check.label} failed ({what}; {check.detail})")
        for check in report.warnings:
            decision.warnings.append(f"{check.label}: {check.detail or check.observed}")
    decision.accepted = not decision.reasons
    return decision
