"""The ledger: what has been billed, posted, quarantined and suspended.

The ledger is the source of truth for exactly-once billing (DESIGN.md invariant 1): a CDR is
billed when a registered billed manifest (or a legacy `billed_cdrs` row) holds its key, and the
`billed_manifests` row is committed in the same transaction as the `charges` rows it belongs to
(docs/billed-state.md). Every schema change goes through an Alembic migration in
`autobill/ledger/migrations/versions/`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Boolean, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from autobill.ledger.types import ExactDecimal, UTCDateTime
from autobill.timeutil import utc_now


class Base(DeclarativeBase):
    pass


class Run(Base):
    """One flow run (nightly, backfill child, autosuspend cycle) and its summary."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))  # nightly | autosuspend | backfill | manual
    billing_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|completed|partial|failed
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)  # where the run's process runs
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)  # its pid: gone => interrupted


class ServerWatermark(Base):
    """How far a server has been extracted. Moves only after the lake partition is durable."""

    __tablename__ = "server_watermarks"
    server: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark_utc: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cursor: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: ETag, Last-Modified, ...
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now, onupdate=utc_now)


class ProcessedFile(Base):
    """A drop-folder or downloaded file already extracted, by content hash (processed once)."""

    __tablename__ = "processed_files"
    __table_args__ = (UniqueConstraint("server", "content_hash", name="uq_processed_files_server_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    server: Mapped[str] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(Text)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    # as the file was when read (drop folders): the same name, size and mtime is skipped unread
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class ExtractionBatch(Base):
    """One extracted window of one server: the volume history the batch checks compare with."""

    __tablename__ = "extraction_batches"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    server: Mapped[str] = mapped_column(String(64), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="extracted")  # extracted|committed|rejected
    proposed_watermark: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    proposed_cursor: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    files: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON [[name, sha256, rows]]: processed at commit
    notes: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list of remarks for the run report
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class Charge(Base):
    """One charge line: client / service / billing date / class, posted to WHMCS once.

    States: pending -> posting -> posted; a charge found in `posting` at the start of a run
    becomes `uncertain` and waits for reconciliation; `void` when an operator cancels it.
    """

    __tablename__ = "charges"
    # Led by the billing date (migration 0011): a night's inserts stay together in both indexes.
    # A recomputed line has the same key and date, so (date, key) is as unique as the key.
    __table_args__ = (Index("ix_charges_state", "state"),
                      Index("ux_charges_date_key", "billing_date", "idempotency_key", unique=True),
                      Index("ix_charges_date_client", "billing_date", "client_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    client_id: Mapped[int] = mapped_column(Integer)
    service_id: Mapped[int] = mapped_column(Integer)
    billing_date: Mapped[date] = mapped_column(Date)
    charge_class: Mapped[str] = mapped_column(String(32))  # outbound | inbound | international | ...
    currency: Mapped[str] = mapped_column(String(3))
    amount: Mapped[Decimal] = mapped_column(ExactDecimal(18, 4))  # rounded to the minor unit
    exact_amount: Mapped[Decimal] = mapped_column(ExactDecimal(24, 6))  # sum of per-call costs
    billable_seconds: Mapped[int] = mapped_column(Integer, default=0)
    cdr_count: Mapped[int] = mapped_column(Integer, default=0)
    tariff_version: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    whmcs_billable_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    posting_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    posted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When the charge became `uncertain`: no call of ours for it can be in flight after this.
    uncertain_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Corrections (issue 16): a re-rate's difference is a charge of kind `correction`, posted like
    # any charge (an increase as a billable item, a decrease as a WHMCS credit), never an edit.
    kind: Mapped[str] = mapped_column(String(16), default="charge", server_default="charge")  # charge | correction
    corrects_charge_id: Mapped[int | None] = mapped_column(ForeignKey("charges.id"), nullable=True)
    rerate_id: Mapped[int | None] = mapped_column(ForeignKey("rerates.id"), nullable=True)


class BilledCDR(Base):
    """LEGACY (before migration 0010): a CDR that reached a final money state. Nothing writes here
    any more; the billed state is in lake manifests (`BilledManifest`). Rows already here stay
    and are read by autobill/ledger/billed.py like manifest rows (none are moved or lost)."""

    __tablename__ = "billed_cdrs"
    __table_args__ = (Index("ix_billed_cdrs_service_date", "service_id", "billing_date"),
                      Index("ix_billed_cdrs_date_run", "billing_date", "run_id"))
    cdr_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    server: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    service_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    billing_date: Mapped[date] = mapped_column(Date)
    outcome: Mapped[str] = mapped_column(String(16))  # billed | included | zero_cost | credited (a dispute waived it)
    charge_id: Mapped[int | None] = mapped_column(ForeignKey("charges.id"), nullable=True, index=True)
    cost: Mapped[Decimal] = mapped_column(ExactDecimal(24, 6), default=Decimal(0))
    billable_seconds: Mapped[int] = mapped_column(Integer, default=0)
    included_seconds: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class BilledManifest(Base):
    """One immutable parquet file of billed-CDR detail in the lake (autobill/ledger/billed.py),
    registered in the SAME transaction as the charges it belongs to: a file without its row does
    not exist for readers. One billing date per file, so "already billed?" reads only the
    partitions of the dates a night holds (docs/billed-state.md)."""

    __tablename__ = "billed_manifests"
    __table_args__ = (Index("ix_billed_manifests_date", "billing_date"), Index("ix_billed_manifests_run", "run_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(String(1000), unique=True)
    billing_date: Mapped[date] = mapped_column(Date)
    rows: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    first_charge_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_charge_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class BilledState(Base):
    """One row: every transaction that writes billed state updates it FIRST, which serialises
    those writers in the database (a row lock on PostgreSQL, the write lock on SQLite), so the
    "already billed?" check and the registration are one atomic step (the PK of `billed_cdrs`
    did that before)."""

    __tablename__ = "billed_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)


class UnratedCDR(Base):
    """A CDR with no tariff row (or no service): reported, and rated again by the first run after
    anything it was rated with changed (`rated_with`, autobill/ledger/unrated.py)."""

    __tablename__ = "unrated_cdrs"
    __table_args__ = (Index("ix_unrated_waiting", "resolved_at", "rated_with", "billing_date"),)
    cdr_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    server: Mapped[str] = mapped_column(String(64))
    billing_date: Mapped[date] = mapped_column(Date)
    rate_number: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    row: Mapped[str | None] = mapped_column(Text, nullable=True)  # canonical CDR as JSON, to rate again
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # the fingerprint of the rating inputs of its last attempt (unrated.rating_inputs); NULL: retry
    rated_with: Mapped[str | None] = mapped_column(String(64), nullable=True)


class QuarantinedRow(Base):
    """A row that broke a data-quality rule: kept whole, with the rule and the reason."""

    __tablename__ = "quarantine"
    __table_args__ = (Index("ix_quarantine_status", "status"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    cdr_key: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    server: Mapped[str] = mapped_column(String(64))
    billing_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    rule: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)
    row: Mapped[str] = mapped_column(Text)  # the original row as JSON
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="held")  # held | released | requeued
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    released_by: Mapped[str | None] = mapped_column(String(128), nullable=True)


class SuspensionState(Base):
    """Whether a service is suspended by us, and the mode used, so unsuspend undoes the same thing."""

    __tablename__ = "suspension_state"
    service_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(Integer, index=True)
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    mode: Mapped[str | None] = mapped_column(String(16), nullable=True)  # mode used to suspend
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: gateways/extensions touched
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    low_balance_alerted: Mapped[bool] = mapped_column(Boolean, default=False)
    last_credit: Mapped[Decimal | None] = mapped_column(ExactDecimal(18, 4), nullable=True)
    alerted_levels: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: low-balance levels alerted (#18)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now, onupdate=utc_now)


class SuspensionLog(Base):
    __tablename__ = "suspension_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now, index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    client_id: Mapped[int] = mapped_column(Integer, index=True)
    service_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action: Mapped[str] = mapped_column(String(16))  # suspend | unsuspend | alert | error | skip
    mode: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    credit: Mapped[Decimal | None] = mapped_column(ExactDecimal(18, 4), nullable=True)
    unpaid: Mapped[Decimal | None] = mapped_column(ExactDecimal(18, 4), nullable=True)
    actor: Mapped[str] = mapped_column(String(64), default="autosuspend")
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)


class Notification(Base):
    """An email sent through WHMCS; `dedup_key` makes "once per crossing" a unique constraint."""

    __tablename__ = "notifications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dedup_key: Mapped[str] = mapped_column(String(200), unique=True)
    client_id: Mapped[int] = mapped_column(Integer, index=True)
    service_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    template: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class ChargeReconciliation(Base):
    """One decision about an uncertain charge, with its evidence: by the nightly run (source
    `invoices` or `database`) or by an operator (`operator`). Outcome posted | pending | undecided."""

    __tablename__ = "charge_reconciliations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    charge_id: Mapped[int] = mapped_column(ForeignKey("charges.id"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    source: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    as_of: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # records complete up to
    invoices_scanned: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list of invoice ids
    invoice_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    invoice_item_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    billable_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(64), default="autobill")


class Dispute(Base):
    """A client's challenge of named calls (autobill/ledger/disputes.py): who opened it, when, why,
    and how it ended. Status: open -> credited | rejected."""

    __tablename__ = "disputes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[int] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    reason: Mapped[str] = mapped_column(Text)
    opened_by: Mapped[str] = mapped_column(String(128))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    resolution: Mapped[str | None] = mapped_column(String(16), nullable=True)  # credit | reject
    resolved_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    resolution_note: Mapped[str | None] = mapped_column(Text, nullable=True)


class DisputeItem(Base):
    """One disputed call. `state_at_open`: billed (in a charge line) or held (not billed yet: kept
    out of billing while the dispute is open). Status: held | disputed -> credited | released."""

    __tablename__ = "dispute_items"
    __table_args__ = (UniqueConstraint("dispute_id", "cdr_key", name="uq_dispute_items_dispute_key"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dispute_id: Mapped[int] = mapped_column(ForeignKey("disputes.id"))
    cdr_key: Mapped[str] = mapped_column(String(200), index=True)
    state_at_open: Mapped[str] = mapped_column(String(16))  # billed | held
    status: Mapped[str] = mapped_column(String(16), index=True)  # held | disputed | credited | released
    charge_id: Mapped[int | None] = mapped_column(ForeignKey("charges.id"), nullable=True)  # the line that billed it
    cost: Mapped[Decimal | None] = mapped_column(ExactDecimal(24, 6), nullable=True)
    credit_charge_id: Mapped[int | None] = mapped_column(ForeignKey("charges.id"), nullable=True)


class IntradayWatermark(Base):
    """How far a server has been read for intraday usage (#18). Never the nightly's watermark:
    the nightly extraction only ever reads `server_watermarks`."""

    __tablename__ = "intraday_watermarks"
    server: Mapped[str] = mapped_column(String(64), primary_key=True)
    watermark_utc: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cursor: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now, onupdate=utc_now)


class IntradayUsage(Base):
    """A call rated during the day with the nightly engine (#18). It counts as unbilled usage
    while `billed_at` is null; once the nightly bills it (same transaction), the charge counts."""

    __tablename__ = "intraday_usage"
    __table_args__ = (Index("ix_intraday_usage_service_start", "service_id", "start_utc"),)
    cdr_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    server: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[int] = mapped_column(Integer, index=True)
    service_id: Mapped[int] = mapped_column(Integer)
    start_utc: Mapped[datetime] = mapped_column(UTCDateTime())
    billing_date: Mapped[date] = mapped_column(Date)
    period_start: Mapped[date | None] = mapped_column(Date, nullable=True)
    charge_class: Mapped[str] = mapped_column(String(32))
    rate_number: Mapped[str | None] = mapped_column(String(32), nullable=True)
    billsec: Mapped[int] = mapped_column(Integer, default=0)
    included_seconds: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[Decimal] = mapped_column(ExactDecimal(24, 6), default=Decimal(0))
    currency: Mapped[str] = mapped_column(String(3))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    # set by the transaction that makes the call final (nightly billing, a dispute's waiver)
    billed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class FraudHold(Base):
    """A service the spend-velocity guard suspended (#18), with the calls that tripped it; open
    until an operator clears it (`autobill fraud clear`)."""

    __tablename__ = "fraud_holds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_id: Mapped[int] = mapped_column(Integer, index=True)
    service_id: Mapped[int] = mapped_column(Integer, index=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    reason: Mapped[str] = mapped_column(Text)
    evidence: Mapped[str] = mapped_column(Text)  # JSON: the calls of the window
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    cleared_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    clear_reason: Mapped[str | None] = mapped_column(Text, nullable=True)


class QuarantinedFile(Base):
    """A drop-folder file that could not be read as a whole: kept out of billing by content hash,
    with its name and the reason; a fixed file (new content, new hash) is read again."""

    __tablename__ = "quarantined_files"
    __table_args__ = (UniqueConstraint("server", "content_hash", name="uq_quarantined_files_server_hash"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    server: Mapped[str] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class Rerate(Base):
    """One re-rate of past billing dates: who asked, when, why, and with which tariff versions."""

    __tablename__ = "rerates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    requested_by: Mapped[str] = mapped_column(String(128))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)
    reason: Mapped[str] = mapped_column(Text)
    date_from: Mapped[date] = mapped_column(Date)
    date_to: Mapped[date] = mapped_column(Date)
    client_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tariff_versions: Mapped[str] = mapped_column(Text)  # JSON {tariff name: version} rated with
    old_versions: Mapped[str] = mapped_column(Text)  # JSON [tariff versions of the lines corrected]
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    summary: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON


class CorrectionCDR(Base):
    """One CDR's price before and after a re-rate; its latest row is the CDR's current price."""

    __tablename__ = "correction_cdrs"
    __table_args__ = (Index("ix_correction_cdrs_key", "cdr_key", "id"),
                      Index("ix_correction_cdrs_correction", "correction_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    rerate_id: Mapped[int] = mapped_column(ForeignKey("rerates.id"))
    correction_id: Mapped[int | None] = mapped_column(ForeignKey("charges.id"), nullable=True)  # null: no line moved
    cdr_key: Mapped[str] = mapped_column(String(200))
    charge_id: Mapped[int | None] = mapped_column(ForeignKey("charges.id"), nullable=True)  # the nightly line
    old_class: Mapped[str] = mapped_column(String(32))
    new_class: Mapped[str] = mapped_column(String(32))
    old_outcome: Mapped[str] = mapped_column(String(16))
    new_outcome: Mapped[str] = mapped_column(String(16))
    old_cost: Mapped[Decimal] = mapped_column(ExactDecimal(24, 6))
    new_cost: Mapped[Decimal] = mapped_column(ExactDecimal(24, 6))
    old_included: Mapped[int] = mapped_column(Integer)
    new_included: Mapped[int] = mapped_column(Integer)
    new_billable_seconds: Mapped[int] = mapped_column(Integer)
    tariff_version: Mapped[str | None] = mapped_column(String(64), nullable=True)


class ServiceClaim(Base):
    """Who owned a tenant / extension / DID, and when (issue 14; autobill/services/history.py).

    `service_id` NULL with `conflict` set: several services claimed the key (their calls stay
    unrated). `valid_from` NULL: since always (the first owner ever seen); `valid_to` NULL: still open.
    """

    __tablename__ = "service_claims"
    __table_args__ = (Index("ix_service_claims_key", "server", "tenant", "kind", "value"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    server: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))  # extension | did | tenant
    value: Mapped[str] = mapped_column(String(64))
    service_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    client_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    plan: Mapped[str | None] = mapped_column(String(96), nullable=True)
    conflict: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list of service ids
    valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    valid_to: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    sync_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ServiceRecord(Base):
    """Each VoIP service as the last sync read it (what `autobill services list` shows)."""

    __tablename__ = "service_records"
    service_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    client_id: Mapped[int] = mapped_column(Integer, index=True)
    source: Mapped[str] = mapped_column(String(16))  # whmcs | yaml
    status: Mapped[str] = mapped_column(String(32))
    problem: Mapped[str | None] = mapped_column(Text, nullable=True)
    data: Mapped[str] = mapped_column(Text)  # JSON
    sync_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ServiceSync(Base):
    """One services sync: when, from where, and the conflicts it found."""

    __tablename__ = "service_syncs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now, index=True)
    origin: Mapped[str] = mapped_column(String(32))  # nightly | autosuspend | cli
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    services: Mapped[int] = mapped_column(Integer, default=0)
    claims: Mapped[int] = mapped_column(Integer, default=0)
    changes: Mapped[int] = mapped_column(Integer, default=0)
    conflicts: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
