"""One pure parser per PBX kind, following how the ictVoIP guides keep services in WHMCS (seeds 001).

- Vodia: the service's Domain holds `Tenant | DID | DID | ... | search`, e.g.
  `rucken.wat1.ictvoip.ca | 5484815577 | 5197830020 | 8300`: the tenant, its inbound DIDs, and
  optionally a last part that is not a number (the inbound search string, an extension or a first
  name), kept as `search` and not used to bill.
- LesNet: the Domain holds `Peer | DID` (e.g. `D4E3CD2BFC791 | 12046664021`); when it does not,
  the Peer ID comes from the `Peer ID` custom field (`ServiceFields.peer_id`). The Peer ID is the
  tenant of the account's CDRs.
- FusionPBX (and drop-folder servers): the tenant is the FusionPBX domain (the service Domain);
  in extension suspend mode the service's extensions are in its Dedicated IP field, as a list
  (`101, 102`, `101 102`, `101;102`) or ranges of equal width (`101-105`). A Dedicated IP that is
  an IP address holds no extensions. A Domain `tenant | DID | ...` is read like Vodia's.
- Any kind: the `DIDs` custom field (`ServiceFields.dids`) adds DIDs (comma, semicolon, `|` or
  space separated; `+1 (548) 481-5577` is one DID).

A field that does not follow its format raises `FieldError` naming the field: the service is
then a conflict (its calls stay unrated), never half-read.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from autobill.services.records import WhmcsService

MAX_RANGE = 1000
_TENANT = re.compile(r"^[A-Za-z0-9_.:@-]{1,255}$")
_PEER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_EXTENSION = re.compile(r"^[0-9A-Za-z*#_]{1,32}$")
_RANGE = re.compile(r"^([0-9]{1,10})-([0-9]{1,10})$")
_DID_CHARS = re.compile(r"^\+?[0-9 ().-]+$")
_SPLIT = re.compile(r"[,;|\n]+")


class FieldError(ValueError):
    def __init__(self, field: str, value: str, why: str) -> None:
        super().__init__(f"field {field!r} = {value!r}: {why}")
        self.field, self.value, self.why = field, value, why


@dataclass(frozen=True)
class Parsed:
    tenant: str
    extensions: tuple[str, ...] = ()
    dids: tuple[str, ...] = ()  # as written, digits only (a leading + dropped); normalised per server later
    search: str | None = None


def _dedupe(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def tenant_name(text: str, field: str = "domain") -> str:
    value = text.strip()
    if not _TENANT.match(value):
        raise FieldError(field, text, "not a tenant/domain name (letters, digits, . _ - : @; no spaces)")
    return value


def one_did(text: str, field: str = "DID") -> str:
    value = text.strip()
    digits = "".join(ch for ch in value if ch.isdigit())
    if not _DID_CHARS.match(value) or not 7 <= len(digits) <= 15:
        raise FieldError(field, text, "not a phone number (7 to 15 digits)")
    return digits


def did_list(text: str, field: str = "DIDs") -> tuple[str, ...]:
    out: list[str] = []
    for token in (t.strip() for t in _SPLIT.split(text)):
        if not token:
            continue
        try:
            out.append(one_did(token, field))
        except FieldError:
            parts = token.split()
            if len(parts) < 2:
                raise
            out.extend(one_did(p, field) for p in parts)
    return _dedupe(out)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip())
    except ValueError:
        return False
    return True


def extension_list(text: str, field: str = "dedicatedip") -> tuple[str, ...]:
    if not text.strip() or _is_ip(text):
        return ()
    out: list[str] = []
    for token in re.split(r"[,;|\s]+", text.strip()):
        if not token:
            continue
        m = _RANGE.match(token)
        if m:
            lo, hi = m.groups()
            if len(lo) != len(hi) or int(lo) > int(hi) or int(hi) - int(lo) >= MAX_RANGE:
                raise FieldError(field, text, f"range {token!r} must be low-high of equal width, at most {MAX_RANGE}")
            out.extend(str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1))
        elif _EXTENSION.match(token):
            out.append(token)
        else:
            raise FieldError(field, text, f"{token!r} is not an extension (letters, digits, * # _)")
    return _dedupe(out)


def tenant_and_dids(text: str, field: str = "domain", allow_search: bool = True) -> Parsed:
    """`Tenant | DID | DID | ... [| search]` (a bare `Tenant` is fine)."""
    parts = [p.strip() for p in text.split("|")]
    tenant = tenant_name(parts[0], field)
    rest = [p for p in parts[1:] if p]
    search = None
    if rest and allow_search:
        try:
            one_did(rest[-1], field)
        except FieldError:
            search = rest.pop()
    return Parsed(tenant, dids=_dedupe([one_did(p, field) for p in rest]), search=search)


def parse_vodia(tenant_field: str, field: str = "domain") -> Parsed:
    return tenant_and_dids(tenant_field, field)


def parse_lesnet(tenant_field: str, peer_id: str = "", field: str = "domain", peer_field: str = "Peer ID") -> Parsed:
    if "|" in tenant_field or not peer_id.strip():
        if not tenant_field.strip():
            raise FieldError(peer_field, peer_id, "no Peer ID: neither `Peer | DID` in the domain nor the custom field")
        parsed = tenant_and_dids(tenant_field, field, allow_search=False)
        peer, dids = parsed.tenant, parsed.dids
    else:
        peer, dids = peer_id.strip(), ()
    if not _PEER.match(peer):
        raise FieldError(field, tenant_field or peer_id, f"{peer!r} is not a LesNet Peer ID")
    return Parsed(peer, dids=dids)


def parse_pbx(tenant_field: str, extensions_field: str = "", field: str = "domain",
              ext_field: str = "dedicatedip") -> Parsed:
    """FusionPBX and drop-folder servers."""
    parsed = tenant_and_dids(tenant_field, field, allow_search=False)
    return Parsed(parsed.tenant, extensions=extension_list(extensions_field, ext_field), dids=parsed.dids)


def parse_service(kind: str, svc: WhmcsService, fields) -> Parsed:
    """The claims of one service for a server of `kind` (fields: `autobill.config.ServiceFields`)."""
    tenant_text = svc.field(fields.tenant)
    if kind == "vodia":
        parsed = parse_vodia(tenant_text, fields.tenant)
    elif kind == "lesnet":
        parsed = parse_lesnet(tenant_text, svc.field(fields.peer_id), fields.tenant, fields.peer_id)
    else:
        parsed = parse_pbx(tenant_text, svc.field(fields.extensions), fields.tenant, fields.extensions)
    extra = svc.field(fields.dids)
    if extra.strip():
        parsed = Parsed(parsed.tenant, parsed.extensions, _dedupe([*parsed.dids, *did_list(extra, fields.dids)]),
                        parsed.search)
    return parsed
