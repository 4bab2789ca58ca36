"""Time-of-day / weekday bands of tariff rows (`days`, `hours`), for the nightly rater.

A band is the set of week minutes (weekday x minute of day, in the tariff's timezone) in which a
row applies; a call is in the band when its START falls in it. Days and hours are judged on the
same local start moment, independently: with `days=fri, hours=22:00-06:00` a call starting
Saturday 02:00 is *not* in the band (it is Saturday). That is how operators read such a line.

Syntax (case and spaces ignored):
- days:  comma-separated items, each a day (`mon`, `tuesday`, ...) or a range `mon-fri`; a
  range may wrap (`fri-mon` = fri, sat, sun, mon). Empty: every day.
- hours: comma-separated `HH:MM-HH:MM`, start inclusive, end exclusive, `24:00` allowed as an
  end; a range whose end is not after its start wraps midnight (`22:00-06:00`). A range with
  equal ends is refused (empty or whole day? say `00:00-24:00`). Empty: the whole day.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported by the banded path only: `autobill rate` does not pay for it
    import numpy as np

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 1440
WEEK_MINUTES = 7 * MINUTES_PER_DAY
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"^([0-9]{1,2}):([0-9]{2})$")


class BandError(ValueError):
    pass


def _day(token: str) -> int:
    token = token.strip().lower()
    if token in DAY_NAMES:
        return DAY_NAMES.index(token)
    if token in _FULL:
        return _FULL.index(token)
    raise BandError(f"unknown day {token!r} (use mon, tue, wed, thu, fri, sat, sun)")


def parse_days(text: str | None) -> tuple[int, ...]:
    """Weekdays (0 = Monday) of a `days` field; all seven when empty."""
    if text is None or not text.strip():
        return tuple(range(7))
    days: set[int] = set()
    for item in text.split(","):
        if not item.strip():
            raise BandError(f"empty item in days {text!r}")
        if "-" in item:
            first, _, last = item.partition("-")
            a, b = _day(first), _day(last)
            span = (b - a) % 7
            days.update((a + i) % 7 for i in range(span + 1))
        else:
            days.add(_day(item))
    return tuple(sorted(days))


def _minute(token: str, *, end: bool) -> int:
    m = _TIME.match(token.strip())
    if not m:
        raise BandError(f"not a time HH:MM: {token.strip()!r}")
    hh, mm = int(m.group(1)), int(m.group(2))
    if mm > 59 or hh > 24 or (hh == 24 and (mm != 0 or not end)):
        raise BandError(f"not a time of day: {token.strip()!r}")
    return hh * 60 + mm


def parse_hours(text: str | None) -> tuple[tuple[int, int], ...]:
    """Minute ranges [start, end) of an `hours` field, wrapping ranges split at midnight."""
    if text is None or not text.strip():
        return ((0, MINUTES_PER_DAY),)
    ranges: list[tuple[int, int]] = []
    for item in text.split(","):
        first, sep, last = item.partition("-")
        if not sep:
            raise BandError(f"not a range HH:MM-HH:MM: {item.strip()!r}")
        a, b = _minute(first, end=False), _minute(last, end=True)
        if a == b:
            raise BandError(f"empty or ambiguous range {item.strip()!r} (for the whole day write 00:00-24:00)")
        if a < b:
            ranges.append((a, b))
        else:
            ranges.extend([(a, MINUTES_PER_DAY), (0, b)])
    return tuple(r for r in ranges if r[0] < r[1])


def band_mask(days: str | None, hours: str | None) -> np.ndarray:
    """Boolean array of WEEK_MINUTES entries: index weekday * 1440 + minute of day."""
    import numpy as np

    day_set = parse_days(days)
    minutes = np.zeros(MINUTES_PER_DAY, dtype=bool)
    for a, b in parse_hours(hours):
        minutes[a:b] = True
    mask = np.zeros(WEEK_MINUTES, dtype=bool)
    for d in day_set:
        mask[d * MINUTES_PER_DAY : (d + 1) * MINUTES_PER_DAY] = minutes
    return mask


def week_minute(weekday: int, hour: int, minute: int) -> int:
    """`weekday` 0 = Monday."""
    return weekday * MINUTES_PER_DAY + hour * 60 + minute
