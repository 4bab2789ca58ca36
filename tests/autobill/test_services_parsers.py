"""The per-kind parsers of WHMCS service fields (seeds 001 formats): property tests against the
formats written out, plus the seed's own examples."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autobill.config import ServiceFields
from autobill.services.parsers import (
    FieldError,
    Parsed,
    extension_list,
    parse_lesnet,
    parse_pbx,
    parse_service,
    parse_vodia,
)
from autobill.services.records import WhmcsService, from_whmcs

tenants = st.from_regex(r"[a-z0-9]{1,12}(\.[a-z0-9]{1,10}){0,3}", fullmatch=True)
dids = st.from_regex(r"[2-9][0-9]{6,14}", fullmatch=True)
exts = st.from_regex(r"[0-9]{2,6}", fullmatch=True)
peers = st.from_regex(r"[A-F0-9]{8,16}", fullmatch=True)
search = st.one_of(st.none(), st.from_regex(r"[0-9]{2,5}|[A-Z][a-z]{1,10}", fullmatch=True))
seps = st.sampled_from([" | ", "|", " |", "| "])


def test_seed_examples():
    assert parse_vodia("rucken.wat1.ictvoip.ca | 5484815577 | 5197830020 | 8300") == Parsed(
        "rucken.wat1.ictvoip.ca", dids=("5484815577", "5197830020"), search="8300")
    assert parse_lesnet("D4E3CD2BFC791 | 12046664021") == Parsed("D4E3CD2BFC791", dids=("12046664021",))
    assert parse_lesnet("", peer_id="D4E3CD2BFC791") == Parsed("D4E3CD2BFC791")
    assert parse_pbx("c1.pbx.example.net", "101, 102,103") == Parsed("c1.pbx.example.net", extensions=("101", "102", "103"))
    assert parse_pbx("c1.pbx.example.net", "203.0.113.7") == Parsed("c1.pbx.example.net")
    assert extension_list("0998-1001") == ("0998", "0999", "1000", "1001")


@given(tenants, st.lists(dids, max_size=5, unique=True), search, seps)
def test_vodia_round_trip(tenant, numbers, srch, sep):
    text = sep.join([tenant, *numbers, *([srch] if srch else [])])
    parsed = parse_vodia(text)
    assert parsed.tenant == tenant and parsed.dids == tuple(numbers)
    assert parsed.search == srch


@given(peers, st.lists(dids, min_size=1, max_size=3, unique=True), seps)
def test_lesnet_round_trip(peer, numbers, sep):
    assert parse_lesnet(sep.join([peer, *numbers])) == Parsed(peer, dids=tuple(numbers))


@given(tenants, st.lists(exts, max_size=8, unique=True), st.sampled_from([",", ", ", " ", ";", "\n"]))
def test_pbx_round_trip(tenant, extensions, sep):
    assert parse_pbx(tenant, sep.join(extensions)) == Parsed(tenant, extensions=tuple(extensions))


@given(st.integers(0, 9000), st.integers(0, 50))
def test_ranges_expand_to_every_extension(lo, width):
    digits = len(str(lo + width))
    text = f"{str(lo).zfill(digits)}-{str(lo + width).zfill(digits)}"
    assert [int(e) for e in extension_list(text)] == list(range(lo, lo + width + 1))


@given(st.text(max_size=60), st.text(max_size=30))
def test_any_text_parses_or_names_the_field(domain, dedicated):
    """Never another exception, and a successful parse only holds well-formed values."""
    for call in (lambda: parse_vodia(domain), lambda: parse_lesnet(domain, dedicated),
                 lambda: parse_pbx(domain, dedicated)):
        try:
            parsed = call()
        except FieldError as exc:
            assert exc.field and str(exc).startswith("field ")
            continue
        assert parsed.tenant and " " not in parsed.tenant and "|" not in parsed.tenant
        assert all(d.isdigit() and 7 <= len(d) <= 15 for d in parsed.dids)
        assert all(e and " " not in e and "," not in e for e in parsed.extensions)


@pytest.mark.parametrize("text", ["", "two words", "t | 12 | 8300", "t | 5484815577 | not a did | 8300"])
def test_vodia_rejects(text):
    with pytest.raises(FieldError):
        parse_vodia(text)


def test_parse_service_reads_configured_fields_and_extra_dids():
    product = {"id": "7", "clientid": "3", "pid": "2", "name": "Hosted PBX", "groupname": "VoIP", "status": "Active",
               "domain": "acme.pbx.example.net", "dedicatedip": "201-203", "serverid": "1",
               "customfields": {"customfield": [{"id": "4", "name": "DIDs", "translated_name": "DIDs",
                                                  "value": "+1 (548) 481-5577, 5197830020"}]}}
    svc = from_whmcs(product)
    parsed = parse_service("fusionpbx", svc, ServiceFields())
    assert parsed == Parsed("acme.pbx.example.net", ("201", "202", "203"), ("15484815577", "5197830020"))
    custom = ServiceFields(tenant="Tenant", extensions="Extensions")
    svc2 = WhmcsService(1, 1, 1, "p", "g", "Active", custom_fields={"tenant": "t1", "extensions": "9"})
    assert parse_service("file", svc2, custom) == Parsed("t1", ("9",))


def test_from_whmcs_names_a_bad_id():
    with pytest.raises(ValueError, match="'clientid'"):
        from_whmcs({"id": "1", "clientid": "", "pid": "1"})
