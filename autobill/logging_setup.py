"""Logs: per task in the Prefect UI (Prefect's API handler), and a rotating file on each machine.

Why a file as well as the UI: the UI keeps logs in the Prefect database, which an operator may
prune, and which is not where a log shipper or `grep` looks. Every process that runs a flow
(worker-spawned flow runs, `serve`, the CLI, Dask workers) configures logging when it imports
Prefect, from the file named by `PREFECT_LOGGING_SETTINGS_PATH`; `deployments/logging.yml` is
Prefect's default configuration plus one rotating file handler on the root logger, so flow-run
and task-run records (which propagate to the root) land in the file with their run names.

- File: `$PREFECT_HOME/logs/autobill.log` by default; set
  `PREFECT_LOGGING_HANDLERS_AUTOBILL_FILE_FILENAME` to move it (Prefect's env override).
- Rotation: 10 MB x 10 files (`..._MAXBYTES`, `..._BACKUPCOUNT` env overrides). Several processes
  on one machine append to the same file; rotation is not coordinated between them, so for
  long-lived multi-process hosts prefer `logrotate` with `copytruncate` (see docs/OPERATING.md).

`use_file_logging()` does the same for a process that has already imported Prefect (the demo,
tests): it attaches the handler directly, once.
"""

from __future__ import annotations

import logging
import os
from logging.handlers import RotatingFileHandler
from pathlib import Path

LOGGING_YML = Path(__file__).resolve().parents[1] / "deployments" / "logging.yml"
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 10
FILE_FORMAT = "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"
FLOW_FORMAT = "%(asctime)s | %(levelname)-7s | flow run %(flow_run_name)s - %(message)s"
TASK_FORMAT = "%(asctime)s | %(levelname)-7s | flow run %(flow_run_name)s | task run %(task_run_name)s - %(message)s"


class RunLogFileHandler(RotatingFileHandler):
    """A RotatingFileHandler that creates its directory (a fresh machine has no logs/ yet)."""

    def __init__(self, filename: str | os.PathLike, mode: str = "a", maxBytes: int = MAX_BYTES,  # noqa: N803
                 backupCount: int = BACKUPS, encoding: str | None = "utf-8", delay: bool = True) -> None:  # noqa: N803
        path = Path(filename).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, mode=mode, maxBytes=int(maxBytes), backupCount=int(backupCount), encoding=encoding,
                         delay=delay)


def file_formatter() -> logging.Formatter:
    from prefect.logging.formatters import PrefectFormatter

    return PrefectFormatter(FILE_FORMAT, flow_run_fmt=FLOW_FORMAT, task_run_fmt=TASK_FORMAT)


def default_log_file() -> Path:
    env = os.environ.get("PREFECT_LOGGING_HANDLERS_AUTOBILL_FILE_FILENAME")
    if env:
        return Path(env)
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "logs" / "autobill.log"


def use_file_logging(path: str | os.PathLike | None = None, level: int = logging.INFO) -> Path:
    """Attach the rotating file handler to the root logger of this process (idempotent per path)."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect configures logging lazily; a later dictConfig would drop our handler
    target = Path(path) if path is not None else default_log_file()
    root = logging.getLogger()
    for h in root.handlers:
        if isinstance(h, RotatingFileHandler) and Path(h.baseFilename) == target.expanduser().absolute():
            return target
    handler = RunLogFileHandler(target)
    handler.setLevel(level)
    handler.setFormatter(file_formatter())
    root.addHandler(handler)
    return target


def prefect_logging_env(log_file: str | os.PathLike | None = None) -> dict[str, str]:
    """Environment for a child process (worker, server, serve) so that it logs to the file too."""
    env = {"PREFECT_LOGGING_SETTINGS_PATH": str(LOGGING_YML)}
    if log_file is not None:
        env["PREFECT_LOGGING_HANDLERS_AUTOBILL_FILE_FILENAME"] = str(log_file)
    return env
