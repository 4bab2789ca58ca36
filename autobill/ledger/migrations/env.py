"""Alembic environment. The URL comes from, in order: `alembic -x url=...`, $AUTOBILL_LEDGER_URL,
the URL set by `autobill.ledger.db.upgrade`, or the config file's `ledger_url`."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import event

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


def _sqlite_transactional(engine) -> None:
    """Make a SQLite migration one real transaction with foreign keys off, as SQLite's procedure for
    rebuilding a table others point to asks (a batch migration copies, drops and renames it).

    pysqlite on its own commits each DDL statement as it goes, so a failed migration would leave a
    half-changed ledger: here the driver's implicit transactions are off and every transaction
    SQLAlchemy begins emits BEGIN, so the whole upgrade commits or rolls back at once."""

    @event.listens_for(engine, "connect")
    def _off(dbapi_conn, _record) -> None:  # after make_engine's pragmas, before any transaction
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA foreign_keys=OFF")

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql("BEGIN")


def run_migrations_online() -> None:
    engine = make_engine(_url())
    sqlite = engine.dialect.name == "sqlite"
    if sqlite:
        _sqlite_transactional(engine)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          transactional_ddl=True)
        with context.begin_transaction():
            context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise RuntimeError(f"the migration would leave {len(broken)} broken foreign key(s), "
                                       f"e.g. {broken[0]}: rolled back, the ledger is unchanged")
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
