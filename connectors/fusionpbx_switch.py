"""Suspend and restore a FusionPBX tenant: its gateways or its extensions (domain.md §1.8–1.9).

Two modes, chosen per service:
- gateway: `v_gateways.enabled = false` for the service's `gateway_uuids`, then over the event
  socket `sofia profile <profile> killgw <uuid>` (a disabled row alone does not stop a running
  gateway). Restore: `enabled = true`, then `sofia profile <profile> rescan` (which starts the
  enabled gateways again).
- extension: `v_extensions.enabled = false` for the service's extensions in the tenant's domain
  (`v_domains.domain_name`). FusionPBX's directory handler then refuses them; the cached directory
  entries `directory:<ext>@<context>` (and the number alias) are deleted so the change is live.

`enabled` is `text` ('true'/'false') up to FusionPBX 5.4 and `boolean` from 5.5: its type is read
from the catalogue and the value written accordingly; reads compare `enabled::text`.

The detail returned by `suspend_*` records exactly which rows we switched off (rows an operator
had already disabled are left alone and not switched back on), so `restore(detail)` undoes that
and only that, whatever the service's mode is configured to today.

Cache (the file/memcache choice). FusionPBX caches `sofia.conf` (key `<hostname>:configuration:
sofia.conf`, `hostname` being FreeSWITCH's `hostname` API) and directory entries, either in
memcache (cleared with the `memcache delete <key>` API, as FusionPBX's `cache` class does; a
missing key answers `-ERR NOT FOUND`, which is fine) or in files under `/var/cache/fusionpbx`
(key with ':' -> '.'). Autobill usually runs on another machine, so for the file method it fires
FusionPBX's own CUSTOM `fusion::file` "delete <key>" event (what the PBX's cache listener acts
on) and, when `cache_dir` exists locally (autobill on the PBX host), unlinks the file too.
Default: memcache, FusionPBX's classic setup; set the server's `cache_method` otherwise.

No `reloadxml`: on FusionPBX the directory and sofia.conf are served by its Lua XML handlers,
which read the database on a cache miss, so deleting the cache keys is what makes the change
live. Limits: installs that serve gateways from static XML files under sip_profiles/ (no Lua
sofia.conf handler) would restart a killed gateway on the next rescan by anyone, because the
file is not removed from here; existing registrations and calls in progress are not torn down
(FusionPBX's own toggle does not either) — the next INVITE or REGISTER is refused.

Ordering that keeps PBX and ledger consistent (the caller writes the ledger only after these
methods return):
  1. one DB transaction: lock the rows (`FOR UPDATE`), switch them;
  2. connect + authenticate the event socket and read the hostname *before* committing: an
     unreachable or misconfigured switch rolls the transaction back, nothing has changed;
  3. commit, then delete the cache keys (after the commit, so a concurrent lookup cannot re-cache
     the old row) and run killgw / rescan;
  4. if step 3 fails, compensate: put the rows back as they were (one transaction), clear the cache
     and rescan again best-effort, and raise `SwitchError` -> no ledger change, retried next cycle.
     If even the compensation fails, `SwitchInconsistent` says so and names the rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2

from autobill.secrets import reveal
from connectors.esl import EslClient, EslCommandError, EslError

log = logging.getLogger(__name__)

BENIGN_CACHE = ("-ERR NOT FOUND",)
BENIGN_KILLGW = ("-ERR no such gateway",)


class SwitchError(Exception):
    """The PBX change did not happen (or was rolled back / compensated); retry next cycle."""


class SwitchInconsistent(SwitchError):
    """The PBX change failed half-way and could not be undone: an operator must look."""


@dataclass
class SwitchResult:
    detail: dict[str, Any]  # what was changed; stored with the suspension, passed to restore()
    commands: list[str] = field(default_factory=list)  # event-socket commands sent (for the log)
    hostname: str = ""  # FreeSWITCH's `hostname`, part of the sofia.conf cache key


def _rollback(conn) -> None:
    if conn is None:
        return
    try:
        conn.rollback()
    except Exception:  # noqa: BLE001 - a dead connection rolls back by itself
        pass


def _on(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


class FusionPBXSwitch:
    def __init__(
        self,
        connect: Callable[[], Any],
        esl: Callable[[], EslClient],
        *,
        server_id: str = "",
        default_profile: str = "external",
        cache_method: str = "memcache",
        cache_dir: Path | None = Path("/var/cache/fusionpbx"),
    ) -> None:
        """`connect()` returns a new psycopg2 connection (autocommit off) to the FusionPBX
        database, `esl()` a new, unconnected `EslClient` for the same switch."""
        if cache_method not in ("memcache", "file"):
            raise ValueError(f"cache_method must be memcache or file, not {cache_method!r}")
        self._connect, self._esl = connect, esl
        self.server_id, self.default_profile = server_id, default_profile
        self.cache_method, self.cache_dir = cache_method, cache_dir
        self._types: dict[str, str] = {}

    @classmethod
    def from_server(cls, server) -> FusionPBXSwitch:
        """From a `FusionPBXServer` config: same database as the CDR connector, read-write."""
        if server.esl_password is None:
            raise SwitchError(f"server {server.id}: esl_password is not configured; cannot make changes live")

        def connect():
            return psycopg2.connect(
                host=server.host,
                port=server.port,
                dbname=server.database,
                user=server.user,
                password=reveal(server.password),
                sslmode=server.sslmode,
                connect_timeout=max(1, int(server.timeout_seconds)),
                options=f"-c statement_timeout={int(server.timeout_seconds * 1000)}",
            )

        def esl() -> EslClient:
            return EslClient(
                server.esl_host or server.host, server.esl_port, server.esl_password.get(), server.timeout_seconds
            )

        cache = {k: getattr(server, k) for k in ("cache_method", "cache_dir") if getattr(server, k, None) is not None}
        return cls(connect, esl, server_id=server.id, default_profile=server.sip_profile, **cache)

    # -- public ---------------------------------------------------------------------------------

    def suspend_gateways(self, gateway_uuids: Iterable[str], adopt: bool = False) -> SwitchResult:
        """Disable the gateways and stop them. `adopt`: completing an interrupted suspension of
        ours, so rows already disabled count as switched off by us (restored later)."""
        wanted = sorted({u.strip().lower() for u in gateway_uuids})
        if not wanted:
            raise SwitchError("gateway mode needs at least one gateway uuid")
        sql = (
            "SELECT gateway_uuid::text, enabled::text, COALESCE(NULLIF(profile, ''), %s) FROM v_gateways "
            "WHERE lower(gateway_uuid::text) = ANY(%s) ORDER BY gateway_uuid FOR UPDATE"
        )
        rows, changed, result, esl = self._switch(
            "v_gateways", "gateway_uuid", sql, (self.default_profile, wanted), wanted, False
        )
        profiles = sorted({r[2] for r in rows})
        result.detail = {
            "kind": "gateway",
            "server": self.server_id,
            "gateways": [{"uuid": r[0], "profile": r[2]} for r in rows if adopt or r[0] in changed],
            "already_disabled": [] if adopt else [r[0] for r in rows if r[0] not in changed],
        }

        # killgw all of them: a row an operator disabled may still be running
        live = self._killgw([{"uuid": r[0], "profile": r[2]} for r in rows])
        self._make_live(esl, live, result, "v_gateways", "gateway_uuid", changed, True, self._rescan(profiles))
        return result

    def suspend_extensions(self, domain: str, extensions: Iterable[str], adopt: bool = False) -> SwitchResult:
        """Disable the tenant's extensions and drop their cached directory entries (`adopt`: as above)."""
        wanted = sorted({e.strip() for e in extensions})
        if not wanted:
            raise SwitchError("extension mode needs the service's extensions")
        sql = (
            "SELECT e.extension_uuid::text, e.enabled::text, e.extension, COALESCE(e.number_alias, ''), "
            "COALESCE(NULLIF(e.user_context, ''), d.domain_name) "
            "FROM v_extensions e JOIN v_domains d ON d.domain_uuid = e.domain_uuid "
            "WHERE d.domain_name = %s AND e.extension = ANY(%s) ORDER BY e.extension FOR UPDATE OF e"
        )
        rows, changed, result, esl = self._switch(
            "v_extensions", "extension_uuid", sql, (domain, wanted), wanted, False, match_col=2
        )
        result.detail = {
            "kind": "extension",
            "server": self.server_id,
            "domain": domain,
            "extensions": [
                {"uuid": r[0], "extension": r[2], "number_alias": r[3], "context": r[4]}
                for r in rows
                if adopt or r[0] in changed
            ],
            "already_disabled": [] if adopt else [r[2] for r in rows if r[0] not in changed],
        }
        clear = self._directory(rows)
        self._make_live(esl, clear, result, "v_extensions", "extension_uuid", changed, True, clear)
        return result

    def restore(self, detail: dict[str, Any]) -> SwitchResult:
        """Undo exactly what `detail` (from a suspend_*) switched off."""
        kind = detail.get("kind")
        if kind == "gateway":
            gateways = detail.get("gateways", [])
            uuids = [g["uuid"] for g in gateways]
            profiles = sorted({g["profile"] for g in gateways}) or [self.default_profile]
            sql = "SELECT gateway_uuid::text, enabled::text FROM v_gateways WHERE gateway_uuid::text = ANY(%s) FOR UPDATE"
            _, changed, result, esl = self._switch("v_gateways", "gateway_uuid", sql, (uuids,), uuids, True, strict=False)
            rescan = self._rescan(profiles)
            self._make_live(esl, rescan, result, "v_gateways", "gateway_uuid", changed, False, self._killgw(gateways))
        elif kind == "extension":
            exts = detail.get("extensions", [])
            uuids = [e["uuid"] for e in exts]
            sql = "SELECT extension_uuid::text, enabled::text FROM v_extensions WHERE extension_uuid::text = ANY(%s) FOR UPDATE"
            _, changed, result, esl = self._switch("v_extensions", "extension_uuid", sql, (uuids,), uuids, True, strict=False)
            clear = self._directory([(e["uuid"], None, e["extension"], e.get("number_alias", ""), e["context"]) for e in exts])
            self._make_live(esl, clear, result, "v_extensions", "extension_uuid", changed, False, clear)
        else:
            raise SwitchError(f"cannot restore a suspension detail of kind {kind!r}")
        result.detail = {**detail, "restored": sorted(changed)}
        return result

    # -- steps ------------------------------------------------------------------------------------

    def _switch(self, table, key, sql, params, wanted, to_on, *, match_col=0, strict=True):
        """Steps 1–3a: lock + switch rows, open the event socket, commit -> (rows, changed, result, esl)."""
        import psycopg2

        result = SwitchResult(detail={})
        conn = None
        try:
            conn = self._connect()
            with conn.cursor() as cur:
                col_type = self._enabled_type(cur, table)
                cur.execute(sql, params)
                rows = cur.fetchall()
                found = {str(r[match_col]).lower() for r in rows}
                missing = sorted(w for w in wanted if w.lower() not in found)
                if missing and strict:
                    raise SwitchError(f"{table}: not found on server {self.server_id or '?'}: {', '.join(missing)}")
                changed = [r[0] for r in rows if _on(r[1]) != to_on]
                if changed:
                    value: object = to_on if col_type == "boolean" else ("true" if to_on else "false")
                    cur.execute(f"UPDATE {table} SET enabled = %s WHERE {key}::text = ANY(%s)", (value, changed))  # noqa: S608 - fixed identifiers
            esl = self._esl().connect()  # before commit: an unreachable switch changes nothing
            try:
                result.hostname = esl.api("hostname").strip()
                conn.commit()
            except BaseException:
                esl.close()
                raise
            return rows, changed, result, esl
        except psycopg2.Error as exc:
            _rollback(conn)
            first = (str(exc).strip().splitlines() or [""])[0]
            raise SwitchError(f"{table}: database error, nothing changed: {type(exc).__name__}: {first}") from None
        except EslError as exc:
            _rollback(conn)
            raise SwitchError(f"event socket: {exc}; nothing changed") from None
        except BaseException:
            _rollback(conn)
            raise
        finally:
            if conn is not None:
                conn.close()

    def _make_live(self, esl, steps, result, table, key, changed, undo_to_on, undo_live) -> None:
        """Steps 3b–4: cache + sofia commands after the commit; compensate on failure."""
        try:
            with esl:
                steps(esl, result.hostname, result)
        except Exception as exc:  # noqa: BLE001 - whatever broke after the commit, undo the commit
            try:
                self._undo(table, key, changed, undo_to_on, undo_live)
            except Exception as undo_exc:  # noqa: BLE001 - reported, with the original error
                raise SwitchInconsistent(
                    f"event socket failed after the database change ({exc}) and the change could not be "
                    f"undone ({type(undo_exc).__name__}: {undo_exc}); rows {changed} of {table} need a look"
                ) from None
            raise SwitchError(f"event socket failed after the database change, change undone: {exc}") from None

    def _undo(self, table: str, key: str, changed: list[str], to_on: bool, live) -> None:
        """Put `changed` rows back (must succeed), then make that live (best-effort)."""
        if changed:
            conn = self._connect()
            try:
                with conn.cursor() as cur:
                    value: object = to_on if self._types[table] == "boolean" else ("true" if to_on else "false")
                    cur.execute(f"UPDATE {table} SET enabled = %s WHERE {key}::text = ANY(%s)", (value, changed))  # noqa: S608
                conn.commit()
            finally:
                conn.close()
        try:
            with self._esl() as esl:
                live(esl, esl.api("hostname").strip(), SwitchResult(detail={}))
        except EslError as exc:
            log.warning("server %s: making the undo live failed: %s", self.server_id, exc)

    # -- what makes a change live ---------------------------------------------------------------

    def _rescan(self, profiles: list[str]):
        def live(esl: EslClient, host: str, result: SwitchResult) -> None:
            self._cache_delete(esl, f"{host}:configuration:sofia.conf", result)
            for profile in profiles:
                self._api(esl, f"sofia profile {profile} rescan", result)

        return live

    def _killgw(self, gateways: list[dict[str, str]]):
        def live(esl: EslClient, host: str, result: SwitchResult) -> None:
            self._cache_delete(esl, f"{host}:configuration:sofia.conf", result)
            for g in gateways:
                self._api(esl, f"sofia profile {g['profile']} killgw {g['uuid']}", result, BENIGN_KILLGW)

        return live

    def _directory(self, rows):
        """Rows (uuid, _, extension, number_alias, context): delete their directory cache entries."""

        def live(esl: EslClient, host: str, result: SwitchResult) -> None:
            for row in rows:
                for user in (row[2], row[3]):
                    if user:
                        self._cache_delete(esl, f"directory:{user}@{row[4]}", result)

        return live

    # -- primitives ---------------------------------------------------------------------------------

    def _enabled_type(self, cur, table: str) -> str:
        if table not in self._types:
            cur.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = to_regclass(%s) AND attname = 'enabled' AND NOT attisdropped",
                (table,),
            )
            row = cur.fetchone()
            if row is None:
                raise SwitchError(f"{table}.enabled not found (is this a FusionPBX database?)")
            self._types[table] = "boolean" if row[0] == "boolean" else "text"
        return self._types[table]

    def _api(self, esl: EslClient, command: str, result: SwitchResult, benign: tuple[str, ...] = ()) -> str:
        result.commands.append(command)
        try:
            reply = esl.api(command)
        except EslCommandError as exc:
            if any(exc.reply.strip().startswith(b) for b in benign):
                return exc.reply
            raise
        if reply.startswith("Invalid Profile"):
            raise EslCommandError(command, reply)
        return reply

    def _cache_delete(self, esl: EslClient, key: str, result: SwitchResult) -> None:
        if self.cache_method == "memcache":
            self._api(esl, f"memcache delete {key}", result, BENIGN_CACHE)
            return
        file_key = key.replace(":", ".")
        result.commands.append(f"sendevent CUSTOM fusion::file delete {file_key}")
        esl.sendevent(
            "CUSTOM",
            {
                "Event-Name": "CUSTOM",
                "Event-Subclass": "fusion::file",
                "API-Command": "cache",
                "API-Command-Argument": f"delete {file_key}",
            },
        )
        if self.cache_dir is not None and self.cache_dir.is_dir():
            for path in (self.cache_dir / file_key, self.cache_dir / f"{file_key}.tmp"):
                path.unlink(missing_ok=True)
