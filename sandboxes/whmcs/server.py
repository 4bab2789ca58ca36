"""A loopback HTTP server speaking the WHMCS External API, for the demo and the tests.

It is a development tool, not a WHMCS replacement: the actions Autobill uses, WHMCS's error
shapes, SQLite state, and switches that inject the failures the client must survive
(`faults.py`). HTTP/1.1 keep-alive with one write per response and TCP_NODELAY, so a client
reusing its connection is not held up by Nagle / delayed-ACK stalls.

Auth failures answer HTTP 403 with WHMCS's error body (whether real WHMCS uses 403 or 200 is
unconfirmed, domain.md §2.1; the client handles both). The admin endpoint
`POST /_sandbox/faults` (JSON) only answers loopback peers.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import shutil
import socket
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from sandboxes.loopback import Served
from sandboxes.whmcs.actions import Api, ApiError
from sandboxes.whmcs.faults import Faults
from sandboxes.whmcs.store import CUSTOM_FIELDS, Store

API_PATH = "/includes/api.php"
ADMIN_PATH = "/_sandbox/faults"
CRON_PATH = "/_sandbox/cron"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sandbox: WhmcsSandbox


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "WHMCS-Sandbox/1"
    disable_nagle_algorithm = True
    timeout = 120  # an idle keep-alive connection is closed after this long
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silent: request lines would flood test output (and bodies are never logged)."""

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        head = (
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
            f"Server: {self.server_version}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"Connection: {'close' if self.close_connection else 'keep-alive'}\r\n\r\n"
        ).encode("latin-1")
        try:
            self.wfile.write(head + body)
        except OSError:  # the client gave up (timeout) before we answered
            self.close_connection = True

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload, separators=(",", ":")).encode("utf-8"))

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        path = self.path.split("?", 1)[0]
        body = self._body()
        if path == API_PATH:
            self.server.sandbox._handle_api(self, body)
        elif path == ADMIN_PATH:
            self.server.sandbox._handle_admin(self, body)
        elif path == CRON_PATH:
            self.server.sandbox._handle_cron(self, body)
        else:
            self._send(404, b"Not Found", "text/plain")

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        if path == ADMIN_PATH and _loopback(self.client_address[0]):
            self._json(200, self.server.sandbox.faults.snapshot())
        elif path == "/_sandbox/health":
            self._json(200, {"ok": True})
        else:
            self._send(404, b"Not Found", "text/plain")

    def drop(self) -> None:
        """Close the socket without answering: the crash after storing, before the response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class WhmcsSandbox:
    """`with WhmcsSandbox() as sb:` serves on 127.0.0.1:<free port>; `sb.url` is the api.php URL."""

    def __init__(
        self, db_path: str | Path | None = None, identifier: str = "demo", secret: str = "demo",
        accesskey: str | None = None, host: str = "127.0.0.1", port: int = 0,
        legacy_hours: bool = False, seed: int = 0, timezone: str = "UTC",
    ) -> None:
        """`timezone`: the WHMCS server's timezone, in which its dates and times are written."""
        self._tmpdir = None if db_path is not None else tempfile.mkdtemp(prefix="whmcs-sandbox-")
        self.db_path = Path(db_path) if db_path is not None else Path(self._tmpdir) / "whmcs.db"
        self.store = Store(self.db_path, timezone)
        self.api = Api(self.store, legacy_hours=legacy_hours)
        self.faults = Faults(seed)
        self._identifier, self._secret, self._accesskey = identifier, secret, accesskey
        self._host, self._port = host, port
        self._served: Served | None = None
        self._counts: Counter[str] = Counter()
        self._idle = threading.Condition()
        self._in_flight = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> WhmcsSandbox:
        if self._served is None:
            server = _Server((self._host, self._port), _Handler)
            server.sandbox = self
            self._served = Served(server, "whmcs-sandbox")
        return self

    def serve_forever(self) -> None:
        """Block serving (for `autobill sandbox serve`); Ctrl-C stops it."""
        self.start()
        try:
            while self._served is not None and self._served.alive():
                self._served.thread.join(0.5)
        finally:
            self.close()

    def close(self) -> None:
        if self._served is not None:
            self._served.stop()
            self._served = None
        self.store.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> WhmcsSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        if self._served is None:
            raise RuntimeError("sandbox not started")
        return self._served.port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + API_PATH

    custom_field_ids = CUSTOM_FIELDS  # name -> id, for WhmcsClient(custom_field_ids=...)

    # -- request handling --------------------------------------------------------------------

    def _authorised(self, p: dict[str, str]) -> str | None:
        """None when the credentials are good, else WHMCS's error message."""
        ident = p.get("identifier", p.get("username", ""))
        secret = p.get("secret", p.get("password", ""))
        if self._accesskey is not None and not hmac.compare_digest(p.get("accesskey", ""), self._accesskey):
            return "Invalid IP 127.0.0.1"
        ok = hmac.compare_digest(ident.encode(), self._identifier.encode())
        ok &= hmac.compare_digest(secret.encode(), self._secret.encode())
        return None if ok else "Authentication Failed"

    def _handle_api(self, h: _Handler, body: bytes) -> None:
        with self._idle:
            self._in_flight += 1
        try:
            self._serve_api(h, body)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def _serve_api(self, h: _Handler, body: bytes) -> None:
        p = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = p.get("action", "")
        with self._idle:
            self._counts[action.lower()] += 1
        fault = self.faults.draw(action)
        mode = fault.mode if fault else None
        if mode == "503":
            return h._send(503, b"<html><body>503 Service Unavailable</body></html>", "text/html")
        if mode == "500":
            return h._send(500, b"<html><body>500 Internal Server Error</body></html>", "text/html")
        if mode in ("slow", "timeout"):
            time.sleep(fault.delay)
        status, payload = self._process(p)
        if mode == "500_after_store":
            return h._send(500, b"<html><body>500 Internal Server Error</body></html>", "text/html")
        if mode == "drop_after_store":
            return h.drop()
        if mode == "garbage_after_store":
            return h._send(200, b"<html><body>PHP Fatal error: Allowed memory size exhausted</body></html>", "text/html")
        h._json(status, payload)

    def _process(self, p: dict[str, str]) -> tuple[int, dict]:
        denied = self._authorised(p)
        if denied is not None:
            return 403, {"result": "error", "message": denied}
        if p.get("responsetype", "json").lower() != "json":
            return 200, {"result": "error", "message": "The sandbox only answers responsetype=json"}
        try:
            return 200, self.api.dispatch(p)
        except ApiError as exc:
            return 200, {"result": "error", "message": str(exc)}

    def _handle_admin(self, h: _Handler, body: bytes) -> None:
        if not _loopback(h.client_address[0]):
            return h._json(403, {"result": "error", "message": "sandbox admin is loopback-only"})
        try:
            spec = json.loads(body or b"{}")
            if spec.get("clear"):
                self.faults.clear()
            if "fail_next" in spec:
                self.faults.fail_next(**spec["fail_next"])
            if "mode" in spec or "action" in spec:
                self.faults.set(
                    action=spec.get("action", "*"), mode=spec.get("mode"), error_rate=spec.get("error_rate", 1.0),
                    delay=spec.get("delay"), seed=spec.get("seed"),
                )
        except (ValueError, TypeError, AttributeError) as exc:
            return h._json(400, {"result": "error", "message": str(exc)})
        h._json(200, {"result": "success", **self.faults.snapshot()})

    def _handle_cron(self, h: _Handler, body: bytes) -> None:
        """`POST /_sandbox/cron` (loopback only), optional JSON {"at": "YYYY-MM-DD HH:MM:SS"} (local time)."""
        if not _loopback(h.client_address[0]):
            return h._json(403, {"result": "error", "message": "sandbox admin is loopback-only"})
        try:
            spec = json.loads(body or b"{}")
            at = datetime.strptime(spec["at"], "%Y-%m-%d %H:%M:%S") if spec.get("at") else None
        except (ValueError, TypeError, AttributeError) as exc:
            return h._json(400, {"result": "error", "message": str(exc)})
        h._json(200, {"result": "success", **self.run_daily_cron(at)})

    # -- Python API for tests and the demo ---------------------------------------------------

    def add_client(self, **kwargs: Any) -> int:
        """Keywords: firstname, lastname, email, companyname, status, credit, currency, custom_fields."""
        return self.store.add_client(**kwargs)

    def add_product(self, client_id: int, **kwargs: Any) -> int:
        """Keywords: name, pid, domain, status, overideautosuspend, module (None: no module), billingcycle,
        service_id, server_id, dedicatedip, groupname, custom_fields ({name: value})."""
        return self.store.add_product(client_id, **kwargs)

    def add_server(self, name: str, hostname: str = "", type_: str = "autobill") -> int:
        """A WHMCS server record that services are assigned to (`add_product(server_id=...)`)."""
        return self.store.add_server(name, hostname, type_)

    def set_service(self, service_id: int, **changes: Any) -> None:
        """Move a DID, terminate, reassign: domain, dedicatedip, status, serverid, custom_fields, ..."""
        self.store.set_service(service_id, **changes)

    def bulk_services(self, services: list[dict]) -> None:
        self.store.bulk_services(services)

    def add_invoice(self, client_id: int, total: Decimal | str, **kwargs: Any) -> int:
        """Keywords: status (Unpaid/Paid/Cancelled), balance, date_, duedate."""
        return self.store.add_invoice(client_id, total, **kwargs)

    def bulk_seed(self, clients: int, **kwargs: Any) -> list[int]:
        return self.store.bulk_seed(clients, **kwargs)

    def set_credit(self, client_id: int, credit: Decimal | str) -> None:
        self.store.set_credit(client_id, credit)

    def set_custom_field(self, client_id: int, field: str | int, value: str) -> None:
        self.store.set_custom_field(client_id, field, value)

    def set_invoice(self, invoice_id: int, status: str | None = None, balance: Decimal | str | None = None) -> None:
        self.store.set_invoice(invoice_id, status, balance)

    def billable_items(self, client_id: int | None = None) -> list[dict]:
        """Stored items, amounts and quantities as Decimal (parsed from the exact stored text)."""
        sql, args = "SELECT * FROM billable_items", ()
        if client_id is not None:
            sql, args = sql + " WHERE userid = ?", (int(client_id),)
        rows = self.store.rows(sql + " ORDER BY id", args)
        for r in rows:
            r["amount_text"], r["amount"], r["quantity"] = r["amount"], Decimal(r["amount"]), Decimal(r["quantity"])
        return rows

    def credits(self, client_id: int | None = None) -> list[dict]:
        """The credit log (AddCredit), amounts as Decimal (negative for type=remove)."""
        sql, args = "SELECT * FROM credits", ()
        if client_id is not None:
            sql, args = sql + " WHERE clientid = ?", (int(client_id),)
        rows = self.store.rows(sql + " ORDER BY id", args)
        for r in rows:
            r["amount"] = Decimal(r["amount"])
        return rows

    def run_daily_cron(self, at: datetime | None = None) -> dict:
        """WHMCS's daily cron: nextcron billable items become invoice lines (see Store.run_daily_cron)."""
        return self.store.run_daily_cron(at)

    def invoice_items(self, client_id: int | None = None) -> list[dict]:
        sql, args = "SELECT * FROM invoice_items", ()
        if client_id is not None:
            sql, args = sql + " WHERE userid = ?", (int(client_id),)
        rows = self.store.rows(sql + " ORDER BY id", args)
        for r in rows:
            r["amount"] = Decimal(r["amount"])
        return rows

    def product(self, service_id: int) -> dict | None:
        rows = self.store.rows("SELECT * FROM products WHERE id = ?", (int(service_id),))
        return rows[0] if rows else None

    def client(self, client_id: int) -> dict | None:
        rows = self.store.rows("SELECT * FROM clients WHERE id = ?", (int(client_id),))
        return rows[0] if rows else None

    def emails(self) -> list[dict]:
        rows = self.store.rows("SELECT * FROM emails ORDER BY id")
        for r in rows:
            r["customvars"] = json.loads(r["customvars"] or "{}")
        return rows

    def module_calls(self) -> list[dict]:
        return self.store.rows("SELECT * FROM module_calls ORDER BY id")

    def set_faults(
        self, action: str = "*", mode: str | None = None, error_rate: float = 1.0,
        delay: float | None = None, seed: int | None = None,
    ) -> None:
        self.faults.set(action, mode, error_rate, delay, seed)

    def fail_next(self, n: int, mode: str, action: str = "*", delay: float | None = None) -> None:
        self.faults.fail_next(n, mode, action, delay)

    def clear_faults(self) -> None:
        self.faults.clear()

    def request_count(self, action: str | None = None) -> int:
        """API requests received (faulted ones included) for `action`, or in total."""
        with self._idle:
            return sum(self._counts.values()) if action is None else self._counts[action.lower()]

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no API request is being handled (e.g. a 'timeout' fault finishing its store)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True
