"""intraday usage, its own watermark, fraud holds, low-balance levels alerted (#18)

Why: autosuspend counts today's calls against prepaid credit (intraday_usage, read on a watermark
of its own so the nightly's never moves), the toll-fraud guard records what it suspended and the
calls that tripped it (fraud_holds), and low-balance alerts remember each level alerted.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from autobill.ledger.types import ExactDecimal, UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "intraday_watermarks",
        sa.Column("server", sa.String(64), primary_key=True),
        sa.Column("watermark_utc", UTCDateTime(), nullable=True),
        sa.Column("cursor", sa.Text(), nullable=True),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "intraday_usage",
        sa.Column("cdr_key", sa.String(200), primary_key=True),
        sa.Column("server", sa.String(64), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("start_utc", UTCDateTime(), nullable=False),
        sa.Column("billing_date", sa.Date(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=True),
        sa.Column("charge_class", sa.String(32), nullable=False),
        sa.Column("rate_number", sa.String(32), nullable=True),
        sa.Column("billsec", sa.Integer(), nullable=False),
        sa.Column("included_seconds", sa.Integer(), nullable=False),
        sa.Column("cost", ExactDecimal(24, 6), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_intraday_usage_client_id", "intraday_usage", ["client_id"])
    op.create_index("ix_intraday_usage_service_start", "intraday_usage", ["service_id", "start_utc"])
    op.create_table(
        "fraud_holds",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("evidence", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=True),
        sa.Column("cleared_at", UTCDateTime(), nullable=True),
        sa.Column("cleared_by", sa.String(128), nullable=True),
        sa.Column("clear_reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_fraud_holds_client_id", "fraud_holds", ["client_id"])
    op.create_index("ix_fraud_holds_service_id", "fraud_holds", ["service_id"])
    with op.batch_alter_table("suspension_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("alerted_levels", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("suspension_state", schema=None) as batch_op:
        batch_op.drop_column("alerted_levels")
    op.drop_table("fraud_holds")
    op.drop_table("intraday_usage")
    op.drop_table("intraday_watermarks")
