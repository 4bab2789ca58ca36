"""Bad configuration files (issue #12): each is refused with ONE line naming the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from autobill.config import ConfigError, load_settings

BASE = "timezone: America/Toronto\n"
PLAN = "tariffs: [{name: t, path: t.csv}]\nplans:\n  - name: p\n    tariff: t\n"
SERVICE = ("servers: [{id: s1, kind: file, path: drop}]\n" + PLAN +
           "services:\n  - {client_id: CID, service_id: 1, server: s1, tenant: a, plan: p}\n")
CASES = [
    # (id, file content (bytes or text), text the one-line error contains)
    ("empty", "", "the file is empty (or only comments)"),
    ("whitespace_only", "  \n\n   \n", "the file is empty (or only comments)"),
    ("comments_only", "# timezone: UTC\n# servers: []\n", "the file is empty (or only comments)"),
    ("document_marker_only", "---\n...\n", "the file is empty (or only comments)"),
    ("latin1", "timezone: Am\xe9rica/Toronto\n".encode("latin-1"), "not UTF-8 text"),
    ("utf16", BASE.encode("utf-16"), "not UTF-8 text"),
    ("binary", bytes(range(256)), "not UTF-8 text"),
    ("duplicate_top_key", BASE + "timezone: UTC\n", "key 'timezone' is written twice"),
    ("duplicate_nested_key", BASE + "validation:\n  lookback_days: 3\n  lookback_days: 30\n",
     "key 'lookback_days' is written twice"),
    ("duplicate_key_in_list_item", BASE + "servers:\n  - {id: a, kind: file, path: x, id: b}\n",
     "key 'id' is written twice"),
    ("top_level_list", "- a\n- b\n", "the top level must be a mapping"),
    ("top_level_scalar", "hello\n", "the top level must be a mapping"),
    ("broken_yaml", "timezone: [UTC\n", "not valid YAML"),
    ("tab_indent", "validation:\n\tlookback_days: 3\n", "not valid YAML"),
    ("huge_included_minutes", BASE + PLAN + "    included_minutes: 99999999999999999999999\n",
     "plans.0.included_minutes"),
    ("negative_included_minutes", BASE + PLAN + "    included_minutes: -1\n", "plans.0.included_minutes"),
    ("markup_nan", BASE + PLAN + "    markup_percent: .nan\n", "plans.0.markup_percent"),
    ("markup_huge", BASE + PLAN + "    markup_percent: '1e12'\n", "plans.0.markup_percent"),
    ("markup_too_precise", BASE + PLAN + "    markup_percent: '1.0000001'\n", "plans.0.markup_percent"),
    ("rate_infinity", BASE + "currency_rates: {USD: {CAD: .inf}}\n", "currency_rates.USD.CAD"),
    ("rate_zero", BASE + "currency_rates: {USD: {CAD: '0'}}\n", "currency_rates.USD.CAD"),
    ("client_id_not_32bit", BASE + SERVICE.replace("CID", str(2**40)), "services.0.client_id"),
    ("max_call_seconds_over_a_week", BASE + "validation: {max_call_seconds: 10000000}\n",
     "validation.max_call_seconds"),
    ("future_tolerance_huge", BASE + "validation: {future_tolerance_seconds: 999999999}\n",
     "validation.future_tolerance_seconds"),
    ("budget_huge", BASE + "nightly_budget_minutes: 99999999\n", "nightly_budget_minutes"),
    ("low_balance_nan", BASE + "autosuspend: {low_balance_threshold: .nan}\n", "autosuspend.low_balance_threshold"),
    ("settle_seconds_inf", BASE + "servers: [{id: s1, kind: file, path: d, settle_seconds: .inf}]\n",
     "servers.0.file.settle_seconds"),
    ("unknown_key", BASE + "timezon: UTC\n", "timezon: unknown key"),
    ("secret_as_value", BASE + "whmcs: {url: x, identifier: abc, secret: {env: S}}\n", "whmcs.identifier"),
    ("bad_timezone", "timezone: Mars/Olympus\n", "unknown IANA timezone"),
]


@pytest.mark.parametrize(("content", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_config_is_one_line_naming_the_field(tmp_path: Path, content, expected) -> None:
    path = tmp_path / "autobill.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert expected in message, message


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a directory, not a configuration file") as err:
        load_settings(tmp_path)
    assert "\n" not in str(err.value)


def test_bounds_still_accept_real_values(tmp_path: Path) -> None:
    path = tmp_path / "autobill.yaml"
    path.write_text(BASE + PLAN + "    included_minutes: 10000000\n    markup_percent: '12.5'\n"
                    "validation: {max_call_seconds: 604800}\ncurrency_rates: {USD: {CAD: '1.365'}}\n")
    settings = load_settings(path)
    assert settings.plans[0].included_minutes == 10_000_000 and settings.validation.max_call_seconds == 604800
