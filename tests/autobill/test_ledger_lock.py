"""The nightly ledger lock: one holder at a time, waits, times out, dies with its process."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from autobill.ledger.lock import LockTimeout, ledger_lock


@pytest.fixture(params=["sqlite", "postgres"])
def url(request, tmp_path):
    return f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_second_holder_waits_for_the_first(url):
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with ledger_lock(url, "nightly"):
            order.append("first in")
            held.set()
            time.sleep(0.8)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    held.wait(10)
    with ledger_lock(url, "nightly", poll=0.05):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]


def test_timeout_names_the_lock_and_other_names_do_not_conflict(url):
    with ledger_lock(url, "nightly"):
        with pytest.raises(LockTimeout, match="another nightly run"):
            with ledger_lock(url, "nightly", timeout=0.3, poll=0.05):
                pass
        with ledger_lock(url, "other", timeout=1):
            pass


def test_a_killed_holder_releases_the_lock(url):
    code = (
        "import sys, time; from autobill.ledger.lock import ledger_lock\n"
        f"with ledger_lock({url!r}, 'nightly'):\n    print('held', flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout):
            with ledger_lock(url, "nightly", timeout=0.3, poll=0.05):
                pass
        proc.kill()
        proc.wait(10)
        with ledger_lock(url, "nightly", timeout=10, poll=0.05):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
