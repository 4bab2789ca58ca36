"""An offline LesNet CDR file server on 127.0.0.1, for tests and the demo.

It serves text files at `/<name>` the way a plain web server does: with an `ETag`
(a hash of the content) and a `Last-Modified`, answering `304 Not Modified` to a matching
`If-None-Match`, or, when no ETag was sent, to an `If-Modified-Since` not older than the file.
Use::

    with LesNetSandbox("CallID,DateTime,...\\n...", name="cdr/D4E3CD2BFC791_0000.txt") as sb:
        cfg = LesNetServer(id="les1", kind="lesnet", url=sb.file_url, account="D4E3CD2BFC791")
        sb.put("cdr/D4E3CD2BFC791_0000.txt", new_text)   # the carrier's daily refresh

A name is the URL path without its leading slash (LesNet's own is `cdr/<account>_0000.txt`;
the generator's config uses `lesnet/<server id>.txt`); one sandbox serves any number of files.

A file given as a `Path` is read from disk on every request (ETag from its content,
Last-Modified from its mtime), so the demo can rewrite it with `write_lesnet_file`.

Switches beyond the shared faults (`fail`, `delay`): `honour_conditional = False` (always 200,
like a server that ignores validators), `send_validators = False` (no ETag / Last-Modified).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path

from sandboxes.loopback import LoopbackServer, Request, Response

Content = str | bytes | Path


class LesNetSandbox(LoopbackServer):
    def __init__(
        self, files: Mapping[str, Content] | Content | None = None, *, name: str = "cdr/cdr.txt"
    ) -> None:
        super().__init__()
        self.honour_conditional = True
        self.send_validators = True
        self._files: dict[str, tuple[Content, datetime]] = {}
        self._files_lock = threading.Lock()
        if isinstance(files, Mapping):
            for file_name, content in files.items():
                self.put(file_name, content)
        elif files is not None:
            self.put(name, files)

    def put(self, name: str, content: Content, last_modified: datetime | None = None) -> None:
        """Publish (or replace) a file; Last-Modified is `last_modified` or now (whole seconds)."""
        moment = (last_modified or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        with self._files_lock:
            self._files[name.lstrip("/")] = (content, moment)

    def url_for(self, name: str) -> str:
        return f"{self.url}/{name.lstrip('/')}"

    @property
    def file_url(self) -> str:
        """The URL of the only file served (an error when there are several)."""
        with self._files_lock:
            names = list(self._files)
        if len(names) != 1:
            raise ValueError(
                f"file_url needs exactly one file, the sandbox serves {names}; use url_for(name)"
            )
        return self.url_for(names[0])

    def _read(self, name: str) -> tuple[bytes, datetime] | None:
        with self._files_lock:
            entry = self._files.get(name)
        if entry is None:
            return None
        content, moment = entry
        if isinstance(content, Path):
            if not content.exists():
                return None
            mtime = datetime.fromtimestamp(content.stat().st_mtime, UTC).replace(microsecond=0)
            return content.read_bytes(), mtime
        return (content.encode("utf-8") if isinstance(content, str) else content), moment

    def handle(self, request: Request) -> Response:
        found = self._read(request.path.lstrip("/")) if request.method in ("GET", "HEAD") else None
        if found is None:
            return Response(404, b"not found\n", {"Content-Type": "text/plain"})
        body, modified = found
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.send_validators:
            headers |= {"ETag": etag, "Last-Modified": format_datetime(modified, usegmt=True)}
        if self.honour_conditional and _not_modified(request, etag, modified):
            return Response(304, b"", headers)
        return Response(200, body, headers)


def _not_modified(request: Request, etag: str, modified: datetime) -> bool:
    """RFC 9110 §13.2.2: If-None-Match decides when present; else If-Modified-Since."""
    inm = request.headers.get("if-none-match")
    if inm is not None:
        tags = [t.strip().removeprefix("W/") for t in inm.split(",")]
        return "*" in tags or etag in tags
    ims = request.headers.get("if-modified-since")
    if ims:
        try:
            return modified <= parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
    return False
