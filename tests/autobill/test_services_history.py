"""The claim history: a call belongs to the service that owned its number at the call's start.

The property test drives random sequences of syncs through the ledger (`record_sync`) and the
vectorised lookup (`assign_from_history`), and holds them to a plain timeline walk kept here.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autobill.cdr import CDR_SCHEMA
from autobill.ledger.db import upgrade
from autobill.mapping import ISSUE_COLUMN, assign_from_history
from autobill.services.build import Claim, Mapping
from autobill.services.history import Change, diff, load_history, record_sync

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TENANTS = ["t1", "t2", "t3"]
CONFLICT = "conflict"

# A snapshot: tenant -> owner (a service id, or CONFLICT), absent = unclaimed.
snapshots = st.lists(
    st.dictionaries(st.sampled_from(TENANTS), st.one_of(st.sampled_from([11, 12, 13]), st.just(CONFLICT)), max_size=3),
    min_size=1, max_size=5,
)


def mapping_of(snap: dict) -> Mapping:
    claims = [Claim("s1", t, "tenant", "", None, None, None, (11, 12)) if o == CONFLICT
              else Claim("s1", t, "tenant", "", o, o * 10, "basic") for t, o in snap.items()]
    return Mapping([], claims, [])


def reference_segments(history: list[tuple[datetime, dict]], tenant: str) -> list[list]:
    """[start, end, owner] per tenant: the first segment ever starts at -inf (None); a change closes
    the open segment and opens one at the sync time, except a conflict that ends with one owner,
    which becomes that owner's; a tenant no longer claimed closes its segment."""
    segs: list[list] = []
    for at, snap in history:
        owner = snap.get(tenant)
        open_seg = segs[-1] if segs and segs[-1][1] is None else None
        if open_seg is not None and open_seg[2] == owner:
            continue
        if open_seg is not None and open_seg[2] == CONFLICT and owner not in (None, CONFLICT):
            open_seg[2] = owner
            continue
        if open_seg is not None:
            open_seg[1] = at
        if owner is not None:
            segs.append([None if not segs else at, None, owner])
    return segs


def owner_at(segs: list[list], t: datetime, confirmed: datetime):
    if t > confirmed:
        return "unconfirmed"
    for start, end, owner in segs:
        if (start is None or t >= start) and (end is None or t < end):
            return owner
    return None


def calls(tenants_times: list[tuple[str, datetime]]) -> pl.DataFrame:
    rows = [{"cdr_key": f"s1:{i}", "server": "s1", "tenant": t, "direction": "outbound", "start_utc": at}
            for i, (t, at) in enumerate(tenants_times)]
    return pl.DataFrame(rows).with_columns(
        [pl.lit(None, dtype=dt).alias(c) for c, dt in CDR_SCHEMA.items() if c not in rows[0]]
    ).select(list(CDR_SCHEMA)).cast({"start_utc": pl.Datetime("us", "UTC")})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(snapshots, st.lists(st.integers(-2, 5 * 24 + 5), min_size=1, max_size=12))
def test_lookup_matches_the_timeline(snaps, hours):
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'ledger.db'}"
        upgrade(url)
        history = []
        for i, snap in enumerate(snaps):
            at = T0 + timedelta(days=i)
            record_sync(url, mapping_of(snap), at, "test")
            history.append((at, snap))
        loaded = load_history(url)
        assert loaded is not None and loaded.confirmed_until == history[-1][0]
        probes = [(t, T0 + timedelta(hours=h, minutes=30)) for t in TENANTS for h in hours]
        got = assign_from_history(calls(probes), loaded)
        for (tenant, at), row in zip(probes, got.iter_rows(named=True), strict=True):
            want = owner_at(reference_segments(history, tenant), at, loaded.confirmed_until)
            if want == "unconfirmed":
                assert row["service_id"] is None and row[ISSUE_COLUMN] == "unconfirmed"
            elif want == CONFLICT:
                assert row["service_id"] is None and row[ISSUE_COLUMN] == "conflict"
            else:
                assert row["service_id"] == want and row[ISSUE_COLUMN] is None, (tenant, at, history)
                assert row["client_id"] == (None if want is None else want * 10)


def test_diff_records_only_changes():
    a, b = (1, 10, "basic", ()), (2, 20, "basic", ())
    k1, k2, k3 = ("s", "t", "did", "1"), ("s", "t", "did", "2"), ("s", "t", "did", "3")
    changes = diff({k1: a, k2: a}, {k1: a, k2: b, k3: b}, seen={k1, k2})
    assert changes == [Change("close", k2), Change("open", k2, b), Change("open", k3, b, since_always=True)]
    assert diff({k1: a}, {k1: a}, {k1}) == []


def test_did_moved_on_the_15th_and_precedence(ledger_url):
    """Extension beats DID beats tenant; a DID moved from A to B bills A before, B after; calls of
    a terminated service before its termination stay its own."""
    t1, t15, t20 = T0, T0 + timedelta(days=14), T0 + timedelta(days=19)
    did = ("s1", "acme", "did", "15485550100")
    a_tenant = Claim("s1", "acme", "tenant", "", 1, 100, "basic")
    a_ext = Claim("s1", "acme", "extension", "201", 3, 300, "basic")
    record_sync(ledger_url, Mapping([], [a_tenant, a_ext, Claim(*did, 1, 100, "basic")], []), t1, "test")
    record_sync(ledger_url, Mapping([], [a_tenant, a_ext, Claim(*did, 2, 200, "business")], []), t15, "test")
    record_sync(ledger_url, Mapping([], [a_ext, Claim(*did, 2, 200, "business")], []), t20, "test")  # A terminated
    hist = load_history(ledger_url)
    rows = [
        ("inbound", "15485550100", None, t1 + timedelta(days=5)),   # DID, before the move: A
        ("inbound", "15485550100", None, t15 + timedelta(hours=1)),  # after: B
        ("outbound", "15485550100", None, t15 + timedelta(hours=1)),  # outbound: not by DID -> tenant A
        ("outbound", "44", "201", t15),  # the extension's own service
        ("outbound", "44", None, t20 - timedelta(seconds=1)),  # tenant A just before termination
        ("outbound", "44", None, t20),  # after termination: nobody
        ("inbound", "15485550100", None, T0 - timedelta(days=30)),  # before the first sync: first owner
    ]
    frame = pl.DataFrame(
        [{"cdr_key": f"k{i}", "server": "s1", "tenant": "acme", "direction": d, "rate_number": n, "extension": e,
          "start_utc": at} for i, (d, n, e, at) in enumerate(rows)]
    ).with_columns([pl.lit(None, dtype=dt).alias(c) for c, dt in CDR_SCHEMA.items()
                    if c not in ("cdr_key", "server", "tenant", "direction", "rate_number", "extension", "start_utc")])
    got = assign_from_history(frame.select(list(CDR_SCHEMA)).cast({"start_utc": pl.Datetime("us", "UTC")}), hist)
    assert got["service_id"].to_list() == [1, 2, 1, 3, 1, None, 1]
    assert got["plan"].to_list() == ["basic", "business", "basic", "basic", "basic", None, "basic"]


@pytest.mark.parametrize("winner", [1, 2])
def test_conflict_window_goes_to_whoever_keeps_the_number(ledger_url, winner):
    did = ("s1", "acme", "did", "15485550100")
    t1, t2, t3 = T0, T0 + timedelta(days=2), T0 + timedelta(days=4)
    record_sync(ledger_url, Mapping([], [Claim(*did, 1, 100, "basic")], []), t1, "test")
    for at in (t2, t2 + timedelta(days=1)):  # the conflict, seen by two syncs
        record_sync(ledger_url, Mapping([], [Claim(*did, None, None, None, (1, 2))], []), at, "test")
    probe = t2 + timedelta(hours=3)
    frame = calls([("x", probe)]).with_columns(pl.lit("acme").alias("tenant"), pl.lit("inbound").alias("direction"),
                                                pl.lit("15485550100").alias("rate_number"))
    during = assign_from_history(frame, load_history(ledger_url))
    assert during["service_id"].to_list() == [None] and during[ISSUE_COLUMN].to_list() == ["conflict"]
    record_sync(ledger_url, Mapping([], [Claim(*did, winner, winner * 100, "basic")], []), t3, "test")
    after = assign_from_history(frame, load_history(ledger_url))
    assert after["service_id"].to_list() == [winner] and after[ISSUE_COLUMN].to_list() == [None]
