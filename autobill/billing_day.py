"""Which billing date a run bills, which servers, and how far it reads.

A scheduled run has no parameters (Prefect passes none), so its billing date is derived from
the run's *scheduled* start time in the billing timezone: the 00:55 run of the 21st bills the
20th even if it starts late or is retried at 03:00.
"""

from __future__ import annotations

from datetime import date, datetime

import polars as pl

from autobill.config import Settings
from autobill.timeutil import day_bounds_utc, utc_now, yesterday


def default_billing_date(settings: Settings, scheduled: datetime | None = None) -> date:
    if scheduled is None:
        try:
            from prefect.runtime import flow_run

            scheduled = flow_run.scheduled_start_time
        except Exception:  # noqa: BLE001 - outside a flow run there is no schedule
            scheduled = None
    return yesterday(settings.tz, scheduled if isinstance(scheduled, datetime) else None)


def billing_cutoff(settings: Settings, day: date, now: datetime | None = None) -> datetime:
    """Read CDRs that ended before the end of the billing date (or now, for today).

    Calls still running at midnight end after the cutoff and are billed by the next run as late
    CDRs of their own billing date (a new charge line)."""
    end = day_bounds_utc(day, settings.tz)[1]
    return min(end, now or utc_now())


def choose_servers(settings: Settings, requested: list[str] | None) -> list[str]:
    known = [s.id for s in settings.servers]
    if not requested:
        return [s.id for s in settings.servers if s.enabled]
    unknown = [r for r in requested if r not in known]
    if unknown:
        raise ValueError(f"unknown server(s) {unknown} (known: {known})")
    return list(dict.fromkeys(requested))


def with_billing_date(cdrs: pl.DataFrame, timezone: str) -> pl.DataFrame:
    """The billing date of a call is the local calendar date of its start in the billing timezone."""
    return cdrs.with_columns(
        pl.col("start_utc").dt.convert_time_zone(timezone).dt.date().alias("billing_date")
    )
