"""`autobill rate` end to end: files in, files out, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from cli import app
from tests.support.reference_rater import ref_rate

TARIFF = "prefix,rate,description,connect_fee,first_increment,next_increment\n1,0.01,NANP,,60,6\n44,0.02,UK,0.1,,\n"
CDRS = (
    "cdr_id,start,billsec,dst,extra\n"
    "a,2024-07-01T12:00:00Z,61,2125550100, keep me \n"
    "b,2024-07-01T14:00:00+02:00,30,011442071234567,\n"
    "b,2024-07-01T14:00:00+02:00,30,011442071234567,\n"
    "c,2024-07-01T12:00:00,30,2125550100,0012\n"
    "d,2024-07-01T12:00:00Z,0,+861234,\n"
)

runner = CliRunner()


def files(tmp_path: Path, tariff: str = TARIFF, cdrs: str = CDRS) -> tuple[Path, Path]:
    (tmp_path / "tariff.csv").write_text(tariff)
    (tmp_path / "cdrs.csv").write_text(cdrs)
    return tmp_path / "tariff.csv", tmp_path / "cdrs.csv"


def run(*args: str | Path):
    return runner.invoke(app, ["rate", *map(str, args)])


def test_csv_to_csv_matches_reference(tmp_path):
    tariff, cdrs = files(tmp_path)
    out = tmp_path / "out.csv"
    result = run("--tariff", tariff, "--cdrs", cdrs, "--out", out, "--markup", "12.5")
    assert result.exit_code == 0, result.stderr
    got = pl.read_csv(out, infer_schema=False).fill_null("").to_dicts()
    t_rows = pl.read_csv(tariff, infer_schema=False).to_dicts()
    c_rows = pl.read_csv(cdrs, infer_schema=False).to_dicts()
    assert got == ref_rate(t_rows, c_rows, markup=Decimal("12.5"))
    assert [r["status"] for r in got] == ["rated", "rated", "duplicate", "invalid", "unanswered"]
    assert got[0]["extra"] == " keep me " and got[3]["extra"] == "0012"
    assert got[1]["cost"] == "0.123750"  # (0.1 + 0.02 * 30/60) * 1.125


def test_parquet_in_and_out(tmp_path):
    tariff, cdrs = files(tmp_path)
    pl.read_csv(tariff, infer_schema=False).write_parquet(tmp_path / "t.parquet")
    pl.read_csv(cdrs, infer_schema=False).write_parquet(tmp_path / "c.parquet")
    result = run("--tariff", tmp_path / "t.parquet", "--cdrs", tmp_path / "c.parquet", "--out", tmp_path / "o.parquet")
    assert result.exit_code == 0, result.stderr
    out = pl.read_parquet(tmp_path / "o.parquet")
    # RATING.md: in parquet, money is DECIMAL(18,6) (null where empty) and billable_seconds an integer
    decimal = pl.Decimal(18, 6)
    assert out.schema["billable_seconds"] == pl.Int64
    assert (out.schema["rate"], out.schema["connect_fee"], out.schema["cost"]) == (decimal, decimal, decimal)
    assert out["billable_seconds"].to_list() == [66, 30, 30, None, 0]
    assert out["cost"].to_list() == [Decimal("0.011000"), Decimal("0.110000"), None, None, Decimal("0.000000")]
    assert out["connect_fee"].to_list()[:2] == [Decimal("0"), Decimal("0.1")]
    # the output columns compressed (a file a user keeps), with LZ4_RAW; the input's columns are
    # its own chunks, copied (polars wrote them with zstd): read back by DuckDB too
    import duckdb

    path = str(tmp_path / "o.parquet")
    codecs = dict(duckdb.execute("SELECT path_in_schema, compression FROM parquet_metadata(?)", [path]).fetchall())
    assert {c: codecs.pop(c) for c in pl.read_parquet(tmp_path / "c.parquet").columns} == dict.fromkeys(
        pl.read_parquet(tmp_path / "c.parquet").columns, "ZSTD"
    )
    assert set(codecs.values()) == {"LZ4_RAW"} and len(codecs) == 8
    assert duckdb.execute("SELECT count(*) FROM read_parquet(?) WHERE status = 'rated'", [path]).fetchall() == [(2,)]
    # status, matched_prefix and description are written from their codes (dictionary pages)
    # but declared as text: every reader sees plain strings, not categories
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = ("status", "matched_prefix", "description")
    declared = pq.read_schema(path)
    assert [declared.field(c).type for c in text] == [pa.large_string()] * 3
    assert [out.schema[c] for c in text] == [pl.String] * 3
    import pandas as pd

    assert not any(isinstance(t, pd.CategoricalDtype) for t in pd.read_parquet(path, columns=list(text)).dtypes)
    typed = duckdb.execute("SELECT typeof(status), typeof(matched_prefix), typeof(description) FROM read_parquet(?) LIMIT 1", [path])
    assert typed.fetchall() == [("VARCHAR",) * 3]
    chunks = pq.ParquetFile(path).metadata.row_group(0)
    names = [chunks.column(i).path_in_schema for i in range(chunks.num_columns)]
    assert all(chunks.column(names.index(c)).has_dictionary_page for c in text)
    assert out["status"].to_list() == ["rated", "rated", "duplicate", "invalid", "unanswered"]
    # and the CSV output of the same input agrees, value for value
    assert run("--tariff", tariff, "--cdrs", cdrs, "--out", tmp_path / "o.csv").exit_code == 0
    as_csv = pl.read_csv(tmp_path / "o.csv", infer_schema=False)
    for column in ("rate", "connect_fee", "cost"):
        as_text = [None if v is None else f"{v:.6f}" for v in out[column].to_list()]
        assert as_csv[column].to_list() == as_text, column


def test_numbering_options(tmp_path):
    tariff, cdrs = files(
        tmp_path,
        tariff="prefix,rate\n44,0.02\n33,0.05\n",
        cdrs="cdr_id,start,billsec,dst\n1,2024-07-01T12:00:00Z,60,02071234567\n2,2024-07-01T12:00:00Z,60,0033123\n",
    )
    out = tmp_path / "o.csv"
    assert run("--tariff", tariff, "--cdrs", cdrs, "--out", out, "--country-code", "44").exit_code == 0
    got = pl.read_csv(out, infer_schema=False)
    assert got["e164"].to_list() == ["442071234567", "33123"]
    assert got["cost"].to_list() == ["0.020000", "0.050000"]
    assert run("--tariff", tariff, "--cdrs", cdrs, "--out", out, "--country-code", "44", "--trunk-prefix", "9").exit_code == 0
    assert pl.read_csv(out, infer_schema=False)["status"].to_list() == ["no_rate", "rated"]


@pytest.mark.parametrize(
    ("tariff", "cdrs", "args", "needle"),
    [
        ("prefix,rate\n1,x\n", CDRS, (), "tariff.csv: row 1 (line 2), column 'rate': "),
        ("prefix,price\n1,1\n", CDRS, (), "tariff.csv: header (line 1), column 'rate': missing required column"),
        (TARIFF, "cdr_id,start,dst\n1,2024-07-01T12:00:00Z,1\n", (), "cdrs.csv: header (line 1), column 'billsec': missing"),
        (TARIFF, "", (), "cdrs.csv: header (line 1): the file is empty"),
        (TARIFF, "cdr_id,start,billsec,dst\n1,x,1,2\n2,x,1,2,3\n", (), "cdrs.csv: row 2 (line 3), column #5: "),
        (TARIFF, CDRS, ("--markup", "abc"), "--markup"),
        (TARIFF, CDRS, ("--markup", "-101"), "below -100"),
        (TARIFF, CDRS, ("--country-code", "01"), "--country-code"),
        (TARIFF, CDRS, ("--intl-prefix", "+00"), "--intl-prefix"),
    ],
)
def test_errors_are_one_line_and_nothing_is_written(tmp_path, tariff, cdrs, args, needle):
    t, c = files(tmp_path, tariff, cdrs)
    out = tmp_path / "out.csv"
    result = run("--tariff", t, "--cdrs", c, "--out", out, *args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not out.exists()


def test_bad_output_type_and_directory(tmp_path):
    t, c = files(tmp_path)
    result = run("--tariff", t, "--cdrs", c, "--out", tmp_path / "out.xlsx")
    assert result.exit_code != 0 and "unsupported file type" in result.stderr
    result = run("--tariff", t, "--cdrs", c, "--out", tmp_path / "missing" / "out.csv")
    assert result.exit_code != 0 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_output_is_replaced_whole_and_a_failed_write_keeps_the_old_one(tmp_path, monkeypatch, suffix):
    """OUT is written to a new hidden file and renamed into place: a rerun replaces it, a crashed
    run's leftover does not block the next one, and a write that fails leaves the previous OUT."""
    t, c = files(tmp_path)
    out = tmp_path / f"o{suffix}"
    leftover = tmp_path / f".o{suffix}.tmp"
    leftover.write_bytes(b"half a file from a killed run")
    assert run("--tariff", t, "--cdrs", c, "--out", out).exit_code == 0
    first = out.read_bytes()
    assert run("--tariff", t, "--cdrs", c, "--out", out, "--markup", "10").exit_code == 0
    second = out.read_bytes()
    assert second != first and not leftover.exists()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(pl.LazyFrame, "sink_csv" if suffix == ".csv" else "sink_parquet", broken)
    result = run("--tariff", t, "--cdrs", c, "--out", out)
    assert result.exit_code != 0 and "disk full" in result.stderr
    assert out.read_bytes() == second
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["cdrs.csv", "tariff.csv", out.name])


def test_real_process_exit_codes(tmp_path):
    """The installed entry point, as an operator's script would call it."""
    t, c = files(tmp_path)
    exe = Path(sys.executable).with_name("autobill")
    ok = subprocess.run([exe, "rate", "--tariff", t, "--cdrs", c, "--out", tmp_path / "o.csv"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stderr == ""
    (tmp_path / "bad.csv").write_text("prefix,rate\n1,0.1\n1,0.2\n")
    bad = subprocess.run(
        [exe, "rate", "--tariff", tmp_path / "bad.csv", "--cdrs", c, "--out", tmp_path / "o2.csv"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0
    assert bad.stderr.count("\n") == 1 and "bad.csv: row 2 (line 3), column 'prefix'" in bad.stderr


def test_parquet_input_columns_keep_their_types(tmp_path):
    """Only the output columns written from codes are declared as text; an input column that is
    itself an Enum or a Categorical is copied through with its type."""
    tariff, cdrs = files(tmp_path)
    frame = pl.read_csv(cdrs, infer_schema=False).with_columns(
        pl.col("cdr_id").cast(pl.Enum(["a", "b", "c", "d"])).alias("kind"),
        pl.col("cdr_id").cast(pl.Categorical).alias("cat"),
    )
    frame.write_parquet(tmp_path / "c.parquet")
    result = run("--tariff", tariff, "--cdrs", tmp_path / "c.parquet", "--out", tmp_path / "o.parquet")
    assert result.exit_code == 0, result.stderr
    out = pl.read_parquet(tmp_path / "o.parquet")
    assert out.schema["kind"] == pl.Enum(["a", "b", "c", "d"]) and out.schema["cat"] == pl.Categorical
    assert out["kind"].cast(pl.String).to_list() == frame["cdr_id"].to_list()
    assert [out.schema[c] for c in ("status", "matched_prefix", "description")] == [pl.String] * 3
