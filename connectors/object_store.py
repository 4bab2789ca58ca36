"""Copies of local files in object storage (`s3://bucket/prefix`, any S3-compatible store, through
boto3) or on a mounted share (`file:///path`): where the nightly also puts the statements it wrote.

Credentials are references (config `statements.upload.access_key_id` / `secret_access_key`, an
environment variable or a Prefect Secret block), resolved when the store is opened; without them
boto3's own chain applies (AWS_* variables, ~/.aws, an instance or pod role). TLS verification is on
unless the config turns it off. Every file is sent whole or not at all (S3 PUT; a temporary name
then a rename on a share), so a reader never sees half a statement.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from autobill.config import StatementsUpload
from autobill.secrets import reveal

_TYPES = {".pdf": "application/pdf", ".csv": "text/csv; charset=utf-8", ".html": "text/html; charset=utf-8"}


class ObjectStoreError(RuntimeError):
    """The store cannot be used at all (bad credentials reference, unknown bucket, …): one line."""


class Store(Protocol):
    url: str

    def put(self, local: Path, key: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class UploadResult:
    uploaded: list[str] = field(default_factory=list)  # keys
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, one-line reason)


def _content_type(path: Path) -> str:
    return _TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


class S3Store:
    def __init__(self, cfg: StatementsUpload) -> None:
        import boto3  # lazy: only runs that upload to S3 load it
        from botocore.config import Config

        self.url = cfg.url
        bucket_prefix = cfg.url[len("s3://"):]
        self.bucket, _, self.prefix = bucket_prefix.partition("/")
        try:
            key_id, secret = reveal(cfg.access_key_id), reveal(cfg.secret_access_key)
        except Exception as exc:  # noqa: BLE001 - SecretError or a Prefect block error: say which
            raise ObjectStoreError(f"statements.upload: {_one_line(exc)}") from None
        self.client = boto3.session.Session().client(
            "s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region, verify=cfg.verify_tls,
            aws_access_key_id=key_id, aws_secret_access_key=secret,
            config=Config(connect_timeout=cfg.timeout_seconds, read_timeout=cfg.timeout_seconds,
                          retries={"max_attempts": cfg.retries + 1, "mode": "standard"},
                          max_pool_connections=max(10, cfg.workers)),
        )

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def put(self, local: Path, key: str) -> None:
        with local.open("rb") as body:
            self.client.put_object(Bucket=self.bucket, Key=self.key(key), Body=body,
                                   ContentType=_content_type(local))

    def close(self) -> None:
        self.client.close()


class FileStore:
    def __init__(self, cfg: StatementsUpload) -> None:
        self.url = cfg.url
        self.root = Path(cfg.url[len("file://"):])

    def put(self, local: Path, key: str) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(local, tmp)
        tmp.replace(target)

    def close(self) -> None:
        pass


def open_store(cfg: StatementsUpload) -> Store:
    return S3Store(cfg) if cfg.url.startswith("s3://") else FileStore(cfg)


def upload(store: Store, files: Iterable[tuple[Path, str]], workers: int = 8,
           give_up_after: int = 20) -> UploadResult:
    """Put every (local file, key); a file that fails is reported with its reason, the others go on.
    After `give_up_after` failures in a row (the store is down: each one already retried) the files
    left are not tried and are reported as such, so an outage costs minutes, not hours."""
    result = UploadResult()
    lock = threading.Lock()
    streak = {"n": 0, "last": ""}

    def one(item: tuple[Path, str]) -> tuple[str, str | None]:
        local, key = item
        with lock:
            if streak["n"] >= give_up_after:
                return key, f"not tried: {streak['n']} uploads failed in a row (last: {streak['last']})"
        try:
            store.put(local, key)
        except Exception as exc:  # noqa: BLE001 - one file's failure is reported, never fatal to the rest
            with lock:
                streak["n"] += 1
                streak["last"] = _one_line(exc)
            return key, _one_line(exc)
        with lock:
            streak["n"] = 0
        return key, None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for key, error in pool.map(one, list(files)):
            if error is None:
                result.uploaded.append(key)
            else:
                result.failed.append((key, error))
    return result
