"""The event-socket client against the loopback event-socket sandbox (real TCP on 127.0.0.1)."""

from __future__ import annotations

import socket
import time

import pytest

from connectors.esl import EslAuthError, EslClient, EslCommandError, EslError
from sandboxes.esl import EslSandbox

PW = "s3cret-esl-pw"


@pytest.fixture
def esl():
    with EslSandbox(password=PW, hostname="fs1.example", gateways=["GW-A"], cache_keys=["k1"]) as sb:
        yield sb


def client(sb: EslSandbox, password: str = PW, timeout: float = 2.0) -> EslClient:
    return EslClient(sb.host, sb.port, password, timeout=timeout)


def test_auth_and_api_round_trip(esl: EslSandbox) -> None:
    with client(esl) as c:
        assert c.api("hostname") == "fs1.example"
        assert c.api("memcache delete k1").startswith("+OK")
        assert c.api("sofia profile external killgw gw-a").startswith("+OK gateway marked")
        assert c.api("sofia profile external rescan").startswith("+OK")
    assert esl.commands == ["hostname", "memcache delete k1", "sofia profile external killgw gw-a", "sofia profile external rescan"]
    assert esl.running == set() and esl.cache == set()
    assert esl.connections == 1  # one connection for all four commands


def test_multiline_body_is_read_by_content_length(esl: EslSandbox) -> None:
    esl.faults["status"] = "UP 0 years\nline two\n\nline four after a blank line\n"
    with client(esl) as c:
        assert c.api("status").endswith("line four after a blank line\n")
        assert c.api("hostname") == "fs1.example"  # the stream is still in step


def test_err_reply_raises_command_error_and_keeps_connection(esl: EslSandbox) -> None:
    with client(esl) as c:
        with pytest.raises(EslCommandError) as info:
            c.api("memcache delete missing-key")
        assert info.value.reply.startswith("-ERR NOT FOUND")
        with pytest.raises(EslCommandError, match="no such gateway"):
            c.api("sofia profile external killgw nope")
        assert c.api("hostname") == "fs1.example"


def test_bad_password_is_an_auth_error_without_the_password(esl: EslSandbox) -> None:
    with pytest.raises(EslAuthError) as info:
        client(esl, password="wrong-password-xyz").connect()
    assert "wrong-password-xyz" not in str(info.value)
    assert "-ERR invalid" in str(info.value)
    assert esl.commands == []


def test_refused_connection_is_an_esl_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: refused
    with pytest.raises(EslError) as info:
        EslClient("127.0.0.1", port, PW, timeout=1).connect()
    assert PW not in str(info.value)


def test_dropped_connection_mid_command(esl: EslSandbox) -> None:
    esl.drop_on.add("sofia profile")
    with client(esl) as c, pytest.raises(EslError, match="closed"):
        c.api("sofia profile external rescan")


def test_slow_reply_times_out(esl: EslSandbox) -> None:
    esl.delay_on["sofia"] = 1.5
    c = client(esl, timeout=0.3).connect()
    started = time.monotonic()
    with pytest.raises(EslError, match="[Tt]imeout|timed out"):
        c.api("sofia profile external rescan")
    assert time.monotonic() - started < 1.4
    c.close()


def test_unknown_command_and_injection_guard(esl: EslSandbox) -> None:
    with client(esl) as c:
        with pytest.raises(EslCommandError, match="Command not found"):
            c.api("no_such_thing")
        with pytest.raises(ValueError):
            c.api("hostname\n\napi fsctl shutdown")
    assert "fsctl shutdown" not in " ".join(esl.commands)


def test_api_before_connect_is_an_error() -> None:
    with pytest.raises(EslError, match="not connected"):
        EslClient("127.0.0.1", 1, PW).api("hostname")


def test_sendevent_reaches_the_switch(esl: EslSandbox) -> None:
    esl.file_cache.add("fs1.example.configuration.sofia.conf")
    with client(esl) as c:
        reply = c.sendevent(
            "CUSTOM",
            {"Event-Subclass": "fusion::file", "API-Command": "cache", "API-Command-Argument": "delete fs1.example.configuration.sofia.conf"},
        )
        assert reply.startswith("+OK")
        with pytest.raises(ValueError):
            c.sendevent("CUSTOM", {"X": "a\nb"})
        assert c.api("hostname") == "fs1.example"
    assert esl.events[0]["Event-Name"] == "CUSTOM"
    assert esl.file_cache == set()
