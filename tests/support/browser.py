"""Headless Chromium driven over the DevTools protocol: open a page at a given window size,
wait for a JS condition, evaluate JS against the laid-out DOM, and save a screenshot.

(`--dump-dom` gives the HTML but no layout; whether totals are visible without scrolling needs
the element boxes, so this talks CDP over the browser's websocket.)
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parents[2]
# Screenshots a CI run keeps (printed by the tests that write them).
CI_ARTIFACTS = ROOT / "ci-artifacts"


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if IN_CI:  # CI must run the UI tests: install Debian's chromium (the container runs as root)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=False, env=env, timeout=600)
        found = shutil.which("chromium")
        if not found:
            pytest.fail("chromium is required under CI=true and `apt-get install -y chromium` did not provide it")
        return found
    pytest.skip("chromium not installed (apt-get install -y chromium); required under CI=true")


class Browser:
    """`with Browser(1280, 800) as b: b.open(url, until="js expr"); b.eval("..."); b.screenshot(p)`."""

    def __init__(self, width: int = 1280, height: int = 800) -> None:
        self.width, self.height = width, height
        self._ids = itertools.count(1)

    def __enter__(self) -> Browser:
        self.profile = tempfile.mkdtemp(prefix="autobill-cdp-")
        self.proc = subprocess.Popen(
            [chromium_binary(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--window-size={self.width},{self.height}", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:  # noqa: S310
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method: str, **params: Any) -> dict:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def eval(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, until: str, timeout: float = 60) -> None:
        """Navigate and wait until the JS expression `until` is truthy (the SPA has rendered)."""
        self.send("Page.enable")
        self.send("Page.navigate", url=url)
        self.open_wait(until, timeout, url)

    def open_wait(self, until: str, timeout: float = 60, url: str = "") -> None:
        """Wait until the JS expression `until` is truthy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.eval(until):
                    time.sleep(0.5)  # let images decode and layout settle
                    return
            except RuntimeError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{url}: {until} never became true; body: {self.eval('document.body.innerText')[:1500]}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
