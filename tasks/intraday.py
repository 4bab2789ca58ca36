"""The intraday step of an autosuspend cycle (#18): new CDRs from every server that delivers
them during the day, rated with the nightly engine, stored as unbilled usage.

Which servers: FusionPBX (its `v_xml_cdr` table fills as calls end) and Vodia (REST CDR
listing). Not LesNet (its CDR text file is refreshed once every 24 h: seeds 001) nor drop
folders (files arrive when the PBX exports them, typically once a day): their calls count
once the nightly bills them.

Each server is read on its OWN watermark (`intraday_watermarks`), with the connectors' usual
`extract(since, until, cursor)` and overlap; the nightly's watermark, batches and lake are
never touched. Rows are rated by `autobill.rating.billing.rate_for_billing` (the nightly's
engine, included minutes shared in call order with what is billed and what was rated earlier
today) and stored with the watermark in one ledger transaction (autobill/ledger/intraday.py).
A server that fails keeps its watermark (its calls are read next cycle) and does not stop the
others or the cycle; its error is reported.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE

from autobill.billing_day import with_billing_date
from autobill.cdr import conform
from autobill.config import Settings
from autobill.ledger.corrections import allowance_periods
from autobill.ledger.intraday import included_used, intraday_position, prune, store_usage
from autobill.mapping import assign_services
from autobill.rating.billing import load_tariffs, rate_for_billing
from autobill.services.build import derived_plans
from autobill.timeutil import as_utc, utc_now
from connectors.registry import connector_for

INTRADAY_KINDS = ("fusionpbx", "vodia")
KEPT = ("billed", "included")


@dataclass
class IntradayResult:
    servers: int = 0
    rows_read: int = 0
    rows_stored: int = 0
    unrated: int = 0  # calls of a known service the engine could not rate (not counted; the nightly reports them)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


def intraday_servers(settings: Settings) -> list[str]:
    return [s.id for s in settings.servers if s.enabled and s.kind in INTRADAY_KINDS]


def _rows(rated: pl.DataFrame) -> list[dict]:
    kept = rated.filter(pl.col("outcome").is_in(KEPT) & pl.col("service_id").is_not_null())
    return [
        {"cdr_key": r["cdr_key"], "server": r["server"], "client_id": int(r["client_id"]),
         "service_id": int(r["service_id"]), "start_utc": r["start_utc"], "billing_date": r["billing_date"],
         "period_start": r["period_start"], "charge_class": r["charge_class"] or "outbound",
         "rate_number": r["rate_number"], "billsec": int(r["billsec"] or 0),
         "included_seconds": int(r["included_seconds"] or 0), "cost": r["cost"], "currency": r["currency"]}
        for r in kept.iter_rows(named=True)
    ]  # fmt: skip


def read_server(settings: Settings, server_id: str, now: datetime, tariffs) -> tuple[int, int, int]:
    """Read, rate and store one server's new calls; (rows read, rows stored, unrated)."""
    server = settings.server(server_id)
    since, cursor = intraday_position(settings, server_id, now)
    got = connector_for(server, settings).extract(since, now, cursor)
    cdrs = conform(got.cdrs).filter(pl.col("server") == server_id)
    watermark = as_utc(got.watermark) if got.watermark is not None else None
    if cdrs.is_empty():
        store_usage(settings, server_id, [], watermark, got.cursor)
        return 0, 0, 0
    cdrs = assign_services(with_billing_date(cdrs.unique("cdr_key", keep="first"), settings.timezone), settings)
    # a service whose included minutes WHMCS overrides is rated with `plan+<N>min`, as in the nightly
    settings = derived_plans(settings, cdrs["plan"].unique().to_list())
    rated = rate_for_billing(cdrs, settings, tariffs, included_used(settings, allowance_periods(settings, cdrs)))
    rated = rated.join(cdrs.select("cdr_key", "billing_date"), on="cdr_key", how="left")
    unrated = rated.filter((pl.col("outcome") == "unrated") & pl.col("service_id").is_not_null()).height
    stored = store_usage(settings, server_id, _rows(rated), watermark, got.cursor)
    return cdrs.height, stored, unrated


def intraday(settings: Settings, clock: Callable[[], datetime] = utc_now) -> IntradayResult:
    """Every intraday-capable server, `intraday.workers` at a time; one failure is isolated."""
    result = IntradayResult()
    if not settings.intraday.enabled:
        return result
    now = clock()
    started = datetime.now().timestamp()
    servers = intraday_servers(settings)
    result.servers = len(servers)
    if not servers:
        return result
    try:
        tariffs = load_tariffs(settings)
    except Exception as exc:  # noqa: BLE001 - a broken tariff stops intraday rating, not the cycle
        result.errors.append(f"tariffs: {type(exc).__name__}: {exc}"[:300])
        return result

    def one(server_id: str):
        try:
            return server_id, read_server(settings, server_id, now, tariffs), None
        except Exception as exc:  # noqa: BLE001 - isolated per server, reported; its watermark stays
            return server_id, (0, 0, 0), f"{server_id}: {type(exc).__name__}: {exc}"[:300]

    with ThreadPoolExecutor(max_workers=min(settings.intraday.workers, len(servers)), thread_name_prefix="intraday") as pool:
        for _sid, (read, stored, unrated), error in pool.map(one, servers):
            result.rows_read += read
            result.rows_stored += stored
            result.unrated += unrated
            if error:
                result.errors.append(error)
    prune(settings, now)
    result.seconds = round(datetime.now().timestamp() - started, 3)
    return result


intraday_task = task(name="autosuspend-intraday-usage", cache_policy=NO_CACHE, retries=0, timeout_seconds=150,
                     log_prints=True)(intraday)  # fmt: skip
