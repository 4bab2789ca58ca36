"""runs remember the process that runs them (host and pid)

Why: a run whose process was killed (OOM, a reboot, a worker stopped) never writes its finish,
so its row says `running` forever; with the host and pid `autobill runs` can tell that the
process is gone and show the run as interrupted at once.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(255), nullable=True))
        batch_op.add_column(sa.Column("pid", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("pid")
        batch_op.drop_column("host")
