"""connector_for: one connector per server kind, imported by name only when needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from autobill.config import settings_from_dict
from connectors.registry import CONNECTORS, connector_class, connector_for


def test_every_kind_has_a_connector_taking_server_and_settings(tmp_path: Path) -> None:
    raw = {
        "servers": [
            {"id": "f", "kind": "fusionpbx"},
            {"id": "d", "kind": "file", "path": "drop"},
            {"id": "v", "kind": "vodia", "url": "https://v.example", "username": "u", "password": {"env": "X"}},
            {"id": "l", "kind": "lesnet", "url": "https://l.example/cdr.txt"},
        ]
    }
    settings = settings_from_dict(raw, base_dir=tmp_path)
    names = {}
    for server in settings.servers:
        connector = connector_for(server, settings)
        assert callable(connector.extract)
        names[server.kind] = type(connector).__name__
    assert names == {"fusionpbx": "FusionPBXConnector", "file": "FileDropConnector",
                     "vodia": "VodiaConnector", "lesnet": "LesNetConnector"}  # fmt: skip
    assert set(CONNECTORS) == {"fusionpbx", "file", "vodia", "lesnet"}
    with pytest.raises(ValueError, match="no connector for server kind 'asterisk'"):
        connector_class("asterisk")
