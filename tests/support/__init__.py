"""Shared builders for the tests (one place each: reuse them, never write a twin)."""

from sandboxes.loopback import free_port


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused)."""
    return free_port()
