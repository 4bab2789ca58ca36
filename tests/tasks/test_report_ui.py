"""The run summary as an operator sees it: a real Prefect server with its UI, a nightly run of a
generated world against the WHMCS sandbox, and headless Chromium at 1280x800 looking at the run
page and the summary artifact. Checked from the laid-out DOM: the totals are on screen without
scrolling (down or sideways) and the charts are decoded images. Screenshots go to ci-artifacts/.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli.local_prefect import LocalPrefectServer
from tests.support.browser import CI_ARTIFACTS, ROOT, Browser, chromium_binary

pytestmark = [pytest.mark.slow, pytest.mark.flow, pytest.mark.timeout(600)]

RUN_ONE_NIGHT = """
import json, os, sys
from pathlib import Path
os.environ["TEST_WHMCS_ID"] = os.environ["TEST_WHMCS_SECRET"] = "demo"
from sandboxes.whmcs import WhmcsSandbox
from datetime import date
from tests.support.ops import BillingWorld
D1 = date(2026, 11, 18)
from flows.autobill import nightly
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
with WhmcsSandbox(timezone="America/Toronto") as sandbox:
    env = BillingWorld(Path(sys.argv[1]), sandbox, D1, D1, calls_per_day=15, whmcs_timeout=5)
    env.drop(D1)
    state = nightly(billing_date=D1, config_path=str(env.config_path), return_state=True)
    run_id = str(state.state_details.flow_run_id)
    with get_client(sync_client=True) as c:
        arts = c.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
    print("RESULT " + json.dumps({"flow_run_id": run_id, "state": state.type.value,
                                   "artifacts": {a.key: str(a.id) for a in arts}}))
"""

# The run page's "Artifacts" tab (the innermost element with that text).
ARTIFACTS_TAB = ("[...document.querySelectorAll('body *')]"
                 ".find(e => e.children.length === 0 && e.textContent.trim() === 'Artifacts')")

# Where is the totals row, and does anything stick out to the right?
LAYOUT = """(() => {
  const cell = [...document.querySelectorAll('td, th, strong')].find(e => e.innerText.trim() === 'Posted to WHMCS');
  if (!cell) return null;
  const row = cell.closest('tr').getBoundingClientRect();
  const pane = document.querySelector('h1').getBoundingClientRect().right;  // the artifact's content width
  const cells = [...document.querySelectorAll('td, th')].map(c => c.getBoundingClientRect().right);
  const imgs = [...document.querySelectorAll('img')].filter(i => i.src.startsWith('data:image/png'));
  return {rowTop: row.top, rowBottom: row.bottom, rowRight: row.right, cellsRight: Math.max(...cells), pane,
          pageWidth: document.documentElement.scrollWidth, innerWidth: window.innerWidth,
          innerHeight: window.innerHeight, scrollY: window.scrollY,
          images: imgs.map(i => [i.naturalWidth, i.naturalHeight, i.complete]),
          text: cell.closest('tr').innerText};
})()"""


def test_summary_artifact_readable_at_1280x800(tmp_path):
    chromium_binary()  # skip early (or install under CI) before starting anything
    with LocalPrefectServer(tmp_path / "prefect") as server:
        out = subprocess.run([sys.executable, "-c", RUN_ONE_NIGHT, str(tmp_path / "world")], cwd=ROOT,
                             env={**server.env(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                             timeout=420)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        assert line, out.stdout[-3000:] + out.stderr[-3000:]
        result = json.loads(line[len("RESULT "):])
        assert result["state"] == "COMPLETED"
        summary_id = result["artifacts"]["autobill-run-summary"]
        shots = CI_ARTIFACTS / "ui"
        with Browser(1280, 800) as browser:
            browser.open(f"{server.ui_url}/artifacts/artifact/{summary_id}",
                         until="document.body.innerText.includes('Posted to WHMCS')")
            layout = browser.eval(LAYOUT)
            artifact_png = browser.screenshot(shots / "run-summary-artifact-1280x800.png")
            browser.open(f"{server.ui_url}/runs/flow-run/{result['flow_run_id']}",
                         until=f"{ARTIFACTS_TAB} !== undefined")
            browser.eval(f"{ARTIFACTS_TAB}.click()")
            browser.open_wait("document.body.innerText.includes('Task runs')")
            time.sleep(3)
            run_png = browser.screenshot(shots / "nightly-run-artifacts-1280x800.png")
            run_text = browser.eval("document.body.innerText")
        print(f"screenshots: {artifact_png} {run_png}")
    assert layout is not None, "the summary artifact shows no 'Posted to WHMCS' row"
    assert layout["scrollY"] == 0
    # The totals row is on the first screen: below the header, above the fold, not cut on the right.
    assert 0 <= layout["rowTop"] and layout["rowBottom"] <= layout["innerHeight"], layout
    assert layout["rowRight"] <= layout["innerWidth"], layout
    # No table cell (the per-server table's included) sticks out of the artifact pane: nothing hidden sideways.
    assert layout["cellsRight"] <= layout["pane"] + 1 and layout["pageWidth"] <= layout["innerWidth"], layout
    assert " USD" in layout["text"]
    # The charts are real images the browser decoded (two: nightly trend and server volumes).
    assert len(layout["images"]) == 2 and all(w > 300 and h > 100 and ok for w, h, ok in layout["images"]), layout
    assert "Artifacts" in run_text and "Task runs" in run_text  # the run page's artifact list opened
    for png in (artifact_png, run_png):
        assert Path(png).stat().st_size > 20_000
