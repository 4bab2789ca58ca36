"""Production hardening: the Prefect server behind its auth string (docs/OPERATING.md).

A real `prefect server start` with PREFECT_SERVER_API_AUTH_STRING: a client without credentials
is refused (401), with the wrong ones too; the Prefect CLI and a flow run configured with
PREFECT_API_AUTH_STRING are accepted, and the run is recorded on the server.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from cli.local_prefect import LocalPrefectServer, prefect_bin

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
AUTH = "autobill-ops:correct-horse-battery"
TINY_FLOW = """
from prefect import flow
@flow(name="auth-probe")
def probe() -> int:
    return 42
print("RESULT", probe())
"""


def _post(url: str, auth: str | None) -> int:
    request = urllib.request.Request(url, data=b"{}", method="POST", headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 - loopback
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_server_with_auth_refuses_anonymous_clients_and_accepts_configured_ones(tmp_path):
    with LocalPrefectServer(tmp_path / "prefect", extra_env={"PREFECT_SERVER_API_AUTH_STRING": AUTH}) as server:
        flows = f"{server.api_url}/flows/filter"
        assert _post(flows, None) == 401
        assert _post(flows, "autobill-ops:wrong") == 401
        assert _post(flows, AUTH) == 200
        anonymous = {k: v for k, v in server.env().items() if k != "PREFECT_SERVER_API_AUTH_STRING"}
        refused = subprocess.run([prefect_bin(), "work-pool", "ls"], env=anonymous, capture_output=True,
                                 text=True, timeout=120)
        assert refused.returncode != 0 and "401" in (refused.stdout + refused.stderr)
        configured = {**anonymous, "PREFECT_API_AUTH_STRING": AUTH}
        accepted = subprocess.run([prefect_bin(), "work-pool", "ls"], env=configured, capture_output=True,
                                  text=True, timeout=120)
        assert accepted.returncode == 0, accepted.stdout + accepted.stderr
        run = subprocess.run([sys.executable, "-c", TINY_FLOW], env=configured, capture_output=True, text=True,
                             timeout=180)
        assert "RESULT 42" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
        request = urllib.request.Request(f"{server.api_url}/flow_runs/filter", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()})
        with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 - loopback
            runs = json.load(r)
        assert [r["state_type"] for r in runs] == ["COMPLETED"]
