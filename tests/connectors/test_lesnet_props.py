"""Property: whatever calls the generator writes with write_lesnet_file, parse_lesnet reads back.

Local times are written without an offset, so a call in the autumn DST hour reads back as the
first occurrence of that local time: the expectation is computed independently with zoneinfo
(fold=0), not with the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from autobill.config import LesNetFormat, LesNetServer
from connectors.lesnet import parse_lesnet, write_lesnet_file

SERVER = LesNetServer(id="les1", kind="lesnet", url="http://unused/cdr.txt", account="PEER")

FORMATS = {
    "default": LesNetFormat(),
    "semicolon-london": LesNetFormat(
        delimiter=";",
        columns={
            "call_id": "Id",
            "start": "When",
            "src": "From",
            "dst": "To",
            "direction": "Dir",
            "billsec": "Secs",
        },
        timestamp_format="%d/%m/%Y %H:%M:%S",
        timezone="Europe/London",
        directions={"I": "inbound", "O": "outbound"},
    ),
    "headerless-detected": LesNetFormat(
        has_header=False,
        columns={"billsec": "0", "dst": "1", "start": "3", "direction": "4", "call_id": "6", "src": "7"},
        timestamp_format="%Y%m%d%H%M%S",
        timezone="Asia/Kolkata",
        delimiter=None,
    ),
    "offset": LesNetFormat(timestamp_format="%Y-%m-%dT%H:%M:%S%z", timezone="America/Toronto"),
    "no-call-id-pipe": LesNetFormat(
        delimiter="|",
        columns={
            "start": "DateTime",
            "dst": "Destination",
            "billsec": "Duration",
            "direction": "Direction",
            "src": "Src",
        },
        timezone="Australia/Sydney",
    ),
}

numbers = st.builds(
    lambda plus, d: plus + d, st.sampled_from(["", "+"]), st.text("0123456789", min_size=1, max_size=15)
)
# Autumn DST changes (UTC) of the zones above: calls around them exercise the ambiguous local hour.
FALL_BACK = [
    datetime(2024, 11, 3, 6, tzinfo=UTC),
    datetime(2024, 10, 27, 1, tzinfo=UTC),
    datetime(2024, 4, 6, 16, tzinfo=UTC),
]
anywhen = st.datetimes(datetime(2000, 1, 1), datetime(2037, 12, 31)).map(
    lambda d: d.replace(microsecond=0, tzinfo=UTC)
)
near_dst = st.sampled_from(FALL_BACK).flatmap(
    lambda t: st.integers(-7200, 7200).map(lambda s: t + timedelta(seconds=s))
)


@st.composite
def calls(draw) -> pl.DataFrame:
    ids = draw(
        st.lists(st.from_regex(r"[A-Za-z0-9]{1,12}", fullmatch=True), min_size=1, max_size=15, unique=True)
    )
    rows = []
    for call_id in ids:
        start = draw(st.one_of(anywhen, near_dst))
        rows.append(
            dict(
                cdr_key=f"gen:{call_id}",
                direction=draw(st.sampled_from(["inbound", "outbound", "local"])),
                src=draw(st.one_of(st.none(), numbers)),
                dst=draw(numbers),
                start_utc=start,
                billsec=draw(st.integers(0, 100_000)),
            )
        )
    return pl.DataFrame(rows, schema_overrides={"start_utc": pl.Datetime("us", "UTC")})


def expected_start(start: datetime, fmt: LesNetFormat) -> datetime:
    if "%z" in fmt.timestamp_format:
        return start
    tz = ZoneInfo(fmt.timezone)
    wall = start.astimezone(tz).replace(tzinfo=None)
    return wall.replace(tzinfo=tz, fold=0).astimezone(UTC)


@settings(max_examples=60, deadline=None)
@given(frame=calls(), fmt_name=st.sampled_from(sorted(FORMATS)))
def test_write_then_parse_round_trips(tmp_path_factory, frame: pl.DataFrame, fmt_name: str) -> None:
    fmt = FORMATS[fmt_name]
    path = tmp_path_factory.mktemp("lesnet") / "cdr.txt"
    written = write_lesnet_file(path, frame, fmt)
    billed = frame.filter(pl.col("direction") != "local")
    assert written == billed.height
    parsed = parse_lesnet(path.read_text(encoding="utf-8"), fmt, SERVER)
    assert parsed.height == billed.height

    def expected_row(r: dict) -> tuple:
        start = expected_start(r["start_utc"], fmt)
        return (
            r["direction"],
            r["src"],
            r["dst"],
            r["billsec"],
            start,
            start + timedelta(seconds=r["billsec"]),
        )

    def got_row(r: dict) -> tuple:
        return (r["direction"], r["src"], r["dst"], r["billsec"], r["start_utc"], r["end_utc"])

    if "call_id" in fmt.columns or not fmt.columns:
        want = {
            "les1:" + r["cdr_key"].split(":", 1)[1]: expected_row(r) for r in billed.iter_rows(named=True)
        }
        got = {r["cdr_key"]: got_row(r) for r in parsed.iter_rows(named=True)}
        assert got == want
    else:
        assert sorted(map(got_row, parsed.iter_rows(named=True)), key=repr) == sorted(
            map(expected_row, billed.iter_rows(named=True)), key=repr
        )
        assert all(k.startswith("les1:row-") for k in parsed.get_column("cdr_key"))
    assert (
        parsed.get_column("answer_utc").is_null().to_list() == (parsed.get_column("billsec") == 0).to_list()
    )
