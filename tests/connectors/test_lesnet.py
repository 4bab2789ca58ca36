"""LesNet: the configurable parser, and the connector against the LesNet sandbox over real HTTP."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from autobill.config import LesNetFormat, LesNetServer, Numbering
from connectors.base import SourceError
from connectors.lesnet import LesNetConnector, parse_lesnet
from sandboxes import LesNetSandbox

HEADER = "CallID,DateTime,Source,Destination,Direction,Duration\n"
DEFAULT_FILE = HEADER + (
    "c1,2024-07-01 12:00:00,4165550100,+442079460000,out,61\n"
    "c2,2024-01-15 09:00:00,+12125550000,4165550101,in,125\n"
    "c3,2024-01-15 09:05:00,4165550100,2125550123,OUT,0\n"
    "c4,2024-01-15 09:10:00,4165550100,011 33 1 42 68 53 00,out,1:01\n"
)


def server(url: str = "http://127.0.0.1:9/cdr.txt", **kw) -> LesNetServer:
    return LesNetServer(**{**dict(id="les1", kind="lesnet", url=url, account="D4E3CD2BFC791"), **kw})


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def by_key(frame) -> dict[str, dict]:
    return {r["cdr_key"]: r for r in frame.iter_rows(named=True)}


# -- parsing -----------------------------------------------------------------------------


def test_default_layout() -> None:
    rows = by_key(parse_lesnet(DEFAULT_FILE, None, server()))
    assert sorted(rows) == ["les1:c1", "les1:c2", "les1:c3", "les1:c4"]
    c1, c2, c3, c4 = (rows[f"les1:c{i}"] for i in range(1, 5))
    # July: EDT (UTC-4); January: EST (UTC-5)
    assert (c1["start_utc"], c1["answer_utc"], c1["end_utc"], c1["billsec"]) == (
        utc(2024, 7, 1, 16),
        utc(2024, 7, 1, 16),
        utc(2024, 7, 1, 16, 1, 1),
        61,
    )
    assert (c1["tenant"], c1["account"], c1["server"], c1["direction"], c1["src"], c1["dst"]) == (
        "D4E3CD2BFC791",
        "D4E3CD2BFC791",
        "les1",
        "outbound",
        "4165550100",
        "+442079460000",
    )
    assert c1["rate_number"] == "442079460000"
    assert (c2["direction"], c2["start_utc"], c2["rate_number"]) == (
        "inbound",
        utc(2024, 1, 15, 14),
        "14165550101",
    )
    assert (c3["direction"], c3["billsec"], c3["answer_utc"], c3["end_utc"]) == (
        "outbound",
        0,
        None,
        utc(2024, 1, 15, 14, 5),
    )
    assert (c4["billsec"], c4["rate_number"]) == (61, "33142685300")
    assert json.loads(c1["source_row"]) == {
        "CallID": "c1",
        "DateTime": "2024-07-01 12:00:00",
        "Source": "4165550100",
        "Destination": "+442079460000",
        "Direction": "out",
        "Duration": "61",
        "_line": 2,
    }


def test_toronto_dst_days() -> None:
    text = HEADER + (
        "a,2024-11-03 00:59:59,1,+442079460000,out,1\n"
        "b,2024-11-03 01:30:00,1,+442079460000,out,1\n"  # happens twice: the first (EDT) is taken
        "c,2024-11-03 02:00:00,1,+442079460000,out,1\n"
        "d,2024-03-10 01:59:59,1,+442079460000,out,1\n"
        "e,2024-03-10 02:30:00,1,+442079460000,out,1\n"  # does not exist: a bad date
        "f,2024-03-10 03:00:00,1,+442079460000,out,1\n"
    )
    start = {k.split(":")[1]: r["start_utc"] for k, r in by_key(parse_lesnet(text, None, server())).items()}
    assert start == {
        "a": utc(2024, 11, 3, 4, 59, 59),
        "b": utc(2024, 11, 3, 5, 30),
        "c": utc(2024, 11, 3, 7),
        "d": utc(2024, 3, 10, 6, 59, 59),
        "e": None,
        "f": utc(2024, 3, 10, 7),
    }


def test_semicolon_layout_with_other_names_directions_and_format() -> None:
    fmt = LesNetFormat(
        delimiter=";",
        columns={
            "call_id": "Id",
            "start": "Date",
            "src": "ANI",
            "dst": "DNIS",
            "direction": "Type",
            "billsec": "Secs",
        },
        timestamp_format="%d/%m/%Y %H:%M",
        directions={"Incoming": "inbound", "Outgoing": "outbound"},
    )
    text = "Id;Date;ANI;DNIS;Type;Secs;Cost\nx1;02/01/2024 08:30;4165550100;4165550199;outgoing;42;0,01\n"
    row = parse_lesnet(text, fmt, server()).row(0, named=True)
    assert (row["cdr_key"], row["start_utc"], row["direction"], row["billsec"], row["dst"]) == (
        "les1:x1",
        utc(2024, 1, 2, 13, 30),
        "outbound",
        42,
        "4165550199",
    )
    assert json.loads(row["source_row"])["Cost"] == "0,01"


@pytest.mark.parametrize("delimiter", ["\t", "|", ";"])
def test_delimiter_is_detected(delimiter: str) -> None:
    text = DEFAULT_FILE.replace(",", delimiter)
    assert parse_lesnet(text, LesNetFormat(), server()).equals(
        parse_lesnet(DEFAULT_FILE, LesNetFormat(), server())
    )


def test_headerless_file_with_index_columns_in_london() -> None:
    fmt = LesNetFormat(
        delimiter="\t",
        has_header=False,
        columns={"start": "0", "dst": "2", "billsec": "3", "direction": "4", "src": "1"},
        timestamp_format="%Y%m%d%H%M%S",
        timezone="Europe/London",
    )
    text = (
        "20240331005959\t02079460000\t01632960123\t10\tout\textra\n"
        "20240331013000\t02079460000\t01632960123\t10\tout\n"  # the spring gap: no such local time
        "20241027013000\t02079460000\t01632960123\t10\tout\n"  # twice: the first (BST) is taken
        "20240701120000\t02079460000\t01632960123\t10\tin\n"
    )
    frame = parse_lesnet(text, fmt, server(numbering=Numbering(country_code="44")))
    assert frame.get_column("start_utc").to_list() == [
        utc(2024, 3, 31, 0, 59, 59),
        None,
        utc(2024, 10, 27, 0, 30),
        utc(2024, 7, 1, 11),
    ]
    assert frame.get_column("rate_number").to_list() == ["441632960123"] * 4
    assert frame.get_column("direction").to_list() == ["outbound", "outbound", "outbound", "inbound"]
    # no CallID column: keys are content hashes, distinct here, stable across parses
    keys = frame.get_column("cdr_key").to_list()
    assert len(set(keys)) == 4 and all(k.startswith("les1:row-") for k in keys)
    assert parse_lesnet(text, fmt, server()).get_column("cdr_key").to_list() == keys


def test_offset_in_the_timestamp_wins_over_the_timezone() -> None:
    fmt = LesNetFormat(timestamp_format="%Y-%m-%dT%H:%M:%S%z", timezone="Asia/Tokyo")
    text = HEADER + "z1,2024-11-03T01:30:00-0500,1,+442079460000,out,5\n"
    assert parse_lesnet(text, fmt, server()).get_column("start_utc").to_list() == [utc(2024, 11, 3, 6, 30)]


def test_identical_rows_without_call_id_share_a_key_for_validation_to_flag() -> None:
    fmt = LesNetFormat(columns={"start": "DateTime", "dst": "Destination", "billsec": "Duration"})
    text = "DateTime,Destination,Duration\n2024-01-15 09:00:00,2125550123,30\n2024-01-15 09:00:00,2125550123,30\n"
    frame = parse_lesnet(text, fmt, server())
    assert frame.height == 2 and frame.get_column("cdr_key").n_unique() == 1
    assert frame.get_column("direction").to_list() == [None, None]  # no Direction column: unknown


def test_header_mismatch_is_one_clear_line() -> None:
    text = "CallID,DateTime,Source,Destination,Direction,Seconds\nc1,2024-07-01 12:00:00,1,2,out,3\n"
    with pytest.raises(SourceError) as exc:
        parse_lesnet(text, None, server(url="https://portal.les.net/cdr/D4E3CD2BFC791_0000.txt"))
    assert str(exc.value) == (
        "lesnet les1: https://portal.les.net/cdr/D4E3CD2BFC791_0000.txt: header lacks column 'Duration' "
        "(got CallID, DateTime, Source, Destination, Direction, Seconds)"
    )


def test_junk_rows_are_kept_with_nulls_for_quarantine() -> None:
    text = HEADER + (
        "j1,2024-13-45 99:00:00,1,+442079460000,out,10\n"
        "j2,2024-07-01 12:00:00,1,+442079460000,out,ten\n"
        "j3,2024-07-01 12:00:00,1,+442079460000,sideways,10\n"
        "j4,2024-07-01 12:00:00,1,+442079460000,out,-5\n"
        "j5,2024-07-01 12:00:00,1,+442079460000\n"
        "ok,2024-07-01 12:00:00,1,+442079460000,out,10,\n"  # a trailing delimiter is fine
        "\n"
    )
    rows = {k.split(":", 1)[1]: r for k, r in by_key(parse_lesnet(text, None, server())).items()}
    assert len(rows) == 6
    assert (rows["j1"]["start_utc"], rows["j1"]["end_utc"], rows["j1"]["billsec"]) == (None, None, 10)
    assert (rows["j2"]["billsec"], rows["j2"]["end_utc"], rows["j2"]["start_utc"]) == (
        None,
        None,
        utc(2024, 7, 1, 16),
    )
    assert rows["j3"]["direction"] is None and rows["j3"]["billsec"] == 10
    assert rows["j4"]["billsec"] is None
    short = [r for k, r in rows.items() if k.startswith("row-")]
    assert len(short) == 1 and short[0]["start_utc"] is None and short[0]["dst"] is None
    assert json.loads(short[0]["source_row"]) == {
        "_fields": ["j5", "2024-07-01 12:00:00", "1", "+442079460000"],
        "_error": "4 fields, expected 6",
        "_line": 6,
    }
    assert rows["ok"]["billsec"] == 10 and rows["ok"]["end_utc"] == utc(2024, 7, 1, 16, 0, 10)
    assert json.loads(rows["j2"]["source_row"])["Duration"] == "ten"


# -- the connector over HTTP ---------------------------------------------------------------

UNTIL = utc(2024, 8, 1)


def test_etag_and_last_modified_unchanged_file_yields_nothing() -> None:
    with LesNetSandbox(DEFAULT_FILE, name="cdr/D4E3CD2BFC791_0000.txt") as sb:
        connector = LesNetConnector(server(sb.file_url))
        first = connector.extract(None, UNTIL, None)
        assert first.cdrs.height == 4 and first.watermark == utc(2024, 7, 1, 16, 1, 1)
        assert set(first.cursor) == {"etag", "last_modified", "sha256"} and first.cursor["etag"].startswith(
            '"'
        )
        second = connector.extract(first.watermark, UNTIL, first.cursor)
        sent = sb.requests[-1].headers
        # only If-Modified-Since (a server without ETags)
        only_date = connector.extract(
            first.watermark, UNTIL, {"last_modified": first.cursor["last_modified"]}
        )
        assert sb.requests[-1].headers.get("if-modified-since") == first.cursor["last_modified"]
    assert sent["if-none-match"] == first.cursor["etag"]
    assert sent["if-modified-since"] == first.cursor["last_modified"]
    for unchanged in (second, only_date):
        assert unchanged.cdrs.height == 0 and unchanged.watermark is None
        assert "nothing new" in unchanged.notes[0]
    assert second.cursor == first.cursor


def test_changed_file_yields_its_rows() -> None:
    with LesNetSandbox(DEFAULT_FILE) as sb:
        connector = LesNetConnector(server(sb.file_url))
        first = connector.extract(None, UNTIL, None)
        sb.put("cdr/cdr.txt", DEFAULT_FILE + "c5,2024-07-02 08:00:00,4165550100,+442079460000,out,30\n")
        second = connector.extract(first.watermark, UNTIL, first.cursor)
    assert second.cursor["etag"] != first.cursor["etag"]
    # cumulative file: the old rows inside the overlap come again (the extract step drops stored keys)
    assert second.cdrs.get_column("cdr_key").to_list() == ["les1:c1", "les1:c5"]
    assert second.watermark == utc(2024, 7, 2, 12, 0, 30)


def test_a_server_ignoring_validators_is_caught_by_the_content_hash() -> None:
    with LesNetSandbox(DEFAULT_FILE) as sb:
        sb.honour_conditional = False
        connector = LesNetConnector(server(sb.file_url))
        first = connector.extract(None, UNTIL, None)
        second = connector.extract(first.watermark, UNTIL, first.cursor)
        assert sb.requests[-1].headers["if-none-match"] == first.cursor["etag"]
    assert second.cdrs.height == 0 and second.watermark is None and second.cursor == first.cursor


def test_rows_ending_after_until_hold_the_cursor_back() -> None:
    with LesNetSandbox(DEFAULT_FILE) as sb:
        connector = LesNetConnector(server(sb.file_url, overlap_minutes=0))
        early = connector.extract(None, utc(2024, 2, 1), None)
        assert sorted(early.cdrs.get_column("cdr_key").to_list()) == ["les1:c2", "les1:c3", "les1:c4"]
        assert early.cursor is None  # c1 (July) was held back: download again next run
        later = connector.extract(early.watermark, UNTIL, early.cursor)
    # c4 ended exactly at the watermark (the lower bound is inclusive); c1 is the held-back row
    assert later.cdrs.get_column("cdr_key").to_list() == ["les1:c1", "les1:c4"] and later.cursor is not None


def test_window_keeps_overlap_and_bad_rows() -> None:
    text = HEADER + (
        "old,2024-07-01 07:00:00,1,+442079460000,out,60\n"
        "overlap,2024-07-01 10:30:00,1,+442079460000,out,60\n"
        "new,2024-07-01 12:30:00,1,+442079460000,out,60\n"
        "bad,not a date,1,+442079460000,out,60\n"
    )
    with LesNetSandbox(text) as sb:
        out = LesNetConnector(server(sb.file_url, overlap_minutes=120)).extract(
            utc(2024, 7, 1, 16), UNTIL, None
        )
    assert sorted(out.cdrs.get_column("cdr_key").to_list()) == ["les1:bad", "les1:new", "les1:overlap"]
    assert out.watermark == utc(2024, 7, 1, 16, 31)
    assert any("unparsable" in n for n in out.notes)


@pytest.mark.parametrize("status", [404, 500, 503])
def test_http_errors_are_source_errors(status: int) -> None:
    with LesNetSandbox(DEFAULT_FILE) as sb:
        sb.fail(status)
        with pytest.raises(
            SourceError, match=rf"^lesnet les1: http://127.0.0.1:\d+/cdr/cdr.txt: HTTP {status}$"
        ):
            LesNetConnector(server(sb.file_url)).extract(None, UNTIL, None)


def test_timeout_and_credentials_in_url_stay_out_of_the_message() -> None:
    with LesNetSandbox(DEFAULT_FILE) as sb:
        sb.delay = 3.0
        url = sb.file_url.replace("http://", "http://peer:hunter2@")
        started = time.monotonic()
        with pytest.raises(SourceError, match="Timeout") as exc:
            LesNetConnector(server(url, timeout_seconds=0.3)).extract(None, UNTIL, None)
        assert time.monotonic() - started < 1.5
    assert "hunter2" not in str(exc.value)


def test_account_placeholder_in_the_url() -> None:
    with LesNetSandbox(DEFAULT_FILE, name="cdr/D4E3CD2BFC791_0000.txt") as sb:
        out = LesNetConnector(server(sb.url + "/cdr/{account}_0000.txt")).extract(None, UNTIL, None)
    assert out.cdrs.height == 4


def test_file_on_disk_is_served_with_its_mtime(tmp_path) -> None:
    path = tmp_path / "cdr.txt"
    path.write_text(DEFAULT_FILE)
    with LesNetSandbox(path) as sb:
        connector = LesNetConnector(server(sb.file_url))
        first = connector.extract(None, UNTIL, None)
        assert connector.extract(first.watermark, UNTIL, first.cursor).cdrs.height == 0
        path.write_text(DEFAULT_FILE + "c9,2024-07-02 08:00:00,1,+442079460000,out,30\n")
        third = connector.extract(first.watermark, UNTIL, first.cursor)
    assert "les1:c9" in third.cdrs.get_column("cdr_key").to_list()
    assert first.cursor["last_modified"].endswith("GMT")


def test_several_files_and_a_missing_one() -> None:
    with LesNetSandbox({"lesnet/les1.txt": DEFAULT_FILE, "lesnet/les2.txt": HEADER}) as sb:
        assert LesNetConnector(server(sb.url_for("lesnet/les1.txt"))).extract(None, UNTIL, None).cdrs.height == 4
        assert LesNetConnector(server(sb.url_for("lesnet/les2.txt"))).extract(None, UNTIL, None).cdrs.height == 0
        with pytest.raises(SourceError, match="HTTP 404"):
            LesNetConnector(server(sb.url_for("lesnet/les3.txt"))).extract(None, UNTIL, None)
        with pytest.raises(ValueError, match="exactly one file"):
            sb.file_url  # noqa: B018


def test_a_server_without_validators_relies_on_the_content_hash() -> None:
    with LesNetSandbox(DEFAULT_FILE) as sb:
        sb.send_validators = False
        connector = LesNetConnector(server(sb.file_url))
        first = connector.extract(None, UNTIL, None)
        assert (first.cursor["etag"], first.cursor["last_modified"]) == (None, None)
        second = connector.extract(first.watermark, UNTIL, first.cursor)
        assert "if-none-match" not in sb.requests[-1].headers
        sb.put("cdr/cdr.txt", DEFAULT_FILE.replace(",61\n", ",62\n"))
        third = connector.extract(first.watermark, UNTIL, first.cursor)
    assert second.cdrs.height == 0 and second.watermark is None
    assert third.cdrs.filter(third.cdrs["cdr_key"] == "les1:c1")["billsec"].to_list() == [62]
