"""`autobill config check`: validate a config file and say what it found."""

from __future__ import annotations

from typing import Annotated

import typer

from autobill.config import Settings
from autobill.secrets import SecretError, SecretRef
from cli.common import ConfigOption, settings_or_exit

config_app = typer.Typer(help="Inspect the configuration file.", no_args_is_help=True)


def _secret_status(ref: SecretRef | None) -> str:
    if ref is None:
        return "none"
    if ref.env is not None:
        import os

        return f"{ref} ({'set' if ref.env in os.environ else 'NOT SET'})"
    return f"{ref} (Prefect Secret block, read at run time)"


def describe(settings: Settings) -> tuple[list[str], list[str]]:
    """Lines describing the config, and warnings about things that will fail at run time."""
    lines = [
        f"timezone      {settings.timezone}",
        f"currency      {settings.currency}",
        f"data dir      {settings.data_path}",
        f"ledger        {settings.ledger.split('@')[-1] if '@' in settings.ledger else settings.ledger}",
        f"servers       {len(settings.servers)}",
    ]
    warnings: list[str] = []
    for s in settings.servers:
        n = s.numbering
        lines.append(
            f"  - {s.id:<16} {s.kind:<10} cc={n.country_code} intl={n.effective_intl_prefix!r} "
            f"trunk={n.effective_trunk_prefix!r}{'' if s.enabled else ' (disabled)'}"
        )
        for field in ("password", "esl_password"):
            ref = getattr(s, field, None)
            if ref is not None:
                lines.append(f"      {field}: {_secret_status(ref)}")
    lines.append(f"tariffs       {len(settings.tariffs)}")
    for t in settings.tariffs:
        path = settings.resolve_path(t.path)
        exists = path.exists()
        lines.append(f"  - {t.name:<16} {t.currency} {path}{'' if exists else '  (MISSING)'}")
        if not exists:
            warnings.append(f"tariffs.{t.name}.path: file {path} does not exist")
    lines.append(f"plans         {len(settings.plans)}")
    for p in settings.plans:
        lines.append(
            f"  - {p.name:<16} tariff={p.tariff} included={p.included_minutes} min "
            f"markup={p.markup_percent}% currency={p.currency} inbound={'yes' if p.bill_inbound else 'no'}"
        )
    by_mode: dict[str, int] = {}
    for svc in settings.services:
        by_mode[svc.suspend_mode] = by_mode.get(svc.suspend_mode, 0) + 1
    lines.append(f"services      {len(settings.services)} (suspend modes: {by_mode or 'none'})")
    sync = settings.service_sync
    if sync.enabled:
        lines.append(f"service_sync  from WHMCS: product groups {sync.product_groups or '-'}, product ids "
                     f"{sync.product_ids or '-'}, {len(sync.products)} product plan(s); `services` above override")
        if settings.whmcs is None:
            warnings.append("service_sync.enabled: services are read from WHMCS but `whmcs` is not configured")
    if settings.whmcs is None:
        lines.append("whmcs         not configured (nightly posting and autosuspend need it)")
    else:
        w = settings.whmcs
        lines.append(f"whmcs         {w.url} tls-verify={'on' if w.verify_tls else 'OFF'}")
        lines.append(f"      identifier: {_secret_status(w.identifier)}")
        lines.append(f"      secret: {_secret_status(w.secret)}")
        if not w.verify_tls and not w.url.startswith("http://127.0.0.1"):
            warnings.append("whmcs.verify_tls: TLS verification is off for a non-loopback WHMCS")
    return lines, warnings


def secret_refs(settings: Settings) -> list[tuple[str, SecretRef]]:
    """(config field, reference) of every secret the config names."""
    refs: list[tuple[str, SecretRef]] = []
    for s in settings.servers:
        for field in ("password", "esl_password"):
            ref = getattr(s, field, None)
            if ref is not None:
                refs.append((f"servers.{s.id}.{field}", ref))
    if settings.whmcs is not None:
        for field in ("identifier", "secret", "accesskey"):
            ref = getattr(settings.whmcs, field)
            if ref is not None:
                refs.append((f"whmcs.{field}", ref))
    upload = settings.statements.upload
    for field in ("access_key_id", "secret_access_key"):
        ref = None if upload is None else getattr(upload, field)
        if ref is not None:
            refs.append((f"statements.upload.{field}", ref))
    return refs


def secret_errors(settings: Settings) -> list[str]:
    """One line per secret that does not resolve to a non-empty value (env variables and blocks)."""
    errors = []
    for field, ref in secret_refs(settings):
        try:
            value = ref.get()
        except SecretError as exc:
            errors.append(f"{field}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - Prefect API down, block of another type...
            errors.append(" ".join(f"{field}: {ref} could not be read: {type(exc).__name__}: {exc}".split())[:300])
            continue
        if not value:
            errors.append(f"{field}: {ref} is empty")
    return errors


def register(app: typer.Typer) -> None:
    @config_app.command("check")
    def check(
        config: ConfigOption = None,
        offline: Annotated[bool, typer.Option(
            "--offline", help="Do not resolve secrets (no environment or Prefect server needed).")] = False,
    ) -> None:
        """Validate the config file and print what it found; exit 1 with the bad field named,
        or when a secret it names does not resolve (unless --offline)."""
        settings = settings_or_exit(config)
        lines, warnings = describe(settings)
        typer.echo("\n".join(lines))
        for w in warnings:
            typer.echo(f"warning: {w}", err=True)
        errors = [] if offline else secret_errors(settings)
        for e in errors:
            typer.echo(f"error: {e}", err=True)
        if errors:
            typer.echo(f"config NOT OK: {len(errors)} secret(s) do not resolve (--offline skips this check)")
            raise typer.Exit(1)
        typer.echo("config OK" if not warnings else f"config OK with {len(warnings)} warning(s)")

    app.add_typer(config_app, name="config")
