"""Task arguments that Prefect must not walk: the settings (issue #15).

Prefect walks every task argument twice per task run, looking for futures and states among its
items (`visit_collection`). A Settings of 10,000 services made that walk about 3 s per task run,
holding the GIL: minutes of a 10 M-CDR night. The settings are one value to it now."""

from __future__ import annotations

from dataclasses import dataclass

from prefect.utilities.collections import visit_collection

from autobill.config import Settings, settings_from_dict
from sandboxes.generate import generate_config, make_world


def _big_settings(clients: int = 10_000) -> Settings:
    config = generate_config(make_world(clients=clients, servers_per_kind=2, kinds=("file",), seed=3))
    return settings_from_dict(config, base_dir=".")


def _visits(expr) -> int:
    seen = []
    visit_collection(expr, lambda x: seen.append(x))
    return len(seen)


@dataclass
class _Context:  # a flow's context object carrying the settings, as autosuspend's CycleContext does
    settings: Settings
    dry_run: bool


def test_prefect_sees_the_settings_as_one_value_however_many_services():
    settings = _big_settings()
    assert len(settings.services) == 10_000
    assert _visits(settings) == 1
    assert _visits(_Context(settings, False)) == 3  # the context, the settings, the flag
    assert _visits((settings, "file-1", 7)) == 4


def test_the_settings_keep_every_field_by_name_and_in_model_dump():
    settings = _big_settings(clients=20)
    dumped = settings.model_dump()
    assert len(dumped["services"]) == len(settings.services) == 20
    assert {s["id"] for s in dumped["servers"]} == {s.id for s in settings.servers}
    assert settings == settings.model_copy()
