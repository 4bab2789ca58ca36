"""The nightly's default task runner: how many servers are in flight at once (flows/runners.py)."""

from __future__ import annotations

import os

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runners import DEFAULT_THREADS, nightly_task_runner, tasks_run_here


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


def test_tasks_run_here_only_with_the_thread_runner(prefect_harness):
    from prefect import flow
    from prefect.task_runners import PrefectTaskRunner

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def threads() -> bool:
        return tasks_run_here()

    @flow(task_runner=PrefectTaskRunner())  # tasks handed to other processes, as Dask's are
    def elsewhere() -> bool:
        return tasks_run_here()

    assert threads() is True
    assert elsewhere() is False
    assert tasks_run_here() is False  # outside a flow run
