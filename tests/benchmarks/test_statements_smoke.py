"""The statements benchmark at a tiny size: it runs, every line ties out, its temporary folder goes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_statements_benchmark_tiny(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "benchmarks/statements.py", "--clients", "6", "--calls", "3000",
                          "--days", "3", "--workers", "2"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300, check=True).stdout
    m = re.search(r"for 6 clients, ([\d,]+) calls .* ([\d,]+) files, 0 line\(s\) not tied out, 2 PDF worker", out)
    assert m, out
    assert int(m.group(1).replace(",", "")) == 3000 and int(m.group(2).replace(",", "")) == 12  # csv + pdf each
    assert "ratio to baseline" in out and "load average" in out
    assert not list(tmp_path.glob("autobill-bench-statements-*"))  # removed at the end
