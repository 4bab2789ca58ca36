"""Vodia PBX CDRs over its REST API, one canonical row per call.

What is confirmed and what is assumed (reference/domain.md §5) -- all of it is in the two
constants below and in `VodiaServer.cdr_path` / `cdr_fields` / `page_size`, so a real server
that differs is a config change, not a code change:

- CONFIRMED (2015 "Vodia PBX - RESTful API" and the v69 ops notes): login is
  `PUT /rest/system/session` with `{"name":"auth","value":"<user> <md5 of password>"}`, answered
  with a session key for later calls (we keep whatever cookie the PBX sets; when it sets none
  and the body is a JSON string, that string is sent back as cookie `session`);
  `GET /rest/system/domains` lists the domains; tenant endpoints live under `/rest/domain/<d>/`.
- CONFIRMED (Vodia "JSON/JSONS CDR examples"): the per-leg CDR fields `PrimaryCallID` (links the
  legs of one call), `CallID`, `Type`, `Direction` (`I` into the PBX, `O` out of it), `From`, `To`,
  `Extension`, `TrunkName`, `RemoteParty`, `LocalParty`. An outbound call is an extension->PBX leg
  (I) plus a PBX->trunk leg (O, RemoteParty = the number called, +E.164); an inbound call is a
  trunk->PBX leg (I, LocalParty = the DID dialled) plus a PBX->extension leg.
- ASSUMED: the listing `GET /rest/domain/<d>/cdr?type=trunk&from=<epoch>&to=<epoch>&start=<offset>
  &count=<n>` (the 2015 document lists "Get CDR records" but its path was not retrieved); its
  answer a JSON list of leg records (or an object holding one under cdrs/records/data/items); the
  timing fields `StartTime`, `ConnectTime`, `EndTime` as epoch seconds (numbers or numeric
  strings; ISO-8601 also accepted; 0 / empty = never connected).

How a call becomes one row: legs are grouped by PrimaryCallID (CallID when absent), a leg seen
twice (same CallID, e.g. on two pages) counts once, and the billing leg is the trunk leg
(TrunkName set): the outbound (O) one first -- an inbound call forwarded off-net is billed as
outbound, like FusionPBX does -- else the inbound (I) one; a call without any trunk leg is
`local`. billsec = floor(EndTime - ConnectTime).

Bad records never fail the server (issue #12): a listed record that is not a JSON object becomes
a row of its own (key `<server>:row-<sha256 of domain and record>`, the record kept raw in
`source_row`), and a time that does not parse (`"later"`, `true`, NaN, a negative or
out-of-range epoch) is null with the reason in `source_row["_error"]` (`start "later" is not a
date (StartTime)`); validation quarantines both as `unreadable_row`, the rest of the batch goes
on. A connect time after the end time gives a negative billsec, quarantined as
answer_after_end. The client never retries (the Prefect task does), except one re-login on a 401.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import polars as pl
import requests

from autobill.cdr import cdr_key, conform
from autobill.config import VodiaServer
from autobill.numbering import normalise_expr
from connectors.base import PROBLEM_KEY, Extracted, SourceError

# Canonical key -> Vodia field name. Override any of them with `VodiaServer.cdr_fields`.
DEFAULT_FIELDS: dict[str, str] = {
    "primary_call_id": "PrimaryCallID",  # confirmed
    "call_id": "CallID",  # confirmed
    "direction": "Direction",  # confirmed: I | O
    "from": "From",  # confirmed (SIP header style)
    "to": "To",  # confirmed (SIP header style)
    "extension": "Extension",  # confirmed
    "trunk": "TrunkName",  # confirmed
    "remote": "RemoteParty",  # confirmed
    "local": "LocalParty",  # confirmed
    "start": "StartTime",  # ASSUMED
    "connect": "ConnectTime",  # ASSUMED
    "end": "EndTime",  # ASSUMED
}
# Query of the CDR listing (ASSUMED names): only trunk legs; window and paging parameters.
QUERY_TYPE = {"type": "trunk"}
QUERY_FROM, QUERY_TO, QUERY_OFFSET, QUERY_COUNT = "from", "to", "start", "count"
# The PBX presumably filters on the call start: ask this much earlier than the window, so a long
# call that ended inside the window is seen; the rows are filtered on their end time here.
QUERY_LOOKBACK = timedelta(hours=6)
MAX_PAGES = 100_000
# Epoch seconds above this do not fit the ledger's microsecond timestamps (as in connectors/fusionpbx.py).
MAX_EPOCH = 9_200_000_000_000
# Time keys -> the words a quarantine reason uses for them.
TIME_LABELS = {"start": "start", "connect": "connect", "end": "end"}
_SIP_USER = re.compile(r"sips?:([^@;>]+)")


def fields_for(cfg: VodiaServer) -> dict[str, str]:
    unknown = sorted(set(cfg.cdr_fields) - set(DEFAULT_FIELDS))
    if unknown:
        raise ValueError(
            f"vodia {cfg.id}: cdr_fields has unknown keys {unknown} (known: {list(DEFAULT_FIELDS)})"
        )
    return {**DEFAULT_FIELDS, **cfg.cdr_fields}


# -- the HTTP client ---------------------------------------------------------------------


class VodiaClient:
    """A logged-in session; every call has a timeout; failures are SourceErrors without secrets."""

    def __init__(self, cfg: VodiaServer, session: requests.Session) -> None:
        self.cfg = cfg
        self.session = session
        self.base = cfg.url.rstrip("/")
        self.logins = 0
        self._secrets: list[str] = []

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret:
                text = text.replace(secret, "***")
        return text

    def _fail(self, message: str) -> SourceError:
        return SourceError(self._redact(f"vodia {self.cfg.id}: {message}"))

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            return self.session.request(
                method,
                self.base + path,
                timeout=self.cfg.timeout_seconds,
                verify=self.cfg.verify_tls,
                allow_redirects=False,
                **kwargs,
            )
        except requests.RequestException as exc:
            raise self._fail(f"{method} {path}: {type(exc).__name__}: {exc}") from None

    def login(self) -> None:
        password = self.cfg.password.get()
        digest = hashlib.md5(password.encode("utf-8")).hexdigest()  # noqa: S324 - Vodia's protocol
        self._secrets = [password, digest]
        body = {"name": "auth", "value": f"{self.cfg.username} {digest}"}
        self.session.cookies.clear()
        resp = self._request("PUT", "/rest/system/session", json=body)
        self.logins += 1
        if resp.status_code in (401, 403):
            raise self._fail(f"login refused for user {self.cfg.username!r} (HTTP {resp.status_code})")
        if not 200 <= resp.status_code < 300:
            raise self._fail(f"login: HTTP {resp.status_code}")
        if not self.session.cookies:
            try:
                key = resp.json()
            except ValueError:
                key = None
            if isinstance(key, str) and key:
                self.session.cookies.set("session", key)

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """GET and decode JSON (floats as Decimal: epoch times stay exact); one re-login on 401."""
        resp = self._request("GET", path, params=params)
        if resp.status_code == 401 and self.logins < 2:
            self.login()
            resp = self._request("GET", path, params=params)
        if resp.status_code == 401:
            raise self._fail(f"GET {path}: still unauthorised (HTTP 401) after logging in again")
        if resp.status_code == 403:
            raise self._fail(
                f"GET {path}: forbidden (HTTP 403; is API access enabled for {self.cfg.username!r}?)"
            )
        if resp.status_code != 200:
            raise self._fail(f"GET {path}: HTTP {resp.status_code}")
        try:
            return json.loads(resp.text, parse_float=Decimal)
        except ValueError:
            raise self._fail(f"GET {path}: answer is not JSON") from None

    def domains(self) -> list[str]:
        return domain_names(self.get_json("/rest/system/domains"))

    def cdr_legs(self, domain: str, since: datetime | None, until: datetime) -> Iterator[dict[str, Any]]:
        """Every leg record of `domain` the listing returns for the window, page by page.

        A page shorter than the page size ends the listing -- unless no full page was seen yet:
        a short first page may be the server capping the page size, so the next offset is asked
        once more, and a page shorter than that cap ends it.
        """
        path = self.cfg.cdr_path.format(domain=quote(domain, safe=""))
        params: dict[str, Any] = dict(QUERY_TYPE)
        if since is not None:
            params[QUERY_FROM] = int((since - QUERY_LOOKBACK).timestamp())
        params[QUERY_TO] = int(until.timestamp()) + 1
        offset, cap, previous_first = 0, None, None
        for _ in range(MAX_PAGES):
            page = page_records(
                self.get_json(path, {**params, QUERY_OFFSET: offset, QUERY_COUNT: self.cfg.page_size})
            )
            if page is None:
                raise self._fail(f"GET {path}: unexpected answer (expected a JSON list of CDR records)")
            if not page:
                return
            first = json.dumps(page[0], sort_keys=True, default=str)
            if first == previous_first:
                raise self._fail(f"GET {path}: the server ignores the {QUERY_OFFSET!r} paging parameter")
            previous_first = first
            yield from page
            offset += len(page)
            if len(page) >= self.cfg.page_size:
                cap = self.cfg.page_size
            elif cap is not None and len(page) < cap:
                return
            else:
                cap = len(page)
        raise self._fail(f"GET {path}: more than {MAX_PAGES} pages")


def domain_names(payload: Any) -> list[str]:
    """`["a.example"]`, `[{"name": "a.example"}, ...]` or `{"domains": [...]}` -> names."""
    if isinstance(payload, dict):
        payload = payload.get("domains", list(payload))
    names = []
    for item in payload if isinstance(payload, list) else []:
        if isinstance(item, dict):
            item = item.get("name") or item.get("domain")
        if isinstance(item, str) and item:
            names.append(item)
    return names


def page_records(payload: Any) -> list[Any] | None:
    """The records of one listing page (a list, or a list under cdrs/records/data/items); None if neither.
    A record that is not a JSON object is returned as it is: it becomes a quarantined row."""
    if isinstance(payload, dict):
        payload = next((payload[k] for k in ("cdrs", "records", "data", "items") if k in payload), None)
    if not isinstance(payload, list):
        return None
    return payload


# -- legs -> calls -----------------------------------------------------------------------


def epoch_micros(value: Any) -> int | None:
    """Microseconds since the epoch from an epoch number/string or ISO-8601; None for 0/empty/bad."""
    return read_time(value)[0]


def read_time(value: Any) -> tuple[int | None, str | None]:
    """(microseconds since the epoch, None) from an epoch number/string or ISO-8601; (None, None) for
    0 / empty / missing (never connected); (None, why) for a value that is there but is no time."""
    if value is None or value == "" or (isinstance(value, str) and not value.strip()):
        return None, None
    shown = json.dumps(value if isinstance(value, str | int | bool) else str(value), ensure_ascii=False)[:60]
    if isinstance(value, str) and not re.fullmatch(r"\s*-?\d+(\.\d*)?\s*", value):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None, f"{shown} is not a date"
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # naive ISO: read as UTC
        try:
            micros = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        except OverflowError:
            return None, f"{shown} is not a usable date"
        return (micros, None) if micros > 0 else (None, f"{shown} is before 1970")
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        return None, f"{shown} is not a date"
    try:
        seconds = Decimal(str(value).strip())
    except InvalidOperation:
        return None, f"{shown} is not a date"
    if not seconds.is_finite():
        return None, f"{shown} is not a date"
    if seconds == 0:
        return None, None
    if seconds < 0 or seconds > MAX_EPOCH:
        return None, f"{shown} is not a usable epoch (0 to {MAX_EPOCH} seconds)"
    return int((seconds * 1_000_000).to_integral_value()), None


def sip_user(value: Any) -> str | None:
    """`"Bob" <sip:+14165550100@x.com>` -> `+14165550100`; a plain number is returned stripped."""
    if value is None:
        return None
    text = str(value).strip()
    match = _SIP_USER.search(text)
    text = match.group(1) if match else text
    return text or None


def _pick_leg(legs: list[dict[str, Any]], f: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """The billing leg and the call's direction (None when a trunk leg's direction is unreadable)."""

    def rank(leg: dict[str, Any]) -> int:
        trunk = bool(str(leg.get(f["trunk"]) or "").strip())
        d = str(leg.get(f["direction"]) or "").strip().upper()[:1]
        return (0 if d == "O" else 1 if d == "I" else 2) if trunk else 3

    leg = min(legs, key=rank)
    return leg, {0: "outbound", 1: "inbound", 2: None, 3: "local"}[rank(leg)]


def _raw_json(value: Any) -> str:
    """Valid JSON for a record as it was read (a NaN or Infinity in it -- JSON allows neither -- as text)."""
    return json.dumps(_finite(value), sort_keys=True, default=str, ensure_ascii=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def calls_from_legs(legs: list[tuple[str, Any]], cfg: VodiaServer) -> tuple[pl.DataFrame, int]:
    """Canonical rows (one per call) from (domain, leg record) pairs; also the number of legs merged.
    A record that is not a JSON object is a row of its own, quarantined later as unreadable_row."""
    f = fields_for(cfg)
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    junk: dict[str, tuple[str, Any]] = {}  # cdr_key -> (domain, record): a repeat counts once
    for domain, leg in legs:
        if not isinstance(leg, dict):
            digest = hashlib.sha256(_raw_json([domain, leg]).encode()).hexdigest()[:24]
            junk[cdr_key(cfg.id, f"row-{digest}")] = (domain, leg)
            continue
        call = str(leg.get(f["primary_call_id"]) or leg.get(f["call_id"]) or "").strip()
        if not call:
            call = (
                "leg-"
                + hashlib.sha256(json.dumps(leg, sort_keys=True, default=str).encode()).hexdigest()[:24]
            )
        leg_id = str(leg.get(f["call_id"]) or json.dumps(leg, sort_keys=True, default=str))
        groups.setdefault((domain, call), {})[leg_id] = leg
    cols: dict[str, list[Any]] = {
        k: [] for k in ("cdr_key", "tenant", "extension", "direction", "src", "dst")
    }
    times: dict[str, list[int | None]] = {"start": [], "answer": [], "end": [], "billsec": []}
    sources: list[str] = []
    for (domain, call), by_id in groups.items():
        group = list(by_id.values())
        leg, direction = _pick_leg(group, f)
        remote, local = sip_user(leg.get(f["remote"])), sip_user(leg.get(f["local"]))
        frm, to = sip_user(leg.get(f["from"])), sip_user(leg.get(f["to"]))
        if direction == "inbound":
            src, dst = remote or frm, local or to
        elif direction == "local":
            src, dst = frm or local, to or remote
        else:
            src, dst = local or frm, remote or to
        extension = next(
            (
                str(x.get(f["extension"])).strip()
                for x in [leg, *group]
                if str(x.get(f["extension"]) or "").strip()
            ),
            None,
        )
        read = {k: read_time(leg.get(f[k])) for k in ("start", "connect", "end")}
        problems = [f"{TIME_LABELS[k]} {why} ({f[k]})" for k, (_, why) in read.items() if why]
        start, connect, end = (read[k][0] for k in ("start", "connect", "end"))
        if end is None:
            billsec = None
        elif connect is None:
            billsec = None if read["connect"][1] else 0  # unreadable connect: no billsec is guessed
        else:
            billsec = (end - connect) // 1_000_000  # negative when connect > end: answer_after_end
        for key, value in (
            ("cdr_key", cdr_key(cfg.id, call)),
            ("tenant", domain),
            ("extension", extension),
            ("direction", direction),
            ("src", src),
            ("dst", dst),
        ):
            cols[key].append(value)
        for key, value in (("start", start), ("answer", connect), ("end", end), ("billsec", billsec)):
            times[key].append(value)
        source: dict[str, Any] = {"domain": domain, "legs": len(group), "leg": leg}
        if problems:
            source[PROBLEM_KEY] = "; ".join(problems)
        sources.append(_raw_json(source))
    for key, (domain, record) in junk.items():
        for col, value in (("cdr_key", key), ("tenant", domain), ("extension", None), ("direction", None),
                           ("src", None), ("dst", None)):
            cols[col].append(value)
        for col in times:
            times[col].append(None)
        kind = "a list" if isinstance(record, list) else "null" if record is None else type(record).__name__
        why = f"record is not a JSON object ({kind}: {_raw_json(record)[:60]})"
        sources.append(_raw_json({"domain": domain, "record": record, PROBLEM_KEY: why}))
    utc = pl.Datetime("us", "UTC")
    frame = pl.DataFrame(
        {
            **cols,
            "start_utc": pl.Series(times["start"], dtype=pl.Int64).cast(utc),
            "answer_utc": pl.Series(times["answer"], dtype=pl.Int64).cast(utc),
            "end_utc": pl.Series(times["end"], dtype=pl.Int64).cast(utc),
            "billsec": pl.Series(times["billsec"], dtype=pl.Int64),
            "source_row": sources,
        },
        schema_overrides={k: pl.String for k in cols},
    )
    num = cfg.numbering
    frame = frame.with_columns(
        server=pl.lit(cfg.id),
        account=pl.lit(None, dtype=pl.String),
        rate_number=normalise_expr(pl.col("dst"), num.country_code, num.intl_prefix, num.trunk_prefix),
        hangup_cause=pl.lit(None, dtype=pl.String),
    )
    return conform(frame), len(legs) - frame.height


def _check_fields(records: list[dict[str, Any]], f: dict[str, str], where: str) -> None:
    """Records that carry none of the call-id or time fields mean the field names differ: say so."""
    seen = sorted({k for r in records[:50] for k in r})
    for keys in (("primary_call_id", "call_id"), ("end",)):
        if not any(f[k] in r for r in records for k in keys):
            names = " / ".join(repr(f[k]) for k in keys)
            raise SourceError(
                f"{where}: CDR records lack field {names} (got fields {seen}); set cdr_fields in the server config"
            )


# -- the connector -----------------------------------------------------------------------


class VodiaConnector:
    """Extract one Vodia server's calls that ended in [since - overlap, until)."""

    def __init__(self, server_cfg: VodiaServer, settings: Any = None) -> None:
        self.cfg = server_cfg
        self.settings = settings

    def extract(self, since: datetime | None, until: datetime, cursor: dict[str, Any] | None) -> Extracted:
        lower = None if since is None else since - timedelta(minutes=self.cfg.overlap_minutes)
        fields = fields_for(self.cfg)
        with requests.Session() as session:
            client = VodiaClient(self.cfg, session)
            client.login()
            domains = list(self.cfg.domains) or client.domains()
            legs: list[tuple[str, dict[str, Any]]] = []
            for domain in domains:
                records = list(client.cdr_legs(domain, lower, until))
                objects = [r for r in records if isinstance(r, dict)]
                if objects:
                    _check_fields(objects, fields, f"vodia {self.cfg.id}: domain {domain}")
                legs.extend((domain, r) for r in records)
        calls, merged = calls_from_legs(legs, self.cfg)
        end = pl.col("end_utc")
        window = end < until if lower is None else (end >= lower) & (end < until)
        kept = calls.filter(end.is_null() | window)
        watermark = kept.get_column("end_utc").max() if kept.height else None
        notes = [
            f"vodia {self.cfg.id}: {len(domains)} domain(s), {len(legs)} legs -> {calls.height} calls "
            f"({merged} legs merged), {kept.height} in the window; {client.logins} login(s)"
        ]
        unreadable = kept.filter(pl.col("source_row").str.contains(f'"{PROBLEM_KEY}": "')).height
        if unreadable:
            notes.append(f"vodia {self.cfg.id}: {unreadable} record(s) that could not be read "
                         "(kept for quarantine as unreadable_row)")
        return Extracted(cdrs=kept, watermark=watermark, cursor=None, notes=notes)
