"""charges: the unique idempotency key and the client index lead with the billing date

Why (issue #15, target 3): both indexes led with the client (the key reads
`ab-<client>-<service>-<date>-...`, and `ix_charges_client_date`), so a night's ~27 k new charges
for 10 k clients landed all over both B-trees: the pages one commit dirtied grew with the table
(a 1 M-call night's ledger commit went from 0.05 s on night 1 to 0.38 s on night 29, its WAL from
9 to 77 MB). Led by the billing date, a night's inserts land at the ends of a few dates' ranges.

- `UNIQUE (idempotency_key)` becomes `UNIQUE (billing_date, idempotency_key)`. What it guards is
  unchanged: a charge line recomputed from the same CDRs has the same key AND the same billing date
  (the key spells the date out), so it still cannot be inserted twice.
- `ix_charges_client_date (client_id, billing_date)` becomes `ix_charges_date_client
  (billing_date, client_id)`: every reader of charges by client also gives a date range
  (statements, corrections).

SQLite keeps an unnamed table constraint in the table itself: dropping it rebuilds `charges`
(copied whole, once: 7.1 s for a ledger of 1 M charges on a 2-core VM, the new indexes
included). env.py turns foreign keys off around a SQLite migration and checks them before it
commits, SQLite's documented procedure for a rebuild of a table others point to.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_NAMED = {"uq": "uq_%(table_name)s_%(column_0_name)s"}  # names 0001's unnamed SQLite constraint


def _key_constraint() -> str | None:
    """The name of the unique constraint on `idempotency_key` alone (PostgreSQL named it itself)."""
    for uc in sa.inspect(op.get_bind()).get_unique_constraints("charges"):
        if uc["column_names"] == ["idempotency_key"]:
            return uc["name"]
    return None


def upgrade() -> None:
    op.drop_index("ix_charges_client_date", table_name="charges")
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("charges", recreate="always", naming_convention=_NAMED) as batch_op:
            batch_op.drop_constraint("uq_charges_idempotency_key", type_="unique")
    else:
        name = _key_constraint()
        if name is not None:
            op.drop_constraint(name, "charges", type_="unique")
    op.create_index("ux_charges_date_key", "charges", ["billing_date", "idempotency_key"], unique=True)
    op.create_index("ix_charges_date_client", "charges", ["billing_date", "client_id"])


def downgrade() -> None:
    op.drop_index("ix_charges_date_client", table_name="charges")
    op.drop_index("ux_charges_date_key", table_name="charges")
    with op.batch_alter_table("charges", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_charges_idempotency_key", ["idempotency_key"])
    op.create_index("ix_charges_client_date", "charges", ["client_id", "billing_date"])
