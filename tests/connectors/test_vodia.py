"""Vodia connector against the Vodia sandbox over real loopback HTTP (requests is never patched)."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from autobill.config import Numbering, VodiaServer
from connectors.base import SourceError
from connectors.vodia import VodiaConnector, calls_from_legs
from sandboxes import VodiaSandbox

PASSWORD = "Tr0ub4dor&3"
MD5 = hashlib.md5(PASSWORD.encode()).hexdigest()  # noqa: S324
T0 = datetime(2024, 3, 1, 14, 0, tzinfo=UTC)
UNTIL = T0 + timedelta(days=1)


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VODIA_TEST_PASSWORD", PASSWORD)


def cfg(url: str, **kw) -> VodiaServer:
    base = dict(id="v1", kind="vodia", url=url, username="admin", password={"env": "VODIA_TEST_PASSWORD"})
    return VodiaServer(**{**base, **kw})


def call(cid, tenant, direction, src, dst, start, billsec, ext="101", ring=5):
    answer = start + timedelta(seconds=ring) if billsec else None
    end = answer + timedelta(seconds=billsec) if billsec else start + timedelta(seconds=ring)
    return dict(
        cdr_key=f"gen:{cid}",
        tenant=tenant,
        extension=ext,
        direction=direction,
        src=src,
        dst=dst,
        start_utc=start,
        answer_utc=answer,
        end_utc=end,
        billsec=billsec,
    )


def frame(rows: list[dict]) -> pl.DataFrame:
    utc = pl.Datetime("us", "UTC")
    return pl.DataFrame(rows, schema_overrides={"start_utc": utc, "answer_utc": utc, "end_utc": utc})


CALLS = frame(
    [
        call("o1", "a.example", "outbound", "4165550100", "+442079460000", T0, 61),
        call(
            "o2", "a.example", "outbound", "4165550100", "2125550123", T0 + timedelta(minutes=1), 7, ext="102"
        ),
        call(
            "o3", "a.example", "outbound", "4165550100", "011 33 1 42 68 53 00", T0 + timedelta(minutes=2), 0
        ),
        call("i1", "a.example", "inbound", "+12125550000", "4165550101", T0 + timedelta(minutes=3), 125),
        call("l1", "a.example", "local", "101", "102", T0 + timedelta(minutes=4), 30),
        call(
            "o4",
            "b.example",
            "outbound",
            "6135550100",
            "+14165550199",
            T0 + timedelta(minutes=5),
            3600,
            ext="201",
        ),
        call(
            "i2",
            "b.example",
            "inbound",
            "+33142685300",
            "6135550111",
            T0 + timedelta(minutes=6),
            1,
            ext="202",
        ),
    ]
)


def cdr_requests(sb: VodiaSandbox) -> list:
    return [r for r in sb.requests if r.path.endswith("/cdr")]


def test_login_pagination_and_one_row_per_trunk_call() -> None:
    with VodiaSandbox(CALLS, password=PASSWORD) as sb:
        out = VodiaConnector(cfg(sb.url, page_size=2)).extract(None, UNTIL, None)
        logins = sb.logins
        pages = cdr_requests(sb)
        login_bodies = [r.body for r in sb.requests if r.method == "PUT"]
    assert logins == 1
    assert json.loads(login_bodies[0]) == {"name": "auth", "value": f"admin {MD5}"}
    assert all(PASSWORD.encode() not in r for r in login_bodies)
    # a.example has 4 trunk legs (2 per page: 2 full pages, then an empty one); b.example 2
    assert [(r.path, r.query["start"]) for r in pages] == [
        ("/rest/domain/a.example/cdr", "0"),
        ("/rest/domain/a.example/cdr", "2"),
        ("/rest/domain/a.example/cdr", "4"),
        ("/rest/domain/b.example/cdr", "0"),
        ("/rest/domain/b.example/cdr", "2"),
    ]
    assert all(r.query["type"] == "trunk" and r.query["count"] == "2" for r in pages)
    got = {r["cdr_key"]: r for r in out.cdrs.iter_rows(named=True)}
    assert sorted(got) == ["v1:i1", "v1:i2", "v1:o1", "v1:o2", "v1:o3", "v1:o4"]  # local call: no trunk leg
    o1, i1, o3 = got["v1:o1"], got["v1:i1"], got["v1:o3"]
    assert (o1["tenant"], o1["direction"], o1["extension"], o1["src"], o1["dst"], o1["rate_number"]) == (
        "a.example",
        "outbound",
        "101",
        "4165550100",
        "+442079460000",
        "442079460000",
    )
    assert (o1["start_utc"], o1["answer_utc"], o1["billsec"]) == (T0, T0 + timedelta(seconds=5), 61)
    assert o1["end_utc"] == T0 + timedelta(seconds=66)
    # inbound: the caller is the source, the DID dialled is what is rated
    assert (i1["direction"], i1["src"], i1["dst"], i1["rate_number"], i1["billsec"]) == (
        "inbound",
        "+12125550000",
        "4165550101",
        "14165550101",
        125,
    )
    assert got["v1:o2"]["rate_number"] == "12125550123"
    assert (o3["rate_number"], o3["billsec"], o3["answer_utc"]) == ("33142685300", 0, None)
    assert got["v1:o4"]["billsec"] == 3600 and got["v1:i2"]["tenant"] == "b.example"
    assert json.loads(o1["source_row"])["leg"]["TrunkName"] == "sandbox-trunk"
    assert out.watermark == max(r["end_utc"] for r in got.values())
    assert out.cdrs.schema == pl.DataFrame(schema=out.cdrs.schema).schema  # conformed frame


def test_configured_domains_skip_the_listing_and_other_numbering() -> None:
    uk = frame([call("u1", "uk.example", "outbound", "02079460000", "01632 960123", T0, 10)])
    with VodiaSandbox(uk, password=PASSWORD, domains=["a.example"]) as sb:
        server = cfg(sb.url, domains=["uk.example"], numbering=Numbering(country_code="44"))
        out = VodiaConnector(server).extract(None, UNTIL, None)
        paths = [r.path for r in sb.requests]
    assert "/rest/system/domains" not in paths and "/rest/domain/a.example/cdr" not in paths
    assert out.cdrs.get_column("rate_number").to_list() == ["441632960123"]


def test_duplicate_legs_are_merged_and_the_trunk_leg_bills() -> None:
    """A leg listed twice counts once; extension legs do not bill; a forwarded inbound call is outbound."""
    t = T0.timestamp()
    base = {"StartTime": t, "ConnectTime": t + 2, "EndTime": t + 32, "Type": "extcall"}
    legs = [
        {**base, "PrimaryCallID": "p1", "CallID": "p1-a", "Direction": "I", "TrunkName": "", "Extension": "101",
         "LocalParty": "101", "RemoteParty": "+441632960123"},
        {**base, "PrimaryCallID": "p1", "CallID": "p1-b", "Direction": "O", "TrunkName": "t1", "Extension": "",
         "LocalParty": "4165550100", "RemoteParty": "+441632960123"},
        {**base, "PrimaryCallID": "p1", "CallID": "p1-b", "Direction": "O", "TrunkName": "t1", "Extension": "",
         "LocalParty": "4165550100", "RemoteParty": "+441632960123"},
        {**base, "PrimaryCallID": "p2", "CallID": "p2-a", "Direction": "I", "TrunkName": "t1", "Extension": "105",
         "LocalParty": "4165550105", "RemoteParty": "+12125550000"},
        {**base, "PrimaryCallID": "p2", "CallID": "p2-c", "Direction": "O", "TrunkName": "t1", "Extension": "105",
         "LocalParty": "4165550105", "RemoteParty": "+16475550000", "EndTime": t + 92},
    ]  # fmt: skip
    cdrs, merged = calls_from_legs([("a.example", leg) for leg in legs], cfg("http://unused"))
    rows = {r["cdr_key"]: r for r in cdrs.iter_rows(named=True)}
    assert sorted(rows) == ["v1:p1", "v1:p2"] and merged == 3
    assert (rows["v1:p1"]["direction"], rows["v1:p1"]["extension"], rows["v1:p1"]["billsec"]) == (
        "outbound",
        "101",
        30,
    )
    assert (rows["v1:p2"]["direction"], rows["v1:p2"]["rate_number"], rows["v1:p2"]["billsec"]) == (
        "outbound",
        "16475550000",
        90,
    )
    # the same duplicate served over HTTP across pages: still one call
    with VodiaSandbox({"a.example": legs}, password=PASSWORD) as sb:
        out = VodiaConnector(cfg(sb.url, page_size=2)).extract(None, UNTIL, None)
    assert sorted(out.cdrs.get_column("cdr_key").to_list()) == ["v1:p1", "v1:p2"]


def test_a_401_logs_in_again_once() -> None:
    with VodiaSandbox(CALLS, password=PASSWORD) as sb:
        sb.fail(401, times=1, path_prefix="/rest/domain/")
        out = VodiaConnector(cfg(sb.url)).extract(None, UNTIL, None)
        assert sb.logins == 2
    assert out.cdrs.height == 6


def test_expired_session_between_pages_logs_in_again() -> None:
    with VodiaSandbox(CALLS, password=PASSWORD) as sb:
        server = cfg(sb.url, page_size=1)
        connector = VodiaConnector(server)
        original = sb.handle
        seen = []

        def expire_after_two_pages(request):
            if request.path.endswith("/cdr"):
                seen.append(request)
                if len(seen) == 3:
                    sb.expire_sessions()  # the PBX forgets the session mid-listing
            return original(request)

        sb.handle = expire_after_two_pages
        out = connector.extract(None, UNTIL, None)
        assert sb.logins == 2
    assert out.cdrs.height == 6


def test_persistent_401_and_bad_password_are_source_errors_without_secrets(monkeypatch) -> None:
    with VodiaSandbox(CALLS, password=PASSWORD) as sb:
        sb.fail(401, path_prefix="/rest/domain/")
        with pytest.raises(SourceError, match="still unauthorised") as exc:
            VodiaConnector(cfg(sb.url)).extract(None, UNTIL, None)
        assert sb.logins == 2
    assert PASSWORD not in str(exc.value) and MD5 not in str(exc.value)
    with VodiaSandbox(CALLS, password="something-else") as sb:
        with pytest.raises(SourceError, match="login refused for user 'admin'") as exc:
            VodiaConnector(cfg(sb.url)).extract(None, UNTIL, None)
    assert PASSWORD not in str(exc.value) and MD5 not in str(exc.value)


def test_5xx_is_a_source_error() -> None:
    with VodiaSandbox(CALLS, password=PASSWORD) as sb:
        sb.fail(503, path_prefix="/rest/domain/b.example")
        with pytest.raises(SourceError, match=r"vodia v1: GET /rest/domain/b.example/cdr: HTTP 503"):
            VodiaConnector(cfg(sb.url)).extract(None, UNTIL, None)


def test_a_slow_server_times_out_within_the_timeout() -> None:
    with VodiaSandbox(CALLS, password=PASSWORD) as sb:
        sb.delay = 3.0
        started = time.monotonic()
        with pytest.raises(SourceError, match="Timeout") as exc:
            VodiaConnector(cfg(sb.url, timeout_seconds=0.3)).extract(None, UNTIL, None)
        elapsed = time.monotonic() - started
    assert elapsed < 1.5
    assert PASSWORD not in str(exc.value)


def test_a_server_that_is_down_is_a_source_error() -> None:
    with VodiaSandbox(CALLS, password=PASSWORD) as sb:
        url = sb.url
    with pytest.raises(SourceError, match="ConnectionError"):
        VodiaConnector(cfg(url, timeout_seconds=2)).extract(None, UNTIL, None)


def test_window_filters_on_end_time_with_overlap() -> None:
    since = T0 + timedelta(hours=3)
    calls = frame(
        [
            call("before", "a.example", "outbound", "1", "+442079460000", since - timedelta(minutes=200), 60),
            call(
                "overlap", "a.example", "outbound", "1", "+442079460000", since - timedelta(minutes=100), 60
            ),
            call("long", "a.example", "outbound", "1", "+442079460000", since - timedelta(hours=5), 4 * 3600),
            call("inside", "a.example", "outbound", "1", "+442079460000", since + timedelta(minutes=5), 60),
            call("late", "a.example", "outbound", "1", "+442079460000", UNTIL - timedelta(seconds=30), 60),
        ]
    )
    with VodiaSandbox(calls, password=PASSWORD) as sb:
        out = VodiaConnector(cfg(sb.url, overlap_minutes=120)).extract(since, UNTIL, None)
        query = cdr_requests(sb)[0].query
    assert sorted(out.cdrs.get_column("cdr_key").to_list()) == ["v1:inside", "v1:long", "v1:overlap"]
    assert out.watermark == since + timedelta(minutes=5, seconds=65)
    lower = since - timedelta(minutes=120)
    assert int(query["from"]) == int((lower - timedelta(hours=6)).timestamp())
    assert int(query["to"]) == int(UNTIL.timestamp()) + 1


def test_capped_page_size_still_reads_everything() -> None:
    rows = [
        call(f"c{i}", "a.example", "outbound", "1", "+442079460000", T0 + timedelta(minutes=i), 5)
        for i in range(7)
    ]
    with VodiaSandbox(frame(rows), password=PASSWORD, max_page=3) as sb:
        out = VodiaConnector(cfg(sb.url, page_size=10)).extract(None, UNTIL, None)
        starts = [r.query["start"] for r in cdr_requests(sb)]
    assert out.cdrs.height == 7
    assert starts == ["0", "3", "6"]


def test_a_server_ignoring_the_offset_is_an_error_not_a_loop() -> None:
    rows = [
        call(f"c{i}", "a.example", "outbound", "1", "+442079460000", T0 + timedelta(minutes=i), 5)
        for i in range(5)
    ]
    with VodiaSandbox(frame(rows), password=PASSWORD) as sb:
        sb.ignore_offset = True
        with pytest.raises(SourceError, match="ignores the 'start' paging parameter"):
            VodiaConnector(cfg(sb.url, page_size=2)).extract(None, UNTIL, None)


def test_other_field_names_fail_clearly_and_cdr_fields_adapts() -> None:
    t = T0.timestamp()
    legs = [
        {"PrimaryCallID": "p1", "CallID": "p1-b", "Direction": "O", "TrunkName": "t1", "LocalParty": "101",
         "RemoteParty": "+441632960123", "Start": t, "Connect": t + 1, "End": t + 11},
    ]  # fmt: skip
    with VodiaSandbox({"a.example": legs}, password=PASSWORD) as sb:
        with pytest.raises(SourceError, match=r"lack field 'EndTime' .*set cdr_fields"):
            VodiaConnector(cfg(sb.url)).extract(None, UNTIL, None)
        fields = {"start": "Start", "connect": "Connect", "end": "End"}
        out = VodiaConnector(cfg(sb.url, cdr_fields=fields)).extract(None, UNTIL, None)
    assert out.cdrs.get_column("billsec").to_list() == [10]


def test_unparsable_times_are_kept_for_quarantine() -> None:
    legs = [
        {"PrimaryCallID": "p1", "CallID": "p1-b", "Direction": "O", "TrunkName": "t1", "RemoteParty": "+441632960123",
         "StartTime": "yesterday", "ConnectTime": "", "EndTime": "soon"},
    ]  # fmt: skip
    with VodiaSandbox({"a.example": legs}, password=PASSWORD) as sb:
        out = VodiaConnector(cfg(sb.url)).extract(None, UNTIL, None)
    row = out.cdrs.row(0, named=True)
    assert (row["cdr_key"], row["start_utc"], row["end_utc"], row["billsec"]) == ("v1:p1", None, None, None)
    assert json.loads(row["source_row"])["leg"]["EndTime"] == "soon"
    assert out.watermark is None
