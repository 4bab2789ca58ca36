"""The nightly flow with dirty input and a broken WHMCS credential (issue #12), run for real.

- An unreadable drop file is quarantined whole, counted, and the run ends partial (Failed
  "partial: ..."); every good call (including those beside garbage rows) is billed exactly once,
  every garbage row is quarantined, and the summary balances. The next run, with the file
  unchanged, completes.
- A missing WHMCS secret or an unreachable WHMCS stops the run in preflight: one line naming
  the secret or endpoint, the run recorded failed, nothing extracted, nothing claimed.
"""

from __future__ import annotations

from collections import Counter
from datetime import date

import pytest
from sqlalchemy import func, select

from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge, ExtractionBatch, QuarantinedFile, QuarantinedRow, Run
from tests.support import closed_port
from tests.support.ops import BillingWorld, whmcs_world

pytestmark = [pytest.mark.flow]
D1 = date(2026, 11, 18)


@pytest.fixture
def world(tmp_path, prefect_harness, monkeypatch):
    with whmcs_world(tmp_path, monkeypatch, D1, D1, clients=4, servers=1) as w:
        yield w


def _run(world: BillingWorld, **kw):
    from autobill.ledger.runs import run_summary
    from flows.autobill import nightly

    state = nightly(billing_date=D1, config_path=str(world.config_path), return_state=True, **kw)
    return state, run_summary(world.settings, str(state.state_details.flow_run_id))


def _count(world: BillingWorld, model) -> int:
    with session_scope(world.settings.ledger) as s:
        return s.scalar(select(func.count()).select_from(model))


def test_bad_file_and_garbage_rows_end_partial_and_good_calls_are_billed_once(world: BillingWorld) -> None:
    world.drop(D1)
    sid = world.server_ids[0]
    folder = world.tmp / "drop" / sid
    [day_file] = sorted(folder.glob("*.csv"))
    header = day_file.read_text().splitlines()[0]
    cols = header.split(",")
    good_rows = len(day_file.read_text().splitlines()) - 1
    garbage = [
        ",".join("junk" if c == "start" else "" for c in cols),  # no call id, no start
        ",".join("bad-1" if c == "call_id" else ("abc" if c == "billsec" else "") for c in cols),
        "too,few",  # a ragged row
    ]
    with day_file.open("a") as f:
        f.write("\n".join(garbage) + "\nlast-row,2026-11-18T10:00:00Z,6")  # cut off: no line end
    (folder / "zz-empty.csv").write_bytes(b"")

    state, summary = _run(world)
    assert state.is_failed() and state.message.startswith("partial: ") and "1 file(s) quarantined whole" in state.message
    assert summary["status"] == "partial" and summary["balanced"] and summary["files_quarantined"] == 1
    bad_rows = len(garbage) + 1
    assert summary["extracted"] == good_rows + bad_rows and summary["quarantined"] == bad_rows
    assert summary["billed"] + summary["included"] + summary["zero_cost"] + summary["unrated"] == good_rows
    world.assert_exactly_once()
    with session_scope(world.settings.ledger) as s:
        assert [f.name for f in s.scalars(select(QuarantinedFile))] == ["zz-empty.csv"]
        rules = Counter(q.rule for q in s.scalars(select(QuarantinedRow)))
    assert sum(rules.values()) == bad_rows and rules["unreadable_row"] >= 2, rules
    assert all(n == 1 for n in world.ledger_states().values())  # every key in exactly one state

    again_state, again = _run(world)  # nothing new, the bad file unchanged: completes, bills nothing twice
    assert again_state.is_completed() and again["status"] == "completed" and again["files_quarantined"] == 0
    world.assert_exactly_once()


@pytest.mark.parametrize("broken", ["missing_secret", "unreachable"])
def test_preflight_failure_stops_before_any_ledger_change(world: BillingWorld, monkeypatch, broken) -> None:
    world.drop(D1)
    if broken == "missing_secret":
        monkeypatch.delenv("TEST_WHMCS_SECRET")
        expected = "preflight: whmcs.secret: environment variable TEST_WHMCS_SECRET"
    else:
        text = world.config_path.read_text().replace(world.sandbox.url, f"http://127.0.0.1:{closed_port()}/api.php")
        world.config_path.write_text(text)
        expected = "preflight: whmcs.url http://127.0.0.1:"
    state, summary = _run(world)
    assert state.is_failed() and state.message.startswith(expected) and "\n" not in state.message
    assert summary["status"] == "failed" and summary["error"] == state.message
    with session_scope(world.settings.ledger) as s:
        assert [r.status for r in s.scalars(select(Run))] == ["failed"]  # recorded, not left running
    assert _count(world, ExtractionBatch) == 0 and _count(world, Charge) == 0  # nothing read, nothing claimed
    assert world.sandbox.billable_items() == []
