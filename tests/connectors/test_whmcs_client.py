"""WhmcsClient against the sandbox over real loopback HTTP: actions, errors, pagination, money, secrets."""

from __future__ import annotations

import base64
import contextlib
import logging
from datetime import date
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobill.config import settings_from_dict
from connectors.whmcs import (
    WhmcsApiError,
    WhmcsAuthError,
    WhmcsClient,
    WhmcsError,
    WhmcsTransportError,
    charge_description,
    format_amount,
    parse_charge_key,
    php_serialize,
    whmcs_flag,
)
from sandboxes.loopback import Served
from sandboxes.whmcs import WhmcsSandbox
from sandboxes.whmcs.phpser import php_unserialize
from tests.support.whmcs import IDENT, SECRET, make_client, new_sandbox


@pytest.fixture
def sandbox():
    with new_sandbox() as sb:
        yield sb


@pytest.fixture
def client(sandbox):
    with make_client(sandbox) as c:
        yield c


# -- AddBillableItem -------------------------------------------------------------------------


def test_add_billable_item_stores_exact_amount_unit_and_nextcron(sandbox, client):
    cid = sandbox.add_client()
    desc = charge_description("Outbound calls", date(2025, 6, 1), "svc7-2025-06-01-outbound")
    bid = client.add_billable_item(cid, desc, Decimal("1234.56"), Decimal("812.5"))
    [item] = sandbox.billable_items(cid)
    assert item["id"] == bid and isinstance(bid, int)
    assert item["amount_text"] == "1234.56" and item["amount"] == Decimal("1234.56")
    assert item["unit"] == "quantity" and item["quantity"] == Decimal("812.5")
    assert item["invoiceaction"] == "nextcron"
    assert item["duedate"] == date.today().isoformat()  # WHMCS defaults nextcron's due date to today
    assert parse_charge_key(item["description"]) == "svc7-2025-06-01-outbound"
    assert "2025-06-01" in item["description"]


def test_amount_with_trailing_zero_places_is_sent_with_minor_unit_places(sandbox, client):
    cid = sandbox.add_client()
    client.add_billable_item(cid, "x", Decimal("7.1"), Decimal("1"))
    client.add_billable_item(cid, "y", Decimal("3.5000"), Decimal("1"))
    client.add_billable_item(cid, "z", 12, Decimal("0"))
    assert [i["amount_text"] for i in sandbox.billable_items(cid)] == ["7.10", "3.50", "12.00"]


@pytest.mark.parametrize("amount", [Decimal("1.005"), Decimal("0.001"), Decimal("10.123456")])
def test_amount_with_more_places_than_the_currency_is_refused_before_sending(sandbox, client, amount):
    cid = sandbox.add_client()
    with pytest.raises(ValueError, match="decimal places"):
        client.add_billable_item(cid, "x", amount, Decimal("1"))
    assert sandbox.request_count() == 0 and sandbox.billable_items() == []


def test_currency_minor_unit_decides_the_places(sandbox, client):
    cid = sandbox.add_client(currency="JPY")
    client.add_billable_item(cid, "x", Decimal("1234"), Decimal("3"), currency="JPY")
    with pytest.raises(ValueError):
        client.add_billable_item(cid, "y", Decimal("12.50"), Decimal("3"), currency="JPY")
    assert [i["amount_text"] for i in sandbox.billable_items(cid)] == ["1234"]
    # The sandbox's own tripwire refuses what the currency cannot hold, even from a raw call.
    with pytest.raises(WhmcsApiError, match="decimal places"):
        client.call("AddBillableItem", idempotent=False, clientid=cid, description="z", amount="1.50",
                    unit="quantity", quantity="1")


def test_floats_are_refused_for_amount_and_quantity(sandbox, client):
    cid = sandbox.add_client()
    with pytest.raises(TypeError):
        client.add_billable_item(cid, "x", 1.5, Decimal("1"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.add_billable_item(cid, "x", Decimal("1.50"), 2.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.call("GetClients", limitnum=2.5)
    assert sandbox.request_count() == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cents=st.integers(min_value=-(10**12), max_value=10**14),
    qty=st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False, allow_infinity=False),
)
def test_property_amounts_and_quantities_round_trip_exactly(sandbox, client, cents, qty):
    amount = Decimal(cents).scaleb(-2)
    cid = sandbox.client(1)["id"] if sandbox.client(1) else sandbox.add_client()
    bid = client.add_billable_item(cid, "prop", amount, qty)
    [item] = [i for i in sandbox.billable_items(cid) if i["id"] == bid]
    assert item["amount"] == amount and item["amount_text"] == format_amount(amount)
    assert len(item["amount_text"].split(".")[1]) == 2
    assert item["quantity"] == qty


def test_legacy_hours_for_whmcs_before_8_2():
    with WhmcsSandbox(identifier=IDENT, secret=SECRET, legacy_hours=True) as old:
        cid = old.add_client()
        with make_client(old, legacy_hours=True) as c:
            c.add_billable_item(cid, "x", Decimal("2.00"), Decimal("42"))
        [item] = old.billable_items()
        assert item["unit"] == "hours" and item["quantity"] == Decimal("42")


def test_legacy_client_against_modern_whmcs_gets_the_unit_error(sandbox):
    cid = sandbox.add_client()
    with make_client(sandbox, legacy_hours=True) as c, pytest.raises(WhmcsApiError) as err:
        c.add_billable_item(cid, "x", Decimal("2.00"), Decimal("42"))
    assert err.value.message == "Invalid Unit, please specify either 'hours' or 'quantity'"
    assert err.value.action == "AddBillableItem"
    assert sandbox.billable_items() == [] and sandbox.request_count("AddBillableItem") == 1  # not retried


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"clientid": 999}, "Client ID not Found"),
        ({"description": ""}, "You must provide a description"),
        ({"invoiceaction": "tomorrow"}, "Invalid Invoice Action"),
        ({"unit": "minutes"}, "Invalid Unit, please specify either 'hours' or 'quantity'"),
        ({"invoiceaction": "duedate"}, "Due date is required"),
        ({"invoiceaction": "recur", "duedate": "2025-07-01"}, "Recurring must have a unit, cycle and limit"),
        ({"duedate": "01/07/2025"}, "Invalid Date Format - Expected: 'YYYY-mm-dd'"),
        ({"duedate": "2025-02-30"}, "Invalid Date Format - Expected: 'YYYY-mm-dd'"),
        ({"amount": "1,50"}, "Amount must be in decimal format: ### or ###.##"),
        ({"amount": "1e3"}, "Amount must be in decimal format: ### or ###.##"),
    ],
)
def test_add_billable_item_error_messages(sandbox, client, params, message):
    cid = sandbox.add_client()
    base = {"clientid": cid, "description": "calls", "amount": "1.00", "unit": "quantity", "quantity": "1",
            "invoiceaction": "nextcron"}
    with pytest.raises(WhmcsApiError) as err:
        client.call("AddBillableItem", idempotent=False, **{**base, **params})
    assert err.value.message == message
    assert sandbox.billable_items() == []


def test_client_side_validation_of_invoice_action_and_due_date(sandbox, client):
    cid = sandbox.add_client()
    with pytest.raises(ValueError):
        client.add_billable_item(cid, "x", Decimal("1.00"), Decimal("1"), invoice_action="later")
    with pytest.raises(ValueError):
        client.add_billable_item(cid, "x", Decimal("1.00"), Decimal("1"), invoice_action="duedate")
    bid = client.add_billable_item(cid, "x", Decimal("1.00"), Decimal("1"), invoice_action="duedate",
                                   due_date=date(2030, 1, 31))
    assert sandbox.billable_items()[0]["duedate"] == "2030-01-31" and bid == sandbox.billable_items()[0]["id"]


def test_unknown_action_is_a_whmcs_error(client):
    with pytest.raises(WhmcsApiError) as err:
        client.call("GetToDoList")
    assert err.value.message == "Command Not Found"


# -- auth --------------------------------------------------------------------------------------


def test_wrong_secret_raises_auth_error_without_retry(sandbox):
    with WhmcsClient(sandbox.url, IDENT, "wrong-secret", retries=3, backoff=0.001) as c:
        with pytest.raises(WhmcsAuthError) as err:
            c.get_clients_details(1)
    assert err.value.message == "Authentication Failed"
    assert isinstance(err.value, WhmcsApiError)
    assert sandbox.request_count() == 1


def test_accesskey_is_required_when_configured():
    with WhmcsSandbox(identifier=IDENT, secret=SECRET, accesskey="ak-123") as sb:
        cid = sb.add_client()
        with make_client(sb) as c, pytest.raises(WhmcsAuthError, match="Invalid IP"):
            c.get_client_credit(cid)
        with make_client(sb, accesskey="ak-123") as c:
            assert c.get_client_credit(cid) == Decimal("0.00")


def test_secrets_never_in_logs_exceptions_or_repr(sandbox, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, urllib3 included
    secret, ident, key = "TOPSECRET-771", "IDENT-5513", "ACCESS-9022"
    seen: list[str] = []
    with WhmcsClient(sandbox.url, ident, secret, accesskey=key, retries=2, backoff=0.001, timeout=0.4) as c:
        seen.append(repr(c))
        for fault, call in (
            (None, lambda: c.get_clients_details(1)),  # auth failure (the sandbox has other credentials)
            ("drop_after_store", lambda: c.add_billable_item(1, "x", Decimal("1.00"), Decimal("1"))),  # uncertain
            ("503", lambda: c.get_clients_details(1)),  # 503 x3 -> transport error
            ("timeout", lambda: c.send_email("Low Balance Alert", 1)),  # read timeout -> uncertain
        ):
            if fault:
                sandbox.fail_next(3, fault, delay=0.8)
            with pytest.raises(WhmcsError) as err:
                call()
            seen += [str(err.value), repr(err.value), err.value.message]
            assert err.value.__cause__ is None and err.value.__context__ is None
            sandbox.clear_faults()
    with WhmcsClient(f"http://127.0.0.1:1/{secret}", ident, secret, retries=0) as c:  # refused; secret in URL
        with pytest.raises(WhmcsError) as err:
            c.get_clients_details(1)
        seen += [str(err.value), repr(err.value)]
    seen += [r.getMessage() for r in caplog.records]
    assert any("503" in s for s in seen) and any("Authentication Failed" in s for s in seen)
    for text in seen:
        assert secret not in text and ident not in text and key not in text, text


# -- clients -----------------------------------------------------------------------------------


def test_get_clients_details_credit_custom_fields_and_stats(sandbox, client):
    cid = sandbox.add_client(firstname="Ada", credit=Decimal("12.30"),
                             custom_fields={"Has VoIP Service": "on", "Low Balance Threshold": "7.50"})
    sandbox.add_invoice(cid, Decimal("20.00"))
    sandbox.add_invoice(cid, Decimal("5.25"), balance=Decimal("2.25"))
    sandbox.add_invoice(cid, Decimal("99.00"), status="Paid")
    details = client.get_clients_details(cid, stats=True)
    assert details["client"]["firstname"] == "Ada" and details["client"]["credit"] == "12.30"
    assert details["stats"]["numunpaidinvoices"] == "2"
    assert details["stats"]["unpaidinvoicesamount"] == "$22.25 USD"
    assert details["stats"]["creditbalance"] == "$12.30 USD"
    assert client.get_client_credit(cid) == Decimal("12.30")
    assert client.get_clients_details(cid)["stats"] == {}  # stats only on request
    fields = client.client_custom_fields(cid)
    assert fields == {"Has VoIP Service": "on", "Manual VoIP Suspend": "", "VoIP Suspended": "",
                      "Low Balance Threshold": "7.50"}
    assert [f["id"] for f in details["client"]["customfields"]] == [1, 2, 3, 4]


def test_custom_fields_need_a_configured_map(sandbox):
    cid = sandbox.add_client()
    with make_client(sandbox, custom_field_ids={}) as c, pytest.raises(WhmcsError, match="custom_field_ids"):
        c.client_custom_fields(cid)
    with make_client(sandbox, custom_field_ids={"Has VoIP Service": 1, "Not In WHMCS": 40}) as c:
        assert c.client_custom_fields(cid) == {"Has VoIP Service": "", "Not In WHMCS": None}


@pytest.mark.parametrize(("params", "message"), [({}, "Either clientid Or email Is Required"),
                                                 ({"clientid": 4242}, "Client Not Found")])
def test_get_clients_details_errors(client, params, message):
    with pytest.raises(WhmcsApiError) as err:
        client.call("GetClientsDetails", **params)
    assert err.value.message == message


def test_iter_clients_paginates_and_filters(sandbox):
    ids = [sandbox.add_client(status="Inactive" if i % 4 == 0 else "Active") for i in range(60)]
    with make_client(sandbox, page_size=25) as c:
        everyone = list(c.iter_clients())
        assert [int(x["id"]) for x in everyone] == ids
        assert sandbox.request_count("GetClients") == 3
        active = list(c.iter_clients(status="Active"))
    assert len(active) == 45 and all(x["status"] == "Active" for x in active)


# -- invoices ----------------------------------------------------------------------------------


def test_get_invoices_paginates_60_invoices_in_pages_of_25(sandbox):
    a, b = sandbox.add_client(), sandbox.add_client()
    expected = [sandbox.add_invoice(a if i % 2 else b, Decimal(i).scaleb(-2) + 1) for i in range(60)]
    with make_client(sandbox, page_size=25) as c:
        invoices = c.get_invoices()
        assert [int(i["id"]) for i in invoices] == expected
        assert sandbox.request_count("GetInvoices") == 3
        assert len(c.get_invoices(user_id=a)) == 30
        assert c.get_invoices(user_id=a + b + 100) == []


def test_unpaid_balance_uses_balance_and_ignores_paid_and_cancelled(sandbox, client):
    cid, other = sandbox.add_client(), sandbox.add_client()
    sandbox.add_invoice(cid, Decimal("10.10"))
    sandbox.add_invoice(cid, Decimal("5.00"), balance=Decimal("1.01"))
    sandbox.add_invoice(cid, Decimal("7.00"), status="Paid")
    sandbox.add_invoice(cid, Decimal("8.00"), status="Cancelled")
    sandbox.add_invoice(other, Decimal("3.33"))
    assert client.unpaid_balance(cid) == Decimal("11.11")
    assert client.unpaid_balances() == {cid: Decimal("11.11"), other: Decimal("3.33")}
    assert client.unpaid_balance(sandbox.add_client()) == Decimal(0)


# -- services ----------------------------------------------------------------------------------


def test_products_module_suspend_unsuspend_and_update(sandbox, client):
    cid = sandbox.add_client()
    sid = sandbox.add_product(cid, domain="t1.example.test")
    manual = sandbox.add_product(cid, module=None)
    products = client.get_clients_products(client_id=cid)
    assert [int(p["id"]) for p in products] == [sid, manual]
    assert products[0]["status"] == "Active" and products[0]["overideautosuspend"] == "0"
    client.module_suspend(sid, "VoIP credit exhausted")
    assert sandbox.product(sid)["status"] == "Suspended"
    [svc] = client.get_clients_products(service_id=sid)
    assert svc["status"] == "Suspended" and svc["suspensionreason"] == "VoIP credit exhausted"
    client.module_suspend(sid, "again")  # idempotent: suspending a suspended service is fine
    client.module_unsuspend(sid)
    assert sandbox.product(sid)["status"] == "Active"
    assert [(m["action"], m["serviceid"]) for m in sandbox.module_calls()] == [
        ("ModuleSuspend", sid), ("ModuleSuspend", sid), ("ModuleUnsuspend", sid)]
    with pytest.raises(WhmcsApiError, match="Service not assigned to a module"):
        client.module_suspend(manual, "x")
    client.update_client_product(manual, status="Suspended", overideautosuspend=True)
    [svc] = client.get_clients_products(service_id=manual)
    assert svc["status"] == "Suspended" and whmcs_flag(svc["overideautosuspend"])
    assert len(sandbox.module_calls()) == 3  # UpdateClientProduct runs no module


@pytest.mark.parametrize(("action", "params", "message"), [
    ("ModuleSuspend", {}, "Service ID is required"),
    ("ModuleSuspend", {"serviceid": 77}, "Service ID not found"),
    ("ModuleUnsuspend", {"serviceid": 77}, "Service ID not found"),
    ("UpdateClientProduct", {"serviceid": 77}, "Service ID Not Found"),
])
def test_service_errors(client, action, params, message):
    with pytest.raises(WhmcsApiError) as err:
        client.call(action, **params)
    assert err.value.message == message


def test_get_clients_products_paginates(sandbox):
    cid = sandbox.add_client()
    sids = [sandbox.add_product(cid) for _ in range(30)]
    with make_client(sandbox, page_size=7) as c:
        assert [int(p["id"]) for p in c.get_clients_products()] == sids
    assert sandbox.request_count("GetClientsProducts") == 5


# -- SendEmail ---------------------------------------------------------------------------------


def test_send_email_with_custom_vars(sandbox, client):
    cid = sandbox.add_client()
    client.send_email("VoIP Zero Balance", cid, {"client_credit": Decimal("0.00"), "note": "café ✓", "n": 3})
    [mail] = sandbox.emails()
    assert mail["messagename"] == "VoIP Zero Balance" and mail["relid"] == cid
    assert mail["customvars"] == {"client_credit": "0.00", "note": "café ✓", "n": 3}


@pytest.mark.parametrize(("params", "message"), [
    ({"messagename": "No Such Template", "id": 1}, "Email Template not found"),
    ({"messagename": "Low Balance Alert"}, "A related ID is required"),
    ({"messagename": "Low Balance Alert", "id": 999}, "Sending Failed. Please see documentation."),
    ({"messagename": "Low Balance Alert", "id": 1, "customvars": "!!notbase64"},
     "Sending Failed. Please see documentation."),
])
def test_send_email_errors(sandbox, client, params, message):
    sandbox.add_client()
    with pytest.raises(WhmcsApiError) as err:
        client.call("SendEmail", idempotent=False, **params)
    assert err.value.message == message and sandbox.emails() == []


# -- config and pure helpers -------------------------------------------------------------------


def test_from_settings_resolves_secret_refs(sandbox, monkeypatch):
    monkeypatch.setenv("T_WHMCS_ID", IDENT)
    monkeypatch.setenv("T_WHMCS_SECRET", SECRET)
    cfg = settings_from_dict({"whmcs": {
        "url": sandbox.url, "identifier": {"env": "T_WHMCS_ID"}, "secret": {"env": "T_WHMCS_SECRET"},
        "retries": 1, "page_size": 10, "timeout_seconds": 3, "custom_field_ids": {"Has VoIP Service": 1},
    }})
    cid = sandbox.add_client(custom_fields={1: "on"})
    with WhmcsClient.from_settings(cfg.whmcs) as c:
        assert (c.retries, c.page_size, c.timeout) == (1, 10, 3.0)
        assert c.client_custom_fields(cid) == {"Has VoIP Service": "on"}
        assert SECRET not in repr(c)


def test_non_json_answer_on_a_wrong_path_is_a_transport_error(sandbox):
    with WhmcsClient(sandbox.base_url + "/wrong.php", IDENT, SECRET, retries=2, backoff=0.001) as c:
        with pytest.raises(WhmcsError, match="HTTP 404"):
            c.get_clients_details(1)
        assert sandbox.request_count() == 0


@given(st.text(min_size=1, max_size=40), st.dates(), st.from_regex(r"[A-Za-z0-9:_.-]{1,80}", fullmatch=True))
def test_property_charge_description_keeps_its_key(label, period, key):
    if not label.strip():
        return
    text = charge_description(label, period, key)
    assert parse_charge_key(text) == key and period.isoformat() in text


@given(st.dictionaries(st.text(max_size=20), st.one_of(st.text(max_size=30), st.integers(), st.booleans(),
                                                        st.none()), max_size=8))
def test_property_php_serialize_round_trips(values):
    assert php_unserialize(php_serialize(values)) == values
    encoded = base64.b64encode(php_serialize(values).encode()).decode()
    assert php_unserialize(base64.b64decode(encoded).decode()) == values


def test_php_serialize_matches_php_bytes_for_multibyte_text():
    assert php_serialize({"a": "é", "b": 2, "c": Decimal("1.50")}) == 'a:3:{s:1:"a";s:2:"é";s:1:"b";i:2;s:1:"c";s:4:"1.50";}'


@pytest.mark.parametrize(("value", "expected"), [("on", True), ("1", True), ("Yes", True), (True, True), (1, True),
                                                 ("", False), ("0", False), ("off", False), (None, False)])
def test_whmcs_flag(value, expected):
    assert whmcs_flag(value) is expected


def test_transport_exceptions_are_not_kept_as_context(sandbox):
    # A transport exception may carry the request (the secret is in its body): never chained or kept.
    for idempotent in (True, False):
        with WhmcsClient(sandbox.url, IDENT, SECRET, retries=0, timeout=0.3) as c:
            sandbox.fail_next(1, "timeout", delay=0.6)
            with pytest.raises(WhmcsError) as err:
                c.call("GetClients", idempotent=idempotent)
        assert err.value.__context__ is None and err.value.__cause__ is None


# -- transport: TLS and the URL -------------------------------------------------------------------


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 signed by itself (no CA in certifi's bundle knows it)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@contextlib.contextmanager
def _tiny_whmcs(tmp_path, tls: bool):
    """A WHMCS answering AddBillableItem at /whmcs/includes/api.php (keep-alive; over HTTPS with
    a self-signed certificate when `tls`); yields (url, [(path, the client's port)] received)."""
    import http.server
    import json
    import ssl

    received: list[tuple[str, int]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.client_address[1]))
            body = json.dumps({"result": "success", "billableid": 4242}).encode()
            self.send_response(200 if self.path == "/whmcs/includes/api.php" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*_self_signed(tmp_path))
        server.socket = context.wrap_socket(server.socket, server_side=True)
    served = Served(server, "tiny-whmcs")
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{served.port}/whmcs/includes/api.php", received
    finally:
        served.stop()


@pytest.fixture
def https_whmcs(tmp_path):
    with _tiny_whmcs(tmp_path, tls=True) as served:
        yield served


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # what this test asks for
def test_https_posts_to_the_urls_path_when_tls_is_not_verified(https_whmcs):
    url, received = https_whmcs
    with WhmcsClient(url, IDENT, SECRET, verify_tls=False, retries=0) as c:
        assert c.add_billable_item(7, "Calls [k1]", Decimal("1.50"), Decimal(1)) == 4242
        assert c.add_billable_item(7, "Calls [k2]", Decimal("1.50"), Decimal(1)) == 4242
    assert [path for path, _ in received] == ["/whmcs/includes/api.php"] * 2


def test_https_with_an_unknown_certificate_is_a_tls_failure_and_sends_nothing(https_whmcs):
    url, received = https_whmcs
    with WhmcsClient(url, IDENT, SECRET, verify_tls=True, retries=3) as c:
        with pytest.raises(WhmcsTransportError, match="TLS failure") as err:
            c.add_billable_item(7, "Calls [k1]", Decimal("1.50"), Decimal(1))
    assert received == [] and SECRET not in str(err.value)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/includes/api.php", "http://[::1/includes/api.php"])
def test_an_unusable_url_fails_the_post_as_certainly_not_sent(url):
    with WhmcsClient(url, IDENT, SECRET, retries=3) as c:
        with pytest.raises(WhmcsTransportError, match="unusable URL"):
            c.add_billable_item(7, "Calls [k1]", Decimal("1.50"), Decimal(1))


def test_a_post_after_an_idle_spell_goes_out_on_a_new_connection(tmp_path, monkeypatch):
    """A keep-alive connection the server may be closing right now is not used for a post (its
    loss would make the post uncertain for nothing): after `_IDLE_RESET_SECONDS` without an
    answer, the next post opens a new connection; posts in a row share one."""
    import time

    import connectors.whmcs as whmcs

    monkeypatch.setattr(whmcs, "_IDLE_RESET_SECONDS", 0.3)
    with _tiny_whmcs(tmp_path, tls=False) as (url, received), WhmcsClient(url, IDENT, SECRET, retries=0) as c:
        for key in ("k1", "k2"):
            c.add_billable_item(7, f"Calls [{key}]", Decimal("1.50"), Decimal(1))
        time.sleep(0.5)
        c.add_billable_item(7, "Calls [k3]", Decimal("1.50"), Decimal(1))
    ports = [port for _, port in received]
    assert len(ports) == 3 and ports[0] == ports[1] != ports[2]
