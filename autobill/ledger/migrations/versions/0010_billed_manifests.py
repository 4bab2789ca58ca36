"""billed state in lake manifests: billed_manifests, billed_state, intraday_usage.billed_at

Why (issue #15): one `billed_cdrs` row per CDR per night (3.6 billion rows a year at 10 M calls a
night), probed on every run, makes each night slower than the last. The billed detail now goes to
immutable parquet manifests in the lake, partitioned by billing date, each registered by a
`billed_manifests` row committed with its charges (docs/billed-state.md).

Existing rows of `billed_cdrs` are NOT moved (a migration does not know the lake's location):
the table stays, nothing writes to it any more, and every reader (autobill/ledger/billed.py) reads
it beside the manifests, so no billed CDR is lost or billed again.

`intraday_usage.billed_at` replaces the per-query `EXISTS (billed_cdrs)`: set by the transaction
that bills the call; existing rows whose key is already in `billed_cdrs` get it here.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from autobill.ledger.types import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "billed_manifests",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("path", sa.String(1000), nullable=False, unique=True),
        sa.Column("billing_date", sa.Date(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id"), nullable=True),
        sa.Column("first_charge_id", sa.Integer(), nullable=True),
        sa.Column("last_charge_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_billed_manifests_date", "billed_manifests", ["billing_date"])
    op.create_index("ix_billed_manifests_run", "billed_manifests", ["run_id"])
    op.create_table(
        "billed_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.execute("INSERT INTO billed_state (id, version) VALUES (1, 0)")
    with op.batch_alter_table("intraday_usage", schema=None) as batch_op:
        batch_op.add_column(sa.Column("billed_at", UTCDateTime(), nullable=True))
    op.execute("UPDATE intraday_usage SET billed_at = (SELECT b.created_at FROM billed_cdrs b "
               "WHERE b.cdr_key = intraday_usage.cdr_key) "
               "WHERE EXISTS (SELECT 1 FROM billed_cdrs b WHERE b.cdr_key = intraday_usage.cdr_key)")


def downgrade() -> None:
    with op.batch_alter_table("intraday_usage", schema=None) as batch_op:
        batch_op.drop_column("billed_at")
    op.drop_table("billed_state")
    op.drop_index("ix_billed_manifests_run", table_name="billed_manifests")
    op.drop_index("ix_billed_manifests_date", table_name="billed_manifests")
    op.drop_table("billed_manifests")
