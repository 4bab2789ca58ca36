"""Fixtures of the core tests that talk to the WHMCS sandbox (statements, disputes)."""

from __future__ import annotations

import pytest

from tests.support.statements import StatementWorld
from tests.support.whmcs import new_sandbox


@pytest.fixture
def sandbox():
    with new_sandbox() as sb:
        yield sb


@pytest.fixture(autouse=True)
def _whmcs_env(monkeypatch):
    for k, v in StatementWorld.env().items():
        monkeypatch.setenv(k, v)
