"""The rerate flow end to end: a billed day, a tariff fix, corrections posted to the WHMCS sandbox.

Every test checks the invariants: each posted correction is in WHMCS exactly once (a billable item
for an increase, a credit for a decrease), nothing posted is edited, and after the corrections
every line adds up to what the day would have been billed with the new tariff, to the cent.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from decimal import Decimal

import polars as pl
import pytest
import yaml
from sqlalchemy import select, update

from autobill import lake
from autobill.billing_day import with_billing_date
from autobill.ledger.db import session_scope
from autobill.ledger.models import Charge, ChargeReconciliation, CorrectionCDR, Rerate
from autobill.mapping import assign_services
from autobill.money import round_minor
from autobill.rating.billing import load_tariffs, rate_for_billing
from sandboxes.generate import tariff_frame
from tests.support.ops import BillingWorld, kill_while_posting, whmcs_world

pytestmark = [pytest.mark.flow]
D1 = date(2026, 11, 18)


@pytest.fixture
def world(tmp_path, prefect_harness, monkeypatch, ledger_url):
    """On SQLite and on PostgreSQL (`ledger_url` runs both)."""
    with whmcs_world(tmp_path, monkeypatch, D1, D1, clients=6, servers=2, calls_per_day=25,
                     ledger_url=ledger_url) as w:
        yield w


def set_whmcs(world: BillingWorld, **keys) -> None:
    config = yaml.safe_load(world.config_path.read_text())
    config["whmcs"].update(keys)
    world.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def set_tariff(world: BillingWorld, changes: dict[str, tuple[str, int]]) -> None:
    """Rewrite the tariff file: prefix -> (rate, increment)."""
    t = tariff_frame()
    for prefix, (rate, inc) in changes.items():
        t = t.with_columns(
            pl.when(pl.col("prefix") == prefix).then(pl.lit(rate)).otherwise(pl.col("rate")).alias("rate"),
            pl.when(pl.col("prefix") == prefix).then(pl.lit(inc)).otherwise(pl.col("first_increment"))
            .alias("first_increment"),
            pl.when(pl.col("prefix") == prefix).then(pl.lit(inc)).otherwise(pl.col("next_increment"))
            .alias("next_increment"))
    t.write_csv(world.tmp / "tariffs" / "retail.csv")


def nightly(world: BillingWorld) -> dict:
    from autobill.ledger.runs import run_summary
    from flows.autobill import nightly as flow

    state = flow(billing_date=D1, config_path=str(world.config_path), return_state=True)
    return run_summary(world.settings, str(state.state_details.flow_run_id))


def rerate(world: BillingWorld, **kw) -> dict:
    from autobill.ledger.runs import run_summary
    from flows.rerate import rerate as flow

    kw.setdefault("reason", "Jamaica was priced at the old carrier rate")
    state = flow(start_date=D1, end_date=D1, config_path=str(world.config_path), requested_by="ops@test",
                 return_state=True, **kw)
    summary = run_summary(world.settings, str(state.state_details.flow_run_id))
    assert summary is not None, state.message
    return summary


def reference_lines(world: BillingWorld) -> dict[tuple, Decimal]:
    """What D1 would be billed with the tariff on disk today, on a fresh ledger: the nightly
    engine over the lake rows of the CDRs the ledger billed, one line per client/service/class."""
    billed = {b.cdr_key for b in world.billed()}
    rows = pl.concat([lake.read_range(world.settings.data_path, s, date(2026, 11, 17), date(2026, 11, 19))
                      for s in world.server_ids])
    rows = rows.filter(pl.col("cdr_key").is_in(list(billed))).unique("cdr_key")
    cdrs = with_billing_date(assign_services(rows, world.settings), world.settings.timezone)
    rated = rate_for_billing(cdrs, world.settings, load_tariffs(world.settings), {})
    out: dict[tuple, Decimal] = defaultdict(Decimal)
    for r in rated.filter(pl.col("outcome") == "billed").iter_rows(named=True):
        out[(r["client_id"], r["service_id"], r["charge_class"], r["currency"])] += Decimal(r["cost"])
    return {k: round_minor(v, k[3]) for k, v in out.items() if round_minor(v, k[3]) != 0}


def ledger_lines(world: BillingWorld) -> dict[tuple, Decimal]:
    out: dict[tuple, Decimal] = defaultdict(Decimal)
    for c in world.charges():
        out[(c.client_id, c.service_id, c.charge_class, c.currency)] += c.amount
    return {k: v for k, v in out.items() if v != 0}


def assert_whmcs_matches(world: BillingWorld) -> None:
    """Every posted line is in WHMCS once: charges and increases as billable items, decreases as credits."""
    items, credits = world.sandbox.billable_items(), world.sandbox.credits()
    posted = [c for c in world.charges() if c.state == "posted"]
    as_credit = [c for c in posted if c.kind == "correction" and c.amount < 0]
    as_item = [c for c in posted if c not in as_credit]
    assert len(items) == len(as_item) and len(credits) == len(as_credit)
    for c in as_item:
        (item,) = [i for i in items if c.idempotency_key in i["description"]]
        assert item["amount"] == c.amount and item["userid"] == c.client_id and item["id"] == c.whmcs_billable_id
    for c in as_credit:
        (credit,) = [i for i in credits if c.idempotency_key in i["description"]]
        assert credit["amount"] == -c.amount and credit["clientid"] == c.client_id


JAMAICA_UP = {"1876": ("0.3000", 60)}
FIX = {**JAMAICA_UP, "1": ("0.0050", 60), "44": ("0.0300", 60)}  # up, down (longer increments eat minutes), up


def test_rerate_posts_the_difference_once_and_a_second_time_nothing(world):
    world.drop(D1)
    first = nightly(world)
    assert first["status"] == "completed" and first["charges_posted"] > 0
    world.assert_exactly_once()
    posted_before = {c.id: (c.amount, c.state, c.whmcs_billable_id, c.description) for c in world.charges()}

    same = rerate(world)  # the tariff has not changed: nothing to correct
    assert same["rerated"] == first["billed"] + first["included"] + first["zero_cost"]
    assert same["corrections"] == 0 and same["posted"] == 0 and same["changed_calls"] == 0
    assert world.sandbox.credits() == [] and len(world.sandbox.billable_items()) == first["charges_posted"]

    set_tariff(world, FIX)
    preview = rerate(world, dry_run=True)
    assert preview["dry_run"] and preview["corrections"] > 0 and preview["billable_items"] > 0
    assert preview["credits"] > 0 and preview["clients"] and preview["destinations"]
    assert {d["destination"] for d in preview["destinations"]} & {"Jamaica", "USA/Canada", "United Kingdom"}
    assert [c for c in world.charges() if c.kind == "correction"] == []  # the preview records nothing
    assert world.sandbox.credits() == [] and len(world.sandbox.billable_items()) == first["charges_posted"]

    done = rerate(world)
    assert done["status"] == "completed" and done["posted"] == done["to_post"] > 0
    assert [ln["key"] for ln in done["lines"]] == [ln["key"] for ln in preview["lines"]]  # the preview was right
    assert_whmcs_matches(world)
    assert ledger_lines(world) == reference_lines(world)  # billed(T1) + corrections == billed(T2), per line
    # Nothing posted was edited.
    after = {c.id: (c.amount, c.state, c.whmcs_billable_id, c.description) for c in world.charges()}
    assert {k: after[k] for k in posted_before} == posted_before
    corrections = [c for c in world.charges() if c.kind == "correction"]
    assert all(c.corrects_charge_id is not None and c.rerate_id for c in corrections)
    with session_scope(world.settings.ledger) as s:
        (audit,) = s.scalars(select(Rerate).where(Rerate.id.in_({c.rerate_id for c in corrections}))).all()
        assert audit.reason.startswith("Jamaica") and audit.requested_by == "ops@test" and "retail" in audit.tariff_versions
        linked = Counter(r.correction_id for r in s.scalars(select(CorrectionCDR)))
    assert all(linked[c.id] >= 1 for c in corrections)

    again = rerate(world)  # the same re-rate twice: nothing the second time
    assert again["corrections"] == 0 and again["posted"] == 0
    assert_whmcs_matches(world)

    set_tariff(world, {**FIX, "44": ("0.0400", 60)})  # a further fix: only the new difference
    later = rerate(world)
    assert later["corrections"] > 0 and {d["destination"] for d in later["destinations"]} == {"United Kingdom"}
    assert all(ln["class"] == "international" for ln in later["lines"])
    assert all(ln["was"] != ln["now"] for ln in later["lines"] if ln["posts_as"] != "none")
    assert_whmcs_matches(world)
    assert ledger_lines(world) == reference_lines(world)


def test_lost_credit_answer_is_found_in_the_credit_log_by_the_rerun_and_never_credited_twice(world):
    world.drop(D1)
    nightly(world)
    set_tariff(world, {"1": ("0.0010", 6)})  # only decreases: credits
    world.sandbox.fail_next(1, "drop_after_store", action="AddCredit")
    first = rerate(world)
    assert first["credits"] > 0 and first["status"] == "partial" and len(first["uncertain"]) == 1
    (key,) = first["uncertain"]
    assert len([c for c in world.sandbox.credits() if key in c["description"]]) == 1  # stored, answer lost
    again = rerate(world)  # no manual step: the rerun reads the client's credit log
    assert again["corrections"] == 0 and again["uncertain"] == [] and again["status"] == "completed"
    assert again["posted"] == 0  # found, not credited again
    assert len([c for c in world.sandbox.credits() if key in c["description"]]) == 1
    (charge,) = [c for c in world.charges() if c.idempotency_key == key]
    assert charge.state == "posted" and "credit log entry" in charge.last_error
    with session_scope(world.settings.ledger) as s:
        (kept,) = s.scalars(select(ChargeReconciliation).where(ChargeReconciliation.charge_id == charge.id)).all()
        assert (kept.source, kept.outcome) == ("credits", "posted")
    assert_whmcs_matches(world)
    assert ledger_lines(world) == reference_lines(world)


def test_credit_never_stored_is_pending_then_posted_once(world):
    """The run died after claiming a credit and before its AddCredit left: WHMCS never saw it."""
    world.drop(D1)
    nightly(world)
    set_tariff(world, {"1": ("0.0010", 6)})
    set_whmcs(world, credit_margin_seconds=4)
    world.sandbox.set_faults(action="AddCredit", mode="503")  # refused: every credit stays pending
    first = rerate(world)
    assert first["credits"] > 0 and first["posted"] == 0 and first["failed_posts"]
    assert world.sandbox.credits() == []
    key = first["failed_posts"][0]
    with session_scope(world.settings.ledger) as s:  # what a claim commit leaves when the process dies
        s.execute(update(Charge).where(Charge.idempotency_key == key).values(state="posting"))
    world.sandbox.clear_faults()
    soon = rerate(world)  # uncertain now; absent from the credit log but within the margin: undecided
    assert soon["uncertain"] == [key] and soon["posted"] == len(first["failed_posts"]) - 1  # the others
    assert not [c for c in world.sandbox.credits() if key in c["description"]]
    (charge,) = [c for c in world.charges() if c.idempotency_key == key]
    time.sleep(max(0.0, (charge.uncertain_at - datetime.now(UTC)).total_seconds() + 4.5))
    later = rerate(world)  # the log read past the margin shows it was never stored: posted, once
    assert later["uncertain"] == [] and later["posted"] == 1
    assert len([c for c in world.sandbox.credits() if key in c["description"]]) == 1
    again = rerate(world)
    assert again["posted"] == 0 and len([c for c in world.sandbox.credits() if key in c["description"]]) == 1
    with session_scope(world.settings.ledger) as s:
        charge = s.scalars(select(Charge).where(Charge.idempotency_key == key)).one()
        outcomes = s.scalars(select(ChargeReconciliation.outcome).where(ChargeReconciliation.charge_id == charge.id)
                             .order_by(ChargeReconciliation.id)).all()
    assert charge.state == "posted" and outcomes == ["undecided", "pending"]
    assert_whmcs_matches(world)
    assert ledger_lines(world) == reference_lines(world)


def test_whmcs_failing_posts_each_correction_once(world):
    world.drop(D1)
    nightly(world)
    set_tariff(world, FIX)
    world.sandbox.set_faults(action="*", mode="503", error_rate=0.3, seed=5)
    done = rerate(world)
    assert done["to_post"] > 0 and world.sandbox.request_count() > done["to_post"]  # some were retried
    world.sandbox.clear_faults()
    rerun = rerate(world)  # posts what WHMCS refused throughout (still pending), makes nothing new
    assert rerun["corrections"] == 0 and rerun["status"] == "completed"
    assert done["posted"] + rerun["posted"] == done["to_post"]
    assert_whmcs_matches(world)
    assert ledger_lines(world) == reference_lines(world)


def test_killed_rerate_double_posts_nothing(world, prefect_harness):

    world.drop(D1)
    nightly(world)
    set_tariff(world, FIX)
    for action in ("AddBillableItem", "AddCredit"):
        world.sandbox.set_faults(action=action, mode="slow", delay=3.0)
    kill_while_posting(world, "rerate", "--from", str(D1), "--to", str(D1), "--reason", "fix", what="the re-rate")
    world.sandbox.clear_faults()
    assert world.sandbox.wait_idle(10)
    killed = [c for c in world.charges() if c.state == "posting"]
    assert 0 < len(killed) <= world.settings.whmcs.post_workers  # one claimed charge per posting worker
    stored_credits = {c.idempotency_key for c in killed if c.amount < 0
                      and any(c.idempotency_key in i["description"] for i in world.sandbox.credits())}
    rerun = rerate(world)
    assert rerun["corrections"] == 0  # the killed run's corrections were recorded: not made twice
    # A killed credit that reached WHMCS is found in the credit log and posted by the rerun; the rest
    # (items wait for WHMCS's cron, credits absent but within the margin) stay uncertain.
    after = {c.idempotency_key: c.state for c in world.charges()}
    assert all(after[k] == "posted" for k in stored_credits)
    assert set(rerun["uncertain"]) == {c.idempotency_key for c in killed} - stored_credits
    states = Counter(c.state for c in world.charges() if c.kind == "correction")
    assert states["posting"] == 0 and states["pending"] == 0
    assert states["uncertain"] == len(killed) - len(stored_credits)
    items, credits = world.sandbox.billable_items(), world.sandbox.credits()
    for c in world.charges():
        hits = [i for i in items + credits if c.idempotency_key in i["description"]]
        assert len(hits) == (1 if c.state == "posted" else 0 if c.state == "zero" else len(hits))
        assert len(hits) <= 1
