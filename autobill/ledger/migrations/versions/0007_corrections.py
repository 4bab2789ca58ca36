"""corrections: re-rates of past periods and the correction lines they post (issue 16)

Why: a tariff mistake found after billing is fixed by posting the difference, never by editing
what was posted (DESIGN.md invariant 7). A correction line is a row of `charges` (kind
`correction`) so that posting and reconciliation treat it exactly like a nightly charge; it
points at the charge it corrects and at the re-rate that made it (who, when, why, which tariff
versions). `correction_cdrs` holds, per re-rated CDR, its previous and new price: the link from
a correction to its calls, and the CDR's current price is its latest row there.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from autobill.ledger.types import ExactDecimal, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rerates",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_at", UTCDateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("date_from", sa.Date(), nullable=False),
        sa.Column("date_to", sa.Date(), nullable=False),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("tariff_versions", sa.Text(), nullable=False),  # JSON {name: version} rated with
        sa.Column("old_versions", sa.Text(), nullable=False),  # JSON [versions of the lines corrected]
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=True),
        sa.Column("summary", sa.Text(), nullable=True),  # JSON
    )
    op.create_table(
        "correction_cdrs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("rerate_id", sa.Integer(), sa.ForeignKey("rerates.id"), nullable=False),
        sa.Column("correction_id", sa.Integer(), sa.ForeignKey("charges.id"), nullable=True),  # null: no money line moved
        sa.Column("cdr_key", sa.String(200), nullable=False),
        sa.Column("charge_id", sa.Integer(), sa.ForeignKey("charges.id"), nullable=True),  # the nightly line
        sa.Column("old_class", sa.String(32), nullable=False),
        sa.Column("new_class", sa.String(32), nullable=False),
        sa.Column("old_outcome", sa.String(16), nullable=False),
        sa.Column("new_outcome", sa.String(16), nullable=False),
        sa.Column("old_cost", ExactDecimal(24, 6), nullable=False),
        sa.Column("new_cost", ExactDecimal(24, 6), nullable=False),
        sa.Column("old_included", sa.Integer(), nullable=False),
        sa.Column("new_included", sa.Integer(), nullable=False),
        sa.Column("new_billable_seconds", sa.Integer(), nullable=False),
        sa.Column("tariff_version", sa.String(64), nullable=True),
    )
    op.create_index("ix_correction_cdrs_key", "correction_cdrs", ["cdr_key", "id"])
    op.create_index("ix_correction_cdrs_correction", "correction_cdrs", ["correction_id"])
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="charge"))
        batch_op.add_column(sa.Column("corrects_charge_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("rerate_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key("fk_charges_corrects", "charges", ["corrects_charge_id"], ["id"])
        batch_op.create_foreign_key("fk_charges_rerate", "rerates", ["rerate_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.drop_constraint("fk_charges_rerate", type_="foreignkey")
        batch_op.drop_constraint("fk_charges_corrects", type_="foreignkey")
        batch_op.drop_column("rerate_id")
        batch_op.drop_column("corrects_charge_id")
        batch_op.drop_column("kind")
    op.drop_index("ix_correction_cdrs_correction", "correction_cdrs")
    op.drop_index("ix_correction_cdrs_key", "correction_cdrs")
    op.drop_table("correction_cdrs")
    op.drop_table("rerates")
