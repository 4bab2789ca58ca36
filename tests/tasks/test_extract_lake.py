"""The raw lake: atomic parquet writes, UTC-day partitions, rejected batches set aside."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

from autobill import lake
from autobill.cdr import conform


def cdrs(server: str, starts: list[datetime | None], prefix: str = "c") -> pl.DataFrame:
    n = len(starts)
    return conform(
        pl.DataFrame(
            {
                "cdr_key": [f"{server}:{prefix}{i}" for i in range(n)],
                "server": [server] * n,
                "tenant": ["t1"] * n,
                "account": [None] * n,
                "extension": ["1001"] * n,
                "direction": ["outbound"] * n,
                "src": ["1001"] * n,
                "dst": ["6135550123"] * n,
                "rate_number": ["16135550123"] * n,
                "start_utc": starts,
                "answer_utc": [None] * n,
                "end_utc": [s + timedelta(minutes=1) if s else None for s in starts],
                "billsec": [60] * n,
                "hangup_cause": ["NORMAL_CLEARING"] * n,
                "source_row": ["{}"] * n,
            },
            schema_overrides={"start_utc": pl.Datetime("us", "UTC"), "answer_utc": pl.Datetime("us", "UTC")},
        )
    )


def test_partitions_by_utc_day_of_start(tmp_path: Path) -> None:
    # 23:30 in Toronto on Mar 7 is already Mar 8 in UTC: the partition is the UTC day
    starts = [datetime(2026, 3, 8, 4, 30, tzinfo=UTC), datetime(2026, 3, 8, 23, 59, 59, tzinfo=UTC),
              datetime(2026, 3, 9, 0, 0, tzinfo=UTC), None]  # fmt: skip
    paths = lake.write_batch(tmp_path, "pbx1", 7, cdrs("pbx1", starts))
    rel = sorted(p.relative_to(tmp_path).as_posix() for p in paths)
    assert rel == [
        "lake/cdrs/server=pbx1/day=2026-03-08/7.parquet",
        "lake/cdrs/server=pbx1/day=2026-03-09/7.parquet",
        "lake/cdrs/server=pbx1/day=unknown/7.parquet",
    ]
    assert pl.read_parquet(paths[0]).height == 2
    assert lake.read_range(tmp_path, "pbx1", date(2026, 3, 8), date(2026, 3, 8)).height == 2
    assert lake.read_range(tmp_path, "pbx1", date(2026, 3, 8), date(2026, 3, 9)).height == 3
    assert lake.read_range(tmp_path, "pbx1", date(2026, 3, 8), date(2026, 3, 9), include_unknown=True).height == 4
    assert lake.read_paths(paths).height == 4


def test_duckdb_and_polars_read_the_tree_with_hive_partitions(tmp_path: Path) -> None:
    lake.write_batch(tmp_path, "a", 1, cdrs("a", [datetime(2026, 1, 1, 12, tzinfo=UTC)] * 2))
    lake.write_batch(tmp_path, "b", 2, cdrs("b", [datetime(2026, 1, 2, 12, tzinfo=UTC)] * 3))
    glob = lake.cdr_glob(tmp_path)
    per_day = duckdb.execute(
        "SELECT server, CAST(day AS VARCHAR) AS d, count(*) AS n FROM read_parquet(?, hive_partitioning=true) "
        "GROUP BY ALL ORDER BY 1",
        [glob],
    ).fetchall()
    assert per_day == [("a", "2026-01-01", 2), ("b", "2026-01-02", 3)]
    frame = pl.scan_parquet(glob, hive_partitioning=True).collect()
    assert frame.height == 5 and "day" in frame.columns


def test_write_is_atomic_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = cdrs("pbx1", [datetime(2026, 1, 1, tzinfo=UTC)])
    real_write = pl.DataFrame.write_parquet

    def half_write(self, file, **kwargs):  # writes some bytes, then the disk "fills up"
        real_write(self, file, **kwargs)
        Path(file).write_bytes(Path(file).read_bytes()[:20])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_write)
    with pytest.raises(OSError, match="No space"):
        lake.write_batch(tmp_path, "pbx1", 3, frame)
    monkeypatch.undo()
    day_dir = tmp_path / "lake/cdrs/server=pbx1/day=2026-01-01"
    assert list(day_dir.iterdir()) == []  # neither a partial final file nor a temp file
    assert lake.read_range(tmp_path, "pbx1", date(2026, 1, 1), date(2026, 1, 1)).height == 0
    # a temp file left by a crash (kill -9 between write and rename) is invisible to readers
    (day_dir / ".3.parquet.999.tmp").write_bytes(b"PAR1 garbage")
    lake.write_batch(tmp_path, "pbx1", 4, frame)
    assert lake.read_range(tmp_path, "pbx1", date(2026, 1, 1), date(2026, 1, 1)).height == 1
    assert duckdb.execute("SELECT count(*) FROM read_parquet(?)", [lake.cdr_glob(tmp_path)]).fetchone()[0] == 1


def test_rejected_batch_is_moved_aside_idempotently(tmp_path: Path) -> None:
    starts = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)]
    lake.write_batch(tmp_path, "pbx1", 5, cdrs("pbx1", starts, prefix="keep"))
    lake.write_batch(tmp_path, "pbx1", 6, cdrs("pbx1", starts, prefix="bad"))
    moved = lake.move_aside(tmp_path, "pbx1", 6)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in moved) == [
        "lake/rejected/server=pbx1/day=2026-01-01/6.parquet",
        "lake/rejected/server=pbx1/day=2026-01-02/6.parquet",
    ]
    stored = lake.read_range(tmp_path, "pbx1", date(2026, 1, 1), date(2026, 1, 2))
    assert sorted(stored["cdr_key"]) == ["pbx1:keep0", "pbx1:keep1"]
    assert lake.move_aside(tmp_path, "pbx1", 6) == moved  # again: nothing left to move, same answer
    assert lake.read_paths(moved).height == 2  # still readable for audit
    assert set(lake.stored_keys(tmp_path, "pbx1", ["2026-01-01", "2026-01-02"])) == {"pbx1:keep0", "pbx1:keep1"}


def test_batch_of_another_server_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="another server"):
        lake.write_batch(tmp_path, "pbx1", 1, cdrs("pbx2", [datetime(2026, 1, 1, tzinfo=UTC)]))
    assert lake.write_batch(tmp_path, "pbx1", 2, cdrs("pbx1", [])) == []
