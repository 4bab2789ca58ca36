"""FusionPBX switch tables for the autosuspend tests: v_domains, v_gateways, v_extensions in a
per-test PostgreSQL schema, with `enabled` as text ('true'/'false', FusionPBX <= 5.4) or boolean
(5.5+), and a factory for psycopg2 connections bound to that schema."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg2
from psycopg2 import sql

from tests.support.fusionpbx_schema import create_switch_tables


def connector(schema: str) -> Callable[[], object]:
    """`connect()` for FusionPBXSwitch: a fresh psycopg2 connection with search_path = schema."""

    def connect():
        return psycopg2.connect(
            host="127.0.0.1", port=5432, user="postgres", dbname="test", connect_timeout=5,
            options=f"-c search_path={schema}",
        )  # fmt: skip

    return connect


class PBX:
    """A tiny FusionPBX database: domains with gateways and extensions."""

    def __init__(self, schema: str, enabled_type: str = "text") -> None:
        self.schema, self.enabled_type = schema, enabled_type
        self.connect = connector(schema)
        self.domains: dict[str, str] = {}
        create_switch_tables(schema, enabled_type)

    def _cur(self):
        conn = self.connect()
        conn.autocommit = True
        return _Closing(conn)

    def _val(self, on: bool) -> object:
        return on if self.enabled_type == "boolean" else ("true" if on else "false")

    def domain(self, name: str) -> str:
        if name not in self.domains:
            self.domains[name] = str(uuid.uuid4())
            with self._cur() as cur:
                cur.execute(
                    "INSERT INTO v_domains (domain_uuid, domain_name, domain_enabled) VALUES (%s, %s, %s)",
                    (self.domains[name], name, self._val(True)),
                )
        return self.domains[name]

    def gateway(self, domain: str, on: bool = True, profile: str = "external") -> str:
        gw = str(uuid.uuid4())
        with self._cur() as cur:
            cur.execute(
                "INSERT INTO v_gateways (gateway_uuid, domain_uuid, gateway, profile, enabled) VALUES (%s, %s, %s, %s, %s)",
                (gw, self.domain(domain), f"trunk-{gw[:4]}", profile, self._val(on)),
            )
        return gw

    def extension(self, domain: str, number: str, on: bool = True, alias: str | None = None) -> str:
        ext = str(uuid.uuid4())
        with self._cur() as cur:
            cur.execute(
                "INSERT INTO v_extensions (extension_uuid, domain_uuid, extension, number_alias, user_context, enabled) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (ext, self.domain(domain), number, alias, domain, self._val(on)),
            )
        return ext

    def enabled(self, table: str, key: str, value: str) -> str | None:
        """`enabled::text` of one row ('true' / 'false')."""
        with self._cur() as cur:
            cur.execute(
                sql.SQL("SELECT enabled::text FROM {} WHERE {}::text = %s").format(sql.Identifier(table), sql.Identifier(key)),
                (value,),
            )
            row = cur.fetchone()
        return None if row is None else row[0]

    def gw_on(self, gw: str) -> bool:
        return self.enabled("v_gateways", "gateway_uuid", gw) == "true"

    def ext_on(self, domain: str, number: str) -> bool:
        with self._cur() as cur:
            cur.execute(
                "SELECT e.enabled::text FROM v_extensions e JOIN v_domains d USING (domain_uuid) "
                "WHERE d.domain_name = %s AND e.extension = %s",
                (domain, number),
            )
            return cur.fetchone()[0] == "true"

    def enabled_gateways(self) -> list[str]:
        """What FusionPBX's sofia.conf handler would hand FreeSWITCH on a rescan."""
        with self._cur() as cur:
            cur.execute("SELECT gateway_uuid::text FROM v_gateways WHERE enabled::text = 'true'")
            return [r[0] for r in cur.fetchall()]


class _Closing:
    def __init__(self, conn) -> None:
        self.conn = conn

    def __enter__(self):
        self.cur = self.conn.cursor()
        return self.cur

    def __exit__(self, *exc) -> None:
        self.cur.close()
        self.conn.close()


# -- settings and wiring for autosuspend cycles ---------------------------------------------------

WHMCS_IDENT, WHMCS_SECRET = "as-ident", "as-secret-7c1"


def set_whmcs_secrets(monkeypatch) -> None:
    """The environment variables `settings_for` points the WHMCS credentials at."""
    monkeypatch.setenv("AUTOBILL_TEST_WHMCS_ID", WHMCS_IDENT)
    monkeypatch.setenv("AUTOBILL_TEST_WHMCS_SECRET", WHMCS_SECRET)


def settings_for(ledger_url: str, whmcs_url: str, services: list[dict], *, extra: dict | None = None, **autosuspend):
    """A validated Settings with one FusionPBX server `pbx1`, the given services and WHMCS.
    Intraday usage is off (pbx1 has no CDR table) unless `extra` (more top-level keys) says so."""
    from autobill.config import settings_from_dict
    from sandboxes.whmcs.store import CUSTOM_FIELDS

    return settings_from_dict(
        {
            "ledger_url": ledger_url,
            "timezone": "America/Toronto",
            "servers": [{"id": "pbx1", "kind": "fusionpbx", "esl_password": {"env": "AUTOBILL_TEST_ESL_PW"}}],
            "tariffs": [{"name": "t", "path": "tariff.csv"}],
            "plans": [{"name": "p", "tariff": "t"}],
            "services": [{"server": "pbx1", "plan": "p", "tenant": "acme.example", **s} for s in services],
            "whmcs": {
                "url": whmcs_url,
                "identifier": {"env": "AUTOBILL_TEST_WHMCS_ID"},
                "secret": {"env": "AUTOBILL_TEST_WHMCS_SECRET"},
                "retries": 1,
                "timeout_seconds": 5,
                "custom_field_ids": dict(CUSTOM_FIELDS),
            },
            "autosuspend": autosuspend,
            "intraday": {"enabled": False},
            **(extra or {}),
        }
    )
