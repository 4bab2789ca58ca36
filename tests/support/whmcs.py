"""Fixtures and helpers shared by the WHMCS client / sandbox tests (import the fixtures by name)."""

from __future__ import annotations

import time
from collections.abc import Callable

from connectors.whmcs import WhmcsClient
from sandboxes.whmcs import WhmcsSandbox

IDENT = "ident-Qx81"
SECRET = "s3cr3t-VALUE-9f2c"


def new_sandbox(**kwargs) -> WhmcsSandbox:
    """Use as `with new_sandbox() as sb:`; each test module wraps it in its own `sandbox` fixture."""
    return WhmcsSandbox(**{"identifier": IDENT, "secret": SECRET, "seed": 7, **kwargs})


def make_client(sb: WhmcsSandbox, **kwargs) -> WhmcsClient:
    opts = {"timeout": 5.0, "retries": 3, "backoff": 0.005, "custom_field_ids": sb.custom_field_ids, **kwargs}
    return WhmcsClient(sb.url, IDENT, SECRET, **opts)


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def settle(sb: WhmcsSandbox, action: str, received: int) -> None:
    """Wait until the sandbox received `received` `action` requests and finished handling them."""
    wait_until(lambda: sb.request_count(action) >= received)
    assert sb.wait_idle(10.0)
