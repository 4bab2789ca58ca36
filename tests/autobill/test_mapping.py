from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autobill.config import settings_from_dict
from autobill.mapping import MappingError, assign_services


def _settings(services):
    return settings_from_dict({
        "servers": [{"id": "pbx1", "kind": "file", "path": "d"}, {"id": "pbx2", "kind": "file", "path": "e"}],
        "tariffs": [{"name": "t", "path": "t.csv"}],
        "plans": [{"name": "p", "tariff": "t"}, {"name": "q", "tariff": "t"}],
        "services": services,
    })


SERVICES = [
    {"client_id": 1, "service_id": 10, "server": "pbx1", "tenant": "a.example", "extensions": ["1001"], "plan": "p"},
    {"client_id": 2, "service_id": 20, "server": "pbx1", "tenant": "a.example", "dids": ["+1 613 555 0100"], "plan": "q",
     "extensions": ["1002"]},
    {"client_id": 3, "service_id": 30, "server": "pbx1", "tenant": "b.example", "plan": "p"},
]


def test_most_specific_match_wins():
    cdrs = pl.DataFrame({
        "server": ["pbx1", "pbx1", "pbx1", "pbx1", "pbx2", "pbx1"],
        "tenant": ["a.example", "a.example", "a.example", "b.example", "b.example", "a.example"],
        "extension": ["1001", "1002", None, "9999", "1001", "7777"],
        "direction": ["outbound", "outbound", "inbound", "outbound", "outbound", "outbound"],
        "rate_number": ["442071234567", "1", "16135550100", "1", "1", "16135550100"],
    })
    out = assign_services(cdrs, _settings(SERVICES))
    assert out["service_id"].to_list() == [10, 20, 20, 30, None, None]
    assert out["client_id"].to_list() == [1, 2, 2, 3, None, None]
    assert out["plan"].to_list() == ["p", "q", "q", "p", None, None]
    assert out.height == cdrs.height and out.columns[:5] == cdrs.columns


def test_two_owners_of_one_extension_is_an_error():
    dup = [*SERVICES, {"client_id": 4, "service_id": 40, "server": "pbx1", "tenant": "a.example",
                       "extensions": ["1001"], "plan": "p"}]
    with pytest.raises(MappingError, match=r"services \[10, 40\] both claim extension"):
        assign_services(pl.DataFrame(schema={"server": pl.String, "tenant": pl.String, "extension": pl.String,
                                             "direction": pl.String, "rate_number": pl.String}), _settings(dup))


@given(st.text(alphabet=st.sampled_from("+0123456789 -()x٣²"), max_size=14))
def test_did_digits_fast_path_keeps_every_digit(value):
    from autobill.mapping import _digits

    assert _digits(value) == "".join(ch for ch in value if ch.isdigit())


def test_service_keys_are_read_again_for_another_services_list():
    """The lookup tables are kept for the services list last asked for (a night's batches and
    chunks ask many times); a settings copy shares them, other services get their own."""
    from autobill.mapping import service_keys

    first = _settings([{"client_id": 1, "service_id": 10, "server": "pbx1", "tenant": "t", "plan": "p",
                        "dids": ["+1 (212) 555-0100"]}])
    again = first.model_copy(update={"timezone": first.timezone})
    assert service_keys(again) is service_keys(first)
    assert service_keys(first)[1]["rate_number"].to_list() == ["12125550100"]
    other = _settings([{"client_id": 2, "service_id": 20, "server": "pbx1", "tenant": "t", "plan": "p",
                        "dids": ["+12125550199"]}])
    assert service_keys(other)[1]["service_id"].to_list() == [20]
    assert service_keys(first)[1]["service_id"].to_list() == [10]
