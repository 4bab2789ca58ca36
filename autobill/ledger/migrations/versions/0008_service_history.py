"""services from WHMCS: claim history, the services last read, and the syncs (issue 14)

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from autobill.ledger.types import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "service_claims",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("server", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(64), nullable=False),
        sa.Column("service_id", sa.Integer(), nullable=True),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("plan", sa.String(96), nullable=True),
        sa.Column("conflict", sa.Text(), nullable=True),
        sa.Column("valid_from", UTCDateTime(), nullable=True),
        sa.Column("valid_to", UTCDateTime(), nullable=True),
        sa.Column("sync_id", sa.Integer(), nullable=True),
    )
    op.create_index("ix_service_claims_key", "service_claims", ["server", "tenant", "kind", "value"])
    op.create_index("ix_service_claims_service_id", "service_claims", ["service_id"])
    op.create_index("ix_service_claims_valid_to", "service_claims", ["valid_to"])
    op.create_table(
        "service_records",
        sa.Column("service_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("client_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("problem", sa.Text(), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("sync_id", sa.Integer(), nullable=True),
    )
    op.create_index("ix_service_records_client_id", "service_records", ["client_id"])
    op.create_table(
        "service_syncs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("origin", sa.String(32), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("services", sa.Integer(), nullable=False),
        sa.Column("claims", sa.Integer(), nullable=False),
        sa.Column("changes", sa.Integer(), nullable=False),
        sa.Column("conflicts", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_service_syncs_at", "service_syncs", ["at"])


def downgrade() -> None:
    op.drop_table("service_syncs")
    op.drop_table("service_records")
    op.drop_table("service_claims")
