"""Named tariff versions: `NAME@VERSION`.

A tariff's version is the hash of its validated content (tariff.py), so it already names one set
of prices. To re-rate with a version that is no longer the file on disk, every version the
nightly rates with (and every version a re-rate sees) is kept, byte for byte, at
`<data>/tariffs/<name>/<version><.csv|.parquet>`. Loading it validates it again and checks that
its version is still the name it is filed under.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from autobill.config import Settings
from autobill.rating.tariff import LoadedTariff, TariffError, load_tariff


class TariffVersionError(ValueError):
    pass


def archive_dir(settings: Settings, name: str) -> Path:
    return settings.data_path / "tariffs" / name


def archive(settings: Settings, tariffs: dict[str, LoadedTariff]) -> None:
    """Keep a copy of each loaded tariff under its version (once; an existing copy is kept)."""
    for name, t in tariffs.items():
        if t.path is None:
            continue
        target = archive_dir(settings, name) / f"{t.version}{t.path.suffix.lower()}"
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(t.path, tmp)
        tmp.replace(target)


def versions(settings: Settings, name: str) -> list[str]:
    folder = archive_dir(settings, name)
    return sorted(p.stem for p in folder.glob("*") if not p.name.startswith(".")) if folder.exists() else []


def parse_spec(spec: str) -> tuple[str, str]:
    """`NAME@VERSION` -> (name, version); a version may be abbreviated to a unique prefix (>= 6)."""
    name, sep, version = spec.partition("@")
    if not sep or not name or not version:
        raise TariffVersionError(f"--tariff: expected NAME@VERSION, got {spec!r}")
    return name, version


def load_version(settings: Settings, name: str, version: str) -> LoadedTariff:
    """The archived tariff `name` at `version` (or the configured file when it has that version)."""
    try:
        cfg = settings.tariff(name)
    except KeyError:
        raise TariffVersionError(
            f"--tariff: unknown tariff {name!r} (known: {sorted(t.name for t in settings.tariffs)})") from None
    kwargs = {"name": name, "currency": cfg.currency, "timezone": cfg.timezone or settings.timezone, "with_bands": True}
    candidates = [v for v in versions(settings, name) if v.startswith(version)]
    if len(candidates) != 1 or len(version) < 6:
        known = ", ".join(versions(settings, name)) or "none archived yet"
        why = "is ambiguous" if len(candidates) > 1 else "is not archived"
        raise TariffVersionError(f"--tariff: version {version!r} of tariff {name!r} {why} (known: {known})")
    (full,) = candidates
    (path,) = [p for p in archive_dir(settings, name).glob(f"{full}.*") if not p.name.startswith(".")]
    try:
        loaded = load_tariff(path, **kwargs)
    except TariffError as exc:
        raise TariffVersionError(f"--tariff: archived {name}@{full} no longer loads: {exc}") from None
    if loaded.version != full:
        raise TariffVersionError(f"--tariff: archived {name}@{full} now hashes to {loaded.version}: refusing it")
    return loaded
