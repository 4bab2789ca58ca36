"""The WHMCS sandbox itself: HTTP behaviour, fault switches, state, seeding, speed, CLI."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

from connectors.whmcs import WhmcsApiError, WhmcsAuthError, WhmcsClient
from sandboxes.whmcs import WhmcsSandbox
from sandboxes.whmcs.faults import Faults
from sandboxes.whmcs.server import _loopback
from tests.support.whmcs import IDENT, SECRET, make_client, new_sandbox

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sandbox():
    with new_sandbox() as sb:
        yield sb


def _body(action: str, **params) -> str:
    return urlencode({"action": action, "identifier": IDENT, "secret": SECRET, "responsetype": "json", **params})


def test_keep_alive_one_connection_many_requests_with_exact_content_length(sandbox):
    cid = sandbox.add_client(credit="5.00")
    conn = http.client.HTTPConnection("127.0.0.1", sandbox.port, timeout=5)
    sockets = set()
    for _ in range(3):
        conn.request("POST", "/includes/api.php", _body("GetClientsDetails", clientid=cid),
                     {"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
        assert int(resp.getheader("Content-Length")) == len(raw)
        assert json.loads(raw)["client"]["credit"] == "5.00"
        assert resp.getheader("Connection") == "keep-alive"
        sockets.add(id(conn.sock))
    assert len(sockets) == 1 and conn.sock is not None  # one connection served all three
    conn.close()


def test_auth_error_shape_and_legacy_username_password(sandbox):
    resp = requests.post(sandbox.url, data={"action": "GetClients", "identifier": IDENT, "secret": "nope",
                                            "responsetype": "json"}, timeout=5)
    assert resp.status_code == 403 and resp.json() == {"result": "error", "message": "Authentication Failed"}
    resp = requests.post(sandbox.url, data={"action": "GetClients", "username": IDENT, "password": SECRET,
                                            "responsetype": "json"}, timeout=5)
    assert resp.json()["result"] == "success"
    resp = requests.post(sandbox.url, data=_body("GetClients", responsetype="xml"),
                         headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)
    assert resp.json()["result"] == "error"


def test_admin_endpoint_sets_and_clears_faults(sandbox):
    admin = sandbox.base_url + "/_sandbox/faults"
    assert requests.post(admin, json={"action": "GetClients", "mode": "503"}, timeout=5).status_code == 200
    raw = requests.post(sandbox.url, data=_body("GetClients"),
                        headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=5)
    assert raw.status_code == 503
    with make_client(sandbox) as c:
        assert c.call("GetClientsProducts")["result"] == "success"  # other actions unaffected
    snap = requests.get(admin, timeout=5).json()
    assert snap["rules"]["getclients"]["mode"] == "503"
    requests.post(admin, json={"fail_next": {"n": 1, "mode": "500", "action": "GetInvoices"}}, timeout=5)
    assert requests.get(admin, timeout=5).json()["queued"][0]["mode"] == "500"
    assert requests.post(admin, json={"mode": "explode"}, timeout=5).status_code == 400
    requests.post(admin, json={"clear": True}, timeout=5)
    with make_client(sandbox, retries=0) as c:
        assert c.call("GetClients")["result"] == "success"
        assert c.get_invoices() == []


def test_admin_is_loopback_only():
    assert _loopback("127.0.0.1") and _loopback("::1")
    assert not _loopback("10.1.2.3") and not _loopback("192.168.0.9") and not _loopback("not-an-ip")


def test_fault_rng_is_reproducible_and_rate_is_roughly_right():
    def pattern(seed: int) -> list[bool]:
        f = Faults()
        f.set("*", "503", error_rate=0.3, seed=seed)
        return [f.draw("AddBillableItem") is not None for _ in range(2000)]

    assert pattern(5) == pattern(5) and pattern(5) != pattern(6)
    assert 0.26 < sum(pattern(5)) / 2000 < 0.34


def test_fail_next_targets_one_action_and_wins_over_rules():
    f = Faults()
    f.set("*", "slow", error_rate=0.0)
    f.fail_next(2, "drop_after_store", action="AddBillableItem")
    assert f.draw("GetClients") is None
    assert f.draw("addbillableitem").mode == "drop_after_store"
    assert f.draw("AddBillableItem").mode == "drop_after_store"
    assert f.draw("AddBillableItem") is None
    with pytest.raises(ValueError):
        f.fail_next(1, "meltdown")


def test_slow_mode_delays_then_answers(sandbox):
    cid = sandbox.add_client()
    sandbox.set_faults("GetClientsDetails", "slow", delay=0.3)
    with make_client(sandbox) as c:
        t0 = time.perf_counter()
        c.get_clients_details(cid)
        assert time.perf_counter() - t0 >= 0.3


def test_state_persists_in_the_sqlite_file(tmp_path):
    db = tmp_path / "whmcs.db"
    with WhmcsSandbox(db_path=db, identifier=IDENT, secret=SECRET) as sb:
        cid = sb.add_client(credit=Decimal("1.50"))
        with make_client(sb) as c:
            c.add_billable_item(cid, "kept", Decimal("2.00"), Decimal("1"))
    with WhmcsSandbox(db_path=db, identifier=IDENT, secret=SECRET) as sb:
        assert [i["description"] for i in sb.billable_items()] == ["kept"]
        with make_client(sb) as c:
            assert c.get_client_credit(cid) == Decimal("1.50")
    assert db.exists()


def test_temporary_state_is_removed_on_close():
    sb = WhmcsSandbox().start()
    path = sb.db_path
    assert path.exists()
    sb.close()
    assert not path.exists()


def test_overdue_filter_and_invoice_strings(sandbox):
    from datetime import date, timedelta

    cid = sandbox.add_client()
    old = sandbox.add_invoice(cid, "4.00", date_=date.today() - timedelta(days=20),
                              duedate=date.today() - timedelta(days=10))
    sandbox.add_invoice(cid, "6.00")
    with make_client(sandbox) as c:
        overdue = c.get_invoices(user_id=cid, status="Overdue")
        assert [int(i["id"]) for i in overdue] == [old]
        assert overdue[0]["total"] == "4.00" and isinstance(overdue[0]["userid"], str)
        sandbox.set_invoice(old, status="Paid", balance="0")
        assert c.get_invoices(user_id=cid, status="Overdue") == []
        assert c.unpaid_balance(cid) == Decimal("6.00")


def test_bulk_seed_10k_is_fast_and_consistent(sandbox):
    t0 = time.perf_counter()
    ids = sandbox.bulk_seed(10_000, unpaid_every=5, voip_every=2)
    elapsed = time.perf_counter() - t0
    assert ids == list(range(1, 10_001)) and elapsed < 5.0
    with make_client(sandbox, page_size=1000) as c:
        first = c.call("GetClients", limitnum=1)
        assert first["totalresults"] == "10000"
        assert len(c.unpaid_balances()) == 2000
        assert len(c.get_clients_products()) == 10_000
        assert c.client_custom_fields(1)["Has VoIP Service"] == "on"
        assert c.client_custom_fields(2)["Has VoIP Service"] == ""
        credit = c.get_client_credit(10_000)
        assert Decimal("0") <= credit < Decimal("100") and credit == credit.quantize(Decimal("0.01"))
    # appending after a seed continues the ids
    assert sandbox.bulk_seed(3, unpaid_every=0) == [10_001, 10_002, 10_003]


def test_get_clients_details_throughput_over_keep_alive(sandbox, capsys):
    sandbox.bulk_seed(2000, unpaid_every=0)
    with make_client(sandbox) as c:
        c.get_clients_details(1)  # connect outside the timed loop
        n = 1000
        t0 = time.perf_counter()
        for cid in range(1, n + 1):
            c.get_clients_details(cid)
        rate = n / (time.perf_counter() - t0)
    with capsys.disabled():
        print(f"\n[whmcs sandbox] GetClientsDetails over keep-alive: {rate:.0f} req/s")
    # A Nagle / delayed-ACK stall would cap this near 25 req/s; the floor is low so a busy CI box passes.
    assert rate > 100


def test_auth_error_is_typed_for_every_action(sandbox):
    with WhmcsClient(sandbox.url, "who", "what", retries=0) as c:
        for call in (lambda: c.iter_clients().__next__(), lambda: c.module_unsuspend(1),
                     lambda: c.send_email("Low Balance Alert", 1)):
            with pytest.raises(WhmcsAuthError):
                call()
    with make_client(sandbox) as c, pytest.raises(WhmcsApiError) as err:
        c.update_client_product(1, status="Active")
    assert not isinstance(err.value, WhmcsAuthError)


def test_cli_serve_answers_api_calls(tmp_path):
    env = {**os.environ, "AUTOBILL_SANDBOX_SECRET": "cli-secret"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "sandbox", "serve", "--port", "0", "--db", str(tmp_path / "s.db"),
         "--seed-clients", "5", "--identifier", "cli"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("WHMCS sandbox at "):
                url = line.split()[-1]
                break
        assert url, "".join(lines)
        with WhmcsClient(url, "cli", "cli-secret", retries=0) as c:
            assert len(list(c.iter_clients())) == 5
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert "cli-secret" not in out + err + "".join(lines)
    assert proc.returncode == 0
