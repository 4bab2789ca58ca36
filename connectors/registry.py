"""Which connector reads which kind of server.

Classes are imported by name only when a server of that kind is extracted, so a missing
optional dependency (or a connector still being written) only affects its own servers, and
`import connectors.registry` stays cheap.
"""

from __future__ import annotations

import importlib

from autobill.config import Server, Settings
from connectors.base import Connector

CONNECTORS: dict[str, str] = {
    "fusionpbx": "connectors.fusionpbx:FusionPBXConnector",
    "file": "connectors.filedrop:FileDropConnector",
    "vodia": "connectors.vodia:VodiaConnector",
    "lesnet": "connectors.lesnet:LesNetConnector",
}


def connector_class(kind: str) -> type:
    try:
        module_name, class_name = CONNECTORS[kind].split(":")
    except KeyError:
        raise ValueError(f"no connector for server kind {kind!r} (known: {sorted(CONNECTORS)})") from None
    return getattr(importlib.import_module(module_name), class_name)


def connector_for(server_cfg: Server, settings: Settings) -> Connector:
    """The connector for one configured server; every class takes (server_cfg, settings)."""
    return connector_class(server_cfg.kind)(server_cfg, settings)
