"""The nightly statement writer: PDFs from the spawned pool read the same as in-process ones, and
the upload to S3 (moto over loopback HTTP) keeps the local copy, reports what failed and sends it
with the next run."""

from __future__ import annotations

import subprocess
from datetime import date

import pytest

from tasks.statements import PENDING, StatementsError, billed_clients, client_names, out_dir, write_statements
from tests.support.s3 import KEY_ID, SECRET, local_s3
from tests.support.statements import StatementWorld
from tests.support.whmcs import new_sandbox

D1, D2 = date(2026, 11, 18), date(2026, 11, 19)


@pytest.fixture
def sandbox(monkeypatch):
    for k, v in StatementWorld.env().items():
        monkeypatch.setenv(k, v)
    with new_sandbox() as sb:
        yield sb


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("ST_S3_KEY_ID", KEY_ID)
    monkeypatch.setenv("ST_S3_SECRET", SECRET)
    with local_s3() as server:
        yield server


def world(tmp_path, sandbox, s3=None, bucket="statements", **statements):
    conf = {"reseller_name": "Maple VoIP Inc.", "workers": 1, **statements}
    if s3 is not None:
        conf["upload"] = {"url": f"s3://{bucket}/nightly", "endpoint_url": s3.endpoint, "region": "us-east-1",
                          "retries": 0, "access_key_id": {"env": "ST_S3_KEY_ID"},
                          "secret_access_key": {"env": "ST_S3_SECRET"}}
    return StatementWorld(tmp_path, sandbox, statements=conf)


def local_files(w) -> set[str]:
    root = out_dir(w.settings)
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")}


def test_statements_are_uploaded_under_the_prefix(tmp_path, sandbox, s3):
    s3.client().create_bucket(Bucket="statements")
    w = world(tmp_path, sandbox, s3)
    run = w.bill(D1, w.calls(D1, D1, per_day=15))
    report = write_statements(w.settings, D1, run)
    assert report.files == len(local_files(w)) > 0 and report.uploaded == report.files
    assert report.upload_failed == [] and report.problems == []
    objects = s3.objects("statements")
    assert set(objects) == {f"nightly/{r}" for r in local_files(w)}
    for rel in local_files(w):
        assert objects[f"nightly/{rel}"] == (out_dir(w.settings) / rel).read_bytes()


def test_a_failed_upload_keeps_the_files_and_the_next_run_sends_them(tmp_path, sandbox, s3):
    w = world(tmp_path, sandbox, s3)  # the bucket does not exist yet
    calls = w.calls(D1, D2, per_day=15)
    run1 = w.bill(D1, calls.filter(calls["start_utc"].dt.day() == 18))
    report = write_statements(w.settings, D1, run1)
    first = local_files(w)
    assert report.files == len(first) > 0 and report.uploaded == 0
    assert {r for r, _ in report.upload_failed} == first
    assert all("NoSuchBucket" in why for _, why in report.upload_failed)
    assert "not uploaded to s3://statements/nightly (kept locally" in report.problems[0]
    pending = out_dir(w.settings) / PENDING
    assert set(pending.read_text().split()) == first
    s3.client().create_bucket(Bucket="statements")
    run2 = w.bill(D2, calls.filter(calls["start_utc"].dt.day() == 19))
    report = write_statements(w.settings, D2, run2)
    assert report.upload_failed == [] and not pending.exists()
    assert set(s3.objects("statements")) == {f"nightly/{r}" for r in local_files(w)}
    assert report.uploaded == len(local_files(w)) > report.files  # the earlier run's files too


def test_file_url_upload(tmp_path, sandbox):
    share = tmp_path / "share"
    w = StatementWorld(tmp_path, sandbox, statements={"upload": {"url": f"file://{share}"}, "workers": 1})
    run = w.bill(D1, w.calls(D1, D1, per_day=10))
    report = write_statements(w.settings, D1, run)
    assert report.uploaded == report.files > 0
    assert {p.relative_to(share).as_posix() for p in share.rglob("*") if p.is_file()} == local_files(w)


def test_pool_pdfs_read_the_same_as_in_process(tmp_path, sandbox):
    w = world(tmp_path / "a", sandbox, formats=["pdf"])
    run = w.bill(D1, w.calls(D1, D1, per_day=40))
    one = write_statements(w.settings, D1, run, workers=1)
    texts = {r: pdftext(out_dir(w.settings) / r) for r in local_files(w)}
    many = write_statements(w.settings, D1, run, workers=2)
    assert (many.files, many.calls) == (one.files, one.calls)
    strip = lambda t: "\n".join(ln for ln in t.splitlines() if "Generated" not in ln)  # noqa: E731
    assert {r: strip(pdftext(out_dir(w.settings) / r)) for r in local_files(w)} == \
        {r: strip(t) for r, t in texts.items()}


def test_a_missing_font_file_is_named(tmp_path, sandbox):
    w = world(tmp_path, sandbox, fonts=["fonts/NotoSansCJK.ttf"])
    run = w.bill(D1, w.calls(D1, D1, per_day=10))
    with pytest.raises(StatementsError, match=r"statements.fonts: .*fonts/NotoSansCJK.ttf: no such font file"):
        write_statements(w.settings, D1, run)


def pdftext(path) -> str:
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout


def test_bulk_files_equal_one_statement_at_a_time(tmp_path, sandbox):
    """The nightly writer shapes many clients at once (CSV records, PDF rows, included sums); its
    files say exactly what `autobill statement` builds for one client."""
    from autobill.statement import render
    from autobill.statement.build import build_statement

    w = world(tmp_path, sandbox, formats=["csv", "pdf"])
    run = w.bill(D1, w.calls(D1, D1, per_day=25))
    report = write_statements(w.settings, D1, run)
    assert report.clients > 1 and report.unnamed == [], report.unnamed
    ids = billed_clients(w.settings, D1)
    names = client_names(w.settings, ids)
    assert len(ids) == report.clients
    for cid in ids:
        one = build_statement(w.settings, cid, D1, D1)
        path = out_dir(w.settings) / f"client-{cid}" / f"{D1}.csv"
        assert path.read_text() == render.to_csv(one)
        one.client_name = names[cid]
        render.write(one, "pdf", tmp_path / "one.pdf")
        strip = lambda t: "\n".join(ln for ln in t.splitlines() if "Generated" not in ln)  # noqa: E731
        assert strip(pdftext(path.with_suffix(".pdf"))) == strip(pdftext(tmp_path / "one.pdf"))
