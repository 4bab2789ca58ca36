"""The loopback-server base every stand-in uses.

- `free_port()`: a free 127.0.0.1 port (also: a port nothing listens on, for "connection refused").
- `Served`: any `socketserver` server served on a daemon thread, with its port and a clean stop;
  the WHMCS sandbox, the event-socket sandbox and `LoopbackServer` all run on it.
- `LoopbackServer`: an HTTP sandbox with the fault switches the PBX sandboxes share.

Why a base class for the HTTP sandboxes: the Vodia and LesNet sandboxes differ only in what they answer; binding to
127.0.0.1 port 0, recording requests, injecting HTTP errors and slowness, and shutting down
cleanly (even while a slow request sleeps) are the same, and tests depend on them behaving.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit


def free_port(preferred: int | None = None) -> int:
    """`preferred` when nothing listens on it, else any free loopback port (bound, then released:
    until someone binds it, a connection to it is refused)."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """`server` served on a daemon thread from construction until `stop()` (idempotent)."""

    def __init__(self, server: socketserver.BaseServer, name: str) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name,
                                       daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class Request:
    """What a sandbox received (for assertions): method, path, query, headers, body."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Fault:
    status: int
    remaining: int | None  # None: until cleared
    path_prefix: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    app: LoopbackServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (timeout) leaves a broken pipe behind: not worth a traceback."""


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        response = self.server.app._serve(request)
        if response is None:  # the sandbox is stopping
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.status not in (204, 304):
            self.wfile.write(response.body)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _dispatch


class LoopbackServer:
    """Base of the sandboxes: `with Sandbox(...) as sb:` serves on `sb.url` until the block ends.

    Fault switches (thread-safe, effective for the next request):
    - `fail(status, times=None, path_prefix="")`: answer `status` to matching requests
      (`times` of them, or until `clear_faults()`);
    - `delay`: seconds to wait before answering any request (a slow server; tests use it to
      show that clients time out).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self._served: Served | None = None
        self.delay: float = 0.0
        self.requests: list[Request] = []

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.app = self
        self._stopping.clear()
        self._served = Served(server, type(self).__name__)
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes requests sleeping in `delay`
        if self._served is not None:
            self._served.stop()
            self._served = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._served is None:
            raise RuntimeError("sandbox not started: use it as a context manager or call start()")
        return self._served.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- faults ----------------------------------------------------------------------------

    def fail(self, status: int, times: int | None = None, path_prefix: str = "") -> None:
        with self._lock:
            self._faults.append(_Fault(status, times, path_prefix))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
        self.delay = 0.0

    def _take_fault(self, path: str) -> int | None:
        with self._lock:
            for fault in self._faults:
                if path.startswith(fault.path_prefix):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault.status
        return None

    def _serve(self, request: Request) -> Response | None:
        with self._lock:
            self.requests.append(request)
        if self.delay and self._stopping.wait(self.delay):
            return None
        status = self._take_fault(request.path)
        if status is not None:
            return Response(status, b'{"error":"injected fault"}', {"Content-Type": "application/json"})
        try:
            return self.handle(request)
        except Exception as exc:  # noqa: BLE001 - a sandbox bug must reach the client as a 500, not a hang
            return Response(500, f'{{"error":"sandbox: {type(exc).__name__}"}}'.encode(), {})

    def handle(self, request: Request) -> Response:  # pragma: no cover - overridden
        raise NotImplementedError
