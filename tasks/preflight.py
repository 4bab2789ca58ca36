"""Preflight: before a nightly run changes anything in the ledger, check that it can finish.

A run that finds out at the posting step that the WHMCS secret is missing has already claimed
charges (`posting`), which then turn `uncertain` and need a manual WHMCS search although nothing
was sent. So, first of all, `preflight`:

1. resolves every secret the run will need: the password of each server it extracts (FusionPBX,
   Vodia) and, unless it is a dry run, WHMCS's identifier, secret and access key;
2. unless it is a dry run, makes one cheap WHMCS call (`GetClients`, one client) with those
   credentials, so a wrong URL, a refused credential or an unreachable WHMCS stops the run here.

A failure is ONE line naming the secret or the endpoint (`PreflightFailed`); the flow records the
run as failed and claims nothing. A PBX that is down is NOT a preflight failure: only its own
extraction fails (DESIGN.md invariant 5); a secret it lacks is, because it is a configuration
error that would fail every night.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prefect import task
from prefect.cache_policies import NO_CACHE

from autobill.config import Settings
from autobill.secrets import SecretError, SecretRef
from connectors.whmcs import WhmcsClient, WhmcsError

PREFLIGHT_RETRIES = 1  # one retry of the WHMCS call: a blip must not cost a night, a dead WHMCS stops fast


class PreflightFailed(Exception):
    """The run cannot start; the message is one line naming the secret or endpoint."""


def needed_secrets(settings: Settings, server_ids: Iterable[str], dry_run: bool) -> list[tuple[str, SecretRef]]:
    """(config field, reference) of every secret this run will resolve."""
    out: list[tuple[str, SecretRef]] = []
    for sid in server_ids:
        server = settings.server(sid)
        ref = getattr(server, "password", None)
        if ref is not None:
            out.append((f"servers.{sid}.password", ref))
    if not dry_run and settings.whmcs is not None:
        w = settings.whmcs
        out += [("whmcs.identifier", w.identifier), ("whmcs.secret", w.secret)]
        for field in ("accesskey", "database_url"):  # optional ones, when configured
            if getattr(w, field, None) is not None:
                out.append((f"whmcs.{field}", getattr(w, field)))
    return out


def check_secrets(settings: Settings, server_ids: Iterable[str], dry_run: bool) -> list[str]:
    """One line per secret that does not resolve (empty: all resolve)."""
    problems = []
    for field, ref in needed_secrets(settings, server_ids, dry_run):
        try:
            value = ref.get()
        except SecretError as exc:
            problems.append(f"{field}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - a Prefect server that is down, a bad block...
            problems.append(f"{field}: secret {ref} could not be read: {type(exc).__name__}: {exc}".splitlines()[0])
            continue
        if not value:
            problems.append(f"{field}: secret {ref} is empty")
    return problems


def preflight(settings: Settings, server_ids: Iterable[str], dry_run: bool,
              client_factory: Callable[[], WhmcsClient] | None = None) -> None:
    """Raise PreflightFailed (one line) unless every secret resolves and WHMCS answers."""
    problems = check_secrets(settings, list(server_ids), dry_run)
    if problems:
        raise PreflightFailed(f"preflight: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    if dry_run:
        return
    if settings.whmcs is None:
        raise PreflightFailed("preflight: whmcs: not configured; cannot post charges (use --dry-run to preview)")
    client = client_factory() if client_factory else WhmcsClient.from_settings(settings.whmcs)
    client.retries = min(client.retries, PREFLIGHT_RETRIES)
    try:
        client.call("GetClients", limitstart=0, limitnum=1)
    except WhmcsError as exc:
        raise PreflightFailed(f"preflight: whmcs.url {settings.whmcs.url}: {str(exc).splitlines()[0]}") from None
    finally:
        client.close()


@task(name="preflight", cache_policy=NO_CACHE, retries=0)
def preflight_task(settings: Settings, server_ids: list[str], dry_run: bool) -> None:
    preflight(settings, server_ids, dry_run)
