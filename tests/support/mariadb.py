"""A throwaway MariaDB database with a `tblbillableitems`-shaped table (the WHMCS database option).

Use as `with whmcs_database() as (url, add_item):` (wrap it in a fixture in the test module).
MariaDB runs at 127.0.0.1:3306 (root, no password); unreachable -> skipped, except under CI=true.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal

import pytest

ADMIN = dict(host="127.0.0.1", port=3306, user="root", password="")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# As in public WHMCS schema dumps (domain.md §2.2); invoiceaction is an int there.
TABLE_DDL = """
CREATE TABLE tblbillableitems (
  id int(10) NOT NULL AUTO_INCREMENT, userid int(10) NOT NULL, description text NOT NULL,
  hours decimal(5,2) NOT NULL DEFAULT 0, amount decimal(16,2) NOT NULL DEFAULT 0,
  recur int(5) NOT NULL DEFAULT 0, recurcycle text NOT NULL, recurfor int(5) NOT NULL DEFAULT 0,
  invoiceaction int(1) NOT NULL DEFAULT 0, duedate date NOT NULL, invoicecount int(5) NOT NULL DEFAULT 0,
  unit varchar(16) NOT NULL DEFAULT 'hours', created_at timestamp NULL, updated_at timestamp NULL,
  PRIMARY KEY (id), KEY userid (userid)
) DEFAULT CHARSET=utf8mb4
"""


def _connect(db: str | None = None):
    import pymysql

    return pymysql.connect(**ADMIN, database=db, connect_timeout=3, autocommit=True)


@contextmanager
def whmcs_database() -> Iterator[tuple[str, Callable[..., int]]]:
    """(url, add_item) for a fresh database; add_item(userid, description, amount) -> id."""
    try:
        admin = _connect()
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        if IN_CI:
            pytest.fail(f"MariaDB at 127.0.0.1:3306 is required under CI=true but unreachable: {exc}")
        pytest.skip(f"MariaDB at 127.0.0.1:3306 unreachable: {exc}")
    name = f"whmcs_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    conn = _connect(name)
    with conn.cursor() as cur:
        cur.execute(TABLE_DDL)

    def add_item(userid: int, description: str, amount: Decimal = Decimal("1.00")) -> int:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO tblbillableitems (userid, description, amount, recurcycle, invoiceaction, duedate,"
                        " unit) VALUES (%s, %s, %s, '', 1, CURDATE(), 'quantity')", (userid, description, amount))
            return int(cur.lastrowid)

    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}", add_item
    finally:
        conn.close()
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {name}")
        admin.close()
