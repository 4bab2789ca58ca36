"""The unrated backlog is rated again only when what it was rated with changed (tasks/rate.py,
autobill/ledger/unrated.py; issue #15: a backlog nobody fixes grew the nightly every night).

Nights of generated calls (some to destinations the tariff lacks: unrated) go through the real
rate and record steps on one ledger. A night with nothing changed leaves the backlog alone (not
in the rated file, no attempt counted); a tariff that gains the missing destinations bills the
whole backlog on the next night, each call once; a services sync that changed a claim, a config
change, a new autobill version and a dispute's held calls all retry.
"""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import yaml
from sqlalchemy import select

from autobill import lake
from autobill.cdr import conform
from autobill.config import load_settings
from autobill.ledger.batches import close_batch, open_batch
from autobill.ledger.billed import billed_frame
from autobill.ledger.db import session_scope, upgrade
from autobill.ledger.models import ServiceSync, UnratedCDR
from autobill.ledger.runs import start_run
from autobill.ledger.unrated import code_digest, rating_inputs, source_digest, unrated_rows, upsert_unrated
from autobill.timeutil import utc_now
from sandboxes.generate import (
    MISSING,
    generate_calls,
    generate_config,
    make_world,
    seed_whmcs_services,
    service_sync_section,
    tariff_frame,
)
from tasks.aggregate import record_chunks
from tasks.rate import rate_run

DAY = date(2026, 11, 18)


def _setup(tmp: Path):
    world = make_world(clients=12, servers_per_kind=2, kinds=("file",), seed=5)
    (tmp / "tariffs").mkdir(parents=True, exist_ok=True)
    tariff_frame().write_csv(tmp / "tariffs" / "retail.csv")
    (tmp / "autobill.yaml").write_text(yaml.safe_dump(generate_config(world), sort_keys=False))
    s = load_settings(tmp / "autobill.yaml")
    upgrade(s.ledger)
    return world, s


def _night(s, world, day: date, seed: int) -> tuple[pl.DataFrame, int]:
    """One night's calls through batches, the rate step and the record step; (rated file, run id)."""
    run_id = start_run(s, "nightly", day)
    until = datetime(day.year, day.month, day.day, 5, tzinfo=UTC) + timedelta(days=1)
    calls = conform(generate_calls(world, day, day, calls_per_client_day=15, seed=seed)) if seed else None
    paths, batch_ids = [], []
    for (server,), part in sorted(calls.partition_by("server", as_dict=True).items()) if calls is not None else []:
        bid = open_batch(s, server, run_id, until - timedelta(days=2), until)
        written = [str(p) for p in lake.write_batch(s.data_path, server, bid, part)]
        close_batch(s, bid, part.height, written, until, None, [], [])
        paths += written
        batch_ids.append(bid)
    rated = rate_run(s, day, paths, None, run_id)
    record_chunks(s, str(rated), run_id, batch_ids)
    return pl.read_parquet(rated), run_id


def _backlog(s) -> dict[str, tuple[int, bool]]:
    """cdr_key -> (attempts, resolved) of every unrated row."""
    with session_scope(s.ledger) as session:
        return {u.cdr_key: (u.attempts, u.resolved_at is not None) for u in session.scalars(select(UnratedCDR))}


def _billed_once(s) -> set[str]:
    keys = billed_frame(s, columns=("cdr_key",))["cdr_key"]
    assert keys.n_unique() == keys.len(), "a call was billed twice"
    return set(keys.to_list())


def test_an_unchanged_backlog_is_left_alone_and_a_tariff_fix_bills_all_of_it_once(tmp_path):
    world, s = _setup(tmp_path)
    first, _ = _night(s, world, DAY, seed=1)
    waiting = set(first.filter(pl.col("outcome") == "unrated")["cdr_key"].to_list())
    assert len(waiting) >= 2
    assert _backlog(s) == dict.fromkeys(waiting, (1, False))
    assert first["rated_with"].n_unique() == 1 and first["rated_with"][0] is not None

    # Nothing changed: the backlog is not rated again, not even counted as another attempt.
    second, _ = _night(s, world, DAY + timedelta(days=1), seed=2)
    assert second.filter(pl.col("source") == "unrated").is_empty()
    new_waiting = set(second.filter(pl.col("outcome") == "unrated")["cdr_key"].to_list())
    assert new_waiting and not new_waiting & waiting
    assert _backlog(s) == dict.fromkeys(waiting | new_waiting, (1, False))
    billed = _billed_once(s)
    assert not billed & (waiting | new_waiting)

    # The tariff gains the missing destinations: the next night rates the whole backlog again
    # and bills each of its calls once.
    extra = pl.DataFrame({"prefix": [p for p, _ in MISSING], "rate": ["0.5000"] * len(MISSING),
                          "description": ["added"] * len(MISSING), "connect_fee": ["0"] * len(MISSING),
                          "first_increment": [60] * len(MISSING), "next_increment": [60] * len(MISSING)})
    pl.concat([tariff_frame(), extra]).write_csv(tmp_path / "tariffs" / "retail.csv")
    third, _ = _night(s, world, DAY + timedelta(days=2), seed=0)  # no new calls at all
    assert set(third.filter(pl.col("source") == "unrated")["cdr_key"].to_list()) == waiting | new_waiting
    assert third.filter(pl.col("outcome") == "unrated").is_empty()
    assert _billed_once(s) == billed | waiting | new_waiting
    assert all(resolved for _, resolved in _backlog(s).values())


def _stamp(s, key_rows: dict[str, str | None], reason: str = "no_rate") -> None:
    """Unrated rows as the record step leaves them: (key -> rated_with)."""
    now = utc_now()
    row = '{"cdr_key": "%s", "server": "pbx", "start_utc": "2026-11-18T12:00:00+00:00", "billsec": "60"}'
    with session_scope(s.ledger) as session:
        session.add_all(UnratedCDR(cdr_key=k, server="pbx", billing_date=DAY, reason=reason, row=row % k,
                                   attempts=1, first_seen=now, last_seen=now, rated_with=fp)
                        for k, fp in key_rows.items())


def test_which_waiting_rows_are_rated_again(tmp_path):
    _, s = _setup(tmp_path)
    now_fp = "a" * 64
    _stamp(s, {"pbx:same": now_fp, "pbx:older": "b" * 64, "pbx:never": None, "pbx:held": now_fp})
    again = set(unrated_rows(s, DAY, skip_rated_with=now_fp)["cdr_key"].to_list())
    assert again == {"pbx:older", "pbx:never"}
    assert set(unrated_rows(s, DAY)["cdr_key"].to_list()) == again | {"pbx:same", "pbx:held"}  # no fingerprint
    assert unrated_rows(s, DAY - timedelta(days=1), skip_rated_with=now_fp).is_empty()  # later dates wait

    # Rated again with the same inputs: a call held by a dispute is kept without a fingerprint
    # (its release changes no input), the others with it; known rows count another attempt.
    # The same for a call that started after the last services sync: the next sync confirms who
    # owned its number even when it changes nothing.
    rated = pl.DataFrame({"cdr_key": ["pbx:held", "pbx:same", "pbx:new", "pbx:late"], "server": ["pbx"] * 4,
                          "billing_date": [DAY] * 4,
                          "unrated_reason": ["disputed", "no_rate", "disputed", "service_unconfirmed"],
                          "rated_with": [now_fp] * 4})
    with session_scope(s.ledger) as session:
        upsert_unrated(session, rated, utc_now())
    with session_scope(s.ledger) as session:
        stored = {u.cdr_key: (u.rated_with, u.attempts) for u in session.scalars(select(UnratedCDR))}
    assert stored["pbx:held"] == (None, 2) and stored["pbx:same"] == (now_fp, 2)
    assert stored["pbx:new"] == (None, 1) and stored["pbx:late"] == (None, 1)
    assert set(unrated_rows(s, DAY, skip_rated_with=now_fp)["cdr_key"].to_list()) == \
        again | {"pbx:held", "pbx:new", "pbx:late"}


def test_the_fingerprint_follows_every_rating_input(tmp_path, monkeypatch):
    _, s = _setup(tmp_path)
    versions = {"retail": "v1"}
    base = rating_inputs(s, versions)
    assert rating_inputs(s, versions) == base
    assert rating_inputs(s, {"retail": "v2"}) != base  # the tariff's content
    assert rating_inputs(s.model_copy(update={"timezone": "America/Vancouver"}), versions) != base  # the config
    with session_scope(s.ledger) as session:
        session.add(ServiceSync(at=utc_now(), origin="nightly", ok=True, changes=0))
    assert rating_inputs(s, versions) == base  # a sync that changed no claim
    with session_scope(s.ledger) as session:
        session.add(ServiceSync(at=utc_now(), origin="autosuspend", ok=False, changes=3, error="down"))
    assert rating_inputs(s, versions) == base  # a failed sync changed nothing
    with session_scope(s.ledger) as session:
        session.add(ServiceSync(at=utc_now(), origin="nightly", ok=True, changes=2))
    moved = rating_inputs(s, versions)
    assert moved != base  # who owns which number changed
    monkeypatch.setattr("autobill.ledger.unrated.version", lambda name: "99.0")
    released = rating_inputs(s, versions)
    assert released != moved  # another autobill
    monkeypatch.setattr("autobill.ledger.unrated.code_digest", lambda: "a fix to the rater")
    assert rating_inputs(s, versions) != released  # autobill's code changed without a release


def test_the_code_digest_follows_the_source_text_only(tmp_path):
    root = tmp_path / "pkg"
    (root / "rating").mkdir(parents=True)
    (root / "rating" / "engine.py").write_text("RATE = 1\n")
    (root / "notes.txt").write_text("not code")
    base = source_digest(root)
    assert len(base) == 64 and source_digest(root) == base
    (root / "notes.txt").write_text("still not code")
    os.utime(root / "rating" / "engine.py", (1, 1))
    assert source_digest(root) == base  # other files, and times, are not the code
    (root / "rating" / "engine.py").write_text("RATE = 2\n")
    assert source_digest(root) != base
    (root / "rating" / "engine.py").write_text("RATE = 1\n")
    assert source_digest(root) == base
    (root / "rating" / "match.py").write_text("")
    assert source_digest(root) != base  # a new module
    assert code_digest() == source_digest(Path(lake.__file__).parent)  # the autobill package


def test_a_call_after_the_last_sync_waits_and_is_billed_once_after_a_sync_that_changed_nothing(tmp_path, monkeypatch):
    """service_unconfirmed end to end: the rate and record steps, and the services step over loopback
    HTTP against the WHMCS sandbox. The second sync changes no claim, so no rating input moves:
    only the rule that keeps these calls without a fingerprint brings them back."""
    from tasks.services import sync_services
    from tests.support.whmcs import IDENT, SECRET, new_sandbox

    monkeypatch.setenv("T_WHMCS_ID", IDENT)
    monkeypatch.setenv("T_WHMCS_SECRET", SECRET)
    world = make_world(clients=12, servers_per_kind=2, kinds=("file",), seed=5)
    (tmp_path / "tariffs").mkdir()
    tariff_frame().write_csv(tmp_path / "tariffs" / "retail.csv")
    with new_sandbox() as sandbox:
        for _ in range(world.clients.height):
            sandbox.add_client()
        seed_whmcs_services(sandbox, world)
        config = generate_config(world)
        config.pop("services")
        config.update(service_sync=service_sync_section(),
                      whmcs={"url": sandbox.url, "identifier": {"env": "T_WHMCS_ID"},
                             "secret": {"env": "T_WHMCS_SECRET"}, "retries": 1, "timeout_seconds": 5})
        (tmp_path / "autobill.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        s = load_settings(tmp_path / "autobill.yaml")
        upgrade(s.ledger)
        noon = datetime(DAY.year, DAY.month, DAY.day, 12, tzinfo=UTC)
        assert sync_services(s, now=noon).ok

        first, _ = _night(s, world, DAY, seed=1)
        late = first.filter(pl.col("unrated_reason") == "service_unconfirmed")
        assert late.height >= 5 and (late["start_utc"] > noon).all()
        after = first.filter(pl.col("start_utc") > noon)  # answered: waiting for an owner; unanswered: free
        assert after.filter((pl.col("billsec") > 0) != (pl.col("outcome") == "unrated")).is_empty()
        waiting = set(late["cdr_key"].to_list())
        with session_scope(s.ledger) as session:
            stored = {u.cdr_key: u.rated_with for u in session.scalars(select(UnratedCDR))}
        assert all(stored[k] is None for k in waiting)  # no fingerprint: rated again every run
        billed = _billed_once(s)
        assert not billed & waiting

        fingerprint = rating_inputs(s, {"retail": first["tariff_version"].drop_nulls()[0]})
        result = sync_services(s, now=noon + timedelta(days=1))
        assert result.ok and result.changes == 0
        assert rating_inputs(s, {"retail": first["tariff_version"].drop_nulls()[0]}) == fingerprint

        second, _ = _night(s, world, DAY + timedelta(days=1), seed=0)  # no new calls
    again = second.filter(pl.col("cdr_key").is_in(list(waiting)))
    assert again.height == len(waiting) and (again["source"] == "unrated").all()
    # Every waiting call now has its owner: billed, or unrated only for what the tariff lacks.
    assert again.filter(pl.col("unrated_reason") == "service_unconfirmed").is_empty()
    still = set(again.filter(pl.col("outcome") == "unrated")["cdr_key"].to_list())
    assert set(again.filter(pl.col("outcome") == "unrated")["unrated_reason"].to_list()) <= {"no_rate"}
    assert len(still) < len(waiting) / 10
    assert _billed_once(s) == billed | (waiting - still)
    assert {k for k in waiting if _backlog(s)[k][1]} == waiting - still  # resolved
