"""One WHMCS service (a GetClientsProducts `product`), normalised; no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class WhmcsService:
    service_id: int
    client_id: int
    pid: int
    product: str
    group: str
    status: str
    domain: str = ""
    dedicated_ip: str = ""
    server_id: str = ""  # WHMCS server record id ("0": none assigned)
    server_name: str = ""
    server_hostname: str = ""
    custom_fields: Mapping[str, str] = field(default_factory=dict)  # field name (lower case) -> value

    def field(self, name: str) -> str:
        """`domain`, `dedicatedip` or a custom field by name (case-insensitive); '' when absent."""
        key = name.strip().lower()
        if key == "domain":
            return self.domain
        if key in ("dedicatedip", "dedicated ip"):
            return self.dedicated_ip
        return self.custom_fields.get(key, "")


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _custom_fields(raw: Any) -> dict[str, str]:
    """GetClientsProducts sends `customfields: {customfield: [{id, name, translated_name, value}]}`;
    an empty list comes back as `[]` or `{"customfield": []}`, a single field sometimes as a dict."""
    items = raw.get("customfield", []) if isinstance(raw, Mapping) else raw or []
    if isinstance(items, Mapping):
        items = [items]
    out: dict[str, str] = {}
    for item in items:
        if isinstance(item, Mapping) and _text(item.get("name")):
            out[_text(item.get("name")).lower()] = _text(item.get("value"))
    return out


def from_whmcs(product: Mapping[str, Any]) -> WhmcsService:
    """Raises ValueError (naming the field) when an id is missing or not a number."""
    def num(key: str) -> int:
        value = _text(product.get(key))
        if not value.lstrip("-").isdigit():
            raise ValueError(f"GetClientsProducts product field {key!r} is {value!r}, not a number")
        return int(value)

    return WhmcsService(
        service_id=num("id"), client_id=num("clientid"), pid=num("pid") if _text(product.get("pid")) else 0,
        product=_text(product.get("name")), group=_text(product.get("groupname")),
        status=_text(product.get("status")), domain=_text(product.get("domain")),
        dedicated_ip=_text(product.get("dedicatedip")), server_id=_text(product.get("serverid")),
        server_name=_text(product.get("servername")), server_hostname=_text(product.get("serverhostname")),
        custom_fields=_custom_fields(product.get("customfields")),
    )
