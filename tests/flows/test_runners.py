"""The nightly's default task runner: how many servers are in flight at once (flows/runners.py)."""

from __future__ import annotations

import os

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import DEFAULT_THREADS, nightly_task_runner


@pytest.fixture(autouse=True)
def _threads_only(monkeypatch):
    monkeypatch.delenv("AUTOBILL_DASK_ADDRESS", raising=False)
    monkeypatch.delenv("AUTOBILL_CONFIG", raising=False)


def test_default_and_override(monkeypatch):
    monkeypatch.delenv("AUTOBILL_NIGHTLY_THREADS", raising=False)
    runner = nightly_task_runner()
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == DEFAULT_THREADS == max(2, os.cpu_count() or 2)
    monkeypatch.setenv("AUTOBILL_NIGHTLY_THREADS", "2")
    assert nightly_task_runner()._max_workers == 2


@pytest.mark.parametrize("raw", ["0", "many", "-1", "2.5"])
def test_a_bad_thread_count_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv("AUTOBILL_NIGHTLY_THREADS", raw)
    with pytest.raises(ValueError, match="AUTOBILL_NIGHTLY_THREADS=.*positive whole number"):
        nightly_task_runner()
