"""Statements copied to object storage over real loopback HTTP (moto's S3 server), and to a share."""

from __future__ import annotations

import pytest

from autobill.config import StatementsUpload
from connectors.object_store import ObjectStoreError, open_store, upload
from tests.support.s3 import KEY_ID, SECRET, closed_port, local_s3


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("TEST_S3_KEY_ID", KEY_ID)
    monkeypatch.setenv("TEST_S3_SECRET", SECRET)
    with local_s3() as server:
        server.client().create_bucket(Bucket="statements")
        yield server


def cfg(endpoint: str, url: str = "s3://statements/acme/st", **kw) -> StatementsUpload:
    return StatementsUpload.model_validate({
        "url": url, "endpoint_url": endpoint, "region": "us-east-1", "retries": 0, "timeout_seconds": 5,
        "access_key_id": {"env": "TEST_S3_KEY_ID"}, "secret_access_key": {"env": "TEST_S3_SECRET"}, **kw})


def files(tmp_path, n=3):
    out = []
    for i in range(n):
        p = tmp_path / f"client-{i}" / f"2026-11-{i + 1:02d}.pdf"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"%PDF-1.4 statement " + str(i).encode())
        out.append((p, p.relative_to(tmp_path).as_posix()))
    return out


def test_files_land_under_the_prefix_with_their_type(s3, tmp_path):
    store = open_store(cfg(s3.endpoint))
    result = upload(store, files(tmp_path))
    store.close()
    assert result.failed == [] and len(result.uploaded) == 3
    objects = s3.objects("statements")
    assert objects["acme/st/client-1/2026-11-02.pdf"] == b"%PDF-1.4 statement 1"
    head = s3.client().head_object(Bucket="statements", Key="acme/st/client-0/2026-11-01.pdf")
    assert head["ContentType"] == "application/pdf"


def test_a_missing_bucket_is_a_reason_per_file(s3, tmp_path):
    store = open_store(cfg(s3.endpoint, url="s3://no-such-bucket"))
    result = upload(store, files(tmp_path, 2))
    assert result.uploaded == [] and len(result.failed) == 2
    assert all("NoSuchBucket" in why for _, why in result.failed), result.failed


def test_a_credential_reference_that_does_not_resolve_is_one_line(s3, monkeypatch):
    monkeypatch.setenv("TEST_S3_SECRET", "not-the-secret")
    monkeypatch.delenv("TEST_S3_KEY_ID")
    with pytest.raises(ObjectStoreError, match="TEST_S3_KEY_ID") as err:
        open_store(cfg(s3.endpoint))
    assert "not-the-secret" not in str(err.value)


def test_a_store_that_is_down_fails_fast_after_a_streak(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_S3_KEY_ID", KEY_ID)
    monkeypatch.setenv("TEST_S3_SECRET", SECRET)
    store = open_store(cfg(f"http://127.0.0.1:{closed_port()}", timeout_seconds=2))
    result = upload(store, files(tmp_path, 30), workers=2, give_up_after=3)
    assert result.uploaded == [] and len(result.failed) == 30
    not_tried = [why for _, why in result.failed if why.startswith("not tried")]
    assert len(not_tried) >= 30 - 3 - 2, result.failed  # at most the streak plus those already in flight
    assert "Could not connect" in result.failed[0][1] or "EndpointConnectionError" in result.failed[0][1]


def test_file_url_copies_whole_files(tmp_path):
    share = tmp_path / "share"
    store = open_store(StatementsUpload(url=f"file://{share}"))
    result = upload(store, files(tmp_path / "local", 2))
    assert result.failed == []
    assert (share / "client-1" / "2026-11-02.pdf").read_bytes() == b"%PDF-1.4 statement 1"
    assert not list(share.rglob(".*.tmp"))


@pytest.mark.parametrize("url,msg", [("s3://", "names a bucket"), ("file://relative/x", "absolute"),
                                     ("https://bucket.s3.amazonaws.com/x", "s3://bucket/prefix or file:///path")])
def test_bad_urls_are_config_errors(url, msg):
    with pytest.raises(ValueError, match=msg):
        StatementsUpload(url=url)


def test_keys_go_together():
    with pytest.raises(ValueError, match="go together"):
        StatementsUpload.model_validate({"url": "s3://b", "access_key_id": {"env": "X"}})
