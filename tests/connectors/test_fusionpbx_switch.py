"""Gateway and extension suspension against real PostgreSQL (text and boolean `enabled`) and the
loopback event-socket sandbox: what changes, what is made live, and what happens on failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.esl import EslClient
from connectors.fusionpbx_switch import FusionPBXSwitch, SwitchError, SwitchInconsistent
from sandboxes.esl import EslSandbox
from tests.support.suspend import PBX

pytestmark = pytest.mark.postgres
PW = "esl-test-pw"
HOST = "fs1.example"


@pytest.fixture(params=["text", "boolean"])
def pbx(request, pg_schema) -> PBX:
    return PBX(pg_schema, request.param)


@pytest.fixture
def esl(pbx):
    with EslSandbox(password=PW, hostname=HOST, rescan_source=pbx.enabled_gateways) as sb:
        yield sb


def switch(pbx: PBX, esl: EslSandbox, password: str = PW, **kw) -> FusionPBXSwitch:
    return FusionPBXSwitch(pbx.connect, lambda: EslClient(esl.host, esl.port, password, timeout=2), server_id="pbx1", **kw)


def test_gateway_suspend_and_restore(pbx: PBX, esl: EslSandbox) -> None:
    gw1, gw2 = pbx.gateway("acme.example"), pbx.gateway("acme.example")
    other = pbx.gateway("other.example")
    esl.running |= {gw1, gw2, other}
    esl.cache.add(f"{HOST}:configuration:sofia.conf")

    res = switch(pbx, esl).suspend_gateways([gw1.upper(), gw2])
    assert not pbx.gw_on(gw1) and not pbx.gw_on(gw2) and pbx.gw_on(other)
    assert esl.running == {other}
    assert f"{HOST}:configuration:sofia.conf" not in esl.cache
    assert esl.commands[:2] == ["hostname", f"memcache delete {HOST}:configuration:sofia.conf"]
    assert sorted(esl.commands[2:]) == sorted(f"sofia profile external killgw {g}" for g in (gw1, gw2))
    assert {g["uuid"] for g in res.detail["gateways"]} == {gw1, gw2}
    assert res.detail["kind"] == "gateway" and res.detail["server"] == "pbx1"

    esl.commands.clear()
    esl.cache.add(f"{HOST}:configuration:sofia.conf")  # re-cached meanwhile by a reload
    back = switch(pbx, esl).restore(res.detail)
    assert pbx.gw_on(gw1) and pbx.gw_on(gw2)
    assert esl.running == {gw1, gw2, other}
    assert esl.commands == ["hostname", f"memcache delete {HOST}:configuration:sofia.conf", "sofia profile external rescan"]
    assert sorted(back.detail["restored"]) == sorted([gw1, gw2])


def test_gateway_disabled_by_an_operator_stays_disabled(pbx: PBX, esl: EslSandbox) -> None:
    live, off = pbx.gateway("acme.example"), pbx.gateway("acme.example", on=False)
    res = switch(pbx, esl).suspend_gateways([live, off])
    assert [g["uuid"] for g in res.detail["gateways"]] == [live]
    assert res.detail["already_disabled"] == [off]
    assert f"sofia profile external killgw {off}" in esl.commands  # not running: "-ERR no such gateway" is fine
    switch(pbx, esl).restore(res.detail)
    assert pbx.gw_on(live) and not pbx.gw_on(off)


def test_gateway_profile_comes_from_the_row(pbx: PBX, esl: EslSandbox) -> None:
    gw = pbx.gateway("acme.example", profile="external-ipv6")
    res = switch(pbx, esl).suspend_gateways([gw])
    assert f"sofia profile external-ipv6 killgw {gw}" in esl.commands
    switch(pbx, esl).restore(res.detail)
    assert esl.commands[-1] == "sofia profile external-ipv6 rescan"


def test_extension_suspend_and_restore(pbx: PBX, esl: EslSandbox) -> None:
    pbx.extension("acme.example", "1001", alias="501")
    pbx.extension("acme.example", "1002")
    pbx.extension("acme.example", "1003", on=False)  # an operator's choice, not ours
    pbx.extension("acme.example", "1004")  # another client's extension in the same domain
    pbx.extension("other.example", "1001")  # same number, other tenant
    esl.cache |= {"directory:1001@acme.example", "directory:501@acme.example", "directory:1004@acme.example"}

    res = switch(pbx, esl).suspend_extensions("acme.example", ["1001", "1002", "1003"])
    assert not pbx.ext_on("acme.example", "1001") and not pbx.ext_on("acme.example", "1002")
    assert pbx.ext_on("acme.example", "1004") and pbx.ext_on("other.example", "1001")
    assert [e["extension"] for e in res.detail["extensions"]] == ["1001", "1002"]
    assert res.detail["already_disabled"] == ["1003"]
    assert esl.cache == {"directory:1004@acme.example"}
    assert "memcache delete directory:501@acme.example" in esl.commands

    esl.cache |= {"directory:1001@acme.example"}
    switch(pbx, esl).restore(res.detail)
    assert pbx.ext_on("acme.example", "1001") and pbx.ext_on("acme.example", "1002")
    assert not pbx.ext_on("acme.example", "1003")
    assert "directory:1001@acme.example" not in esl.cache


def test_unknown_rows_change_nothing(pbx: PBX, esl: EslSandbox) -> None:
    gw = pbx.gateway("acme.example")
    with pytest.raises(SwitchError, match="not found"):
        switch(pbx, esl).suspend_gateways([gw, "00000000-0000-0000-0000-000000000000"])
    assert pbx.gw_on(gw)
    pbx.extension("acme.example", "1001")
    with pytest.raises(SwitchError, match="1999"):
        switch(pbx, esl).suspend_extensions("acme.example", ["1001", "1999"])
    assert pbx.ext_on("acme.example", "1001")
    assert not any("killgw" in c or "memcache" in c for c in esl.commands)


def test_unreachable_switch_rolls_the_database_back(pbx: PBX, esl: EslSandbox) -> None:
    gw = pbx.gateway("acme.example")
    esl.running.add(gw)
    with pytest.raises(SwitchError, match="nothing changed"):
        switch(pbx, esl, password="wrong").suspend_gateways([gw])
    assert pbx.gw_on(gw) and gw in esl.running
    port = esl.port
    esl.stop()  # nothing listens any more: connection refused
    pbx.extension("acme.example", "1001")
    sw = FusionPBXSwitch(pbx.connect, lambda: EslClient("127.0.0.1", port, PW, timeout=1))
    with pytest.raises(SwitchError, match="nothing changed"):
        sw.suspend_extensions("acme.example", ["1001"])
    assert pbx.ext_on("acme.example", "1001")


def test_failure_after_commit_is_compensated(pbx: PBX, esl: EslSandbox) -> None:
    gw1, gw2 = pbx.gateway("acme.example"), pbx.gateway("acme.example")
    esl.running |= {gw1, gw2}
    esl.faults[f"sofia profile external killgw {gw2}"] = "-ERR the switch is unhappy\n"
    with pytest.raises(SwitchError, match="change undone") as info:
        switch(pbx, esl).suspend_gateways([gw1, gw2])
    assert not isinstance(info.value, SwitchInconsistent)
    assert pbx.gw_on(gw1) and pbx.gw_on(gw2)  # database put back
    assert {gw1, gw2} <= esl.running  # the gateway killed before the failure was restarted by rescan
    assert esl.commands[-1] == "sofia profile external rescan"


def test_failed_restore_leaves_the_service_suspended(pbx: PBX, esl: EslSandbox) -> None:
    ext = "1001"
    pbx.extension("acme.example", ext)
    res = switch(pbx, esl).suspend_extensions("acme.example", [ext])
    esl.faults["memcache delete"] = "-ERR SERVER HAS FAILED AND IS DISABLED UNTIL TIMED RETRY\n"
    with pytest.raises(SwitchError, match="change undone"):
        switch(pbx, esl).restore(res.detail)
    assert not pbx.ext_on("acme.example", ext)  # still suspended: consistent with a ledger that says so


def test_compensation_that_fails_is_reported_as_inconsistent(pbx: PBX, esl: EslSandbox) -> None:
    gw = pbx.gateway("acme.example")
    calls = {"n": 0}

    def flaky_connect():
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("database went away")
        return pbx.connect()

    esl.faults["sofia profile external killgw"] = "-ERR nope\n"
    sw = FusionPBXSwitch(flaky_connect, lambda: EslClient(esl.host, esl.port, PW, timeout=2), server_id="pbx1")
    with pytest.raises(SwitchInconsistent, match=gw):
        sw.suspend_gateways([gw])
    assert not pbx.gw_on(gw)  # the half-done state the message tells the operator about


def test_file_cache_method(pbx: PBX, esl: EslSandbox, tmp_path: Path) -> None:
    gw = pbx.gateway("acme.example")
    key = f"{HOST}.configuration.sofia.conf"
    (tmp_path / key).write_text("<xml/>")
    esl.file_cache.add(key)
    switch(pbx, esl, cache_method="file", cache_dir=tmp_path).suspend_gateways([gw])
    assert not (tmp_path / key).exists()
    assert key not in esl.file_cache
    assert esl.events[0]["Event-Subclass"] == "fusion::file"
    assert esl.events[0]["API-Command-Argument"] == f"delete {key}"
    assert not any(c.startswith("memcache") for c in esl.commands)


def test_enabled_column_type_is_detected(pbx: PBX, esl: EslSandbox) -> None:
    gw = pbx.gateway("acme.example")
    sw = switch(pbx, esl)
    sw.suspend_gateways([gw])
    assert sw._types["v_gateways"] == pbx.enabled_type
    assert pbx.enabled("v_gateways", "gateway_uuid", gw) == "false"
