"""The ledger: what has been billed, posted, quarantined and suspended.

The ledger is the source of truth for exactly-once billing (DESIGN.md invariant 1): a CDR is
billed when its `billed_cdrs` row exists, and that row is committed in the same transaction
as the `charges` row it belongs to. Every schema change goes through an Alembic migration in
`autobill/ledger/migrations/versions/`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Boolean, Date, ForeignKey, Index, Integer, String, Text, UniqueConstraint
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
    __table_args__ = (Index("ix_charges_state", "state"), Index("ix_charges_client_date", "client_id", "billing_date"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), unique=True)
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


class BilledCDR(Base):
    """A CDR that reached a final money state. Its existence is what makes billing exactly once."""

    __tablename__ = "billed_cdrs"
    __table_args__ = (Index("ix_billed_cdrs_service_date", "service_id", "billing_date"),)
    cdr_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    server: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    service_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    billing_date: Mapped[date] = mapped_column(Date)
    outcome: Mapped[str] = mapped_column(String(16))  # billed | included | zero_cost
    charge_id: Mapped[int | None] = mapped_column(ForeignKey("charges.id"), nullable=True, index=True)
    cost: Mapped[Decimal] = mapped_column(ExactDecimal(24, 6), default=Decimal(0))
    billable_seconds: Mapped[int] = mapped_column(Integer, default=0)
    included_seconds: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utc_now)


class UnratedCDR(Base):
    """A CDR with no tariff row (or no service): reported, and rated again on every later run."""

    __tablename__ = "unrated_cdrs"
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
