"""WHMCS External API client (form POST to /includes/api.php, JSON answers).

Why the retry rules are per action (DESIGN.md invariant 1, exactly once):
WHMCS has no API that lists billable items (WHMCS/developer-docs #294), so a post whose answer
was lost cannot be checked afterwards. Read actions and naturally idempotent ones (Get*,
ModuleSuspend/Unsuspend, UpdateClientProduct) are retried on 5xx, connection errors and timeouts.
AddBillableItem, AddCredit and SendEmail are retried only when the request certainly never reached WHMCS
(connection refused, connect timeout, DNS failure, HTTP 503/429); any other failure after the
request may have been processed raises `WhmcsUncertainError`, and the caller marks the charge
`uncertain` for reconciliation instead of posting it again.

Money: amounts are `Decimal`, sent as plain decimal strings with the currency's minor-unit
places. An amount with more places is refused, not rounded: the ledger already holds the amount
rounded once by `autobill.money.round_minor`, and a second, silent rounding here would let the
ledger and the invoice disagree.

Secrets: identifier, secret and accesskey travel only in the POST body. They never appear in a
log record, an exception message or `repr(client)`; any text that could echo them is scrubbed,
and the transport's exception is not chained (only its scrubbed text is kept).

Transport: urllib3's connection pool for the one host, directly (keep-alive, no retries or
redirects of its own). Posting is bound by this client's CPU under the GIL: `requests`' session
layer added a quarter to every call's (AddBillableItem on loopback: 0.20 ms of CPU through
urllib3, 0.25 ms through requests; issue #15), and a PoolManager in front of the pool, which
parses the URL and picks the pool on every request, about a sixth (session 16: 0.53 ms against
0.44 ms a call, the credentials' encoding done once included). The failures it reported were
urllib3's, classified the same way here (`_classify`); a URL urllib3 cannot use is a transport
error (nothing sent), not an uncertain post. TLS is verified against certifi's bundle, as
requests did.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import time
from collections.abc import Iterator, Mapping
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import certifi
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    LocationValueError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
    URLSchemeUnknown,
)
from urllib3.util import parse_url

from autobill.money import minor_units

if TYPE_CHECKING:
    from autobill.config import WHMCS

log = logging.getLogger(__name__)

INVOICE_ACTIONS = ("noinvoice", "nextcron", "nextinvoice", "duedate", "recur")
# The client custom fields autosuspend reads (domain.md §3); their WHMCS ids come from config.
VOIP_CLIENT_FIELDS = ("Has VoIP Service", "Manual VoIP Suspend", "VoIP Suspended", "Low Balance Threshold")
# Messages WHMCS gives for credentials / IP allow-list / API role problems: stop early, don't retry.
_AUTH_MARKERS = ("authentication failed", "invalid ip", "invalid permissions", "invalid access key")
_BACKOFF_CAP = 30.0
_IDLE_RESET_SECONDS = 2.0


class WhmcsError(Exception):
    """Base of every WHMCS failure; `.action` names the API action."""

    def __init__(self, action: str, message: str) -> None:
        super().__init__(f"WHMCS {action}: {message}")
        self.action = action
        self.message = message


class WhmcsApiError(WhmcsError):
    """WHMCS answered `result=error`; `.message` is WHMCS's own text. Never retried."""


class WhmcsAuthError(WhmcsApiError):
    """Credentials, IP allow-list or API role refused: nothing else will work either."""


class WhmcsTransportError(WhmcsError):
    """Failed after the retries. For a non-idempotent action: certainly not processed."""


class WhmcsUncertainError(WhmcsError):
    """A non-idempotent action may or may not have been processed; reconcile, never re-post."""


class _NotProcessed(Exception):
    """The request certainly never reached WHMCS: safe to retry any action."""


class _MaybeProcessed(Exception):
    """The request may have been processed: retry only idempotent actions."""


# -- pure helpers ----------------------------------------------------------------------------


def whmcs_flag(value: Any) -> bool:
    """WHMCS booleans arrive as "on", "1", "Yes", "true", 1, True (tickbox custom fields: "on")."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "on", "yes", "y", "true")


_KEY_RE = re.compile(r"\[ref:([^\]\s]+)\]\s*$")


def charge_description(label: str, period: str | date, idempotency_key: str) -> str:
    """An invoice line that carries the billing period and the charge's idempotency key.

    The key is what an operator (or a reconciliation job reading invoices) matches against
    the ledger when a post ended `uncertain`; `parse_charge_key` reads it back.
    """
    if not idempotency_key or any(c.isspace() or c == "]" for c in idempotency_key):
        raise ValueError("idempotency key must be non-empty, without spaces or ']'")
    text = period.isoformat() if isinstance(period, date) else str(period)
    return f"{label.strip()} {text} [ref:{idempotency_key}]"


def parse_charge_key(description: str) -> str | None:
    match = _KEY_RE.search(description or "")
    return match.group(1) if match else None


def php_serialize(values: Mapping[str, Any]) -> str:
    """PHP `serialize()` of a flat array; WHMCS's SendEmail decodes base64(serialize(customvars))."""
    parts = []
    for key, value in values.items():
        parts.append(_php_scalar(str(key)))
        parts.append(_php_scalar(value))
    return f"a:{len(values)}:{{{''.join(parts)}}}"


def _php_scalar(value: Any) -> str:
    if value is None:
        return "N;"
    if isinstance(value, bool):
        return f"b:{int(value)};"
    if isinstance(value, int):
        return f"i:{value};"
    if isinstance(value, float):
        raise TypeError("refusing a binary float; pass a Decimal or a string")
    text = format(value, "f") if isinstance(value, Decimal) else str(value)
    return f's:{len(text.encode("utf-8"))}:"{text}";'


def _decimal_text(value: Decimal | int, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise TypeError(f"{what} must be a Decimal (got {type(value).__name__}); floats are refused")
    value = Decimal(value)
    if not value.is_finite():
        raise ValueError(f"{what} must be finite")
    return format(value, "f")


def format_amount(amount: Decimal | int, currency: str | None = None) -> str:
    """The amount as WHMCS gets it: exactly the currency's minor-unit places, or ValueError."""
    _decimal_text(amount, "amount")
    places = minor_units(currency) if currency else 2
    quant = Decimal(1).scaleb(-places)
    exact = Decimal(amount).quantize(quant)
    if exact != amount:
        raise ValueError(
            f"amount {amount} has more than {places} decimal places; round it once with "
            "autobill.money.round_minor before posting"
        )
    return format(exact, "f")


def _to_int(value: Any) -> int:
    return int(str(value).strip())


def _items(container: Any, key: str) -> list[dict]:
    """`{"invoices": {"invoice": [...]}}`; WHMCS gives "" or [] or {} when there is nothing."""
    if isinstance(container, dict):
        inner = container.get(key, [])
        if isinstance(inner, dict):
            return [inner]
        return list(inner or [])
    if isinstance(container, list):
        return container
    return []


# -- the client ------------------------------------------------------------------------------


class WhmcsClient:
    """One WHMCS endpoint. Not shared between threads: give each worker thread its own client."""

    def __init__(
        self,
        url: str,
        identifier: str,
        secret: str,
        accesskey: str | None = None,
        verify_tls: bool = True,
        timeout: float = 30.0,
        retries: int = 4,
        backoff: float = 0.5,
        legacy_hours: bool = False,
        page_size: int = 250,
        custom_field_ids: Mapping[str, int] | None = None,
    ) -> None:
        self.url = url
        self._identifier = identifier
        self._secret = secret
        self._accesskey = accesskey
        # The same on every call: encoded once (the body's encoding is part of every call's CPU).
        self._credentials = urlencode({"identifier": identifier, "secret": secret, "responsetype": "json",
                                       **({"accesskey": accesskey} if accesskey else {})}).encode("ascii") + b"&"
        self.verify_tls = verify_tls
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.legacy_hours = legacy_hours
        self.page_size = page_size
        self.custom_field_ids = dict(custom_field_ids or {})
        # Our own retry loop decides what may be retried: urllib3 never resends or follows a
        # redirect on its own. No proxy or .netrc from the environment: credentials go only here.
        # One connection pool for the one host, used directly (module doc: a PoolManager in front
        # of it cost about a sixth of every call's CPU). Made at the first call.
        self._pool: urllib3.HTTPConnectionPool | None = None
        self._path = "/"
        self._headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "autobill-whmcs"}
        self._last_answer = 0.0

    @classmethod
    def from_settings(cls, whmcs: WHMCS) -> WhmcsClient:
        """Build from config, resolving the secret references only now."""
        return cls(
            url=whmcs.url,
            identifier=whmcs.identifier.get(),
            secret=whmcs.secret.get(),
            accesskey=whmcs.accesskey.get() if whmcs.accesskey is not None else None,
            verify_tls=whmcs.verify_tls,
            timeout=whmcs.timeout_seconds,
            retries=whmcs.retries,
            legacy_hours=whmcs.legacy_hours,
            page_size=whmcs.page_size,
            custom_field_ids=getattr(whmcs, "custom_field_ids", None),
        )

    def __repr__(self) -> str:
        return f"WhmcsClient(url={self.url!r}, credentials=***)"

    def close(self) -> None:
        """Close the pooled connections (the next call opens a new one)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _connection_pool(self) -> urllib3.HTTPConnectionPool:
        """The pool for `url`'s host; a URL urllib3 cannot use raises its error (an HTTPError)."""
        if self._pool is None:
            target = parse_url(self.url)
            scheme = (target.scheme or "").lower()
            if scheme not in ("http", "https"):
                raise URLSchemeUnknown(scheme)  # what a PoolManager raised for it
            options: dict[str, Any] = {"maxsize": 4, "retries": False,
                                       "timeout": urllib3.Timeout(connect=self.timeout, read=self.timeout)}
            if scheme == "https":
                options.update(cert_reqs="CERT_REQUIRED" if self.verify_tls else "CERT_NONE",
                               ca_certs=certifi.where() if self.verify_tls else None)
            self._pool, self._path = urllib3.connection_from_url(self.url, **options), target.request_uri
        return self._pool

    def __enter__(self) -> WhmcsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for value in (self._secret, self._identifier, self._accesskey):
            if value:
                text = text.replace(value, "***")
        return text

    def _form(self, action: str, params: Mapping[str, Any]) -> bytes:
        """The urlencoded POST body (credentials included; it is never logged)."""
        form = {"action": action}
        for key, value in params.items():
            if value is None:
                continue
            if isinstance(value, bool):
                form[key] = "true" if value else "false"
            elif isinstance(value, float):
                raise TypeError(f"parameter {key}: binary floats are refused; pass a Decimal or a string")
            elif isinstance(value, Decimal):
                form[key] = _decimal_text(value, key)
            elif isinstance(value, date):
                form[key] = value.isoformat()
            else:
                form[key] = str(value)
        return self._credentials + urlencode(form).encode("ascii")

    def call(self, action: str, *, idempotent: bool = True, **params: Any) -> dict:
        """Run one API action and return WHMCS's JSON answer (`result=success`).

        `idempotent=False` turns off every retry that could run the action twice (module doc).
        """
        body = self._form(action, params)
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(action, body, idempotent)
            except _NotProcessed as exc:
                reason, maybe = str(exc), False
            except _MaybeProcessed as exc:
                reason, maybe = str(exc), True
            # Raised outside the except blocks on purpose: no exception context is kept.
            if maybe and not idempotent:
                log.warning("WHMCS %s may or may not have been processed: %s", action, reason)
                raise WhmcsUncertainError(action, f"may or may not have been processed: {reason}")
            if attempt == attempts:
                log.warning("WHMCS %s failed after %d attempt(s): %s", action, attempts, reason)
                raise WhmcsTransportError(action, f"failed after {attempts} attempt(s): {reason}")
            delay = min(_BACKOFF_CAP, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            log.warning("WHMCS %s: %s; retry %d/%d in %.2fs", action, reason, attempt, self.retries, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _attempt(self, action: str, body: bytes, idempotent: bool) -> dict:
        if not idempotent and time.monotonic() - self._last_answer > _IDLE_RESET_SECONDS:
            # A pooled keep-alive connection the server is closing right now would fail the post
            # with "connection dropped" and make it uncertain for nothing: post on a fresh one.
            self.close()
        failure: Exception | None = None
        try:
            resp = self._connection_pool().urlopen("POST", self._path, body=body, headers=self._headers,
                                                   redirect=False, retries=False)
        except HTTPError as exc:
            # Keep only the exception's (scrubbed) text, never the exception itself.
            failure = self._classify(action, exc)
        if failure is not None:
            raise failure
        self._last_answer = time.monotonic()
        return self._answer(action, resp)

    def _classify(self, action: str, exc: HTTPError) -> Exception:
        """Whether the request may have reached WHMCS: only a connection never made is safe to resend."""
        text = self._describe(exc)
        if isinstance(exc, LocationValueError):  # no http(s) URL urllib3 can use: nothing was sent
            return WhmcsTransportError(action, f"unusable URL (whmcs.url): {text}")
        if _never_connected(exc):  # refused, DNS, unreachable (a NewConnectionError)
            return _NotProcessed(f"cannot connect ({text})")
        if isinstance(exc, ConnectTimeoutError):
            return _NotProcessed(f"connect timeout ({text})")
        if isinstance(exc, SSLError):
            return WhmcsTransportError(action, f"TLS failure: {text}")
        if isinstance(exc, ReadTimeoutError):
            return _MaybeProcessed(f"read timeout ({text})")
        if isinstance(exc, ProtocolError):  # reset, closed or cut off after the request went out
            return _MaybeProcessed(f"connection lost ({text})")
        return _MaybeProcessed(text)

    def _answer(self, action: str, resp: urllib3.BaseHTTPResponse) -> dict:
        status = resp.status
        if status in (503, 429):
            raise _NotProcessed(f"HTTP {status}")
        try:
            body = json.loads(resp.data)
        except ValueError:
            body = None
        if status >= 500:
            raise _MaybeProcessed(f"HTTP {status}")
        if isinstance(body, dict):
            result = str(body.get("result", body.get("status", ""))).lower()
            if result == "error":
                message = self._scrub(str(body.get("message", "unknown error")))
                log.info("WHMCS %s answered an error: %s", action, message)
                kind = WhmcsAuthError if message.lower().startswith(_AUTH_MARKERS) else WhmcsApiError
                raise kind(action, message)
            if result == "success" and status < 300:
                return body
        if status >= 400 or 300 <= status < 400:
            # A proxy/WAF refusal or a redirect (http -> https, moved install): never reached the API.
            raise WhmcsTransportError(action, f"HTTP {status} without a WHMCS answer (wrong URL or blocked?)")
        raise _MaybeProcessed(f"HTTP {status} with an unparsable or unexpected body")

    def _describe(self, exc: BaseException) -> str:
        return self._scrub(f"{type(exc).__name__}: {exc}")[:300]

    def _pages(self, action: str, list_key: str, item_key: str, **params: Any) -> Iterator[dict]:
        start = 0
        while True:
            resp = self.call(action, limitstart=start, limitnum=self.page_size, **params)
            items = _items(resp.get(list_key), item_key)
            yield from items
            start += len(items)
            if not items or start >= _to_int(resp.get("totalresults", 0)):
                return

    # -- billing -----------------------------------------------------------------------------

    def add_billable_item(
        self,
        client_id: int,
        description: str,
        amount: Decimal,
        quantity: Decimal,
        invoice_action: str = "nextcron",
        due_date: date | None = None,
        *,
        currency: str | None = None,
    ) -> int:
        """Post one charge line; returns WHMCS's billable item id.

        `amount` is the line's total, already rounded to `currency`'s minor unit (2 places when
        no currency is given); more places raise ValueError before anything is sent.
        Raises WhmcsUncertainError when the item may exist in WHMCS without us knowing its id.
        """
        if invoice_action not in INVOICE_ACTIONS:
            raise ValueError(f"invoice_action must be one of {INVOICE_ACTIONS}")
        if invoice_action in ("duedate", "recur") and due_date is None:
            raise ValueError(f"invoice_action {invoice_action!r} needs a due_date")
        if not description.strip():
            raise ValueError("description must not be empty")
        params: dict[str, Any] = {
            "clientid": int(client_id),
            "description": description,
            "amount": format_amount(amount, currency),
            "invoiceaction": invoice_action,
            "duedate": due_date,
        }
        qty = _decimal_text(quantity, "quantity")
        if self.legacy_hours:
            params["hours"] = qty
        else:
            params["unit"] = "quantity"
            params["quantity"] = qty
        resp = self.call("AddBillableItem", idempotent=False, **params)
        try:
            return _to_int(resp["billableid"])
        except (KeyError, ValueError, TypeError):
            raise WhmcsUncertainError("AddBillableItem", "answered success without a billable item id") from None

    def add_credit(self, client_id: int, description: str, amount: Decimal, *, currency: str | None = None,
                   on: date | None = None) -> Decimal:
        """Add `amount` (> 0, in the client's currency's minor unit) to the client's credit balance;
        returns the new balance. Not idempotent: an unsure call raises WhmcsUncertainError (the
        description, which carries the correction's key, is in the client's credit log: GetCredits)."""
        if amount <= 0:
            raise ValueError("a credit amount must be positive")
        if not description.strip():
            raise ValueError("description must not be empty")
        resp = self.call("AddCredit", idempotent=False, clientid=int(client_id), description=description,
                         amount=format_amount(amount, currency), date=on, type="add")
        try:
            return Decimal(str(resp["newbalance"]))
        except (KeyError, ArithmeticError):
            return Decimal(0)  # processed (result=success); the balance is only informative

    def get_credits(self, client_id: int) -> list[dict]:
        """The client's credit log: `id`, `date`, `description`, `amount` (strings, as WHMCS sends them)."""
        return _items(self.call("GetCredits", clientid=int(client_id)).get("credits"), "credit")

    # -- clients -----------------------------------------------------------------------------

    def get_clients_details(self, client_id: int, stats: bool = False) -> dict:
        """`{"client": {...}, "stats": {...}}` as WHMCS sends them (strings; coerce yourself)."""
        resp = self.call("GetClientsDetails", clientid=int(client_id), stats=stats or None)
        return {"client": resp.get("client") or {}, "stats": resp.get("stats") or {}}

    def get_client_credit(self, client_id: int) -> Decimal:
        return Decimal(str(self.get_clients_details(client_id)["client"]["credit"]))

    def named_custom_fields(self, client: Mapping[str, Any]) -> dict[str, str | None]:
        """Custom field values by name, from a `client` object already fetched.

        Real WHMCS returns `customfields` as `[{id, value}]` without names, so the names come
        from config (`whmcs.custom_field_ids`: name -> field id, read from the WHMCS admin area,
        Setup > Custom Client Fields). A configured field the client has no value for is None.
        """
        if not self.custom_field_ids:
            raise WhmcsError("GetClientsDetails", "no client custom field ids configured (whmcs.custom_field_ids)")
        by_id: dict[int, str] = {}
        for item in _items(client.get("customfields"), "customfield"):
            try:
                by_id[_to_int(item["id"])] = "" if item.get("value") is None else str(item["value"])
            except (KeyError, ValueError, TypeError):
                continue
        return {name: by_id.get(int(fid)) for name, fid in self.custom_field_ids.items()}

    def client_custom_fields(self, client_id: int) -> dict[str, str | None]:
        return self.named_custom_fields(self.get_clients_details(client_id)["client"])

    def iter_clients(self, status: str | None = None) -> Iterator[dict]:
        """Every client (GetClients, page by page, oldest id first)."""
        yield from self._pages("GetClients", "clients", "client", status=status, orderby="id", sorting="ASC")

    def get_clients_products(self, client_id: int | None = None, service_id: int | None = None) -> list[dict]:
        return list(self._pages("GetClientsProducts", "products", "product", clientid=client_id, serviceid=service_id))

    def iter_clients_products(self, pid: int | None = None) -> Iterator[dict]:
        """Every service (of product `pid`), page by page: the services sync reads thousands."""
        yield from self._pages("GetClientsProducts", "products", "product", pid=pid)

    def get_invoices(self, user_id: int | None = None, status: str | None = None) -> list[dict]:
        return list(
            self._pages("GetInvoices", "invoices", "invoice", userid=user_id, status=status, orderby="id", order="asc")
        )

    def get_invoice(self, invoice_id: int) -> dict:
        """One invoice with its lines: `items` is a list of {id, type, relid, description, amount, …}
        (for a line made from a billable item, type "Item" and relid = the billable item id)."""
        resp = self.call("GetInvoice", invoiceid=int(invoice_id))
        return {**resp, "items": _items(resp.get("items"), "item")}

    def invoices_since(self, client_id: int, since: date, lookback_days: int = 31) -> list[dict]:
        """The client's invoices dated `since` or later (WHMCS-local dates), newest first.

        GetInvoices has no date filter: pages are read newest id first and filtered here. Paging
        stops at an invoice dated more than `lookback_days` before `since`, so an invoice an admin
        backdated a little after `since` does not end the scan early."""
        out: list[dict] = []
        stop = since.toordinal() - lookback_days
        for inv in self._pages("GetInvoices", "invoices", "invoice", userid=int(client_id), orderby="id", order="desc"):
            try:
                day = date.fromisoformat(str(inv.get("date", ""))[:10])
            except ValueError:
                out.append(inv)  # no readable date: keep it rather than miss it
                continue
            if day >= since:
                out.append(inv)
            elif day.toordinal() < stop:
                break
        return out

    def get_automation_log(self, start: date | None = None, end: date | None = None) -> dict:
        """GetAutomationLog: `lastDailyCronInvocationTime` and `currentDatetime` are the WHMCS
        server's local times without an offset (read them with autobill.reconcile.whmcs_time)."""
        return self.call("GetAutomationLog", startdate=start, enddate=end)

    def unpaid_balance(self, client_id: int) -> Decimal:
        """What the client still owes on Unpaid invoices.

        GetInvoices has no per-invoice balance in real WHMCS (GetInvoice does); `balance` is used
        when present (the sandbox sends it), else `total` (which already has applied credit taken off).
        """
        return sum((_invoice_due(inv) for inv in self.get_invoices(user_id=client_id, status="Unpaid")), Decimal(0))

    def unpaid_balances(self) -> dict[int, Decimal]:
        """Unpaid balance per client id, in one paginated sweep (for a whole autosuspend cycle)."""
        out: dict[int, Decimal] = {}
        for inv in self.get_invoices(status="Unpaid"):
            uid = _to_int(inv["userid"])
            out[uid] = out.get(uid, Decimal(0)) + _invoice_due(inv)
        return out

    # -- services ----------------------------------------------------------------------------

    def module_suspend(self, service_id: int, reason: str) -> None:
        self.call("ModuleSuspend", serviceid=int(service_id), suspendreason=reason)

    def module_unsuspend(self, service_id: int) -> None:
        self.call("ModuleUnsuspend", serviceid=int(service_id))

    def update_client_product(self, service_id: int, **fields: Any) -> None:
        """E.g. `status="Suspended"`, `overideautosuspend=True` (sent as on/off). No module is run."""
        for key, value in list(fields.items()):
            if key == "overideautosuspend" and isinstance(value, bool):
                fields[key] = "on" if value else "off"
        self.call("UpdateClientProduct", serviceid=int(service_id), **fields)

    def send_email(self, message_name: str, related_id: int, custom_vars: dict | None = None) -> None:
        """Send a WHMCS template. Not idempotent: an unsure send raises WhmcsUncertainError."""
        params: dict[str, Any] = {"messagename": message_name, "id": int(related_id)}
        if custom_vars:
            params["customvars"] = base64.b64encode(php_serialize(custom_vars).encode("utf-8")).decode("ascii")
        self.call("SendEmail", idempotent=False, **params)

    def send_admin_email(self, subject: str, message: str) -> None:
        """SendAdminEmail with a custom subject and message (type system): an operator's alert."""
        self.call("SendAdminEmail", idempotent=False, customsubject=subject, custommessage=message, type="system")

    def unpaid_invoices(self) -> dict[int, list[tuple[Decimal, str]]]:
        """(balance, duedate text as WHMCS gives it, WHMCS local) of every Unpaid invoice per client,
        in one paginated sweep (for the overdue-with-grace rule)."""
        out: dict[int, list[tuple[Decimal, str]]] = {}
        for inv in self.get_invoices(status="Unpaid"):
            out.setdefault(_to_int(inv["userid"]), []).append((_invoice_due(inv), str(inv.get("duedate") or "")))
        return out


def _invoice_due(inv: Mapping[str, Any]) -> Decimal:
    return Decimal(str(inv["balance"] if "balance" in inv else inv["total"]))


def _never_connected(exc: BaseException) -> bool:
    """True when the chain shows the TCP connection was never made (refused, DNS, unreachable)."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, NewConnectionError):
            return True
        if isinstance(cur, BaseException):
            todo.extend([getattr(cur, "reason", None), cur.__cause__, cur.__context__, *cur.args[:1]])
    return False
