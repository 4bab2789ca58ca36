"""processed_files: each drop file's size and modification time when it was read

Why (issue #15, target 3): a drop folder keeps every file it was ever given (nobody deletes
them), and every run read each file whole and hashed it only to find the hash already processed:
`benchmarks/nightly.py --nights 31` (20 folders, ~9 MB a file) spent more time each night in
extraction (4.7 s on night 1, 8.4 s by night 19). A file whose name, size and modification time
(nanoseconds) are those it had when it was processed is now skipped without being read
(connectors/filedrop.py); any change to one of the three reads it again, and its content hash
still decides, as before. NULL (every file before this migration, and files of other
connectors): read and hashed as before.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("processed_files", sa.Column("size", sa.BigInteger(), nullable=True))
    op.add_column("processed_files", sa.Column("mtime_ns", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("processed_files") as batch:
        batch.drop_column("mtime_ns")
        batch.drop_column("size")
