"""An offline Vodia PBX REST API on 127.0.0.1, for tests and the demo.

It speaks the shapes `connectors.vodia` documents (login by `PUT /rest/system/session` or HTTP
Basic auth, `GET /rest/system/domains`, the paginated per-leg CDR listing), so a connector test
exercises real HTTP, cookies, timeouts and paging, not a mock. Use::

    with VodiaSandbox(calls_frame, username="admin", password="pw") as sb:
        cfg = VodiaServer(id="v1", kind="vodia", url=sb.url, username="admin", password=...)

`calls_frame` is a canonical-like frame (tenant = domain; cdr_key or call_id; direction, src, dst,
extension, start_utc, answer_utc, end_utc, billsec) turned into the legs a real PBX would log
(`legs_from_calls`), or a mapping domain -> list of leg records served as they are.

Switches beyond the shared faults (`fail`, `delay`): `expire_sessions()` (the next call gets a
401), `max_page` (the server caps the page size), `ignore_offset` (a broken server that always
returns the first page); counters `logins` and `requests`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from sandboxes.loopback import LoopbackServer, Request, Response

_CDR_PATH = re.compile(r"^/rest/domain/([^/]+)/cdr$")
TRUNK_NAME = "sandbox-trunk"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime | None) -> int:
    return 0 if moment is None else (moment - _EPOCH) // timedelta(microseconds=1)


def _epoch(micros: int) -> float:
    """Epoch seconds as the nearest float (correctly rounded, so the connector gets the micros back)."""
    return micros / 1_000_000


def _sip(user: str | None, domain: str, name: str | None = None) -> str:
    uri = f"<sip:{user or 'anonymous'}@{domain}>"
    return f'"{name}" {uri}' if name else uri


def legs_from_calls(calls: pl.DataFrame, trunk: str = TRUNK_NAME) -> dict[str, list[dict[str, Any]]]:
    """The per-leg records Vodia logs for each call, grouped by domain (the frame's tenant).

    outbound: extension->PBX leg (I, no trunk) + PBX->trunk leg (O, RemoteParty = dst);
    inbound: trunk->PBX leg (I, RemoteParty = caller, LocalParty = DID) + PBX->extension leg (O);
    local: two legs without a trunk. EndTime = ConnectTime + billsec for answered calls, so the
    connector's floor(EndTime - ConnectTime) gives back the frame's billsec exactly.
    """
    call_ids = (
        calls.get_column("call_id").cast(pl.String)
        if "call_id" in calls.columns
        else calls.get_column("cdr_key").str.splitn(":", 2).struct[1]
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for call_id, row in zip(call_ids.to_list(), calls.iter_rows(named=True), strict=True):
        domain = row["tenant"]
        ext, src, dst, direction = row.get("extension"), row.get("src"), row.get("dst"), row["direction"]
        answered = bool(row.get("billsec")) and row.get("answer_utc") is not None
        connect = _micros(row.get("answer_utc")) if answered else 0
        if answered:
            end = connect + row["billsec"] * 1_000_000
        else:
            end = _micros(row.get("end_utc") or row.get("start_utc"))
        common = {
            "action": "call-data-record",
            "System": "sandbox",
            "PrimaryCallID": call_id,
            "Type": "intcall" if direction == "local" else "extcall",
            "StartTime": _epoch(_micros(row.get("start_utc"))),
            "ConnectTime": _epoch(connect),
            "EndTime": _epoch(end),
        }
        base = {**common, "From": _sip(src, domain), "To": _sip(dst, domain), "Extension": ext or ""}
        if direction == "outbound":
            legs = [
                {
                    **base,
                    "CallID": f"{call_id}-a",
                    "Direction": "I",
                    "TrunkName": "",
                    "LocalParty": ext,
                    "RemoteParty": dst,
                },
                {
                    **base,
                    "CallID": f"{call_id}-b",
                    "Direction": "O",
                    "TrunkName": trunk,
                    "LocalParty": src,
                    "RemoteParty": dst,
                },
            ]
        elif direction == "inbound":
            legs = [
                {
                    **base,
                    "CallID": f"{call_id}-a",
                    "Direction": "I",
                    "TrunkName": trunk,
                    "LocalParty": dst,
                    "RemoteParty": src,
                },
                {
                    **base,
                    "CallID": f"{call_id}-b",
                    "Direction": "O",
                    "TrunkName": "",
                    "LocalParty": ext,
                    "RemoteParty": src,
                },
            ]
        else:
            legs = [
                {
                    **base,
                    "CallID": f"{call_id}-a",
                    "Direction": "I",
                    "TrunkName": "",
                    "LocalParty": src,
                    "RemoteParty": dst,
                },
                {
                    **base,
                    "CallID": f"{call_id}-b",
                    "Direction": "O",
                    "TrunkName": "",
                    "LocalParty": dst,
                    "RemoteParty": src,
                },
            ]
        out.setdefault(domain, []).extend(legs)
    return out


class VodiaSandbox(LoopbackServer):
    def __init__(
        self,
        cdrs: pl.DataFrame | Mapping[str, Sequence[dict[str, Any]]] | None = None,
        *,
        username: str = "admin",
        password: str = "password",
        domains: Sequence[str] = (),
        max_page: int | None = None,
    ) -> None:
        super().__init__()
        self.username = username
        self.password = password
        self.max_page = max_page
        self.ignore_offset = False
        self.logins = 0
        self._sessions: set[str] = set()
        self._data_lock = threading.Lock()
        self.legs: dict[str, list[dict[str, Any]]] = {d: [] for d in domains}
        if cdrs is not None:
            self.add(cdrs)

    # -- data and switches -----------------------------------------------------------------

    def add(self, cdrs: pl.DataFrame | Mapping[str, Sequence[dict[str, Any]]]) -> None:
        """Add calls (a canonical-like frame) or raw leg records (domain -> records)."""
        batch = legs_from_calls(cdrs) if isinstance(cdrs, pl.DataFrame) else cdrs
        with self._data_lock:
            for domain, records in batch.items():
                self.legs.setdefault(domain, []).extend(dict(r) if isinstance(r, dict) else r for r in records)

    def expire_sessions(self) -> None:
        with self._lock:
            self._sessions.clear()

    # -- HTTP ------------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        cookie = request.headers.get("cookie", "")
        tokens = {p.split("=", 1)[1] for p in cookie.replace(" ", "").split(";") if p.startswith("session=")}
        with self._lock:
            if tokens & self._sessions:
                return True
        auth = request.headers.get("authorization", "")
        if auth.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return False
            return user == self.username and pw == self.password
        return False

    def handle(self, request: Request) -> Response:
        if request.method == "PUT" and request.path == "/rest/system/session":
            return self._login(request)
        if not self._authorised(request):
            return _json(401, {"error": "not authorised"})
        if request.method == "GET" and request.path == "/rest/system/domains":
            with self._data_lock:
                return _json(200, [{"name": d} for d in sorted(self.legs)])
        match = _CDR_PATH.match(request.path)
        if request.method == "GET" and match:
            return self._cdrs(match.group(1), request.query)
        return _json(404, {"error": f"no route {request.method} {request.path}"})

    def _login(self, request: Request) -> Response:
        try:
            body = json.loads(request.body or b"{}")
            user, _, digest = str(body.get("value", "")).partition(" ")
        except (ValueError, AttributeError):
            return _json(400, {"error": "bad login body"})
        expected = hashlib.md5(self.password.encode()).hexdigest()  # noqa: S324 - Vodia's protocol
        if body.get("name") != "auth" or user != self.username or digest != expected:
            return _json(401, {"error": "login failed"})
        token = secrets.token_hex(10)
        with self._lock:
            self._sessions.add(token)
            self.logins += 1
        return Response(
            200,
            json.dumps(token).encode(),
            {"Content-Type": "application/json", "Set-Cookie": f"session={token}; Path=/"},
        )

    def _cdrs(self, domain: str, query: dict[str, str]) -> Response:
        with self._data_lock:
            if domain not in self.legs:
                return _json(404, {"error": f"unknown domain {domain}"})
            legs = list(self.legs[domain])
        # A record that is not a JSON object (test garbage) passes every filter and sorts first.
        if query.get("type") == "trunk":
            legs = [r for r in legs if not isinstance(r, dict) or r.get("TrunkName")]
        lo = float(query["from"]) if "from" in query else float("-inf")
        hi = float(query["to"]) if "to" in query else float("inf")
        legs = [r for r in legs if not isinstance(r, dict) or lo <= _seconds(r.get("StartTime")) < hi]
        legs.sort(key=lambda r: (_seconds(r.get("StartTime")), str(r.get("CallID"))) if isinstance(r, dict)
                  else (float("-inf"), json.dumps(r)))
        count = int(query.get("count", 30))  # Vodia's "Default CDR listing size" is 30
        if self.max_page is not None:
            count = min(count, self.max_page)
        offset = 0 if self.ignore_offset else int(query.get("start", 0))
        return _json(200, legs[offset : offset + count])


def _seconds(value: Any) -> float:
    """A leg's epoch time for filtering and sorting; junk sorts first (and is served, not hidden)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _json(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})
