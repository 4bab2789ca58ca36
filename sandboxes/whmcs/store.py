"""The sandbox's state in SQLite: clients, services, invoices, billable items, emails, module calls.

Why it looks like this: the autosuspend benchmark asks one GetClientsDetails per client for
10 000 clients, so a request must cost one indexed lookup. The schema is created once at start
(never per request), the file runs in WAL mode so readers never wait for a writer, every
handler thread keeps its own connection, and writes are serialised by one lock (the sandbox is
one process; the lock is cheaper than SQLite's busy-retry loop). Money is TEXT holding a
decimal string and is summed in Python with Decimal, never by SQLite's float SUM.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

# Client custom fields, ids stable in this order (tests and the demo map names to these ids).
CUSTOM_FIELDS = {"Has VoIP Service": 1, "Manual VoIP Suspend": 2, "VoIP Suspended": 3, "Low Balance Threshold": 4}
EMAIL_TEMPLATES = (
    ("VoIP Zero Balance", "general"),
    ("Low Balance Alert", "general"),
    ("Client Signup Email", "general"),
    ("Invoice Created", "invoice"),
    ("Service Suspension Notification", "product"),
    ("VoIP Fraud Alert", "general"),
)
CURRENCIES = {"USD": ("$", " USD"), "CAD": ("$", " CAD"), "EUR": ("€", " EUR"), "GBP": ("£", " GBP")}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
  id INTEGER PRIMARY KEY, uuid TEXT, firstname TEXT, lastname TEXT, companyname TEXT, email TEXT,
  status TEXT, credit TEXT, currency TEXT, groupid INTEGER, datecreated TEXT, customfields TEXT);
CREATE INDEX IF NOT EXISTS ix_clients_status ON clients(status, id);
CREATE INDEX IF NOT EXISTS ix_clients_email ON clients(email);
CREATE TABLE IF NOT EXISTS products (
  id INTEGER PRIMARY KEY, clientid INTEGER NOT NULL, orderid INTEGER, pid INTEGER, name TEXT,
  groupname TEXT, domain TEXT, status TEXT, suspensionreason TEXT, billingcycle TEXT,
  regdate TEXT, nextduedate TEXT, recurringamount TEXT, overideautosuspend INTEGER,
  overidesuspenduntil TEXT, module TEXT, notes TEXT);
CREATE INDEX IF NOT EXISTS ix_products_client ON products(clientid, id);
CREATE TABLE IF NOT EXISTS invoices (
  id INTEGER PRIMARY KEY, userid INTEGER NOT NULL, invoicenum TEXT, date TEXT, duedate TEXT,
  datepaid TEXT, subtotal TEXT, credit TEXT, tax TEXT, total TEXT, balance TEXT, status TEXT,
  paymentmethod TEXT);
CREATE INDEX IF NOT EXISTS ix_invoices_user ON invoices(userid, status, id);
CREATE INDEX IF NOT EXISTS ix_invoices_status ON invoices(status, id);
CREATE TABLE IF NOT EXISTS billable_items (
  id INTEGER PRIMARY KEY, userid INTEGER NOT NULL, description TEXT, amount TEXT, unit TEXT,
  quantity TEXT, invoiceaction TEXT, duedate TEXT, recur INTEGER, recurcycle TEXT, recurfor INTEGER,
  created TEXT);
CREATE INDEX IF NOT EXISTS ix_billable_user ON billable_items(userid, id);
CREATE TABLE IF NOT EXISTS credits (
  id INTEGER PRIMARY KEY, clientid INTEGER NOT NULL, date TEXT, description TEXT, amount TEXT, relid INTEGER,
  type TEXT);
CREATE TABLE IF NOT EXISTS emails (
  id INTEGER PRIMARY KEY, messagename TEXT, relid INTEGER, customvars TEXT, at TEXT);
CREATE TABLE IF NOT EXISTS module_calls (
  id INTEGER PRIMARY KEY, action TEXT, serviceid INTEGER, reason TEXT, at TEXT);
CREATE TABLE IF NOT EXISTS email_templates (name TEXT PRIMARY KEY, type TEXT, disabled INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS customfield_defs (id INTEGER PRIMARY KEY, type TEXT, name TEXT);
CREATE TABLE IF NOT EXISTS invoice_items (
  id INTEGER PRIMARY KEY, invoiceid INTEGER NOT NULL, userid INTEGER NOT NULL, type TEXT, relid INTEGER,
  description TEXT, amount TEXT, taxed INTEGER DEFAULT 0, duedate TEXT);
CREATE INDEX IF NOT EXISTS ix_invoice_items_invoice ON invoice_items(invoiceid, id);
CREATE INDEX IF NOT EXISTS ix_invoice_items_rel ON invoice_items(type, relid);
CREATE TABLE IF NOT EXISTS automation_log (
  id INTEGER PRIMARY KEY, started TEXT, finished TEXT, invoices INTEGER, items INTEGER);
CREATE TABLE IF NOT EXISTS servers (id INTEGER PRIMARY KEY, name TEXT, hostname TEXT, type TEXT);
CREATE TABLE IF NOT EXISTS product_fields (
  id INTEGER PRIMARY KEY, pid INTEGER NOT NULL, name TEXT NOT NULL, UNIQUE (pid, name));
"""
# Service (product) columns added for the services sync (issue 14): the server the service is
# assigned to, its Dedicated IP field, and its product custom fields as JSON {name: value}.
_PRODUCT_COLUMNS = (("serverid", "INTEGER DEFAULT 0"), ("dedicatedip", "TEXT DEFAULT ''"),
                    ("customfields", "TEXT DEFAULT '{}'"))


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


def money_text(value: Decimal | str | int) -> str:
    """Two places, half-up: how WHMCS stores a client's credit or an invoice total."""
    return str(Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


class Store:
    def __init__(self, path: Path, timezone: str = "UTC") -> None:
        self.path = Path(path)
        self.tz = ZoneInfo(timezone)  # the WHMCS server's timezone: its dates and times carry no offset
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self.write_lock = threading.Lock()
        conn = self.conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        have = {r[1] for r in conn.execute("PRAGMA table_info(products)")}
        for name, decl in _PRODUCT_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE products ADD COLUMN {name} {decl}")
        with self.tx() as c:
            c.executemany(
                "INSERT OR IGNORE INTO customfield_defs (id, type, name) VALUES (?, 'client', ?)",
                [(fid, name) for name, fid in CUSTOM_FIELDS.items()],
            )
            c.executemany("INSERT OR IGNORE INTO email_templates (name, type) VALUES (?, ?)", EMAIL_TEMPLATES)

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (created on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, serialised with every other writer of this sandbox."""
        conn = self.conn()
        with self.write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._conns.clear()

    # -- seeding -----------------------------------------------------------------------------

    def add_client(
        self, firstname: str = "Test", lastname: str = "Client", email: str | None = None,
        companyname: str = "", status: str = "Active", credit: Decimal | str = "0",
        currency: str = "USD", custom_fields: dict[str | int, str] | None = None,
    ) -> int:
        fields = {str(_field_id(k)): str(v) for k, v in (custom_fields or {}).items()}
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO clients (uuid, firstname, lastname, companyname, email, status, credit, currency,"
                " groupid, datecreated, customfields) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (str(uuid.uuid4()), firstname, lastname, companyname, email or "", status,
                 money_text(credit), currency, date.today().isoformat(), json.dumps(fields)),
            )
            cid = int(cur.lastrowid)
            if not email:
                c.execute("UPDATE clients SET email = ? WHERE id = ?", (f"client{cid}@example.test", cid))
        return cid

    def add_product(
        self, client_id: int, name: str = "VoIP Service", pid: int = 1, domain: str = "",
        status: str = "Active", overideautosuspend: bool = False, module: str | None = "autobill",
        billingcycle: str = "Monthly", recurringamount: Decimal | str = "0",
        service_id: int | None = None, server_id: int = 0, dedicatedip: str = "", groupname: str = "VoIP",
        custom_fields: dict[str, str] | None = None,
    ) -> int:
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO products (clientid, orderid, pid, name, groupname, domain, status, suspensionreason,"
                " billingcycle, regdate, nextduedate, recurringamount, overideautosuspend, overidesuspenduntil,"
                " module, notes) VALUES (?, 0, ?, ?, 'VoIP', ?, ?, '', ?, ?, ?, ?, ?, '0000-00-00', ?, '')",
                (int(client_id), pid, name, domain, status, billingcycle, date.today().isoformat(),
                 (date.today() + timedelta(days=30)).isoformat(), money_text(recurringamount),
                 int(overideautosuspend), module or ""),
            )
            sid = int(cur.lastrowid)
            c.execute("UPDATE products SET groupname = ?, serverid = ?, dedicatedip = ? WHERE id = ?",
                      (groupname, int(server_id), dedicatedip, sid))
            if service_id is not None and service_id != sid:
                c.execute("UPDATE products SET id = ? WHERE id = ?", (int(service_id), sid))
                sid = int(service_id)
        if custom_fields:
            self.set_service(sid, custom_fields=custom_fields)
        return sid

    def add_server(self, name: str, hostname: str = "", type_: str = "autobill") -> int:
        """A WHMCS server record (Setup > Servers) that services are assigned to."""
        with self.tx() as c:
            cur = c.execute("INSERT INTO servers (name, hostname, type) VALUES (?, ?, ?)", (name, hostname, type_))
            return int(cur.lastrowid)

    def set_service(self, service_id: int, **changes: object) -> None:
        """Change a service: domain, dedicatedip, status, serverid, pid, clientid, or custom_fields
        (a dict merged into the product custom fields; a value None removes the field)."""
        custom = changes.pop("custom_fields", None)
        allowed = {"domain", "dedicatedip", "status", "serverid", "pid", "clientid", "name", "groupname"}
        unknown = set(changes) - allowed
        if unknown:
            raise KeyError(f"cannot set {sorted(unknown)} (known: {sorted(allowed)})")
        with self.tx() as c:
            row = c.execute("SELECT pid, customfields FROM products WHERE id = ?", (int(service_id),)).fetchone()
            if row is None:
                raise KeyError(f"no service {service_id}")
            if changes:
                sets = ", ".join(f"{k} = ?" for k in changes)
                c.execute(f"UPDATE products SET {sets} WHERE id = ?", [*changes.values(), int(service_id)])  # noqa: S608
            if custom is not None:
                fields = json.loads(row["customfields"] or "{}")
                for name, value in custom.items():
                    if value is None:
                        fields.pop(name, None)
                    else:
                        fields[name] = str(value)
                pid = changes.get("pid", row["pid"])
                c.executemany("INSERT OR IGNORE INTO product_fields (pid, name) VALUES (?, ?)",
                              [(pid, n) for n in fields])
                c.execute("UPDATE products SET customfields = ? WHERE id = ?", (json.dumps(fields), int(service_id)))

    def bulk_services(self, services: list[dict]) -> None:
        """Many services in one transaction. Each dict: id, clientid, pid, name, groupname, domain,
        dedicatedip, serverid, status, custom_fields ({name: value})."""
        today = date.today().isoformat()
        due = (date.today() + timedelta(days=30)).isoformat()
        with self.tx() as c:
            c.executemany("INSERT OR IGNORE INTO product_fields (pid, name) VALUES (?, ?)",
                          sorted({(int(s.get("pid", 1)), n) for s in services for n in s.get("custom_fields", {})}))
            c.executemany(
                "INSERT INTO products (id, clientid, orderid, pid, name, groupname, domain, status, suspensionreason,"
                " billingcycle, regdate, nextduedate, recurringamount, overideautosuspend, overidesuspenduntil,"
                " module, notes, serverid, dedicatedip, customfields) VALUES (?, ?, 0, ?, ?, ?, ?, ?, '', 'Monthly',"
                " ?, ?, '0.00', 0, '0000-00-00', 'autobill', '', ?, ?, ?)",
                [(s.get("id"), int(s["clientid"]), int(s.get("pid", 1)), s.get("name", "VoIP Service"),
                  s.get("groupname", "VoIP"), s.get("domain", ""), s.get("status", "Active"), today, due,
                  int(s.get("serverid", 0)), s.get("dedicatedip", ""),
                  json.dumps({k: str(v) for k, v in s.get("custom_fields", {}).items()})) for s in services],
            )

    def add_invoice(
        self, client_id: int, total: Decimal | str, status: str = "Unpaid", balance: Decimal | str | None = None,
        date_: date | None = None, duedate: date | None = None,
    ) -> int:
        issued = date_ or date.today()
        due = duedate or issued + timedelta(days=7)
        if balance is None:
            balance = total if status == "Unpaid" else "0"
        with self.tx() as c:
            cur = c.execute(
                "INSERT INTO invoices (userid, invoicenum, date, duedate, datepaid, subtotal, credit, tax, total,"
                " balance, status, paymentmethod) VALUES (?, '', ?, ?, ?, ?, '0.00', '0.00', ?, ?, ?, 'banktransfer')",
                (int(client_id), issued.isoformat(), due.isoformat(),
                 issued.isoformat() + " 00:00:00" if status == "Paid" else "0000-00-00 00:00:00",
                 money_text(total), money_text(total), money_text(balance), status),
            )
            return int(cur.lastrowid)

    def bulk_seed(
        self, clients: int, products_per_client: int = 1, unpaid_every: int = 5, voip_every: int = 1,
        seed: int = 0, currency: str = "USD",
    ) -> list[int]:
        """Many clients at once (one transaction, executemany): 10 000 take well under a second.

        Deterministic from `seed`: credits 0.00–99.99, every `unpaid_every`-th client has one
        Unpaid invoice, every `voip_every`-th has "Has VoIP Service" = on.
        """
        rng = random.Random(seed)
        today = date.today().isoformat()
        due = (date.today() + timedelta(days=30)).isoformat()
        with self.tx() as c:
            (start,) = c.execute("SELECT COALESCE(MAX(id), 0) FROM clients").fetchone()
            ids = list(range(start + 1, start + 1 + clients))
            rows = []
            for i, cid in enumerate(ids):
                fields = {"1": "on" if voip_every and i % voip_every == 0 else "", "2": "", "3": "None", "4": ""}
                credit = Decimal(rng.randrange(0, 10000)).scaleb(-2)
                rows.append((cid, str(uuid.UUID(int=rng.getrandbits(128))), f"First{cid}", f"Last{cid}", "",
                             f"client{cid}@example.test", "Active", str(credit), currency, today, json.dumps(fields)))
            c.executemany(
                "INSERT INTO clients (id, uuid, firstname, lastname, companyname, email, status, credit, currency,"
                " groupid, datecreated, customfields) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                rows,
            )
            c.executemany(
                "INSERT INTO products (clientid, orderid, pid, name, groupname, domain, status, suspensionreason,"
                " billingcycle, regdate, nextduedate, recurringamount, overideautosuspend, overidesuspenduntil,"
                " module, notes) VALUES (?, 0, 1, 'VoIP Service', 'VoIP', ?, 'Active', '', 'Monthly', ?, ?,"
                " '0.00', 0, '0000-00-00', 'autobill', '')",
                [(cid, f"tenant{cid}.example.test", today, due) for cid in ids for _ in range(products_per_client)],
            )
            if unpaid_every:
                c.executemany(
                    "INSERT INTO invoices (userid, invoicenum, date, duedate, datepaid, subtotal, credit, tax, total,"
                    " balance, status, paymentmethod) VALUES (?, '', ?, ?, '0000-00-00 00:00:00', ?, '0.00', '0.00',"
                    " ?, ?, 'Unpaid', 'banktransfer')",
                    [(cid, today, today, amt, amt, amt)
                     for i, cid in enumerate(ids) if i % unpaid_every == 0
                     for amt in [str(Decimal(rng.randrange(100, 5000)).scaleb(-2))]],
                )
        return ids

    # -- changes and reads used by the Python API ----------------------------------------------

    def set_credit(self, client_id: int, credit: Decimal | str) -> None:
        with self.tx() as c:
            c.execute("UPDATE clients SET credit = ? WHERE id = ?", (money_text(credit), int(client_id)))

    def set_custom_field(self, client_id: int, field: str | int, value: str) -> None:
        with self.tx() as c:
            row = c.execute("SELECT customfields FROM clients WHERE id = ?", (int(client_id),)).fetchone()
            if row is None:
                raise KeyError(f"no client {client_id}")
            fields = json.loads(row[0] or "{}")
            fields[str(_field_id(field))] = str(value)
            c.execute("UPDATE clients SET customfields = ? WHERE id = ?", (json.dumps(fields), int(client_id)))

    def set_invoice(self, invoice_id: int, status: str | None = None, balance: Decimal | str | None = None) -> None:
        with self.tx() as c:
            if status is not None:
                c.execute("UPDATE invoices SET status = ? WHERE id = ?", (status, int(invoice_id)))
            if balance is not None:
                c.execute("UPDATE invoices SET balance = ? WHERE id = ?", (money_text(balance), int(invoice_id)))

    def local_now(self) -> datetime:
        """Now on the WHMCS server's wall clock (naive, like every WHMCS date and time)."""
        return datetime.now(UTC).astimezone(self.tz).replace(tzinfo=None)

    def run_daily_cron(self, at: datetime | None = None) -> dict:
        """WHMCS's daily automation, the part Autobill depends on: every billable item with
        invoiceaction=nextcron not invoiced yet becomes a line (type "Item", relid = the item id,
        the item's description) on one new Unpaid invoice per client, dated the cron's local day;
        the run is written to the automation log. `at`: the local (naive) invocation time.
        Credit is not applied to the new invoices (WHMCS's Automatic Credit Use is not simulated)."""
        if at is None:
            # WHMCS records whole seconds: a cron invoked now is made to start on the next whole
            # second, so everything that happened before this call is strictly earlier than its start.
            time.sleep(1 - time.time() % 1)
        started = at or self.local_now()
        if started.tzinfo is not None:
            started = started.astimezone(self.tz).replace(tzinfo=None)
        stamp, day = started.strftime("%Y-%m-%d %H:%M:%S"), started.date().isoformat()
        with self.tx() as c:
            items = c.execute(
                "SELECT b.* FROM billable_items b WHERE b.invoiceaction = 'nextcron' AND NOT EXISTS"
                " (SELECT 1 FROM invoice_items ii WHERE ii.type = 'Item' AND ii.relid = b.id) ORDER BY b.userid, b.id"
            ).fetchall()
            by_client: dict[int, list] = {}
            for item in items:
                by_client.setdefault(int(item["userid"]), []).append(item)
            for userid, lines in by_client.items():
                total = sum((Decimal(i["amount"]) for i in lines), Decimal(0))
                cur = c.execute(
                    "INSERT INTO invoices (userid, invoicenum, date, duedate, datepaid, subtotal, credit, tax, total,"
                    " balance, status, paymentmethod) VALUES (?, '', ?, ?, '0000-00-00 00:00:00', ?, '0.00', '0.00',"
                    " ?, ?, 'Unpaid', 'banktransfer')",
                    (userid, day, day, money_text(total), money_text(total), money_text(total)),
                )
                c.executemany(
                    "INSERT INTO invoice_items (invoiceid, userid, type, relid, description, amount, taxed, duedate)"
                    " VALUES (?, ?, 'Item', ?, ?, ?, 0, ?)",
                    [(int(cur.lastrowid), userid, int(i["id"]), i["description"], money_text(i["amount"]), day)
                     for i in lines],
                )
            c.execute("INSERT INTO automation_log (started, finished, invoices, items) VALUES (?, ?, ?, ?)",
                      (stamp, stamp, len(by_client), len(items)))
        return {"started": stamp, "invoices": len(by_client), "items": len(items)}

    def rows(self, sql: str, params: tuple = ()) -> list[dict]:
        return [dict(r) for r in self.conn().execute(sql, params).fetchall()]


def _field_id(field: str | int) -> int:
    if isinstance(field, int) or str(field).isdigit():
        return int(field)
    try:
        return CUSTOM_FIELDS[str(field)]
    except KeyError:
        raise KeyError(f"unknown client custom field {field!r} (known: {list(CUSTOM_FIELDS)})") from None
