"""Resolving unrated CDRs that became final (`bulk.stamp_waiting`, which also marks intraday calls
billed): the same rows whether the caller names a few keys (rated rows with a `source` column) or
every final key of the night (rows without one)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select

from autobill.ledger.bulk import PAGE, insert_rows
from autobill.ledger.db import session_scope
from autobill.ledger.models import UnratedCDR
from autobill.ledger.unrated import resolve_unrated

SEEN = datetime(2026, 11, 20, 5, 0, tzinfo=UTC)
NOW = SEEN + timedelta(days=1)


def _unrated(url: str, keys: list[str], resolved: set[str] = frozenset()) -> None:
    with session_scope(url) as s:
        insert_rows(s, UnratedCDR.__table__, ("cdr_key", "server", "billing_date", "reason", "attempts", "first_seen",
                                              "last_seen", "resolved_at"),
                    [(k, "pbx", date(2026, 11, 19), "no_rate", 1, SEEN, SEEN, SEEN if k in resolved else None)
                     for k in keys])


def _resolved(url: str) -> dict[str, datetime | None]:
    with session_scope(url) as s:
        return dict(s.execute(select(UnratedCDR.cdr_key, UnratedCDR.resolved_at)).tuples().all())


@pytest.mark.parametrize("many", [False, True], ids=["few keys", "more keys than one UPDATE takes"])
def test_only_the_named_waiting_rows_are_resolved_and_earlier_resolutions_kept(ledger_url: str, many: bool):
    _unrated(ledger_url, [f"pbx:{i}" for i in range(10)], resolved={"pbx:3"})
    final = ["pbx:1", "pbx:3", "pbx:4", "pbx:9"]
    if many:  # every final key of a night: thousands never unrated
        final += [f"other:{i}" for i in range(2 * PAGE)]
        assert len(final) > PAGE
    with session_scope(ledger_url) as s:
        assert resolve_unrated(s, final, NOW) == 3
    got = _resolved(ledger_url)
    assert {k for k, at in got.items() if at == NOW} == {"pbx:1", "pbx:4", "pbx:9"}
    assert got["pbx:3"] == SEEN  # resolved before: its first resolution stands
    assert {k for k, at in got.items() if at is None} == {f"pbx:{i}" for i in (0, 2, 5, 6, 7, 8)}
    assert len(got) == 10  # nothing inserted for keys that were never unrated
