"""The one YAML configuration file, validated by pydantic at start.

Why strict models: a billing run that starts with a typo in a tariff path or an unknown
server id must stop before it touches money, and say which field is wrong. Every model
forbids unknown keys, so a misspelt key is an error, not a silently ignored setting.

Secrets are never values here: a password or API secret is a `SecretRef` (an environment
variable or a Prefect Secret block name), resolved only when a connector needs it.
"""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from autobill.secrets import SecretRef

DEFAULT_CONFIG_PATH = "autobill.yaml"


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown IANA timezone {value!r}") from exc
    return value


Timezone = Annotated[str, Field(description="IANA timezone name, e.g. America/Toronto")]
# Bounds: every number is limited to what the engine handles exactly (Int64 seconds and
# micro-units, DECIMAL(18,6) money, WHMCS's 32-bit ids), so a typo fails `config check`, not the nightly.
MAX_MONEY = Decimal("1000000000")  # 10^9 in any currency: far above any real balance or threshold
MAX_ID = 2**31 - 1  # WHMCS ids are signed 32-bit integers
Money = Annotated[Decimal, Field(description="decimal amount; write it as a string in YAML", allow_inf_nan=False,
                                 ge=-MAX_MONEY, le=MAX_MONEY, decimal_places=6)]
WhmcsId = Annotated[int, Field(ge=1, le=MAX_ID)]
CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
Digits = Annotated[str, Field(pattern=r"^[0-9]*$")]


class Numbering(_Strict):
    """How a server writes numbers (RATING.md "Number normalisation")."""

    country_code: Annotated[str, Field(pattern=r"^[1-9][0-9]{0,2}$")] = "1"
    intl_prefix: Digits | None = None  # default: 011 for country code 1, else 00
    trunk_prefix: Digits | None = None  # default: empty for country code 1, else 0

    @property
    def effective_intl_prefix(self) -> str:
        if self.intl_prefix is not None:
            return self.intl_prefix
        return "011" if self.country_code == "1" else "00"

    @property
    def effective_trunk_prefix(self) -> str:
        if self.trunk_prefix is not None:
            return self.trunk_prefix
        return "" if self.country_code == "1" else "0"


class _ServerBase(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    numbering: Numbering = Numbering()
    enabled: bool = True
    # Late rows: re-read this much before the watermark on every run (duplicates are removed by key).
    overlap_minutes: Annotated[int, Field(ge=0, le=7 * 24 * 60)] = 120
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3


class FusionPBXServer(_ServerBase):
    kind: Literal["fusionpbx"]
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 5432
    database: str = "fusionpbx"
    user: str = "fusionpbx"
    password: SecretRef | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    table: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")] = "v_xml_cdr"
    bill_local: bool = False
    # FreeSWITCH event socket, used by autosuspend to make a gateway/extension change live.
    esl_host: str | None = None
    esl_port: Annotated[int, Field(ge=1, le=65535)] = 8021
    esl_password: SecretRef | None = None
    sip_profile: str = "external"
    # Where FusionPBX caches sofia.conf / directory entries: memcache, or files (fusionpbx_switch.py).
    cache_method: Literal["memcache", "file"] = "memcache"
    cache_dir: Path = Path("/var/cache/fusionpbx")


class VodiaServer(_ServerBase):
    kind: Literal["vodia"]
    url: str
    username: str
    password: SecretRef
    domains: list[str] = []  # empty: every domain the account can see
    verify_tls: bool = True
    # The CDR listing's path and field names are partly unconfirmed (domain.md §5): both can be
    # overridden here; the defaults and what is assumed are documented in connectors/vodia.py.
    cdr_path: str = "/rest/domain/{domain}/cdr"
    cdr_fields: dict[str, str] = {}  # canonical key -> Vodia field name, over connectors.vodia.DEFAULT_FIELDS
    page_size: Annotated[int, Field(ge=1, le=10000)] = 500


class LesNetFormat(_Strict):
    """LesNet's column layout is unconfirmed, so the parser is configurable (domain.md §4)."""

    delimiter: str | None = None  # None: detect among , ; | and tab
    has_header: bool = True
    columns: dict[str, str] = {}  # canonical name -> header name (or 0-based index as a string)
    timestamp_format: str = "%Y-%m-%d %H:%M:%S"
    timezone: str = "America/Toronto"
    directions: dict[str, str] = {}  # file value (case-insensitive) -> inbound|outbound; {}: in/out

    _tz = field_validator("timezone")(_check_timezone)


class LesNetServer(_ServerBase):
    kind: Literal["lesnet"]
    url: str
    account: str = ""  # Peer ID / account the file belongs to; the tenant of its CDRs
    format: LesNetFormat = LesNetFormat()
    verify_tls: bool = True


class FileDropServer(_ServerBase):
    kind: Literal["file"]
    path: Path
    pattern: str = "*.csv"
    settle_seconds: Annotated[float, Field(ge=0, le=86400, allow_inf_nan=False)] = 5.0  # a file younger than this may be half-written


Server = Annotated[FusionPBXServer | VodiaServer | LesNetServer | FileDropServer, Field(discriminator="kind")]


class Tariff(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    path: Path  # .csv or .parquet, RATING.md tariff columns (+ optional days/hours bands)
    currency: CurrencyCode = "USD"
    timezone: str | None = None  # for time-of-day bands; default: the billing timezone

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return None if value is None else _check_timezone(value)


class Plan(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    tariff: str
    inbound_tariff: str | None = None  # default: the plan's tariff
    included_minutes: Annotated[int, Field(ge=0, le=10_000_000)] = 0  # 10^7 min: ~19 years of talk
    markup_percent: Money = Decimal("0")
    currency: CurrencyCode = "USD"
    bill_inbound: bool = False
    bill_local: bool = False
    # Billing period for included minutes: the calendar month in the billing timezone,
    # starting on this day of the month.
    period_anchor_day: Annotated[int, Field(ge=1, le=28)] = 1
    # Autosuspend (#18): an unpaid invoice counts once its due date + this many days has passed;
    # None: `autosuspend.overdue_grace_days`.
    overdue_grace_days: Annotated[int, Field(ge=0, le=365)] | None = None

    @field_validator("markup_percent")
    @classmethod
    def _markup(cls, value: Decimal) -> Decimal:
        if value < Decimal("-100"):
            raise ValueError("markup below -100 % would make calls pay the client")
        if value > Decimal("10000"):
            raise ValueError("markup above 10000 % is not a markup (a typo?)")
        return value


class Service(_Strict):
    """One WHMCS service (hosting id) and what on the PBX belongs to it."""

    client_id: WhmcsId
    service_id: WhmcsId
    server: str
    tenant: str  # FusionPBX domain_name, Vodia domain, LesNet Peer ID, file-drop tenant
    extensions: list[str] = []  # empty: the whole tenant
    dids: list[str] = []  # for inbound billing and LesNet
    plan: str
    suspend_mode: Literal["gateway", "extension", "module", "none"] = "none"
    gateway_uuids: list[str] = []  # gateway mode: the tenant's gateways
    low_balance_threshold: Money | None = None
    postpaid: bool = False
    credit_limit: Money = Decimal("0")
    timezone: str | None = None  # the client's local time on call statements; default: the billing timezone

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return None if value is None else _check_timezone(value)


class WHMCS(_Strict):
    url: str  # https://whmcs.example.com/includes/api.php
    identifier: SecretRef
    secret: SecretRef
    accesskey: SecretRef | None = None
    verify_tls: bool = True
    timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 30.0
    retries: Annotated[int, Field(ge=0, le=10)] = 4
    # WHMCS < 8.2 takes `hours` instead of `unit`/`quantity` (domain.md §2.2).
    legacy_hours: bool = False
    page_size: Annotated[int, Field(ge=1, le=1000)] = 250
    # Charges posted concurrently (each still claimed, posted and committed one by one).
    post_workers: Annotated[int, Field(ge=1, le=32)] = 4
    # Deprecated and ignored: each worker now claims one charge at a time (a crash leaves at most
    # post_workers charges uncertain). Still accepted so existing config files keep loading.
    post_batch: Annotated[int, Field(ge=1, le=500)] = 20
    # Client custom field name -> WHMCS field id (GetClientsDetails returns ids, not names).
    custom_field_ids: dict[str, WhmcsId] = {}
    # Reconciliation of uncertain charges (tasks/reconcile.py). WHMCS writes its dates and times
    # in its server's timezone without an offset; default: the billing timezone.
    timezone: str | None = None
    # Automation Settings > Time of Day ("HH:MM", WHMCS local). Only used when GetAutomationLog
    # cannot be read: the daily cron is then assumed complete at this time + cron_margin_minutes.
    # Autosuspend (#18) too, then: charges posted since the last daily cron at this time count as not
    # invoiced (None: 09:00, WHMCS's default).
    cron_time: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")] | None = None
    cron_margin_minutes: Annotated[int, Field(ge=0, le=24 * 60)] = 90
    # A daily cron counts for a charge only if it started this long after the charge became uncertain.
    reconcile_margin_seconds: Annotated[int, Field(ge=0, le=24 * 3600)] = 0
    # An uncertain credit (AddCredit) absent from the client's credit log counts as never stored only
    # when the log was read this long after the credit became uncertain (WHMCS may still be running an
    # AddCredit we stopped waiting for: PHP's max_execution_time, 30 s by default).
    credit_margin_seconds: Annotated[int, Field(ge=0, le=3600)] = 60
    # Optional read-only WHMCS database (MySQL/MariaDB), e.g. {env: WHMCS_DB_URL} holding
    # mysql+pymysql://reader:pw@host/whmcs: uncertain charges are settled from tblbillableitems.
    database_url: SecretRef | None = None

    _whmcs_tz = field_validator("timezone")(lambda v: None if v is None else _check_timezone(v))


class Autosuspend(_Strict):
    enabled: bool = True
    # Unsuspend only once credit is at least this much above zero (hysteresis against flapping).
    unsuspend_margin: Money = Decimal("1.00")
    low_balance_threshold: Money = Decimal("5.00")  # default when a service sets none
    low_balance_hysteresis: Money = Decimal("1.00")
    stale_after_seconds: Annotated[int, Field(ge=10, le=86400)] = 600
    # WHMCS products (pid) whose services are VoIP: for clients with "Has VoIP Service" = Yes they
    # are autosuspended through ModuleSuspend/ModuleUnsuspend when `services` does not map them.
    voip_product_ids: list[WhmcsId] = []
    # An unpaid invoice counts once its due date (WHMCS local) + this many days has passed (a plan
    # may set its own `overdue_grace_days`).
    overdue_grace_days: Annotated[int, Field(ge=0, le=365)] = 0
    # More low-balance alert levels (e.g. ["20", "10", "5"]) besides `low_balance_threshold`: one
    # email per level crossed, at most one per level and day.
    low_balance_thresholds: list[Money] = []


class Intraday(_Strict):
    """Today's calls, rated every autosuspend cycle so prepaid credit counts them (#18)."""

    enabled: bool = True
    # Servers read concurrently; each read is bounded by the server's `timeout_seconds`.
    workers: Annotated[int, Field(ge=1, le=64)] = 8
    # A server never read intraday starts this many hours back (or at its nightly watermark, if later).
    first_lookback_hours: Annotated[int, Field(ge=1, le=24 * 7)] = 36
    # Intraday rows already billed by the nightly are deleted after this many days.
    keep_days: Annotated[int, Field(ge=1, le=400)] = 35


class FraudGuard(_Strict):
    """The spend-velocity guard against toll fraud (#18): per service, the last hour's spend and
    international minutes against its own 30-day hourly baseline, and calls to high-risk prefixes."""

    enabled: bool = True
    window_minutes: Annotated[int, Field(ge=5, le=24 * 60)] = 60
    baseline_days: Annotated[int, Field(ge=1, le=90)] = 30
    # Over threshold = above `multiplier` x the hourly baseline AND above the floor.
    multiplier: Annotated[Decimal, Field(gt=0, le=10**6)] = Decimal("10")
    min_spend: Money = Decimal("25.00")  # floor of the hourly spend threshold (plan currency)
    min_international_minutes: Annotated[int, Field(ge=0, le=10**7)] = 60
    # E.164 prefixes (no +) of premium / IRSF ranges; more answered calls than `high_risk_calls`
    # to them in the window trips the guard.
    high_risk_prefixes: list[Annotated[str, Field(pattern=r"^[0-9]{1,15}$")]] = []
    high_risk_calls: Annotated[int, Field(ge=0, le=10**6)] = 0
    template: str = "VoIP Fraud Alert"  # WHMCS email template sent to the client
    # The operator's alert: WHMCS SendAdminEmail with this custom subject (empty: artifact + log only).
    admin_email: bool = True


class Validation(_Strict):
    lookback_days: Annotated[int, Field(ge=1, le=400)] = 35
    future_tolerance_seconds: Annotated[int, Field(ge=0, le=86400)] = 300
    max_bad_row_fraction: Annotated[float, Field(ge=0, le=1)] = 0.2
    volume_drop_fraction: Annotated[float, Field(ge=0, le=1)] = 0.9
    volume_history_days: Annotated[int, Field(ge=1, le=90)] = 14
    # data_quality: a call longer than this is a stuck channel (quarantined, rule call_too_long).
    # At most 604800 (7 days): RATING.md makes a longer billsec invalid whatever this says.
    max_call_seconds: Annotated[int, Field(ge=60, le=604800)] = 86400
    # Fewer quarantined rows than this never reject a batch, whatever the fraction (tiny servers).
    min_bad_rows: Annotated[int, Field(ge=1, le=1_000_000_000)] = 5
    # A volume drop is a flagged warning by default; true makes it stop the server's batch.
    volume_drop_blocks: bool = False


class StatementsUpload(_Strict):
    """Where the nightly also puts the statements it wrote (tasks/statements.py); the local copy stays."""

    url: str  # s3://bucket/prefix (S3 or any S3-compatible store) or file:///absolute/path
    endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, Ceph, R2, …); default: AWS for `region`
    region: str | None = None
    # Both or neither; neither: boto3's own chain (AWS_* variables, ~/.aws, an instance or pod role).
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None
    verify_tls: bool = True
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 60.0
    retries: Annotated[int, Field(ge=0, le=10)] = 3
    workers: Annotated[int, Field(ge=1, le=64)] = 8  # concurrent uploads

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value.startswith("s3://"):
            if not value[5:].split("/", 1)[0]:
                raise ValueError(f"an s3:// URL names a bucket: s3://bucket/prefix, not {value!r}")
        elif value.startswith("file://"):
            if not value[7:].startswith("/"):
                raise ValueError(f"a file:// URL is absolute: file:///srv/statements, not {value!r}")
        else:
            raise ValueError(f"statements are uploaded to s3://bucket/prefix or file:///path, not {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _keys_together(self) -> StatementsUpload:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("access_key_id and secret_access_key go together (or neither: boto3's own chain)")
        return self


class Statements(_Strict):
    """Client call statements (autobill/statement/): written by the nightly run and `autobill statement`."""

    reseller_name: str = ""  # the header of every statement (your company name)
    nightly: bool = True  # the nightly run writes each billed client's statement for the date and month to date
    formats: list[Literal["pdf", "csv", "html"]] = ["pdf", "csv"]
    dir: Path | None = None  # where the nightly writes them; default: <data_dir>/statements/out
    workers: Annotated[int, Field(ge=1, le=32)] = 1  # processes rendering PDFs (spawned; 2 on a 2-core machine for 10k clients)
    # Font files (TTF/OTF) for characters the bundled DejaVu Sans Mono lacks, e.g. CJK client names.
    fonts: list[Path] = []
    upload: StatementsUpload | None = None  # also copy them to object storage (s3://…) or a share (file://…)


class ServiceFields(_Strict):
    """Where each value of a WHMCS service is read from (issue 14, seeds 001).

    `domain` and `dedicatedip` name the service's own Domain / Dedicated IP; any other value
    names a product custom field (matched case-insensitively, as GetClientsProducts returns them).
    """

    tenant: str = "domain"  # FusionPBX/file: the domain; Vodia `Tenant | DID | ... | search`; LesNet `Peer | DID`
    extensions: str = "dedicatedip"  # FusionPBX extension mode keeps the service's extensions here
    dids: str = "DIDs"  # extra DIDs (comma/space separated), any kind
    peer_id: str = "Peer ID"  # LesNet, when the domain does not hold `Peer | DID`
    plan: str = "Plan"  # per-service plan override
    included_minutes: str = "Included Minutes"  # per-service included minutes override
    suspend_mode: str = "Suspend Mode"  # gateway | extension | module | none
    low_balance_threshold: str = "Low Balance Threshold"


class ProductPlan(_Strict):
    """WHMCS product (id or exact name) -> plan, and the suspend mode its services use."""

    product: Annotated[int, Field(ge=1)] | str
    plan: str
    suspend_mode: Literal["gateway", "extension", "module", "none"] | None = None


class ServerMatch(_Strict):
    """A WHMCS server record (its id, name or hostname) -> a configured server id."""

    whmcs: str
    server: str


class ServiceSync(_Strict):
    """Read the VoIP services from WHMCS (GetClientsProducts) instead of listing them in `services`."""

    enabled: bool = False
    # Which services are VoIP: products by id and/or product groups by name (both empty: every product).
    product_ids: list[Annotated[int, Field(ge=1)]] = []
    product_groups: list[str] = []
    products: list[ProductPlan] = []
    # Unlisted WHMCS servers match a configured server whose id equals their name or hostname.
    servers: list[ServerMatch] = []
    fields: ServiceFields = ServiceFields()
    # Services in these statuses own their numbers; any other status (Terminated, Cancelled, ...)
    # releases them from the sync that sees it (earlier calls stay theirs).
    owning_statuses: list[str] = ["Active", "Suspended"]


class Settings(_Strict):
    timezone: str = "UTC"
    data_dir: Path = Path("data")
    ledger_url: str = "sqlite:///data/ledger.db"
    currency: CurrencyCode = "USD"
    # currency_rates[FROM][TO] = how many TO one FROM buys, as decimal strings.
    currency_rates: dict[CurrencyCode, dict[CurrencyCode, Annotated[Money, Field(gt=0)]]] = {}
    servers: list[Server] = []
    tariffs: list[Tariff] = []
    plans: list[Plan] = []
    services: list[Service] = []
    whmcs: WHMCS | None = None
    autosuspend: Autosuspend = Autosuspend()
    validation: Validation = Validation()
    intraday: Intraday = Intraday()
    fraud_guard: FraudGuard = FraudGuard()
    nightly_budget_minutes: Annotated[int, Field(ge=1, le=1440)] = 45
    dask_address: str | None = None
    statements: Statements = Statements()
    service_sync: ServiceSync = ServiceSync()
    # Where the file was read from, for resolving relative paths; not a YAML key.
    base_dir: Path = Field(default=Path("."), exclude=True)

    _tz = field_validator("timezone")(_check_timezone)

    def __iter__(self):
        """Nothing: the settings are one value, not a collection to walk.

        Prefect walks every task argument twice per task run (looking for futures and states
        among its items; for a pydantic model it walks `dict(model)`, i.e. this iterator). With
        10,000 services that walk took about 3 s per task run, holding the GIL, so 100 task runs
        of a 10 M-CDR night spent minutes in it (issue #15). Read fields by name; `model_dump()`
        gives them all."""
        return iter(())

    @model_validator(mode="after")
    def _references(self) -> Settings:
        """Cross-references are checked here so a typo fails at start, not at 01:00."""
        errors: list[str] = []
        self._unique(errors, "servers", [s.id for s in self.servers])
        self._unique(errors, "tariffs", [t.name for t in self.tariffs])
        self._unique(errors, "plans", [p.name for p in self.plans])
        self._unique(errors, "services", [str(s.service_id) for s in self.services])
        server_ids = {s.id for s in self.servers}
        tariff_names = {t.name for t in self.tariffs}
        plan_names = {p.name for p in self.plans}
        for i, plan in enumerate(self.plans):
            for field in ("tariff", "inbound_tariff"):
                name = getattr(plan, field)
                if name is not None and name not in tariff_names:
                    errors.append(f"plans.{i}.{field}: unknown tariff {name!r} (known: {sorted(tariff_names)})")
            for t in self.tariffs:
                if t.name in (plan.tariff, plan.inbound_tariff) and self.rate(t.currency, plan.currency) is None:
                    errors.append(f"plans.{i}.currency: no currency_rates entry from {t.currency} to {plan.currency}")
        for i, svc in enumerate(self.services):
            if svc.server not in server_ids:
                errors.append(f"services.{i}.server: unknown server {svc.server!r} (known: {sorted(server_ids)})")
            if svc.plan not in plan_names:
                errors.append(f"services.{i}.plan: unknown plan {svc.plan!r} (known: {sorted(plan_names)})")
            if svc.suspend_mode == "gateway" and not svc.gateway_uuids:
                errors.append(f"services.{i}.gateway_uuids: gateway suspend mode needs at least one gateway uuid")
            if svc.suspend_mode == "extension" and not svc.extensions:
                errors.append(f"services.{i}.extensions: extension suspend mode needs the service's extensions")
        for i, pp in enumerate(self.service_sync.products):
            if pp.plan not in plan_names:
                errors.append(f"service_sync.products.{i}.plan: unknown plan {pp.plan!r} (known: {sorted(plan_names)})")
        for i, sm in enumerate(self.service_sync.servers):
            if sm.server not in server_ids:
                errors.append(f"service_sync.servers.{i}.server: unknown server {sm.server!r} (known: {sorted(server_ids)})")
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @staticmethod
    def _unique(errors: list[str], field: str, keys: list[str]) -> None:
        seen: set[str] = set()
        for i, key in enumerate(keys):
            if key in seen:
                errors.append(f"{field}.{i}: duplicate {key!r}")
            seen.add(key)

    # -- lookups -------------------------------------------------------------------------

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def server(self, server_id: str) -> Server:
        for s in self.servers:
            if s.id == server_id:
                return s
        raise KeyError(f"unknown server {server_id!r}")

    def tariff(self, name: str) -> Tariff:
        for t in self.tariffs:
            if t.name == name:
                return t
        raise KeyError(f"unknown tariff {name!r}")

    def plan(self, name: str) -> Plan:
        for p in self.plans:
            if p.name == name:
                return p
        raise KeyError(f"unknown plan {name!r}")

    @property
    def whmcs_tz(self) -> ZoneInfo:
        """The WHMCS server's timezone (its API dates carry no offset); default the billing timezone."""
        tz = self.whmcs.timezone if self.whmcs is not None else None
        return ZoneInfo(tz or self.timezone)

    def resolve_path(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.base_dir / path)

    @property
    def data_path(self) -> Path:
        return self.resolve_path(self.data_dir)

    @property
    def ledger(self) -> str:
        """The ledger URL with a relative SQLite path made relative to the config file."""
        prefix = "sqlite:///"
        if self.ledger_url.startswith(prefix) and not self.ledger_url.startswith(prefix + "/"):
            rel = self.ledger_url[len(prefix) :]
            if rel and rel != ":memory:":
                return prefix + str(self.resolve_path(Path(rel)).absolute())
        return self.ledger_url

    def rate(self, from_ccy: str, to_ccy: str) -> Decimal | None:
        """How many `to_ccy` one `from_ccy` buys; the inverse entry is used when only it exists."""
        if from_ccy == to_ccy:
            return Decimal(1)
        direct = self.currency_rates.get(from_ccy, {}).get(to_ccy)
        if direct is not None:
            return direct
        inverse = self.currency_rates.get(to_ccy, {}).get(from_ccy)
        if inverse:
            return Decimal(1) / inverse
        return None


def _format_errors(path: Path, exc: ValidationError) -> str:
    """ONE line: `<file>: invalid configuration: <field>: <problem>[; <field>: <problem> ...]`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelt?)"
        elif err["type"] == "missing":
            msg = "required field is missing"
        lines.append(f"{loc}: {msg}")
    return f"{path}: invalid configuration: " + "; ".join(" ".join(line.split()) for line in lines)


# libyaml's parser when PyYAML was built with it: a 10,000-service config (1.3 MB) parsed in 5.5 s
# with the pure-Python SafeLoader. The constructor (safe types only) is the same Python one.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):
    """SafeLoader that refuses a mapping key written twice (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):  # noqa: ANN001 - PyYAML's signature
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: PyYAML reports it itself
                continue
            if first is not None:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key {key!r} is written twice "
                                  f"(first on line {first}); the first value would be silently dropped")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _yaml_error(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def parse_yaml(path: Path) -> dict:
    """The file's top-level mapping; ConfigError (one line naming the file) for anything else."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not a configuration file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_error(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty (or only comments): no settings in it "
                          "(copy autobill.example.yaml to start)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, not {type(raw).__name__}")
    bad_keys = [k for k in raw if not isinstance(k, str)]
    if bad_keys:
        raise ConfigError(f"{path}: top-level key {bad_keys[0]!r} is not a setting name")
    return raw


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate the config file named by `path`, $AUTOBILL_CONFIG or ./autobill.yaml."""
    path = Path(path or os.environ.get("AUTOBILL_CONFIG") or DEFAULT_CONFIG_PATH)
    if not path.exists():
        raise ConfigError(
            f"{path}: configuration file not found (set AUTOBILL_CONFIG, or copy autobill.example.yaml to {path})"
        )
    return settings_from_dict(parse_yaml(path), base_dir=path.parent, source=path)


def settings_from_dict(raw: dict, base_dir: Path = Path("."), source: Path | str = "<config>") -> Settings:
    try:
        return Settings.model_validate({**raw, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_format_errors(Path(str(source)), exc)) from None
