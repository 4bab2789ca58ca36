"""initial ledger

Revision ID: 0001
Revises:
Create Date: 2026-11-21 22:40:28.181723
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import autobill.ledger.types

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "processed_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("processed_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("server", "content_hash", name="uq_processed_files_server_hash"),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("billing_date", sa.Date(), nullable=True),
        sa.Column("flow_run_id", sa.String(length=64), nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.Column("finished_at", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "server_watermarks",
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("watermark_utc", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("updated_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("server"),
    )
    op.create_table(
        "suspension_state",
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("suspended", sa.Boolean(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("since", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.Column("low_balance_alerted", sa.Boolean(), nullable=False),
        sa.Column("last_credit", autobill.ledger.types.ExactDecimal(precision=18, scale=4), nullable=True),
        sa.Column("updated_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("service_id"),
    )
    with op.batch_alter_table("suspension_state", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_suspension_state_client_id"), ["client_id"], unique=False)

    op.create_table(
        "unrated_cdrs",
        sa.Column("cdr_key", sa.String(length=200), nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("billing_date", sa.Date(), nullable=False),
        sa.Column("rate_number", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("row", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("first_seen", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.Column("last_seen", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.Column("resolved_at", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("cdr_key"),
    )
    op.create_table(
        "charges",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("billing_date", sa.Date(), nullable=False),
        sa.Column("charge_class", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", autobill.ledger.types.ExactDecimal(precision=18, scale=4), nullable=False),
        sa.Column("exact_amount", autobill.ledger.types.ExactDecimal(precision=24, scale=6), nullable=False),
        sa.Column("billable_seconds", sa.Integer(), nullable=False),
        sa.Column("cdr_count", sa.Integer(), nullable=False),
        sa.Column("tariff_version", sa.String(length=64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("whmcs_billable_id", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.Column("posting_started_at", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.Column("posted_at", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.create_index("ix_charges_client_date", ["client_id", "billing_date"], unique=False)
        batch_op.create_index("ix_charges_state", ["state"], unique=False)

    op.create_table(
        "extraction_batches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("window_start", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.Column("window_end", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("proposed_watermark", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.Column("proposed_cursor", sa.Text(), nullable=True),
        sa.Column("created_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("extraction_batches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_extraction_batches_server"), ["server"], unique=False)

    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("dedup_key", sa.String(length=200), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=True),
        sa.Column("template", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("sent_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dedup_key"),
    )
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_notifications_client_id"), ["client_id"], unique=False)

    op.create_table(
        "quarantine",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cdr_key", sa.String(length=200), nullable=True),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("billing_date", sa.Date(), nullable=True),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("row", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.Column("released_at", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.Column("released_by", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_quarantine_cdr_key"), ["cdr_key"], unique=False)
        batch_op.create_index("ix_quarantine_status", ["status"], unique=False)

    op.create_table(
        "suspension_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("credit", autobill.ledger.types.ExactDecimal(precision=18, scale=4), nullable=True),
        sa.Column("unpaid", autobill.ledger.types.ExactDecimal(precision=18, scale=4), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("suspension_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_suspension_log_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_suspension_log_client_id"), ["client_id"], unique=False)

    op.create_table(
        "billed_cdrs",
        sa.Column("cdr_key", sa.String(length=200), nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("service_id", sa.Integer(), nullable=True),
        sa.Column("billing_date", sa.Date(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("charge_id", sa.Integer(), nullable=True),
        sa.Column("cost", autobill.ledger.types.ExactDecimal(precision=24, scale=6), nullable=False),
        sa.Column("billable_seconds", sa.Integer(), nullable=False),
        sa.Column("included_seconds", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["charge_id"],
            ["charges.id"],
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
        ),
        sa.PrimaryKeyConstraint("cdr_key"),
    )
    with op.batch_alter_table("billed_cdrs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_billed_cdrs_charge_id"), ["charge_id"], unique=False)
        batch_op.create_index("ix_billed_cdrs_service_date", ["service_id", "billing_date"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("billed_cdrs", schema=None) as batch_op:
        batch_op.drop_index("ix_billed_cdrs_service_date")
        batch_op.drop_index(batch_op.f("ix_billed_cdrs_charge_id"))

    op.drop_table("billed_cdrs")
    with op.batch_alter_table("suspension_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_suspension_log_client_id"))
        batch_op.drop_index(batch_op.f("ix_suspension_log_at"))

    op.drop_table("suspension_log")
    with op.batch_alter_table("quarantine", schema=None) as batch_op:
        batch_op.drop_index("ix_quarantine_status")
        batch_op.drop_index(batch_op.f("ix_quarantine_cdr_key"))

    op.drop_table("quarantine")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_notifications_client_id"))

    op.drop_table("notifications")
    with op.batch_alter_table("extraction_batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_extraction_batches_server"))

    op.drop_table("extraction_batches")
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.drop_index("ix_charges_state")
        batch_op.drop_index("ix_charges_client_date")

    op.drop_table("charges")
    op.drop_table("unrated_cdrs")
    with op.batch_alter_table("suspension_state", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_suspension_state_client_id"))

    op.drop_table("suspension_state")
    op.drop_table("server_watermarks")
    op.drop_table("runs")
    op.drop_table("processed_files")
