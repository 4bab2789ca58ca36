"""Exactly-once under failure: what the client retries, what it calls uncertain, and that the
sandbox never ends up with two items for one post (real loopback HTTP, injected faults)."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal

import pytest

from connectors.whmcs import (
    WhmcsClient,
    WhmcsTransportError,
    WhmcsUncertainError,
    charge_description,
    parse_charge_key,
)
from tests.support import closed_port
from tests.support.whmcs import IDENT, SECRET, make_client, new_sandbox, settle


@pytest.fixture
def sandbox():
    with new_sandbox() as sb:
        yield sb


def _post(c: WhmcsClient, cid: int, key: str) -> int:
    return c.add_billable_item(cid, charge_description("Calls", "2025-06-01", key), Decimal("3.21"), Decimal("4"))


def test_503_is_retried_and_the_post_lands_exactly_once(sandbox):
    cid = sandbox.add_client()
    sandbox.fail_next(2, "503", action="AddBillableItem")
    with make_client(sandbox) as c:
        bid = _post(c, cid, "k1")
    assert [i["id"] for i in sandbox.billable_items()] == [bid]
    assert sandbox.request_count("AddBillableItem") == 3


def test_503_until_retries_run_out_is_a_transport_error_with_nothing_stored(sandbox):
    cid = sandbox.add_client()
    sandbox.fail_next(10, "503")
    with make_client(sandbox, retries=2) as c, pytest.raises(WhmcsTransportError):
        _post(c, cid, "k1")
    assert sandbox.billable_items() == [] and sandbox.request_count("AddBillableItem") == 3


@pytest.mark.parametrize("mode", ["500_after_store", "drop_after_store", "garbage_after_store", "timeout"])
def test_post_that_may_have_been_processed_is_uncertain_and_never_reposted(sandbox, mode):
    cid = sandbox.add_client()
    sandbox.fail_next(1, mode, delay=0.6)
    with make_client(sandbox, timeout=0.25, retries=5) as c:
        with pytest.raises(WhmcsUncertainError) as err:
            _post(c, cid, "k-uncertain")
        settle(sandbox, "AddBillableItem", 1)
        items = sandbox.billable_items()
        assert len(items) == 1 and parse_charge_key(items[0]["description"]) == "k-uncertain"
        assert sandbox.request_count("AddBillableItem") == 1  # not re-posted
        assert err.value.action == "AddBillableItem"
        # The next post on the same client works and adds exactly one more item.
        _post(c, cid, "k-next")
    assert len(sandbox.billable_items()) == 2


def test_send_email_is_not_resent_after_an_unsure_answer(sandbox):
    cid = sandbox.add_client()
    sandbox.fail_next(1, "500_after_store", action="SendEmail")
    with make_client(sandbox) as c, pytest.raises(WhmcsUncertainError):
        c.send_email("VoIP Zero Balance", cid)
    assert len(sandbox.emails()) == 1 and sandbox.request_count("SendEmail") == 1


@pytest.mark.parametrize("mode", ["500", "500_after_store", "drop_after_store", "garbage_after_store", "503",
                                  "timeout"])
def test_reads_and_idempotent_actions_are_retried_through_failures(sandbox, mode):
    cid = sandbox.add_client(credit=Decimal("9.99"))
    sid = sandbox.add_product(cid)
    with make_client(sandbox, timeout=0.25, retries=3) as c:
        sandbox.fail_next(2, mode, delay=0.5)
        assert c.get_client_credit(cid) == Decimal("9.99")
        assert sandbox.request_count("GetClientsDetails") == 3
        sandbox.fail_next(1, mode, delay=0.5)
        c.module_suspend(sid, "no credit")
        assert sandbox.request_count("ModuleSuspend") == 2
    sandbox.wait_idle()
    assert sandbox.product(sid)["status"] == "Suspended"


def test_read_failing_past_its_retries_is_a_transport_error(sandbox):
    sandbox.fail_next(4, "500")
    with make_client(sandbox, retries=3) as c, pytest.raises(WhmcsTransportError, match="4 attempt"):
        c.get_invoices()


def test_connection_refused_is_retried_then_transport_error(caplog):
    caplog.set_level(logging.WARNING, logger="connectors.whmcs")
    url = f"http://127.0.0.1:{closed_port()}/includes/api.php"
    with WhmcsClient(url, IDENT, SECRET, retries=2, backoff=0.001) as c:
        with pytest.raises(WhmcsTransportError, match="cannot connect"):
            c.add_billable_item(1, "x", Decimal("1.00"), Decimal("1"))  # certainly never sent: retried
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2


def test_fault_rate_30_percent_n_posts_give_n_items(sandbox):
    """503 at 30 %: every post lands once (retries), never twice."""
    cid = sandbox.add_client()
    sandbox.set_faults("AddBillableItem", "503", error_rate=0.3, seed=42)
    keys = [f"k{i}" for i in range(60)]
    with make_client(sandbox, retries=10) as c:
        ids = [_post(c, cid, k) for k in keys]
    items = sandbox.billable_items()
    assert sorted(i["id"] for i in items) == sorted(ids) and len(set(ids)) == 60
    assert sorted(parse_charge_key(i["description"]) for i in items) == sorted(keys)
    assert sandbox.request_count("AddBillableItem") > 60  # faults really fired


def test_mixed_faults_30_percent_items_equal_successes_plus_uncertain(sandbox):
    """With faults that may process the post, the outcome is still exact: each key is stored
    once if it succeeded or was called uncertain, and never when it failed for certain."""
    cid = sandbox.add_client()
    outcomes: dict[str, str] = {}
    with make_client(sandbox, retries=2, timeout=0.25) as c:
        for i, mode in enumerate(["503", "500_after_store", "drop_after_store", "garbage_after_store"] * 8):
            sandbox.set_faults("AddBillableItem", mode, error_rate=0.3, seed=i, delay=0.4)
            key = f"m{i}"
            try:
                _post(c, cid, key)
                outcomes[key] = "posted"
            except WhmcsUncertainError:
                outcomes[key] = "uncertain"
            except WhmcsTransportError:
                outcomes[key] = "failed"
    sandbox.wait_idle()
    stored = [parse_charge_key(i["description"]) for i in sandbox.billable_items()]
    assert len(stored) == len(set(stored))  # never two items for one key
    assert set(stored) == {k for k, o in outcomes.items() if o in ("posted", "uncertain")}
    assert "uncertain" in outcomes.values() and "posted" in outcomes.values()


def test_concurrent_clients_post_and_read_correctly(sandbox):
    cids = [sandbox.add_client(credit=Decimal(i)) for i in range(1, 9)]
    errors: list[BaseException] = []
    posted: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        try:
            with make_client(sandbox) as c:
                for j in range(25):
                    bid = _post(c, cids[n], f"t{n}-{j}")
                    assert c.get_client_credit(cids[n]) == Decimal(n + 1)
                    with lock:
                        posted.append(bid)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    items = sandbox.billable_items()
    assert len(items) == 200 and sorted(i["id"] for i in items) == sorted(posted)
    for n, cid in enumerate(cids):
        keys = sorted(parse_charge_key(i["description"]) for i in sandbox.billable_items(cid))
        assert keys == sorted(f"t{n}-{j}" for j in range(25))


# -- AddCredit (corrections that lower a line) -------------------------------------------------


def test_add_credit_raises_the_balance_once_and_a_lost_answer_is_uncertain(sandbox):
    cid = sandbox.add_client(credit="1.00")
    with make_client(sandbox) as c:
        assert c.add_credit(cid, "Correction for 2026-11-18: outbound [rc-1]", Decimal("2.50")) == Decimal("3.50")
        sandbox.fail_next(1, "503", action="AddCredit")  # never processed: retried at once
        assert c.add_credit(cid, "Correction [rc-2]", Decimal("0.25")) == Decimal("3.75")
        sandbox.fail_next(1, "drop_after_store", action="AddCredit")
        with pytest.raises(WhmcsUncertainError):
            c.add_credit(cid, "Correction [rc-3]", Decimal("1.00"))
        settle(sandbox, "AddCredit", 4)
        with pytest.raises(ValueError):
            c.add_credit(cid, "Correction [rc-4]", Decimal("-1.00"))
        with pytest.raises(ValueError):
            c.add_credit(cid, "Correction [rc-5]", Decimal("0.001"), currency="USD")
        log = c.get_credits(cid)
    assert [e["description"][-6:] for e in log] == ["[rc-1]", "[rc-2]", "[rc-3]"]  # each once, none twice
    assert sandbox.client(cid)["credit"] == "4.75" and sandbox.request_count("AddCredit") == 4
