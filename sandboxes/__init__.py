"""Every stand-in for the outside world (tests, the demo, benchmarks): the WHMCS API sandbox
(`sandboxes.whmcs`), the event-socket sandbox (`sandboxes.esl`), the synthetic CDR generator
(`sandboxes.generate`), on one loopback-server base (`sandboxes.loopback`); and the offline
stand-ins for CDR sources, served over real HTTP on 127.0.0.1 (port 0):

Tests use them to exercise the HTTP connectors end to end (cookies, timeouts, 304s, paging)
without patching `requests`; the demo uses them to run Vodia and LesNet servers with no network.

- `VodiaSandbox(calls_frame_or_legs, username=..., password=...)` -- sandboxes/vodia.py
- `LesNetSandbox(text_or_path, name=...)` -- sandboxes/lesnet.py

Both are context managers (`with ... as sb: sb.url`) with fault switches `sb.fail(status,
times=None, path_prefix="")`, `sb.delay = seconds`, `sb.clear_faults()` and a request log
`sb.requests`.
"""

from __future__ import annotations

from sandboxes.lesnet import LesNetSandbox
from sandboxes.vodia import VodiaSandbox

__all__ = ["LesNetSandbox", "VodiaSandbox"]
