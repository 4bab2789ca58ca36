"""uncertain charges reconcile themselves: when a charge became uncertain, and every decision with its evidence

Why: the nightly run settles uncertain charges from WHMCS's invoices (or its database); a decision
must be explainable later (which invoices were read, what the last daily cron was), and an
operator's verdict is kept the same way.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import autobill.ledger.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uncertain_at", autobill.ledger.types.UTCDateTime(), nullable=True))
    op.create_table(
        "charge_reconciliations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("charge_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("decided_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("as_of", autobill.ledger.types.UTCDateTime(), nullable=True),
        sa.Column("invoices_scanned", sa.Text(), nullable=True),
        sa.Column("invoice_id", sa.Integer(), nullable=True),
        sa.Column("invoice_item_id", sa.Integer(), nullable=True),
        sa.Column("billable_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["charge_id"], ["charges.id"]),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_charge_reconciliations_charge_id", "charge_reconciliations", ["charge_id"])


def downgrade() -> None:
    op.drop_index("ix_charge_reconciliations_charge_id", table_name="charge_reconciliations")
    op.drop_table("charge_reconciliations")
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.drop_column("uncertain_at")
