"""disputes: a client's challenge of named calls, held out of billing or credited; statement indexes

Why: a client who disputes calls must see them held (not yet billed) or credited (already
billed) with who, when and why on record (issue 17). `billed_cdrs` gains an index on
(billing_date, run_id): statements find the runs that billed a period without scanning the table.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from autobill.ledger.types import ExactDecimal, UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "disputes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("opened_by", sa.String(length=128), nullable=False),
        sa.Column("opened_at", UTCDateTime(), nullable=False),
        sa.Column("resolution", sa.String(length=16), nullable=True),
        sa.Column("resolved_by", sa.String(length=128), nullable=True),
        sa.Column("resolved_at", UTCDateTime(), nullable=True),
        sa.Column("resolution_note", sa.Text(), nullable=True),
    )
    op.create_index("ix_disputes_client_id", "disputes", ["client_id"])
    op.create_index("ix_disputes_status", "disputes", ["status"])
    op.create_table(
        "dispute_items",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("dispute_id", sa.Integer(), sa.ForeignKey("disputes.id"), nullable=False),
        sa.Column("cdr_key", sa.String(length=200), nullable=False),
        sa.Column("state_at_open", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("charge_id", sa.Integer(), sa.ForeignKey("charges.id"), nullable=True),
        sa.Column("cost", ExactDecimal(24, 6), nullable=True),
        sa.Column("credit_charge_id", sa.Integer(), sa.ForeignKey("charges.id"), nullable=True),
        sa.UniqueConstraint("dispute_id", "cdr_key", name="uq_dispute_items_dispute_key"),
    )
    op.create_index("ix_dispute_items_cdr_key", "dispute_items", ["cdr_key"])
    op.create_index("ix_dispute_items_status", "dispute_items", ["status"])
    op.create_index("ix_billed_cdrs_date_run", "billed_cdrs", ["billing_date", "run_id"])


def downgrade() -> None:
    op.drop_index("ix_billed_cdrs_date_run", table_name="billed_cdrs")
    op.drop_table("dispute_items")
    op.drop_table("disputes")
