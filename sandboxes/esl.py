"""A loopback server that speaks the FreeSWITCH event-socket protocol, for tests and the demo.

It models just enough of a switch to check what autosuspend does: which gateways are running
(`killgw` stops one, `rescan` starts the enabled ones that `rescan_source` returns), which
cache keys exist (`memcache delete` answers `+OK` or `-ERR NOT FOUND` like mod_memcache), and
it records every command. Faults: a wrong password (`-ERR invalid` + disconnect), a canned
reply for commands starting with a prefix, a dropped connection, or a slow reply.
"""

from __future__ import annotations

import socketserver
import threading
import time
from collections.abc import Callable, Iterable

from sandboxes.loopback import Served

DISCONNECT = "Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _write(self, headers: dict[str, str], body: str = "") -> None:
        data = body.encode()
        if body:
            headers = {**headers, "Content-Length": str(len(data))}
        head = "".join(f"{k}: {v}\n" for k, v in headers.items()) + "\n"
        self.wfile.write(head.encode() + data)
        self.wfile.flush()

    def _read_command(self) -> list[str] | None:
        lines: list[str] = []
        while True:
            raw = self.rfile.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if lines:
                    return lines
                continue
            lines.append(line)

    def handle(self) -> None:
        try:
            self._serve()
        except OSError:  # the client went away: nothing to report
            pass

    def _serve(self) -> None:
        sandbox = self.server.sandbox
        sandbox._connections += 1
        self._write({"Content-Type": "auth/request"})
        authed = False
        while True:
            lines = self._read_command()
            if lines is None:
                return
            cmd = lines[0]
            if cmd.startswith("auth "):
                if cmd[5:] == sandbox.password and not sandbox.refuse_auth:
                    authed = True
                    self._write({"Content-Type": "command/reply", "Reply-Text": "+OK accepted"})
                    continue
                self._write({"Content-Type": "command/reply", "Reply-Text": "-ERR invalid"})
                self._write({"Content-Type": "text/disconnect-notice"}, DISCONNECT)
                return
            if cmd == "exit":
                self._write({"Content-Type": "command/reply", "Reply-Text": "+OK bye"})
                self._write({"Content-Type": "text/disconnect-notice"}, DISCONNECT)
                return
            if not authed:
                self._write({"Content-Type": "command/reply", "Reply-Text": "-ERR command not found"})
                continue
            if cmd.startswith("api "):
                command = cmd[4:]
                sandbox.commands.append(command)
                reply = sandbox._reply(command)
                if reply is None:  # simulated drop
                    return
                self._write({"Content-Type": "api/response"}, reply)
                continue
            if cmd.startswith("sendevent "):
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                sandbox.events.append({"Event-Name": cmd[10:], **headers})
                sandbox._event(headers)
                self._write({"Content-Type": "command/reply", "Reply-Text": "+OK 5f3f2e0c-sandbox"})
                continue
            self._write({"Content-Type": "command/reply", "Reply-Text": "-ERR command not found"})


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    sandbox: EslSandbox


class EslSandbox:
    """`with EslSandbox(password="pw") as esl: EslClient(esl.host, esl.port, "pw") ...`"""

    def __init__(
        self,
        password: str = "sandbox-esl",
        hostname: str = "pbx1.sandbox",
        gateways: Iterable[str] = (),
        cache_keys: Iterable[str] = (),
        rescan_source: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.password = password
        self.hostname = hostname
        self.running: set[str] = {g.lower() for g in gateways}
        self.cache: set[str] = set(cache_keys)
        self.rescan_source = rescan_source
        self.commands: list[str] = []
        self.events: list[dict[str, str]] = []  # sendevent: {"Event-Name": ..., headers...}
        self.file_cache: set[str] = set()  # FusionPBX file-cache entries (keys with "." for ":")
        self.refuse_auth = False
        self.faults: dict[str, str] = {}  # command prefix -> canned reply body
        self.drop_on: set[str] = set()  # command prefixes that drop the connection
        self.delay_on: dict[str, float] = {}  # command prefix -> seconds before replying
        self._connections = 0
        self._lock = threading.Lock()
        self._served: Served | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> EslSandbox:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.sandbox = self
        self._served = Served(server, "esl-sandbox")
        return self

    def stop(self) -> None:
        if self._served is not None:
            self._served.stop()
            self._served = None

    def __enter__(self) -> EslSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        assert self._served is not None, "start the sandbox first"
        return self._served.port

    @property
    def connections(self) -> int:
        return self._connections

    # -- the simulated switch ------------------------------------------------------------------

    def _match(self, command: str, table: Iterable[str]) -> str | None:
        return next((p for p in table if command.startswith(p)), None)

    def _event(self, headers: dict[str, str]) -> None:
        """FusionPBX's cache listener: a CUSTOM fusion::file "delete <key>" removes a file entry."""
        arg = headers.get("API-Command-Argument", "")
        if headers.get("Event-Subclass") == "fusion::file" and arg.startswith("delete "):
            with self._lock:
                self.file_cache.discard(arg[7:])

    def _reply(self, command: str) -> str | None:
        if (p := self._match(command, self.delay_on)) is not None:
            time.sleep(self.delay_on[p])
        if self._match(command, self.drop_on) is not None:
            return None
        if (p := self._match(command, self.faults)) is not None:
            return self.faults[p]
        words = command.split()
        with self._lock:
            if words == ["hostname"]:
                return self.hostname
            if words == ["reloadxml"]:
                return "+OK [Success]\n"
            if len(words) == 3 and words[:2] == ["memcache", "delete"]:
                if words[2] in self.cache:
                    self.cache.discard(words[2])
                    return "+OK\n"
                return "-ERR NOT FOUND\n"
            if len(words) >= 4 and words[:2] == ["sofia", "profile"]:
                if words[3] == "killgw" and len(words) == 5:
                    gw = words[4].lower()
                    if gw in self.running:
                        self.running.discard(gw)
                        return "+OK gateway marked for deletion.\n"
                    return "-ERR no such gateway.\n"
                if words[3] == "rescan":
                    if self.rescan_source is not None:
                        self.running |= {g.lower() for g in self.rescan_source()}
                    return "+OK scan complete\n"
            return f"-ERR {words[0] if words else ''} Command not found!\n"
