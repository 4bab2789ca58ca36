"""Offline stand-ins for CDR sources, served over real HTTP on 127.0.0.1 (port 0).

Tests use them to exercise the HTTP connectors end to end (cookies, timeouts, 304s, paging)
without patching `requests`; the demo uses them to run Vodia and LesNet servers with no network.

- `VodiaSandbox(calls_frame_or_legs, username=..., password=...)` -- sandboxes/vodia.py
- `LesNetSandbox(text_or_path, name=...)` -- sandboxes/lesnet.py

Both are context managers (`with ... as sb: sb.url`) with fault switches `sb.fail(status,
times=None, path_prefix="")`, `sb.delay = seconds`, `sb.clear_faults()` and a request log
`sb.requests`. Imports are lazy so `import sandboxes` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxes.lesnet import LesNetSandbox
    from sandboxes.vodia import VodiaSandbox

__all__ = ["LesNetSandbox", "VodiaSandbox"]


def __getattr__(name: str) -> Any:
    if name == "VodiaSandbox":
        from sandboxes.vodia import VodiaSandbox

        return VodiaSandbox
    if name == "LesNetSandbox":
        from sandboxes.lesnet import LesNetSandbox

        return LesNetSandbox
    raise AttributeError(name)
