"""drop-folder files quarantined whole (issue #12)

Why: a file that cannot be read (empty, not UTF-8, wrong columns, broken parquet) was left behind
with a log line while the run ended green. It is now recorded here (server, sha256, name, reason,
run), counted in the run summary (the run ends partial), and not read again while unchanged.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import autobill.ledger.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantined_files",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("server", sa.String(length=64), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=True),
        sa.Column("created_at", autobill.ledger.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("server", "content_hash", name="uq_quarantined_files_server_hash"),
    )


def downgrade() -> None:
    op.drop_table("quarantined_files")
