"""Generators and helpers shared by the rating tests (hypothesis strategies, frame <-> rows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import polars as pl
from hypothesis import strategies as st

TARIFF_COLUMNS = ("prefix", "rate", "description", "connect_fee", "first_increment", "next_increment", "effective_from")

# Nested and equal-length prefixes on purpose.
PREFIXES = ["1", "12", "123", "1234", "13", "4", "44", "442", "4420", "441", "7", "33", "331", "86", "0"]
RATES = ["0", "0.1", "0.123456", "12", ".5", "1.", "0.000001", "7.333333", "0.02"]
FEES = ["", "0", "0.05", "1.000001", "0.333333"]
INCREMENTS = ["", "1", "6", "30", "60"]
MARKUPS = ["0", "12.5", "-10", "100", "0.001", "33.333333", "-100"]

# Effective instants, and the ways a tariff may write each one.
EFF = [
    datetime(2024, 1, 1, tzinfo=UTC),
    datetime(2024, 6, 1, tzinfo=UTC),
    datetime(2024, 6, 1, 0, 0, 1, tzinfo=UTC),
    datetime(2025, 1, 1, 12, 30, tzinfo=UTC),
]


def eff_texts(moment: datetime) -> list[str]:
    texts = [
        moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        moment.astimezone(timezone(timedelta(hours=2))).isoformat(),
        moment.strftime("%Y-%m-%d %H:%M:%S"),  # no offset: UTC
    ]
    if moment.hour == moment.minute == moment.second == 0:
        texts.append(moment.strftime("%Y-%m-%d"))
    return texts


def start_texts(moment: datetime) -> list[str]:
    """Ways a CDR may write one instant (all valid)."""
    return [
        moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        moment.astimezone(timezone(timedelta(hours=-5))).isoformat(),
        moment.astimezone(timezone(timedelta(hours=5, minutes=30))).strftime("%Y-%m-%d %H:%M:%S%z"),
        moment.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00"),
        " " + moment.isoformat() + " ",
    ]


BAD_STARTS = ["2024-06-01T00:00:00", "yesterday", "", "2024-02-30T00:00:00Z", "2024-06-01T25:00:00Z", "2024-06-01T00:00:00z"]


@st.composite
def tariff_rows(draw, min_size: int = 0, max_size: int = 12) -> list[dict[str, str]]:
    rows = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "prefix": st.sampled_from(PREFIXES),
                    "rate": st.sampled_from(RATES),
                    "description": st.sampled_from(["", "dest", "Zone 2"]),
                    "connect_fee": st.sampled_from(FEES),
                    "first_increment": st.sampled_from(INCREMENTS),
                    "next_increment": st.sampled_from(INCREMENTS),
                    "eff": st.one_of(st.none(), st.sampled_from(range(len(EFF)))),
                    "eff_fmt": st.integers(0, 3),
                }
            ),
            min_size=min_size,
            max_size=max_size,
        )
    )
    out, seen = [], set()
    for row in rows:
        key = (row["prefix"], row["eff"])
        if key in seen:
            continue
        seen.add(key)
        eff = ""
        if row["eff"] is not None:
            texts = eff_texts(EFF[row["eff"]])
            eff = texts[row["eff_fmt"] % len(texts)]
        out.append({c: (eff if c == "effective_from" else row[c]) for c in TARIFF_COLUMNS})
    return out


def dst_for(e164: str, style: int) -> str:
    if style == 0:
        return "+" + e164
    if style == 1:
        return "011" + e164
    if style == 2 and e164.startswith("1") and len(e164) == 11:
        return e164[1:]  # 10-digit NANP
    if style == 3:
        return "+" + e164[:1] + " (" + e164[1:4] + ") " + e164[4:]
    return e164


@st.composite
def cdr_rows(draw, max_size: int = 25) -> list[dict[str, str]]:
    n = draw(st.integers(0, max_size))
    rows = []
    for _ in range(n):
        cdr_id = draw(st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h", "x1", "x2", "x3", "x4", "x5", "x6"]))
        base = draw(st.sampled_from(EFF))
        moment = base + timedelta(seconds=draw(st.sampled_from([-86400, -1, 0, 0, 1, 3600])))
        if draw(st.integers(0, 9)) == 0:
            start = draw(st.sampled_from(BAD_STARTS))
        else:
            start = draw(st.sampled_from(start_texts(moment)))
        inc = int(draw(st.sampled_from(["1", "6", "30", "60"])))
        billsec = draw(
            st.one_of(
                st.sampled_from([str(v) for v in (0, inc - 1, inc, inc + 1, 2 * inc - 1, 2 * inc, 2 * inc + 1, 61) if v >= 0]),
                st.integers(0, 10_000).map(str),
                st.sampled_from(["12.5", "", "-1", " 7 ", "+5", "007", "1e3", str(10**25), str(10**45 + 7)]),
            )
        )
        prefix = draw(st.sampled_from(PREFIXES))
        tail = draw(st.text(alphabet="0123456789", min_size=0, max_size=10))
        if draw(st.integers(0, 12)) == 0:
            dst = draw(st.sampled_from(["abc", "", "*97", "+1234567890123456", "011", "+"]))
        else:
            dst = dst_for(prefix + tail, draw(st.integers(0, 4)))
        rows.append({"cdr_id": cdr_id, "start": start, "billsec": billsec, "dst": dst, "note": draw(st.sampled_from(["", "x", " y "]))})
    return rows


def text_frame(rows: list[dict[str, str]], columns: tuple[str, ...] | list[str]) -> pl.DataFrame:
    """Rows as an all-text frame, empty text as null (how polars reads an empty CSV field)."""
    return pl.DataFrame(
        {c: [(r.get(c) or None) for r in rows] for c in columns}, schema={c: pl.String for c in columns}
    )


def as_text_rows(df: pl.DataFrame) -> list[dict[str, str]]:
    return [{k: ("" if v is None else str(v)) for k, v in row.items()} for row in df.iter_rows(named=True)]
