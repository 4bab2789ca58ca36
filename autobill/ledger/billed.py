"""The billed state: which CDRs reached a final money state, on which charge (issue #15).

One read API for everything that asks "is this call billed, and how?" (billing, disputes,
corrections, intraday usage, statements, data quality), over two stores:

- **manifests** (since migration 0010): immutable parquet files in the lake,
  `<data>/billed/billing_date=YYYY-MM-DD/<uuid>.parquet`, one billing date each, rows sorted by
  service. A file is written durably (tmp + fsync + rename + directory fsync) BEFORE the
  ledger transaction commits, and is registered by a `billed_manifests` row in THAT transaction.
  Readers only read registered paths: a file whose transaction never committed does not exist
  for them (and is deleted by the next writer of its partition, see `sweep_orphans`).
- **legacy rows** of `billed_cdrs` (ledgers billed before 0010): never written any more, read
  with the same filters, so nothing billed before the migration is lost or billed again.

Writers of billed state (nightly/backfill billing, a dispute's waiver) first call
`lock_billed_state` in their transaction: it updates the one `billed_state` row, which serialises
them in the database itself, so their "already billed?" check and their registration are atomic
(docs/billed-state.md has the whole argument). "Already billed?" reads only the partitions of the
billing dates at hand (each +-1 day): its cost follows the night's volume, not the history.

Money stays exact: `cost` is the 6-decimal text the rate step wrote (never a float).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from autobill import lake
from autobill.config import Settings
from autobill.ledger.bulk import PAGE, insert_rows, keys_present, stamp_waiting
from autobill.ledger.db import session_scope
from autobill.ledger.models import BilledCDR, BilledManifest, BilledState, IntradayUsage

BILLED_SCHEMA: dict[str, pl.DataType] = {
    "cdr_key": pl.String(), "server": pl.String(), "client_id": pl.Int64(), "service_id": pl.Int64(),
    "billing_date": pl.Date(), "outcome": pl.String(), "charge_id": pl.Int64(),
    "cost": pl.String(),  # decimal text, 6 places, exactly as billed
    "billable_seconds": pl.Int64(), "included_seconds": pl.Int64(), "run_id": pl.Int64(),
    "created_at": pl.Datetime("us", "UTC"),
}
ROW_GROUP = 50_000  # rows per parquet row group: service filters skip groups by their statistics
# A manifest's footer key: its rows' included seconds per service ({"service_id": [...], "seconds":
# [...]}, services that used some), written with the rows, so as immutable and as registered as they
# are. The allowance read sums these instead of scanning a month of rows (`included_used`).
INCLUDED_KEY = "autobill.included_seconds_by_service"
_EPOCH = date(1970, 1, 1)
ORPHAN_AGE = timedelta(hours=1)


@dataclass(frozen=True)
class Manifest:
    path: str
    billing_date: date
    rows: int
    sha256: str


@dataclass(frozen=True)
class BilledRow:
    """One billed CDR, with the attribute names of the legacy `BilledCDR` rows."""

    cdr_key: str
    server: str
    client_id: int | None
    service_id: int | None
    billing_date: date
    outcome: str
    charge_id: int | None
    cost: Decimal
    billable_seconds: int
    included_seconds: int
    run_id: int | None
    created_at: datetime


def billed_root(data_path: Path) -> Path:
    return Path(data_path) / "billed"


def around(days: Iterable[date | None]) -> list[date]:
    """The dates and their neighbours: a call's billing date is its local date, never more than a
    day from its UTC date, so a key is looked up in the partitions of D-1, D and D+1 (which also
    covers a timezone changed between two runs)."""
    out = set()
    for d in days:
        if d is not None:
            out.update((d - timedelta(days=1), d, d + timedelta(days=1)))
    return sorted(out)


def empty_billed() -> pl.DataFrame:
    return pl.DataFrame(schema=BILLED_SCHEMA)


# -- writing ----------------------------------------------------------------------------------


def without_charge(rows: Sequence[tuple[str, str, date, str, str]], now: datetime) -> pl.DataFrame:
    """Final CDRs that belong to no charge line (a call waived by a dispute before it was billed):
    rows of (cdr_key, server, billing_date, outcome, cost as 6-decimal text), ready for `record_final`."""
    keys, servers, days, outcomes, costs = (list(c) for c in zip(*rows, strict=True)) if rows else ([],) * 5
    n = len(keys)
    return pl.DataFrame({
        "cdr_key": keys, "server": servers, "client_id": [None] * n, "service_id": [None] * n, "billing_date": days,
        "outcome": outcomes, "charge_id": [None] * n, "cost": costs, "billable_seconds": [0] * n,
        "included_seconds": [0] * n, "run_id": [None] * n, "created_at": [now] * n,
    }, schema=BILLED_SCHEMA)


def lock_billed_state(session: Session) -> int:
    """Serialise writers of billed state until this transaction ends; returns the new version.
    Must be the transaction's FIRST statement on SQLite (the write lock is taken here, before any
    read) and comes before any billed-state read on PostgreSQL (READ COMMITTED: reads after the
    row lock see every transaction that held it before)."""
    done = session.execute(update(BilledState).where(BilledState.id == 1).values(version=BilledState.version + 1))
    if not done.rowcount:
        session.add(BilledState(id=1, version=1))  # a ledger made by create_all: a racing twin gets a PK error
        session.flush()
    return int(session.scalar(select(BilledState.version).where(BilledState.id == 1)))


def write_manifests(data_path: Path, rows: pl.DataFrame) -> list[Manifest]:
    """Write `rows` (BILLED_SCHEMA) as one durable file per billing date; nothing is registered."""
    rows = rows.select([pl.col(c).cast(t) for c, t in BILLED_SCHEMA.items()])
    out = []
    for (day,), part in sorted(rows.partition_by("billing_date", as_dict=True).items()):
        path = billed_root(data_path) / f"billing_date={day.isoformat()}" / f"{uuid.uuid4().hex}.parquet"
        # By server, then service (the filters readers use, with ROW_GROUP statistics: the
        # "already billed?" check of one server's batch reads that server's row groups only, and
        # a service belongs to one server, so its rows stay together), keeping the rated order
        # within a service: a sort by cdr_key (text) made it 13x dearer (0.14 s per 400 k rows)
        # for an order no reader uses.
        ordered = part.sort("server", "service_id", nulls_last=True, maintain_order=True)
        footer = {INCLUDED_KEY: _included_summary(ordered)}
        # tmp + fsync + rename + directory fsync: the file is whole on disk before the commit
        lake.write_atomic(path, lambda tmp, f=ordered, m=footer: f.write_parquet(
            tmp, compression="zstd", compression_level=lake.ZSTD_LEVEL, statistics=True, row_group_size=ROW_GROUP,
            metadata=m))
        out.append(Manifest(str(path.resolve()), day, part.height, _sha256(path)))
    return out


def _included_summary(rows: pl.DataFrame) -> str:
    """The footer value of INCLUDED_KEY for these rows (one billing date)."""
    used = (rows.filter((pl.col("included_seconds") > 0) & pl.col("service_id").is_not_null())
            .group_by("service_id").agg(pl.col("included_seconds").sum()).sort("service_id"))
    return json.dumps({"service_id": used["service_id"].to_list(), "seconds": used["included_seconds"].to_list()},
                      separators=(",", ":"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def register(session: Session, manifests: Sequence[Manifest], run_id: int | None, charge_ids: Sequence[int],
             now: datetime) -> None:
    """The `billed_manifests` rows, in the caller's transaction (the one that holds the charges)."""
    first, last = (min(charge_ids), max(charge_ids)) if charge_ids else (None, None)
    insert_rows(session, BilledManifest.__table__,
                ("path", "billing_date", "rows", "sha256", "run_id", "first_charge_id", "last_charge_id", "created_at"),
                [(m.path, m.billing_date, m.rows, m.sha256, run_id, first, last, now) for m in manifests])


def record_final(session: Session, data_path: Path, rows: pl.DataFrame, run_id: int | None,
                 charge_ids: Sequence[int], now: datetime) -> list[Manifest]:
    """Make `rows` final inside the caller's transaction (which called `lock_billed_state`): their
    manifests written durably, registered, and their intraday usage marked billed."""
    if rows.height == 0:
        return []
    manifests = write_manifests(data_path, rows)
    register(session, manifests, run_id, charge_ids, now)
    mark_intraday_billed(session, rows["cdr_key"], now)
    return manifests


def mark_intraday_billed(session: Session, keys: pl.Series, now: datetime) -> int:
    """Set `billed_at` on the intraday rows of these keys (bounded: intraday rows are pruned)."""
    return stamp_waiting(session, IntradayUsage.cdr_key, IntradayUsage.billed_at, keys.to_list(), now)


def sweep_orphans(session: Session, data_path: Path, days: Iterable[date],
                  min_age: timedelta = ORPHAN_AGE) -> list[Path]:
    """Delete the unregistered files in these dates' partitions. Call it only under
    `lock_billed_state`: then no other writer of this ledger is between its file and its commit,
    so every unregistered file belongs to a transaction that rolled back (or died) and never
    counts. `min_age` only spares a data directory shared by mistake with another ledger (tests)."""
    days = sorted(set(days))
    cutoff = datetime.now(UTC).timestamp() - min_age.total_seconds()
    if not days:
        return []
    known = set(session.scalars(select(BilledManifest.path).where(BilledManifest.billing_date.in_(days))))
    gone = []
    for day in days:
        folder = billed_root(data_path) / f"billing_date={day.isoformat()}"
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if str(path.resolve()) not in known and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                gone.append(path)
    return gone


# -- reading ----------------------------------------------------------------------------------


def manifest_paths(session: Session, days: Iterable[date] | None = None, first: date | None = None,
                   last: date | None = None, run_id: int | None = None) -> list[str]:
    q = select(BilledManifest.path).order_by(BilledManifest.id)
    if days is not None:
        days = sorted(set(days))
        if not days:
            return []
        q = q.where(BilledManifest.billing_date.in_(days))
    if first is not None:
        q = q.where(BilledManifest.billing_date >= first)
    if last is not None:
        q = q.where(BilledManifest.billing_date <= last)
    if run_id is not None:
        q = q.where(BilledManifest.run_id == run_id)
    return list(session.scalars(q))


def _legacy_rows(session: Session) -> bool:
    return session.scalar(select(BilledCDR.cdr_key).limit(1)) is not None


def billed_keys(session: Session, keys: pl.Series | Sequence[str], days: Iterable[date | None],
                servers: pl.Series | Sequence[str | None] | None = None) -> set[str]:
    """Which of `keys` are final, looking in the partitions of `days` (each +-1 day, see `around`)
    and in the legacy table. `servers`: the servers of those keys (a key is `<server>:<call id>`,
    so its billed row carries the same server); only their rows are read, which the files' order
    (server first) and row-group statistics make a fraction of a partition. Without it, or with a
    null among them, every row is read. Inside a writer's transaction, call `lock_billed_state` first."""
    keys = pl.Series("cdr_key", keys, dtype=pl.String).drop_nulls().unique()
    if keys.is_empty():
        return set()
    found: set[str] = set()
    paths = manifest_paths(session, days=around(days))
    if paths:
        scan = pl.scan_parquet(paths)
        wanted = None if servers is None else pl.Series("server", servers, dtype=pl.String).unique()
        if wanted is not None and not wanted.has_nulls():
            scan = scan.filter(pl.col("server").is_in(wanted.to_list()))
        hit = scan.select("cdr_key").join(keys.to_frame().lazy(), on="cdr_key", how="semi").collect()
        found.update(hit["cdr_key"].to_list())
    if _legacy_rows(session):
        found |= keys_present(session, BilledCDR.__table__, "cdr_key", iter(keys.to_list()))
    return found


def included_used(session: Session, first: date, last: date, services: Iterable[int]) -> pl.DataFrame:
    """Included seconds of the billed calls of `services` with billing dates in [first, last], per
    (service_id, billing_date): each manifest's footer summary (INCLUDED_KEY) when it has one, its
    rows otherwise (files written before the summary existed), plus the legacy rows. Read every
    night and every credit-control cycle over the month so far, it costs one footer per billing
    date instead of a month of rows. Re-rates' changes are not in it (`included_by_period`)."""
    wanted = sorted({int(s) for s in services})
    schema = {"service_id": pl.Int64, "billing_date": pl.Date, "included_seconds": pl.Int64}
    if not wanted:
        return pl.DataFrame(schema=schema)
    sids: list[int] = []
    days: list[int] = []  # days since the epoch: a polars Date without a Python date per row
    seconds: list[int] = []
    unsummarised = []
    for path, day in session.execute(select(BilledManifest.path, BilledManifest.billing_date).where(
            BilledManifest.billing_date >= first, BilledManifest.billing_date <= last).order_by(BilledManifest.id)):
        summary = pl.read_parquet_metadata(path).get(INCLUDED_KEY)
        if summary is None:
            unsummarised.append(path)
            continue
        used = json.loads(summary)
        sids += used["service_id"]
        seconds += used["seconds"]
        days += [(day - _EPOCH).days] * len(used["seconds"])
    in_services = pl.col("service_id").is_in(wanted)
    parts = [pl.DataFrame({"service_id": sids, "billing_date": days, "included_seconds": seconds},
                          schema={**schema, "billing_date": pl.Int32})
             .with_columns(pl.col("billing_date").cast(pl.Date)).filter(in_services)]
    used_some = (pl.col("included_seconds") > 0) & in_services
    if unsummarised:
        parts.append(pl.scan_parquet(unsummarised).filter(used_some).select(list(schema)).collect())
    if _legacy_rows(session):
        legacy = _legacy_frame(session, None, first, last, None, None, wanted, None, None, None)
        parts.append(legacy.filter(used_some).select(list(schema)))
    return (pl.concat([p.cast(schema) for p in parts], how="vertical")
            .group_by("service_id", "billing_date").agg(pl.col("included_seconds").sum()))


def billed_frame(settings: Settings | None = None, *, session: Session | None = None,
                 keys: Sequence[str] | pl.Series | None = None, days: Iterable[date] | None = None,
                 first: date | None = None, last: date | None = None, client_id: int | None = None,
                 service_ids: Iterable[int] | None = None, run_id: int | None = None,
                 outcomes: Iterable[str] | None = None, charge_ids: Iterable[int] | None = None,
                 columns: Sequence[str] | None = None, where: pl.Expr | None = None) -> pl.DataFrame:
    """Billed CDRs matching every filter given (BILLED_SCHEMA, or `columns` of it); `where`: one
    more condition on the rows (any BILLED_SCHEMA columns), applied while the files are read.

    Give a date filter (`days`, `first`/`last`) or `run_id` whenever you can: without one, every
    manifest is read (fine for a dispute's handful of keys, not for a hot path)."""
    if session is None:
        if settings is None:
            raise ValueError("billed_frame needs settings or a session")
        with session_scope(settings.ledger) as own:
            return billed_frame(session=own, keys=keys, days=days, first=first, last=last, client_id=client_id,
                                service_ids=service_ids, run_id=run_id, outcomes=outcomes, charge_ids=charge_ids,
                                columns=columns, where=where)
    cols = list(columns or BILLED_SCHEMA)
    key_list = None if keys is None else pl.Series("k", keys, dtype=pl.String).unique().to_list()
    services = None if service_ids is None else sorted({int(s) for s in service_ids})
    wanted_outcomes = None if outcomes is None else sorted(set(outcomes))
    charges = None if charge_ids is None else sorted({int(c) for c in charge_ids})
    day_list = None if days is None else sorted(set(days))
    preds = []
    if key_list is not None:
        preds.append(pl.col("cdr_key").is_in(key_list))
    if day_list is not None:
        preds.append(pl.col("billing_date").is_in(day_list))
    if first is not None:
        preds.append(pl.col("billing_date") >= first)
    if last is not None:
        preds.append(pl.col("billing_date") <= last)
    if client_id is not None:
        preds.append(pl.col("client_id") == client_id)
    if services is not None:
        preds.append(pl.col("service_id").is_in(services))
    if run_id is not None:
        preds.append(pl.col("run_id") == run_id)
    if wanted_outcomes is not None:
        preds.append(pl.col("outcome").is_in(wanted_outcomes))
    if charges is not None:
        preds.append(pl.col("charge_id").is_in(charges))
    if where is not None:
        preds.append(where)
    parts = []
    paths = manifest_paths(session, days=day_list, first=first, last=last, run_id=run_id)
    if paths and (key_list is None or key_list) and (services is None or services) and (charges is None or charges):
        lf = pl.scan_parquet(paths)
        for p in preds:
            lf = lf.filter(p)
        parts.append(lf.select(cols).collect())
    if _legacy_rows(session):
        legacy = _legacy_frame(session, key_list, first, last, day_list, client_id, services, run_id,
                               wanted_outcomes, charges)
        parts.append((legacy if where is None else legacy.filter(where)).select(cols))
    if not parts:
        return pl.DataFrame(schema={c: BILLED_SCHEMA[c] for c in cols})
    return pl.concat(parts, how="vertical")


def _legacy_frame(session: Session, keys, first, last, days, client_id, services, run_id, outcomes,
                  charges) -> pl.DataFrame:
    q = select(BilledCDR)
    if first is not None:
        q = q.where(BilledCDR.billing_date >= first)
    if last is not None:
        q = q.where(BilledCDR.billing_date <= last)
    if days is not None:
        q = q.where(BilledCDR.billing_date.in_(days))
    if client_id is not None:
        q = q.where(BilledCDR.client_id == client_id)
    if run_id is not None:
        q = q.where(BilledCDR.run_id == run_id)
    if outcomes is not None:
        q = q.where(BilledCDR.outcome.in_(outcomes))
    if services is not None:
        q = q.where(BilledCDR.service_id.in_(services))
    if charges is not None:
        q = q.where(BilledCDR.charge_id.in_(charges))
    if keys is not None:
        queries = [q.where(BilledCDR.cdr_key.in_(keys[i : i + PAGE])) for i in range(0, len(keys), PAGE)]
    else:
        queries = [q]
    rows = [
        (b.cdr_key, b.server, b.client_id, b.service_id, b.billing_date, b.outcome, b.charge_id,
         f"{Decimal(b.cost):.6f}", int(b.billable_seconds or 0), int(b.included_seconds or 0), b.run_id,
         b.created_at.astimezone(UTC) if b.created_at.tzinfo else b.created_at.replace(tzinfo=UTC))
        for query in queries for b in session.scalars(query)
    ]
    return pl.DataFrame(rows, schema=BILLED_SCHEMA, orient="row")


def billed_rows(settings: Settings | None = None, **filters) -> list[BilledRow]:
    """`billed_frame` as objects (cost as Decimal), ordered by key: for small reads and tests."""
    frame = billed_frame(settings, **filters).sort("cdr_key")
    return [BilledRow(**{**r, "cost": Decimal(r["cost"])}) for r in frame.iter_rows(named=True)]


def billed_runs(session: Session, first: date, last: date) -> list[int]:
    """The runs that billed calls of billing dates in [first, last]."""
    runs = set(session.scalars(select(BilledManifest.run_id).where(
        BilledManifest.billing_date >= first, BilledManifest.billing_date <= last,
        BilledManifest.run_id.is_not(None)).distinct()))
    runs.update(session.scalars(select(BilledCDR.run_id).where(
        BilledCDR.billing_date >= first, BilledCDR.billing_date <= last, BilledCDR.run_id.is_not(None)).distinct()))
    return sorted(runs)
