"""Every setting a user may write is documented in autobill.example.yaml: this test walks the
pydantic models of autobill/config.py and fails naming the first field the example lacks (as a
key, or as a commented-out `# key:` line) or leaves without a comment."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from pydantic import BaseModel

from autobill.config import Settings, load_settings
from autobill.secrets import SecretRef

EXAMPLE = Path(__file__).resolve().parents[2] / "autobill.example.yaml"
NOT_KEYS = {"base_dir"}  # set by the loader, not by a user


def _models(model: type[BaseModel], seen: set[type]) -> list[type[BaseModel]]:
    """`model` and every model reachable through its fields (unions, lists, dicts)."""
    if model in seen:
        return []
    seen.add(model)
    out = [model]

    def walk(tp) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            out.extend(_models(tp, seen))
        for arg in typing.get_args(tp):
            walk(arg)

    for field in model.model_fields.values():
        walk(field.annotation)
    return out


def _documented_keys(text: str) -> dict[str, bool]:
    """key -> whether some line naming it (or the comment line just above) carries a comment."""
    keys: dict[str, bool] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\s*#?\s*(?:-\s+)?([a-z_][a-z0-9_]*):(\s|$)", line)
        if not m:
            continue
        commented = line.lstrip().startswith("#") or "#" in line.split(":", 1)[1] \
            or (i > 0 and lines[i - 1].lstrip().startswith("#"))
        keys[m.group(1)] = keys.get(m.group(1), False) or commented
    return keys


def test_every_settings_field_is_in_the_example_with_a_comment():
    keys = _documented_keys(EXAMPLE.read_text(encoding="utf-8"))
    missing, bare = [], []
    for model in _models(Settings, set()):
        if model is SecretRef:  # `{env: NAME}` / `{block: NAME}`, explained in the file's header
            continue
        for name in model.model_fields:
            if name in NOT_KEYS:
                continue
            if name not in keys:
                missing.append(f"{model.__name__}.{name}")
            elif not keys[name]:
                bare.append(f"{model.__name__}.{name}")
    assert not missing, f"autobill.example.yaml lacks: {', '.join(missing)}"
    assert not bare, f"autobill.example.yaml has no comment for: {', '.join(bare)}"


def test_the_example_loads_and_explains_secret_references():
    assert load_settings(EXAMPLE).servers
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "{env: VARIABLE_NAME}" in text and "{block: prefect-secret-name}" in text


def test_the_walk_finds_nested_models():
    names = {m.__name__ for m in _models(Settings, set())}
    assert {"FusionPBXServer", "LesNetFormat", "WHMCS", "Validation", "Numbering", "Service"} <= names
