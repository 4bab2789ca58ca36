"""Property (issue #12): for any mix of good and garbage rows, in a FusionPBX table (real
PostgreSQL) or a drop file, every good row comes out good exactly once (and is never read
again once its batch is committed) and every garbage row is quarantined; nothing vanishes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tests.support.fusionpbx_schema as fx
from autobill.ledger.batches import commit_batch, read_batch
from data_quality.rules import check_rows
from tasks.extract import extract_server
from tests.support import make_settings
from tests.support.extract import drop_server, fusion_server

DAY = datetime(2026, 6, 1, tzinfo=UTC)
UNTIL, NOW = DAY + timedelta(days=1), DAY + timedelta(days=1, hours=1)
TENANT = "acme.example.com"
FAST = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))

FUSION_GARBAGE = [
    {"start_epoch": float("nan")}, {"end_epoch": float("inf")}, {"end_epoch": None}, {"billsec": Decimal("1e30")},
    {"billsec": float("nan")}, {"answer_epoch": float("-inf")}, {"direction": "??"}, {"start_epoch": None},
]
DROP_GARBAGE = [
    "{id},yesterday,60,6135550123,outbound,{t}", "{id},2026-06-01T10:00:00Z,abc,6135550123,outbound,{t}",
    "{id},2026-06-01T10:00:00Z", "{id},2026-06-01T10:00:00Z,60,6135550123,outbound,{t},extra",
    "{id},2026-06-01T10:00:00,60,6135550123,outbound,{t}", "{id},2026-06-01T10:00:00Z,60,6135550123,sideways,{t}",
]
mixes = st.lists(st.tuples(st.booleans(), st.integers(0, 7)), min_size=1, max_size=12)


def _world(tmp_path, ledger_url, server):
    tariff = tmp_path / "t.csv"
    tariff.write_text("prefix,rate\n1,0.01\n")
    return make_settings(tmp_path, ledger_url, [server], tariffs=[{"name": "t", "path": str(tariff)}],
                         plans=[{"name": "p", "tariff": "t"}],
                         services=[{"client_id": 1, "service_id": 1, "server": server["id"], "tenant": TENANT,
                                    "plan": "p"}])


def _account(settings, sid, good_keys, bad_keys):
    got = extract_server(settings, sid, until=UNTIL)
    cdrs = read_batch(settings, got.batch_id)
    check = check_rows(cdrs, settings, NOW, server=sid)
    assert check.good.height + check.quarantined.height + check.duplicates.height == cdrs.height
    assert sorted(check.good["cdr_key"]) == sorted(good_keys)  # each good row once
    assert sorted(check.quarantined["cdr_key"]) == sorted(bad_keys)  # each garbage row quarantined
    assert check.duplicates.height == 0
    commit_batch(settings, got.batch_id)
    again = extract_server(settings, sid, until=UNTIL)
    assert again.rows == 0  # once committed, never read (and so never billed) again


@pytest.mark.postgres
@FAST
@given(mix=mixes)
def test_fusionpbx_any_mix_of_good_and_garbage_rows(tmp_path_factory, pg_url, mix) -> None:
    schema = pg_url.rsplit("%3D", 1)[1]
    table = f"v_xml_cdr_{uuid.uuid4().hex[:8]}"
    fx.create_cdr_table(schema, name=table)
    tmp = tmp_path_factory.mktemp("fx")
    settings = _world(tmp, f"sqlite:///{tmp / 'ledger.db'}", fusion_server(schema, table=table))
    good, bad = [], []
    for i, (is_good, kind) in enumerate(mix):
        row = fx.cdr_row(start=DAY + timedelta(hours=1, minutes=i), billsec=30 + i, domain=TENANT)
        if not is_good:
            row.update(FUSION_GARBAGE[kind])
        fx.insert_cdr(schema, table, row)
        (good if is_good else bad).append(f"pbx1:{row['call_uuid']}")
    _account(settings, "pbx1", good, bad)


@FAST
@given(mix=mixes, cut=st.booleans())
def test_drop_file_any_mix_of_good_and_garbage_rows(tmp_path_factory, mix, cut) -> None:
    tmp = tmp_path_factory.mktemp("drop")
    (tmp / "drop").mkdir()
    settings = _world(tmp, f"sqlite:///{tmp / 'ledger.db'}", drop_server(tmp / "drop"))
    lines, good, bad = [], [], []
    for i, (is_good, kind) in enumerate(mix):
        cid = f"c{i}"
        if is_good:
            lines.append(f"{cid},2026-06-01T{i % 24:02d}:00:00Z,{i},6135550123,outbound,{TENANT}")
        else:
            lines.append(DROP_GARBAGE[kind % len(DROP_GARBAGE)].format(id=cid, t=TENANT))
        (good if is_good else bad).append(f"drop:{cid}")
    text = "call_id,start,billsec,dst,direction,tenant\n" + "\n".join(lines)
    if cut:  # the writer died before the last line break: the last row is not trusted
        if good and good[-1] == f"drop:c{len(mix) - 1}":
            bad.append(good.pop())
    else:
        text += "\n"
    (tmp / "drop" / "calls.csv").write_text(text)
    _account(settings, "drop", good, bad)
