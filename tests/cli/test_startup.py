"""`autobill CMD` loads only CMD's module: a quick command does not pay for every other one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cli

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("prefect", "polars", "duckdb", "great_expectations", "pydantic_settings", "alembic", "rich", "matplotlib")

PROBE = """
import json, sys
sys.argv = ["autobill", "charges", "reconcile", "-c", sys.argv[1]]
from cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_charges_reconcile_imports_no_heavy_library(tmp_path):
    config = tmp_path / "autobill.yaml"
    config.write_text(f"ledger_url: sqlite:///{tmp_path / 'ledger.db'}\n")
    # The first call creates the ledger (Alembic); the second is the everyday call measured here.
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", PROBE, str(config)], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, check=True).stdout
    lines = out.strip().splitlines()
    assert lines[0] == "0 uncertain charge(s)"
    loaded = set(json.loads(lines[-1]))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_one_command_app_has_only_that_command_and_the_full_app_has_every_one():
    only = cli.app_for(["charges", "reconcile"])
    assert [g.name for g in only.registered_groups] == ["charges"] and not only.registered_commands
    full = cli.app
    names = {c.name for c in full.registered_commands} | {g.name for g in full.registered_groups}
    assert names == set(cli.COMMANDS)  # every command is reachable by its own name
    for argv in (["--help"], [], ["chargs"], ["--help", "charges"]):  # help or unknown: everything listed
        app = cli.app_for(argv)
        assert {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups} == names
    rated = cli.app_for(["rate", "--help"])
    assert [c.name for c in rated.registered_commands] == ["rate"]


RATE_PROBE = """
import json, sys
sys.argv = ["autobill", "rate", "--tariff", sys.argv[1], "--cdrs", sys.argv[2], "--out", sys.argv[3]]
from cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("numpy", "autobill"))))
"""


def test_rate_loads_neither_the_config_models_nor_numpy(tmp_path):
    """`autobill rate` is timed as a whole process (issue #15): it skips what it does not use."""
    (tmp_path / "t.csv").write_text("prefix,rate\n1,0.01\n")
    (tmp_path / "c.csv").write_text("cdr_id,start,billsec,dst\na,2024-07-01T00:00:00Z,60,+12125550100\n")
    args = [str(tmp_path / n) for n in ("t.csv", "c.csv", "o.parquet")]
    out = subprocess.run([sys.executable, "-c", RATE_PROBE, *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    loaded = set(json.loads(out.strip().splitlines()[-1]))
    assert "autobill.rating.engine" in loaded  # it did rate
    assert not {m for m in loaded if m == "numpy" or m.startswith("autobill.config")}, loaded
