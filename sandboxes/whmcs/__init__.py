"""WHMCS API sandbox: a loopback server with SQLite state and fault injection (server.py)."""

from sandboxes.whmcs.faults import MODES as FAULT_MODES
from sandboxes.whmcs.server import API_PATH, WhmcsSandbox
from sandboxes.whmcs.store import CUSTOM_FIELDS, EMAIL_TEMPLATES

__all__ = ["API_PATH", "CUSTOM_FIELDS", "EMAIL_TEMPLATES", "FAULT_MODES", "WhmcsSandbox"]
