"""A corpus of bad source input (issue #12): each case asserts its exact outcome.

Every source row is accounted for: a row that cannot be read is quarantined with its rule, its
reason and its raw content (file/line or source key), the rest of the batch goes on, and the
numbers balance (rows extracted = good + quarantined + duplicates). A drop file that cannot be
read as a whole is quarantined whole (name, sha256, reason) and not billed.

FusionPBX cases run against a real PostgreSQL `v_xml_cdr` (tests/support/fusionpbx_schema.py);
drop-folder cases against real files; LesNet/Vodia cases through their parsers.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

import tests.support.fusionpbx_schema as fx
from autobill.config import LesNetServer, VodiaServer
from autobill.ledger.batches import commit_batch, quarantined_files, read_batch
from connectors.lesnet import parse_lesnet
from connectors.vodia import calls_from_legs
from data_quality.rules import check_rows
from sandboxes.vodia import VodiaSandbox
from tasks.extract import extract_server
from tests.support import make_settings
from tests.support.extract import drop_server, fusion_server

DAY = datetime(2026, 6, 1, tzinfo=UTC)
NOW = DAY + timedelta(days=1, hours=1)
UNTIL = DAY + timedelta(days=1)
TENANT = "acme.example.com"


def world(tmp_path: Path, ledger_url: str, server: dict) -> object:
    """Settings with one server whose tenant is a mapped service (so good answered calls are good)."""
    tariff = tmp_path / "t.csv"
    tariff.write_text("prefix,rate\n1,0.01\n")
    return make_settings(
        tmp_path, ledger_url, [server], tariffs=[{"name": "t", "path": str(tariff)}],
        plans=[{"name": "p", "tariff": "t", "bill_inbound": True}],
        services=[{"client_id": 1, "service_id": 1, "server": server["id"], "tenant": TENANT, "plan": "p"}],
    )


def accounted(settings, batch_id: int):
    """Read the batch back, split it with the row rules, and assert nothing vanished."""
    cdrs = read_batch(settings, batch_id)
    check = check_rows(cdrs, settings, NOW, server=settings.servers[0].id)
    assert check.good.height + check.quarantined.height + check.duplicates.height == cdrs.height
    return cdrs, check


def only_bad(check, key: str | None = None) -> dict:
    assert check.quarantined.height == 1, check.quarantined
    bad = check.quarantined.row(0, named=True)
    if key is not None:
        assert bad["cdr_key"] == key
    return bad


# -- FusionPBX: one bad row beside a good one, never failing the server -----------------------

NAN, INF = float("nan"), float("inf")
FUSION_CASES = [
    # (id, column changes on the bad row, expected rule, text in the reason)
    ("start_nan", {"start_epoch": NAN}, "unreadable_row", "start_epoch NaN is not a usable epoch"),
    ("start_inf", {"start_epoch": INF}, "unreadable_row", "start_epoch Infinity is not a usable epoch"),
    ("end_nan", {"end_epoch": NAN}, "unreadable_row", "end_epoch NaN is not a usable epoch"),
    ("end_inf", {"end_epoch": INF}, "unreadable_row", "end_epoch Infinity is not a usable epoch"),
    ("end_minus_inf", {"end_epoch": -INF}, "unreadable_row", "end_epoch -Infinity is not a usable epoch"),
    ("end_overflow", {"end_epoch": Decimal("1e20")}, "unreadable_row", "is not a usable epoch"),
    ("answer_nan", {"answer_epoch": NAN}, "unreadable_row", "answer_epoch NaN is not a usable epoch"),
    ("billsec_nan", {"billsec": NAN}, "unreadable_row", "billsec NaN is not a usable value"),
    ("billsec_inf", {"billsec": INF}, "unreadable_row", "billsec Infinity is not a usable value"),
    ("billsec_bigint_overflow", {"billsec": Decimal("1e30")}, "unreadable_row", "is not a usable value"),
    ("end_null", {"end_epoch": None}, "missing_end", "end_utc is empty"),
    ("start_null", {"start_epoch": None}, "missing_start", "start_utc is empty"),
    ("billsec_null", {"billsec": None}, "missing_billsec", "billsec is empty"),
    ("billsec_negative", {"billsec": -5}, "negative_billsec", "billsec -5 is negative"),
    ("direction_garbage", {"direction": "sideways"}, "unknown_direction", "direction sideways"),
    ("domain_unmapped", {"domain_name": "nobody.example.com"}, "unknown_service", "no service maps"),
]


@pytest.mark.postgres
@pytest.mark.parametrize(("changes", "rule", "reason"), [c[1:] for c in FUSION_CASES],
                         ids=[c[0] for c in FUSION_CASES])
def test_fusionpbx_bad_row_is_quarantined_and_the_server_goes_on(tmp_path, sqlite_url, pg_schema, changes, rule,
                                                                  reason) -> None:
    fx.create_cdr_table(pg_schema)
    settings = world(tmp_path, sqlite_url, fusion_server(pg_schema))
    good = fx.cdr_row(start=DAY + timedelta(hours=9), billsec=55, domain=TENANT)
    bad = {**fx.cdr_row(start=DAY + timedelta(hours=10), billsec=30, domain=TENANT), **changes}
    for row in (good, bad):
        fx.insert_cdr(pg_schema, "v_xml_cdr", row)

    got = extract_server(settings, "pbx1", until=UNTIL)
    assert got.rows == 2  # the bad row is extracted and counted, not filtered out in SQL
    _, check = accounted(settings, got.batch_id)
    assert check.good["cdr_key"].to_list() == [f"pbx1:{good['call_uuid']}"]
    q = only_bad(check, f"pbx1:{bad['call_uuid']}")
    assert q["rule"] == rule and reason in q["reason"]
    source = json.loads(json.loads(q["row"])["source_row"])  # the raw row, kept for the operator
    assert source["xml_cdr_uuid"] == bad["call_uuid"]
    # the watermark moves past the bad row (to the good call's end at least)
    assert got.proposed_watermark is not None and got.proposed_watermark >= DAY + timedelta(hours=9)


# -- drop folder: bad rows in a good file ---------------------------------------------------------

HEADER = "call_id,start,billsec,dst,direction,tenant\n"
GOOD_ROW = f"g1,2026-06-01T09:00:00Z,60,6135550123,outbound,{TENANT}\n"
ROW_CASES = [
    # (id, the bad row's text (no line end), rule, text in the reason)
    ("too_many_fields", f"b1,2026-06-01T10:00:00Z,60,6135550123,outbound,{TENANT},extra", "unreadable_row",
     "row has 7 field(s), the header has 6"),
    ("too_few_fields", "b1,2026-06-01T10:00:00Z,60", "unreadable_row", "row has 3 field(s), the header has 6"),
    ("start_garbage", f"b1,yesterday,60,6135550123,outbound,{TENANT}", "unreadable_row",
     "start yesterday is not an ISO-8601 time"),
    ("start_without_offset", f"b1,2026-06-01T10:00:00,60,6135550123,outbound,{TENANT}", "unreadable_row",
     "start 2026-06-01T10:00:00 is not an ISO-8601 time with an offset"),
    ("start_impossible_date", f"b1,2026-02-30T10:00:00Z,60,6135550123,outbound,{TENANT}", "unreadable_row",
     "start 2026-02-30T10:00:00Z"),
    ("billsec_text", f"b1,2026-06-01T10:00:00Z,abc,6135550123,outbound,{TENANT}", "unreadable_row",
     "billsec abc is not a whole number"),
    ("billsec_fraction", f"b1,2026-06-01T10:00:00Z,1.5,6135550123,outbound,{TENANT}", "unreadable_row",
     "billsec 1.5 is not a whole number"),
    ("billsec_huge", f"b1,2026-06-01T10:00:00Z,99999999999999999999999,6135550123,outbound,{TENANT}",
     "unreadable_row", "is not a whole number"),
    # no `end` column: end = start + billsec, so the first failing rule is end_before_start; the
    # reason lists every rule that failed
    ("billsec_negative", f"b1,2026-06-01T10:00:00Z,-3,6135550123,outbound,{TENANT}", "end_before_start",
     "negative_billsec: billsec -3 is negative"),
    ("billsec_over_a_day", f"b1,2026-06-01T00:00:01Z,90000,6135550123,outbound,{TENANT}", "call_too_long",
     "more than validation.max_call_seconds 86400"),
    ("empty_call_id", f",2026-06-01T10:00:00Z,60,6135550123,outbound,{TENANT}", "missing_key", "cdr_key is empty"),
    ("call_id_with_space", f"b 1,2026-06-01T10:00:00Z,60,6135550123,outbound,{TENANT}", "malformed_key",
     "is not '<server>:<call id>'"),
    ("direction_unknown", f"b1,2026-06-01T10:00:00Z,60,6135550123,sideways,{TENANT}", "unknown_direction",
     "direction sideways"),
    ("empty_start", f"b1,,60,6135550123,outbound,{TENANT}", "missing_start", "start_utc is empty"),
    ("empty_billsec", f"b1,2026-06-01T10:00:00Z,,6135550123,outbound,{TENANT}", "missing_end",
     "missing_billsec: billsec is empty"),  # no `end` column: the end comes from billsec
    ("unknown_tenant", "b1,2026-06-01T10:00:00Z,60,6135550123,outbound,nobody", "unknown_service",
     "no service maps"),
    ("bad_number", f"b1,2026-06-01T10:00:00Z,60,call-me,outbound,{TENANT}", "invalid_number",
     "does not normalise"),
    ("future_call", f"b1,2026-06-01T23:59:00Z,60,6135550123,outbound,{TENANT}", None, None),  # before until: good
    ("conflicting_duplicate", f"g1,2026-06-01T09:00:00Z,61,6135550123,outbound,{TENANT}", "conflicting_duplicate",
     "same cdr_key as batch row 0"),
]


@pytest.mark.parametrize(("row", "rule", "reason"), [c[1:] for c in ROW_CASES], ids=[c[0] for c in ROW_CASES])
def test_drop_file_bad_row_is_quarantined_with_file_and_line(tmp_path, sqlite_url, row, rule, reason) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = world(tmp_path, sqlite_url, drop_server(drop))
    (drop / "day.csv").write_text(HEADER + GOOD_ROW + row + "\n")
    got = extract_server(settings, "drop", until=UNTIL)
    assert got.rows == 2 and [f[0] for f in got.files] == ["day.csv"] and got.bad_files == []
    _, check = accounted(settings, got.batch_id)
    assert "drop:g1" in check.good["cdr_key"].to_list()
    if rule is None:
        assert check.quarantined.height == 0 and check.good.height == 2
        return
    q = only_bad(check)
    assert q["rule"] == rule and reason in q["reason"], q
    source = json.loads(json.loads(q["row"])["source_row"])
    assert (source["_file"], source["_line"]) == ("day.csv", 2)


def test_truncated_last_line_is_a_bad_row_not_a_call(tmp_path, sqlite_url) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = world(tmp_path, sqlite_url, drop_server(drop))
    # the writer died in the middle of the destination: "6135550123" became "61355"
    (drop / "cut.csv").write_text(HEADER + GOOD_ROW + "b1,2026-06-01T10:00:00Z,60,61355")
    got = extract_server(settings, "drop", until=UNTIL)
    _, check = accounted(settings, got.batch_id)
    assert check.good["cdr_key"].to_list() == ["drop:g1"]
    q = only_bad(check, "drop:b1")
    assert q["rule"] == "unreadable_row" and "the file was cut off (truncated row)" in q["reason"]


def test_truncated_last_line_with_all_fields_is_still_not_billed(tmp_path, sqlite_url) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = world(tmp_path, sqlite_url, drop_server(drop))
    (drop / "cut.csv").write_text(HEADER + GOOD_ROW + f"b1,2026-06-01T10:00:00Z,60,6135550123,outbound,{TENANT[:4]}")
    got = extract_server(settings, "drop", until=UNTIL)
    _, check = accounted(settings, got.batch_id)
    assert only_bad(check, "drop:b1")["rule"] == "unreadable_row"


def test_quoted_file_with_ragged_rows_keeps_the_good_ones(tmp_path, sqlite_url) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = world(tmp_path, sqlite_url, drop_server(drop))
    (drop / "q.csv").write_text(HEADER + f'"g1","2026-06-01T09:00:00Z","60","6135550123","outbound","{TENANT}"\n'
                                + '"b1","2026-06-01T10:00:00Z"\n')
    got = extract_server(settings, "drop", until=UNTIL)
    _, check = accounted(settings, got.batch_id)
    assert check.good["cdr_key"].to_list() == ["drop:g1"]
    assert "row has 2 field(s)" in only_bad(check, "drop:b1")["reason"]


# -- drop folder: files that cannot be read as a whole -------------------------------------------

FILE_CASES = [
    # (id, file name, bytes, text in the reason)
    ("empty", "a.csv", b"", "empty file"),
    ("only_whitespace", "a.csv", b"\n \n\t\n", "empty file"),
    ("not_utf8", "a.csv", HEADER.encode() + "g9,2026-06-01T09:00:00Z,60,6135550123,outbound,caf\xe9\n".encode("latin-1"),
     "not UTF-8 text"),
    ("utf16", "a.csv", HEADER.encode("utf-16"), "not UTF-8 text"),
    ("missing_column", "a.csv", b"call_id,start,billsec,direction,tenant\nx,2026-06-01T09:00:00Z,1,outbound,t\n",
     "header lacks required column(s) dst"),
    ("wrong_columns", "a.csv", b"a,b,c\n1,2,3\n", "header lacks required column(s) call_id, start, billsec"),
    ("binary_garbage", "a.csv", bytes(range(256)) * 4, "not UTF-8 text"),
    ("not_parquet", "a.parquet", b"PAR1 this is not parquet", "unreadable"),
    ("truncated_parquet", "a.parquet", None, "unreadable"),
    ("unknown_suffix", "a.xlsx", b"PK\x03\x04 spreadsheet", "not a .csv or .parquet file"),
    ("repeated_header_name", "a.csv", b'call_id,call_id,start,billsec,dst,direction,tenant\n"1","2",x,1,2,outbound,t\n',
     "the header repeats a column name"),
    ("repeated_header_name_unquoted", "a.csv", b"call_id,call_id,start,billsec,dst,direction,tenant\n1,2,x,1,2,o,t\n",
     "the header repeats a column name"),
]


def _truncated_parquet(tmp_path: Path) -> bytes:
    path = tmp_path / "full.parquet"
    pl.DataFrame({"call_id": ["p1"] * 100, "start": ["2026-06-01T09:00:00Z"] * 100, "billsec": [1] * 100,
                  "dst": ["6135550123"] * 100, "direction": ["outbound"] * 100, "tenant": [TENANT] * 100}
                 ).write_parquet(path)
    data = path.read_bytes()
    path.unlink()
    return data[: len(data) // 2]


@pytest.mark.parametrize(("name", "data", "reason"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_unreadable_file_is_quarantined_whole_and_the_good_file_billed(tmp_path, sqlite_url, name, data,
                                                                         reason) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = world(tmp_path, sqlite_url, drop_server(drop))
    data = _truncated_parquet(tmp_path) if data is None else data
    (drop / name).write_bytes(data)
    (drop / "good.csv").write_text(HEADER + GOOD_ROW)
    got = extract_server(settings, "drop", until=UNTIL)
    assert [f[0] for f in got.files] == ["good.csv"] and got.rows == 1
    [(bad_name, digest, why)] = got.bad_files
    assert bad_name == name and len(digest) == 64 and reason in why, why
    _, check = accounted(settings, got.batch_id)
    assert check.good["cdr_key"].to_list() == ["drop:g1"]
    commit_batch(settings, got.batch_id)
    [held] = quarantined_files(settings, "drop")
    assert (held["name"], held["sha256"]) == (name, digest) and reason in held["reason"]
    again = extract_server(settings, "drop", until=UNTIL)  # unchanged: neither read nor counted again
    assert (again.rows, again.bad_files, again.files) == (0, [], [])


def test_a_folder_of_only_bad_files_is_not_a_source_error(tmp_path, sqlite_url) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = world(tmp_path, sqlite_url, drop_server(drop))
    (drop / "a.csv").write_bytes(b"")
    (drop / "b.csv").write_bytes(b"nonsense\n")
    got = extract_server(settings, "drop", until=UNTIL)
    assert got.rows == 0 and sorted(b[0] for b in got.bad_files) == ["a.csv", "b.csv"]


def test_header_only_file_is_processed_with_no_calls(tmp_path, sqlite_url) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = world(tmp_path, sqlite_url, drop_server(drop))
    (drop / "h.csv").write_text(HEADER)
    got = extract_server(settings, "drop", until=UNTIL)
    assert got.rows == 0 and got.bad_files == [] and [f[0] for f in got.files] == ["h.csv"]


# -- LesNet and Vodia: rows that do not parse are kept for quarantine ----------------------------

LESNET = LesNetServer(id="les", kind="lesnet", url="http://127.0.0.1:1/cdr.txt", account=TENANT)
LESNET_HEADER = "CallID,DateTime,Source,Destination,Direction,Duration\n"
LESNET_CASES = [
    ("lesnet_fields", "x1,2026-06-01 09:00:00,4165550100\n", "unreadable_row", "3 fields, expected 6"),
    ("lesnet_date", "x1,June first,4165550100,6135550123,out,61\n", "unreadable_row",
     'start "June first" is not a date (DateTime, format %Y-%m-%d %H:%M:%S)'),
    ("lesnet_date_impossible", "x1,2026-02-30 09:00:00,4165550100,6135550123,out,61\n", "unreadable_row",
     'start "2026-02-30 09:00:00" is not a date'),
    ("lesnet_date_other_format", "x1,01/06/2026 09:00,4165550100,6135550123,out,61\n", "unreadable_row",
     'start "01/06/2026 09:00" is not a date'),
    ("lesnet_duration", "x1,2026-06-01 09:00:00,4165550100,6135550123,out,sixty\n", "unreadable_row",
     'duration "sixty" is not a duration (Duration: seconds, M:SS or H:MM:SS)'),
    ("lesnet_duration_negative", "x1,2026-06-01 09:00:00,4165550100,6135550123,out,-5\n", "unreadable_row",
     'duration "-5" is not a duration'),
    ("lesnet_duration_fraction", "x1,2026-06-01 09:00:00,4165550100,6135550123,out,1.5\n", "unreadable_row",
     'duration "1.5" is not a duration'),
    ("lesnet_duration_bad_minutes", "x1,2026-06-01 09:00:00,4165550100,6135550123,out,1:75\n", "unreadable_row",
     'duration "1:75" is not a duration'),
    ("lesnet_duration_huge", "x1,2026-06-01 09:00:00,4165550100,6135550123,out,99999999999999999999999\n",
     "unreadable_row", "is not a duration"),
    ("lesnet_date_and_duration", "x1,soon,4165550100,6135550123,out,long\n", "unreadable_row",
     'start "soon" is not a date (DateTime, format %Y-%m-%d %H:%M:%S); duration "long" is not a duration'),
    ("lesnet_empty_date", "x1,,4165550100,6135550123,out,61\n", "missing_start", "start_utc is empty"),
    ("lesnet_empty_duration", "x1,2026-06-01 09:00:00,4165550100,6135550123,out,\n", "missing_end",
     "missing_billsec: billsec is empty"),
    ("lesnet_direction", "x1,2026-06-01 09:00:00,4165550100,6135550123,sideways,61\n", "unknown_direction",
     "direction (empty)"),
    ("lesnet_dst_time", "x1,2026-03-08 02:30:00,4165550100,6135550123,out,61\n", "unreadable_row",
     'start "2026-03-08 02:30:00" does not exist in America/Toronto (the clocks skip it)'),
]


@pytest.mark.parametrize(("row", "rule", "reason"), [c[1:] for c in LESNET_CASES], ids=[c[0] for c in LESNET_CASES])
def test_lesnet_bad_row_is_quarantined(tmp_path, sqlite_url, row, rule, reason) -> None:
    settings = world(tmp_path, sqlite_url, {"id": "les", "kind": "lesnet", "url": LESNET.url, "account": TENANT})
    good = "g1,2026-06-01 09:00:00,4165550100,6135550123,out,61\n"
    cdrs = parse_lesnet(LESNET_HEADER + good + row, None, LESNET)
    check = check_rows(cdrs, settings, NOW, server="les")
    assert check.good.height + check.quarantined.height + check.duplicates.height == cdrs.height == 2
    assert check.good["cdr_key"].to_list() == ["les:g1"]
    q = only_bad(check)
    assert q["rule"] == rule and reason in q["reason"], q
    source = json.loads(json.loads(q["row"])["source_row"])  # the raw row and its line, kept
    assert source["_line"] == 3 and (source.get("CallID") == "x1" or "x1" in source.get("_fields", []))


VODIA = VodiaServer(id="vod", kind="vodia", url="http://127.0.0.1:1", username="u", password={"env": "X"})
T9 = int(DAY.timestamp()) + 9 * 3600
VODIA_CASES = [
    # (id, changes on the bad leg, rule, text in the reason)
    ("vodia_end_garbage", {"EndTime": "not a time"}, "unreadable_row", 'end "not a time" is not a date (EndTime)'),
    ("vodia_start_garbage", {"StartTime": "later"}, "unreadable_row", 'start "later" is not a date (StartTime)'),
    ("vodia_connect_garbage", {"ConnectTime": "x"}, "unreadable_row", 'connect "x" is not a date (ConnectTime)'),
    ("vodia_start_bool", {"StartTime": True}, "unreadable_row", "start true is not a date"),
    ("vodia_end_object", {"EndTime": {"t": 1}}, "unreadable_row", "is not a date (EndTime)"),
    ("vodia_end_list", {"EndTime": [T9]}, "unreadable_row", "is not a date (EndTime)"),
    ("vodia_end_nan", {"EndTime": float("nan")}, "unreadable_row", "is not a date (EndTime)"),
    ("vodia_end_infinity", {"EndTime": float("inf")}, "unreadable_row", "is not a date (EndTime)"),
    ("vodia_end_overflow", {"EndTime": 10**20}, "unreadable_row", "is not a usable epoch"),
    ("vodia_start_negative", {"StartTime": -5}, "unreadable_row", "is not a usable epoch"),
    ("vodia_end_iso_impossible", {"EndTime": "2026-02-30T10:00:00Z"}, "unreadable_row",
     'end "2026-02-30T10:00:00Z" is not a date'),
    ("vodia_end_empty", {"EndTime": ""}, "missing_end", "end_utc is empty"),
    ("vodia_end_missing", {"EndTime": None}, "missing_end", "end_utc is empty"),
    ("vodia_connect_after_end", {"ConnectTime": T9 + 900}, "answer_after_end", "is after end"),
]


def vodia_settings(tmp_path, ledger_url, url: str = VODIA.url):
    return world(tmp_path, ledger_url, {"id": "vod", "kind": "vodia", "url": url, "username": "u",
                                        "password": {"env": "VODIA_CORPUS_PW"}})


def vodia_leg(call: str, **changes) -> dict:
    return {"Direction": "O", "TrunkName": "t1", "Extension": "1001", "LocalParty": "1001",
            "RemoteParty": "6135550123", "StartTime": T9, "ConnectTime": T9 + 5, "EndTime": T9 + 65,
            "CallID": call, "PrimaryCallID": call, **changes}


@pytest.mark.parametrize(("changes", "rule", "reason"), [c[1:] for c in VODIA_CASES],
                         ids=[c[0] for c in VODIA_CASES])
def test_vodia_bad_leg_is_quarantined(tmp_path, sqlite_url, changes, rule, reason) -> None:
    settings = vodia_settings(tmp_path, sqlite_url)
    cdrs, _ = calls_from_legs([(TENANT, vodia_leg("g1")), (TENANT, vodia_leg("b1", **changes))], VODIA)
    check = check_rows(cdrs, settings, NOW, server="vod")
    assert check.good.height + check.quarantined.height + check.duplicates.height == cdrs.height == 2
    assert check.good["cdr_key"].to_list() == ["vod:g1"]
    q = only_bad(check, "vod:b1")
    assert q["rule"] == rule and reason in q["reason"], q
    source = json.loads(json.loads(q["row"])["source_row"])  # the raw leg, kept for the operator
    assert source["domain"] == TENANT and source["leg"]["CallID"] == "b1"


NOT_OBJECTS = [
    ("string", "garbage", "record is not a JSON object (str: \"garbage\")"),
    ("number", 42, "record is not a JSON object (int: 42)"),
    ("list", [1, "a"], 'record is not a JSON object (a list: [1, "a"])'),
    ("null", None, "record is not a JSON object (null: null)"),
    ("bool", False, "record is not a JSON object (bool: false)"),
]


@pytest.mark.parametrize(("record", "reason"), [c[1:] for c in NOT_OBJECTS], ids=[c[0] for c in NOT_OBJECTS])
def test_vodia_record_that_is_not_an_object_is_a_quarantined_row(tmp_path, sqlite_url, record, reason) -> None:
    cdrs, _ = calls_from_legs([(TENANT, vodia_leg("g1")), (TENANT, record), (TENANT, record)], VODIA)
    check = check_rows(cdrs, vodia_settings(tmp_path, sqlite_url), NOW, server="vod")
    assert cdrs.height == 2  # the same junk listed twice (e.g. on two pages) is one row
    assert check.good["cdr_key"].to_list() == ["vod:g1"]
    q = only_bad(check)
    assert q["rule"] == "unreadable_row" and reason in q["reason"], q
    assert q["cdr_key"].startswith("vod:row-")  # a stable key: the same junk is the same row next run
    source = json.loads(json.loads(q["row"])["source_row"])
    assert (source["domain"], source["record"]) == (TENANT, record)


def test_vodia_server_with_junk_records_over_http_goes_on(tmp_path, sqlite_url, monkeypatch) -> None:
    """Over real loopback HTTP: junk among the listed records neither fails the server nor stops the
    good calls; each piece of junk and each bad leg is one quarantined row with its reason."""
    monkeypatch.setenv("VODIA_CORPUS_PW", "pw")
    legs = [vodia_leg("g1"), "junk", vodia_leg("b1", EndTime="later"), [1, 2], vodia_leg("g2", EndTime=T9 + 125)]
    with VodiaSandbox({TENANT: legs}, username="u", password="pw") as sb:
        settings = vodia_settings(tmp_path, sqlite_url, sb.url)
        got = extract_server(settings, "vod", until=UNTIL)
    assert got.rows == 5
    _, check = accounted(settings, got.batch_id)
    assert sorted(check.good["cdr_key"].to_list()) == ["vod:g1", "vod:g2"]
    reasons = sorted(check.quarantined["reason"].to_list())
    assert len(reasons) == 3 and all("unreadable_row: record is not a JSON object" in r for r in reasons[1:]), reasons
    assert 'end "later" is not a date (EndTime)' in reasons[0]
    assert got.proposed_watermark == datetime.fromtimestamp(T9 + 125, UTC)
