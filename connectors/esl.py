"""A small FreeSWITCH event-socket client (inbound mode), enough for `api` commands.

Why our own: autosuspend needs four commands (`hostname`, `memcache delete`, `sofia profile
... killgw|rescan`) with hard timeouts and exact error reporting; the protocol is a few lines:

    server: Content-Type: auth/request            client: auth <password>
    server: Content-Type: command/reply           Reply-Text: +OK accepted   (or -ERR invalid)
    client: api <command>
    server: Content-Type: api/response  Content-Length: N   <N bytes of body>

Every socket operation has a timeout; any transport problem is an `EslError`, a `-ERR` body an
`EslCommandError` (which the caller may judge benign, e.g. "-ERR no such gateway.").
The password is never part of an exception message or a log line.
"""

from __future__ import annotations

import socket
from urllib.parse import unquote


class EslError(Exception):
    """The event socket could not be used (refused, timeout, dropped, protocol)."""


class EslAuthError(EslError):
    """The event socket refused the password."""


class EslCommandError(EslError):
    """An `api` command answered `-ERR ...`."""

    def __init__(self, command: str, reply: str) -> None:
        super().__init__(f"{command!r}: {reply.strip()}")
        self.command = command
        self.reply = reply


Headers = dict[str, str]


class EslClient:
    def __init__(self, host: str, port: int, password: str, timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._password = password
        self._sock: socket.socket | None = None
        self._file = None

    def __repr__(self) -> str:
        return f"EslClient({self.host}:{self.port})"

    # -- connection --------------------------------------------------------------------------

    def connect(self) -> EslClient:
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._sock.settimeout(self.timeout)
            self._file = self._sock.makefile("rb")
            headers, _ = self._read_message()
            if headers.get("Content-Type") != "auth/request":
                raise EslError(f"{self}: expected auth/request, got {headers.get('Content-Type')!r}")
            self._send(f"auth {self._password}")
            reply, _ = self._read_message(("command/reply",))
        except OSError as exc:
            self.close()
            raise EslError(f"{self}: {type(exc).__name__}: {exc}") from None
        except EslError:
            self.close()
            raise
        text = reply.get("Reply-Text", "")
        if not text.startswith("+OK"):
            self.close()
            raise EslAuthError(f"{self}: authentication refused ({text or 'no reply'})")
        return self

    def close(self) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendall(b"exit\n\n")
        except OSError:
            pass
        for thing in (self._file, self._sock):
            try:
                thing.close()  # type: ignore[union-attr]
            except OSError:
                pass
        self._sock = self._file = None

    def __enter__(self) -> EslClient:
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands -----------------------------------------------------------------------------

    def api(self, command: str) -> str:
        """Run `api <command>` and return its body; `-ERR` bodies raise `EslCommandError`."""
        if "\n" in command or "\r" in command:
            raise ValueError("an event-socket command is one line")
        if self._sock is None:
            raise EslError(f"{self}: not connected")
        try:
            self._send(f"api {command}")
            _, body = self._read_message(("api/response",))
        except OSError as exc:
            self.close()
            raise EslError(f"{self}: {command!r}: {type(exc).__name__}: {exc}") from None
        except EslError:
            self.close()
            raise
        if body.lstrip().startswith("-ERR"):
            raise EslCommandError(command, body)
        return body

    def sendevent(self, name: str, headers: dict[str, str]) -> str:
        """Fire an event (e.g. FusionPBX's CUSTOM `fusion::file` cache-delete); returns Reply-Text."""
        lines = [f"sendevent {name}", *(f"{k}: {v}" for k, v in headers.items())]
        if any("\n" in line or "\r" in line for line in lines):
            raise ValueError("event headers are single lines")
        if self._sock is None:
            raise EslError(f"{self}: not connected")
        try:
            self._send("\n".join(lines))
            reply, _ = self._read_message(("command/reply",))
        except OSError as exc:
            self.close()
            raise EslError(f"{self}: sendevent {name}: {type(exc).__name__}: {exc}") from None
        except EslError:
            self.close()
            raise
        text = reply.get("Reply-Text", "")
        if not text.startswith("+OK"):
            raise EslCommandError(f"sendevent {name}", text)
        return text

    # -- protocol -------------------------------------------------------------------------------

    def _send(self, line: str) -> None:
        assert self._sock is not None
        self._sock.sendall(line.encode() + b"\n\n")

    def _read_message(self, want: tuple[str, ...] | None = None) -> tuple[Headers, str]:
        """The next message (headers, body), skipping ones of other types when `want` is given."""
        while True:
            headers = self._read_headers()
            body = ""
            length = headers.get("Content-Length")
            if length is not None:
                n = int(length)
                data = self._file.read(n) if n else b""  # type: ignore[union-attr]
                if len(data) < n:
                    raise EslError(f"{self}: connection closed inside a message body")
                body = data.decode("utf-8", "replace")
            ctype = headers.get("Content-Type", "")
            if ctype == "text/disconnect-notice":
                raise EslError(f"{self}: disconnected by the switch ({body.strip().splitlines()[0] if body else ''})")
            if want is None or ctype in want:
                return headers, body

    def _read_headers(self) -> Headers:
        headers: Headers = {}
        while True:
            raw = self._file.readline()  # type: ignore[union-attr]
            if not raw:
                raise EslError(f"{self}: connection closed")
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if headers:
                    return headers
                continue  # stray blank line between messages
            name, _, value = line.partition(":")
            headers[name.strip()] = unquote(value.strip())
