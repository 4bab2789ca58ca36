"""extraction batches remember the files they consumed and their notes

Why: a drop-folder file is recorded in processed_files only when its batch is committed, so the
batch has to carry the (name, sha256, rows) of the files it read until then; the notes (a bad
header, a file skipped) belong in the ledger, not only in a log.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("extraction_batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("files", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("extraction_batches", schema=None) as batch_op:
        batch_op.drop_column("notes")
        batch_op.drop_column("files")
