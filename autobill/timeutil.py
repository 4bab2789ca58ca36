"""Explicit time (DESIGN.md invariant 4): UTC in storage, a named IANA zone for periods.

A billing date is a calendar day in the configured timezone; its calls are those that
*start* in [local midnight, next local midnight), which is 23 or 25 hours long on DST days.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo


def utc_now() -> datetime:
    return datetime.now(UTC)


def local_today(tz: ZoneInfo, now: datetime | None = None) -> date:
    return (now or utc_now()).astimezone(tz).date()


def yesterday(tz: ZoneInfo, now: datetime | None = None) -> date:
    """The default billing date of a nightly run: yesterday in the billing timezone."""
    return local_today(tz, now) - timedelta(days=1)


def day_bounds_utc(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the local calendar day `day` in `tz`."""
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    nxt = day + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def local_date_of(moment: datetime, tz: ZoneInfo) -> date:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: timestamps must carry an offset (store UTC)")
    return moment.astimezone(tz).date()


def as_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: timestamps must carry an offset (store UTC)")
    return moment.astimezone(UTC)


def period_bounds(day: date, anchor_day: int) -> tuple[date, date]:
    """The billing period (for included minutes) containing `day`: [start, end) local dates,
    a month long, starting on `anchor_day` of the month."""
    if day.day >= anchor_day:
        start = day.replace(day=anchor_day)
    else:
        prev_month_last = day.replace(day=1) - timedelta(days=1)
        start = prev_month_last.replace(day=anchor_day)
    year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
    return start, date(year, month, anchor_day)


def date_range(first: date, last: date) -> list[date]:
    if last < first:
        raise ValueError(f"empty date range: {first} .. {last}")
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def local_run_name(prefix: str, tz: ZoneInfo, now: datetime | None = None) -> str:
    """A flow-run name people can place in their day: `autosuspend-2026-11-20-14:05-EST` (the
    local time in `tz`, with its abbreviation so DST changes read right). For `flow_run_name=`."""
    moment = as_utc(now) if now else utc_now()
    local = moment.astimezone(tz)
    return f"{prefix}-{local:%Y-%m-%d-%H:%M}-{local.tzname()}"
