"""A `prefect server start` on loopback, owned by this process: the demo and the tests use it.

Why not the temporary server Prefect starts by itself: it has no scheduler, no workers can
reach it once the process that started it exits, and its UI is not meant to be browsed. This
is a real server (API, UI, scheduler) with its own PREFECT_HOME (so it never touches
~/.prefect), started in its own process group so that `stop()` ends it and every process it
spawned, even when the caller is failing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sandboxes.loopback import free_port


def prefect_bin() -> str:
    candidate = Path(sys.executable).with_name("prefect")
    return str(candidate) if candidate.exists() else "prefect"


def base_env(home: Path) -> dict[str, str]:
    """Environment for a Prefect process that must stay off the network and out of ~/.prefect."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
    })  # fmt: skip
    return env


class ManagedProcess:
    """A subprocess in its own session (process group); `stop()` terminates the whole group."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            # Children of the group may outlive the leader (uvicorn workers, flow-run subprocesses).
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self.proc.poll() is None:
                self.proc.wait(5)
        finally:
            self._log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalPrefectServer:
    """`with LocalPrefectServer(home) as server:` -> `server.api_url`, `server.ui_url`."""

    def __init__(self, home: Path, port: int | None = None, host: str = "127.0.0.1",
                 extra_env: dict[str, str] | None = None, startup_timeout: float = 180.0) -> None:
        self.home = Path(home).absolute()
        self.host, self.port = host, port or free_port()
        self.extra_env = extra_env or {}
        self.startup_timeout = startup_timeout
        self.process: ManagedProcess | None = None
        self.started_in: float | None = None

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    def env(self) -> dict[str, str]:
        """Environment for clients of this server (workers, serve, CLI subprocesses)."""
        return {**base_env(self.home), "PREFECT_API_URL": self.api_url, **self.extra_env}

    def start(self) -> LocalPrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**base_env(self.home), **self.extra_env}
        # The UI must talk to this port, whatever PREFECT_UI_API_URL a caller had set.
        env["PREFECT_UI_API_URL"] = self.api_url
        cmd = [prefect_bin(), "server", "start", "--host", self.host, "--port", str(self.port)]
        t0 = time.monotonic()
        self.process = ManagedProcess(cmd, env, self.home / "server.log")
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise RuntimeError(f"prefect server exited ({self.process.proc.returncode}):\n{self.process.tail()}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"prefect server not healthy after {self.startup_timeout:.0f} s:\n{self.process.tail()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> LocalPrefectServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_worker(server: LocalPrefectServer, pool: str, log_path: Path, run_once: bool = False,
                 cwd: Path | None = None, extra_env: dict[str, str] | None = None) -> ManagedProcess:
    """`prefect worker start --pool POOL` against `server` (polling every 2 s), in its own group."""
    env = {**server.env(), "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "5",
           **(extra_env or {})}
    cmd = [prefect_bin(), "worker", "start", "--pool", pool, "--type", "process"]
    if run_once:
        cmd.append("--run-once")
    return ManagedProcess(cmd, env, log_path, cwd=cwd)
