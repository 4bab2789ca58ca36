"""WHMCS API sandbox: a loopback server with SQLite state and fault injection (server.py)."""

from connectors.whmcs_sandbox.faults import MODES as FAULT_MODES
from connectors.whmcs_sandbox.server import API_PATH, WhmcsSandbox
from connectors.whmcs_sandbox.store import CUSTOM_FIELDS, EMAIL_TEMPLATES

__all__ = ["API_PATH", "CUSTOM_FIELDS", "EMAIL_TEMPLATES", "FAULT_MODES", "WhmcsSandbox"]
