"""Engines, sessions and migrations for the ledger (SQLite by default, PostgreSQL by URL)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"

_engines: dict[str, Engine] = {}


def make_engine(url: str) -> Engine:
    """A new engine; SQLite gets WAL, foreign keys and a busy timeout so two runs can share it."""
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True, pool_pre_ping=not url.startswith("sqlite"))
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - exercised by every SQLite test
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            # A nightly writes ~1M billed-CDR keys: the 2 MB default page cache thrashes on their
            # indexes. synchronous stays FULL: a lost `posting` commit could mean a re-post.
            cur.execute("PRAGMA cache_size=-262144")  # 256 MB
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.close()

    return engine


def engine_for(url: str) -> Engine:
    """One shared engine per URL in this process."""
    if url not in _engines:
        _engines[url] = make_engine(url)
    return _engines[url]


@contextmanager
def session_scope(url_or_engine: str | Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error."""
    engine = engine_for(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    factory = sessionmaker(engine, expire_on_commit=False)
    with factory.begin() as session:
        yield session


def alembic_config(url: str):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the ledger at `url` to `revision` (idempotent; every run calls it at start)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


_REV = re.compile(r'^(down_revision|revision)\s*=\s*["\']?([^"\'\s]*)["\']?', re.M)


@lru_cache(maxsize=1)
def head_revision() -> str | None:
    """The newest migration's id, read from the version files without importing Alembic (cheap).
    None when the files do not show exactly one head (then Alembic is asked)."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict(_REV.findall(path.read_text(encoding="utf-8")))
        if "revision" in found:
            revisions.add(found["revision"])
            parents.add(found.get("down_revision", ""))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def ensure_current(url: str) -> None:
    """Upgrade the ledger only when it is not at the head revision: one small SELECT in the
    common case, instead of Alembic's full upgrade machinery on every CLI call."""
    head = head_revision()
    if head is not None:
        try:
            with engine_for(url).connect() as conn:
                if conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head:
                    return
        except SQLAlchemyError:
            pass  # no ledger yet (or no version table): migrate it
    upgrade(url)


def current_revision(url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine_for(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
