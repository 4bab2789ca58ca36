"""unrated_cdrs: what each row was last rated with, and an index on the rows still waiting

Why (issue #15, target 3): every night rated the WHOLE unrated backlog again and counted another
attempt on every row of it (an UPDATE of each), and found it by reading the whole table,
resolved rows included. A backlog that nobody fixes (a destination missing from the tariff)
grows every night, and so did the nightly: on `benchmarks/nightly.py --nights 31` (1 M calls a
night, ~0.7 % of them to destinations the tariff lacks) the rate and record steps went from
2.5 s each on night 1 to 5-7 s by night 14.

- `rated_with`: the fingerprint of the rating inputs (config, tariff versions, the last services
  sync that changed a claim, autobill's version) a row was last rated with. A row whose inputs
  have not changed since would be rated to the same "unrated" again, so the rate step skips it
  (autobill/ledger/unrated.py); any change of those inputs retries the whole backlog. NULL (every
  row before this migration): retried.
- `ix_unrated_waiting (resolved_at, rated_with, billing_date)`: the rows still waiting, and
  which of them to retry, from the index instead of the table.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("unrated_cdrs", sa.Column("rated_with", sa.String(64), nullable=True))
    op.create_index("ix_unrated_waiting", "unrated_cdrs", ["resolved_at", "rated_with", "billing_date"])


def downgrade() -> None:
    op.drop_index("ix_unrated_waiting", table_name="unrated_cdrs")
    with op.batch_alter_table("unrated_cdrs") as batch:
        batch.drop_column("rated_with")
