"""Alembic environment. The URL comes from, in order: `alembic -x url=...`, $AUTOBILL_LEDGER_URL,
the URL set by `autobill.ledger.db.upgrade`, or the config file's `ledger_url`."""

from __future__ import annotations

import os

from alembic import context

from autobill.ledger.db import make_engine
from autobill.ledger.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    x = context.get_x_argument(as_dictionary=True)
    if x.get("url"):
        return x["url"]
    if os.environ.get("AUTOBILL_LEDGER_URL"):
        return os.environ["AUTOBILL_LEDGER_URL"]
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from autobill.config import load_settings

    return load_settings().ledger


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
