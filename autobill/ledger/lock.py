"""A ledger-wide lock that serialises nightly runs, held for a whole run.

The deployment's concurrency limit already keeps scheduled, manual and backfill runs from
overlapping, but a run started outside it (`autobill run` by hand while the scheduled run is
going) must not interleave its extraction with another run's: each would set aside the other's
pending batch. Billing stays exactly-once either way (unique keys); the lock makes "nothing
disappears" hold too. The second run waits, then finds nothing new to bill.

The lock belongs to the process, never to a row: PostgreSQL's session advisory lock and an
`flock` on a file beside the SQLite database are both released by the server / kernel when the
process dies, so a crashed run can never leave a stale lock behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from autobill.ledger.db import make_engine


class LockTimeout(RuntimeError):
    pass


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"autobill:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def ledger_lock(url: str, name: str, timeout: float = 3600.0, poll: float = 0.5) -> Iterator[None]:
    """Hold the lock `name` on the ledger at `url`; wait up to `timeout` seconds for it."""
    deadline = time.monotonic() + timeout
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        path = Path(url[len("sqlite:///") :]).with_name(Path(url[len("sqlite:///") :]).name + f".{name}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockTimeout(f"another {name} run holds {path} since more than {timeout:.0f} s") from None
                    time.sleep(poll)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                yield  # another database: rely on the deployment's concurrency limit
                return
            key = _key(name)
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                conn.rollback()
                if time.monotonic() > deadline:
                    raise LockTimeout(f"another {name} run holds the ledger's advisory lock since more than "
                                      f"{timeout:.0f} s")
                time.sleep(poll)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
    finally:
        engine.dispose()
