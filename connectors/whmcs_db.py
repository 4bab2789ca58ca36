"""Read-only access to the WHMCS database (MySQL/MariaDB), for installations that allow it.

Only one query is ever run: the billable items of a client whose description holds a charge's
key, from `tblbillableitems` (id, userid, description, amount, invoiceaction, invoicecount, …;
domain.md §2.2). It answers what the API cannot: whether an AddBillableItem whose answer was lost
created the item, without waiting for WHMCS's daily cron. Give Autobill a database user with
SELECT on that table only; the session is also set READ ONLY where the server supports it.

The URL (a secret: it holds the password) is `mysql+pymysql://user:password@host:3306/whmcs`;
`mysql://` is read as the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError

TABLE = "tblbillableitems"


class WhmcsDatabaseError(Exception):
    """The WHMCS database could not be read; the message never carries the URL or its password."""


@dataclass(frozen=True)
class BillableItemRow:
    id: int
    userid: int
    description: str


def _driver_url(url: str) -> str:
    if url.startswith("mysql://"):
        return "mysql+pymysql://" + url[len("mysql://") :]
    if url.startswith("mariadb://"):
        return "mysql+pymysql://" + url[len("mariadb://") :]
    if not url.startswith(("mysql+pymysql://", "mariadb+pymysql://")):
        raise WhmcsDatabaseError("whmcs.database_url must be a mysql+pymysql:// (or mysql://) URL")
    return url


class WhmcsDatabase:
    def __init__(self, url: str, timeout_seconds: float = 10.0) -> None:
        self._engine: Engine = create_engine(
            _driver_url(url), pool_pre_ping=True,
            connect_args={"connect_timeout": int(timeout_seconds), "read_timeout": int(timeout_seconds)},
        )

    def __repr__(self) -> str:
        return "WhmcsDatabase(url=***)"

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> WhmcsDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def items_with(self, client_id: int, needle: str) -> list[BillableItemRow]:
        """The client's billable items whose description contains `needle` (taken literally)."""
        pattern = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = text(f"SELECT id, userid, description FROM {TABLE} WHERE userid = :uid AND description LIKE :pat"  # noqa: S608
                     " ORDER BY id")
        try:
            with self._engine.connect() as conn:
                try:
                    conn.execute(text("SET SESSION TRANSACTION READ ONLY"))
                except SQLAlchemyError:  # pragma: no cover - very old servers: the grant is the guard
                    conn.rollback()
                rows = conn.execute(query, {"uid": int(client_id), "pat": pattern}).all()
        except SQLAlchemyError as exc:
            raise WhmcsDatabaseError(f"reading {TABLE} failed: {type(exc.orig or exc).__name__}: "
                                     f"{str(getattr(exc, 'orig', exc))[:200]}") from None
        return [BillableItemRow(int(r.id), int(r.userid), str(r.description or "")) for r in rows]
