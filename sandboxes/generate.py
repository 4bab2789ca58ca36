"""Synthetic CDRs: realistic calls for N clients on M servers of each kind, for the demo, the
tests and the benchmarks.

Deterministic for a seed, vectorised (numpy draws, polars expressions; about a million calls
a second), and realistic in the ways billing breaks:

- numbers as PBXs write them: NANP 10-digit, 11-digit `1NXX...`, `+E.164`, `011` international,
  Caribbean NANP (`876...`, priced as international), a few destinations the generated tariff
  deliberately lacks (unrated; at least one answered such call per server-day of 10+ calls, so
  small demos and tests see some), and junk (`anonymous`, `*97`, an over-long number, ...);
- inbound calls to each client's DID, local extension-to-extension calls, unanswered calls
  (billsec 0) with realistic hangup causes, many short calls and a long tail;
- start times weighted to business hours in the configured timezone, fewer on weekends, and
  DST days handled (a time in the spring-forward gap moves an hour on; the repeated autumn
  hour gets both offsets).

`generate_calls` returns the calls as *canonical* CDRs (`autobill.cdr.CDR_SCHEMA`, `src`/`dst`
raw as the PBX would write them, `rate_number` normalised with the default NANP numbering)
plus `call_id`, `kind`, `client_id`, `service_id`, `category`; `source_row` is null (there is
no source yet). The writers put them where each connector reads them: a FusionPBX `v_xml_cdr`
table (`write_fusionpbx`), a drop folder (`write_drop_folder`), a LesNet-style text file
(`write_lesnet_file`). `generate_config` returns a matching settings dict (servers, tariff,
plans, services) and `tariff_frame` a tariff that covers the generated destinations except
the deliberately missing ones.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from autobill.numbering import normalise_expr

KINDS = ("fusionpbx", "vodia", "lesnet", "file")
LESNET_TIMEZONE = "America/Toronto"  # the fixed LesNet layout (see write_lesnet_file)
LESNET_HEADER = ("CallID", "DateTime", "Source", "Destination", "Direction", "Duration")

HOME_NPAS = np.array([613, 416, 514, 604, 403, 902])
NANP_NPAS = np.array([201, 212, 213, 305, 312, 415, 416, 514, 604, 613, 617, 702, 713, 905, 403, 780, 902, 204])
CARIBBEAN_NPAS = np.array([876, 809, 246, 868, 242])
# (country code, national number length) of rated international destinations
INTL = [("44", 10), ("33", 9), ("49", 10), ("61", 9), ("91", 10), ("52", 10), ("81", 10), ("34", 9)]
MISSING = [("998", 9), ("880", 10), ("263", 9)]  # not in the generated tariff: these calls stay unrated
JUNK = ["", "anonymous", "*97", "+", "0000000000000000000000", "abc", "#31#"]

# call mix: (category, probability)
CATEGORIES = [
    ("out_nanp10", 0.30), ("out_nanp11", 0.12), ("out_e164_nanp", 0.05), ("out_e164_intl", 0.05),
    ("out_011", 0.07), ("out_caribbean", 0.02), ("out_unrated", 0.01), ("junk", 0.02),
    ("inbound", 0.26), ("local", 0.10),
]  # fmt: skip
# how each outbound category is dialled in front of its digits
DIAL_PREFIX = {
    "out_nanp10": "", "out_nanp11": "1", "out_e164_nanp": "+1", "out_e164_intl": "+", "out_011": "011",
    "out_caribbean": "", "out_unrated": "011",
}  # fmt: skip
UNRATED_MIN_CALLS = 10
ANSWER_RATE = {"inbound": 0.85, "local": 0.80, "junk": 0.0, "out_unrated": 0.7}
DEFAULT_ANSWER_RATE = 0.78
HOUR_WEIGHTS = np.array(
    [0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.5, 1.5, 4, 7, 8, 8, 6, 7, 8, 8, 7, 5, 3, 2, 1.5, 1, 0.6, 0.3]
)
UNANSWERED_CAUSES = ["NO_ANSWER", "ORIGINATOR_CANCEL", "USER_BUSY", "CALL_REJECTED"]
UNANSWERED_P = [0.5, 0.3, 0.15, 0.05]

TARIFF_ROWS = [
    # prefix, rate per minute, description, connect fee, first increment, next increment
    ("1", "0.0100", "USA/Canada", "0", 6, 6),
    ("1876", "0.2300", "Jamaica", "0", 60, 60),
    ("1809", "0.1900", "Dominican Republic", "0", 60, 60),
    ("1246", "0.2100", "Barbados", "0", 60, 60),
    ("1868", "0.1800", "Trinidad and Tobago", "0", 60, 60),
    ("1242", "0.1700", "Bahamas", "0", 60, 60),
    ("44", "0.0200", "United Kingdom", "0", 1, 1),
    ("4420", "0.0150", "United Kingdom - London", "0", 1, 1),
    ("33", "0.0250", "France", "0", 1, 1),
    ("49", "0.0250", "Germany", "0", 1, 1),
    ("61", "0.0400", "Australia", "0", 30, 6),
    ("91", "0.0500", "India", "0.0100", 30, 6),
    ("52", "0.0350", "Mexico", "0", 60, 60),
    ("81", "0.0600", "Japan", "0", 30, 6),
    ("34", "0.0250", "Spain", "0", 1, 1),
]


@dataclass(frozen=True)
class World:
    """Servers and clients the calls are generated for."""

    servers: pl.DataFrame  # id, kind
    clients: pl.DataFrame  # client_id, service_id, server, kind, tenant, n_ext, did (10 digits), plan
    timezone: str
    seed: int


def server_ids(kinds: tuple[str, ...] | list[str], servers_per_kind: int) -> list[tuple[str, str]]:
    return [(f"{kind}-{i}", kind) for kind in kinds for i in range(1, servers_per_kind + 1)]


def make_world(
    clients: int,
    servers_per_kind: int = 1,
    kinds: tuple[str, ...] | list[str] = KINDS,
    seed: int = 0,
    timezone: str = "America/Toronto",
) -> World:
    """N clients spread over M servers of each kind. A LesNet account is one client (its CDR file
    has no tenant column), so each LesNet server gets exactly one client; the rest go round-robin
    over the other servers."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown server kind(s) {sorted(unknown)} (known: {', '.join(KINDS)})")
    if clients < 1 or servers_per_kind < 1:
        raise ValueError("need at least one client and one server per kind")
    servers = server_ids(kinds, servers_per_kind)
    lesnet = [s for s in servers if s[1] == "lesnet"]
    others = [s for s in servers if s[1] != "lesnet"]
    if clients < len(lesnet) or (not others and clients > len(lesnet)):
        raise ValueError(
            f"{clients} client(s) for {len(lesnet)} LesNet server(s): a LesNet server carries exactly one client"
            + ("" if others else "; add another kind or match the counts")
        )
    assignment = lesnet + [others[i % len(others)] for i in range(clients - len(lesnet))] if others else lesnet
    rng = np.random.default_rng([seed, 1])
    ids = np.arange(1, clients + 1)
    kind = [k for _, k in assignment]
    tenant = [
        f"LN{cid:06d}" if k == "lesnet" else f"c{cid}.{'vodia' if k == 'vodia' else 'pbx'}.example.net"
        for cid, k in zip(ids, kind, strict=True)
    ]
    npa = HOME_NPAS[rng.integers(0, len(HOME_NPAS), clients)]
    clients_df = pl.DataFrame(
        {
            "client_id": ids,
            "service_id": ids + 1000,
            "server": [s for s, _ in assignment],
            "kind": kind,
            "tenant": tenant,
            "n_ext": rng.integers(1, 4, clients),
            "did": [f"{a}{2_000_000 + c:07d}" for a, c in zip(npa, ids, strict=True)],
            "plan": np.where(rng.random(clients) < 0.7, "basic", "business"),
        }
    )
    return World(pl.DataFrame(servers, schema=["id", "kind"], orient="row"), clients_df, timezone, seed)


def _country_numbers(rng: np.random.Generator, n: int, countries: list[tuple[str, int]]) -> np.ndarray:
    """Country code followed by a national number of that country's length (no leading 0), as ints."""
    pick = rng.integers(0, len(countries), n)
    cc = np.array([int(c) for c, _ in countries])[pick]
    width = np.array([w for _, w in countries])[pick]
    low = 10 ** (width - 1)
    national = low + (rng.random(n) * 9 * low).astype(np.int64)
    return cc * 10**width + national


def _nanp(rng: np.random.Generator, n: int, npas: np.ndarray) -> np.ndarray:
    """10-digit NANP numbers NPA-NXX-XXXX (NXX 200-999), as ints."""
    return npas[rng.integers(0, len(npas), n)] * 10**7 + rng.integers(200, 1000, n) * 10**4 + rng.integers(0, 10**4, n)


def generate_calls(
    world: World,
    first: date,
    last: date,
    calls_per_client_day: float = 20.0,
    seed: int | None = None,
) -> pl.DataFrame:
    """Calls starting on the local days [first, last] of `world.timezone` (see the module docstring)."""
    if last < first:
        raise ValueError(f"empty date range {first} .. {last}")
    seed = world.seed if seed is None else seed
    rng = np.random.default_rng([seed, 2])
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    n_clients = world.clients.height
    weekday = np.array([0.4 if d.weekday() >= 5 else 1.0 for d in days])
    counts = rng.poisson(calls_per_client_day * weekday[:, None], size=(len(days), n_clients))
    flat = counts.ravel()
    n = int(flat.sum())
    day_idx = np.repeat(np.repeat(np.arange(len(days)), n_clients), flat)
    client_idx = np.repeat(np.tile(np.arange(n_clients), len(days)), flat)

    cl = world.clients[client_idx]  # one row per call
    is_lesnet = (cl["kind"] == "lesnet").to_numpy()
    names = [c for c, _ in CATEGORIES]
    probs = np.array([p for _, p in CATEGORIES])
    cat_idx = rng.choice(len(names), size=n, p=probs / probs.sum())
    cat_idx[is_lesnet & (cat_idx == names.index("local"))] = names.index("out_nanp10")  # a carrier has no local calls
    # Unrated calls are rare (1 %); a small demo or test must still see some: the first call of
    # every server-day with at least UNRATED_MIN_CALLS calls goes to a missing destination, answered.
    server_idx = np.unique(cl["server"].to_numpy(), return_inverse=True)[1]
    _, first_of, per_group = np.unique(server_idx * len(days) + day_idx, return_index=True, return_counts=True)
    forced = first_of[per_group >= UNRATED_MIN_CALLS]
    cat_idx[forced] = names.index("out_unrated")
    category = pl.Series(names)[cat_idx]

    n_ext = cl["n_ext"].to_numpy()
    ext_a = rng.integers(0, 3, n) % n_ext
    # the other party of a local call: another extension of the client, or voicemail (*97) for a one-extension client
    ext_b = (ext_a + 1 + (rng.random(n) * np.maximum(n_ext - 1, 1)).astype(np.int64)) % n_ext
    # One number per call, drawn as an int for its category and turned into text once.
    cats = np.array(names)
    number = np.select(
        [np.isin(cat_idx, [names.index(c) for c in ("out_nanp10", "out_nanp11", "out_e164_nanp")]),
         cat_idx == names.index("out_caribbean"),
         np.isin(cat_idx, [names.index("out_e164_intl"), names.index("out_011")]),
         cat_idx == names.index("out_unrated")],
        [_nanp(rng, n, NANP_NPAS), _nanp(rng, n, CARIBBEAN_NPAS),
         _country_numbers(rng, n, INTL), _country_numbers(rng, n, MISSING)],
        default=0,
    )  # fmt: skip
    prefix = pl.Series([DIAL_PREFIX.get(c, "") for c in cats])[cat_idx]
    junk = pl.Series(JUNK)[rng.integers(0, len(JUNK), n)]
    caller = pl.Series(_nanp(rng, n, NANP_NPAS)).cast(pl.String)

    answer_p = np.array([ANSWER_RATE.get(c, DEFAULT_ANSWER_RATE) for c in names])[cat_idx]
    answered = rng.random(n) < answer_p
    answered[forced] = True
    short = rng.random(n) < 0.35
    talk = np.where(short, rng.integers(1, 31, n), np.clip(rng.lognormal(np.log(90), 1.0, n), 1, 7200).astype(np.int64))
    billsec = np.where(answered, talk, 0)
    ring = rng.integers(2, 26, n)
    hour = rng.choice(24, size=n, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    second_of_day = hour * 3600 + rng.integers(0, 3600, n)
    unanswered_cause = pl.Series(UNANSWERED_CAUSES)[rng.choice(len(UNANSWERED_CAUSES), size=n, p=UNANSWERED_P)]
    later = rng.random(n) < 0.5
    day0 = np.array([np.datetime64(d) for d in days])

    df = pl.DataFrame(
        {
            "idx": np.arange(n),
            "category": category,
            "client_id": cl["client_id"],
            "service_id": cl["service_id"],
            "server": cl["server"],
            "kind": cl["kind"],
            "tenant": cl["tenant"],
            "did": cl["did"],
            "ext_a": pl.Series(1001 + ext_a).cast(pl.String),
            "ext_b": pl.Series(1001 + ext_b).cast(pl.String).zip_with(pl.Series(n_ext > 1), pl.Series(["*97"] * n)),
            "number": pl.Series(number).cast(pl.String), "prefix": prefix, "junk": junk, "caller": caller,
            "billsec": billsec, "ring": ring, "answered": answered, "cause": unanswered_cause,
            "naive": (day0[day_idx].astype("datetime64[us]") + second_of_day.astype("timedelta64[s]")),
            "ambiguous": pl.Series(["earliest", "latest"])[later.astype(np.int64)],
        }  # fmt: skip
    )
    cat = pl.col("category")
    dst = (
        pl.when(cat.is_in(list(DIAL_PREFIX))).then(pl.col("prefix") + pl.col("number"))
        .when(cat == "junk").then(pl.col("junk"))
        .when(cat == "inbound").then(pl.col("did"))
        .otherwise(pl.col("ext_b"))  # local
    )  # fmt: skip
    src = (
        pl.when(cat == "inbound").then(pl.col("caller"))
        .when(cat == "local").then(pl.col("ext_a"))
        .otherwise(pl.col("did"))  # outbound caller id: the client's DID
    )  # fmt: skip
    direction = pl.when(cat == "inbound").then(pl.lit("inbound")).when(cat == "local").then(pl.lit("local"))
    local = pl.col("naive")
    aware = pl.coalesce(
        local.dt.replace_time_zone(world.timezone, ambiguous=pl.col("ambiguous"), non_existent="null"),
        (local + pl.duration(hours=1)).dt.replace_time_zone(
            world.timezone, ambiguous=pl.col("ambiguous"), non_existent="null"
        ),
    )
    start = aware.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    answer = pl.when(pl.col("answered")).then(pl.col("start_utc") + pl.duration(seconds=pl.col("ring")))
    end = pl.when(pl.col("answered")).then(pl.col("answer_utc") + pl.duration(seconds=pl.col("billsec"))).otherwise(
        pl.col("start_utc") + pl.duration(seconds=pl.col("ring"))
    )
    call_id = pl.lit(f"{seed % 10**8:08d}-0000-4000-8000-") + pl.col("idx").cast(pl.String).str.zfill(12)
    cause = (
        pl.when(pl.col("answered")).then(pl.lit("NORMAL_CLEARING"))
        .when(cat == "junk").then(pl.lit("INVALID_NUMBER_FORMAT"))
        .otherwise(pl.col("cause"))
    )  # fmt: skip
    # Materialise the shared pieces first: each is used several times below.
    # Lazy, so polars eliminates the common sub-expressions (normalise_expr alone is 4x faster).
    lf = df.lazy().with_columns(dst.alias("dst"), src.alias("src"), start.alias("start_utc"), call_id.alias("call_id"))
    lf = lf.with_columns(answer.alias("answer_utc"))
    lf = lf.with_columns(end.alias("end_utc"), normalise_expr(pl.col("dst")).alias("rate_number"))
    out = lf.select(
        (pl.col("server") + ":" + pl.col("call_id")).alias("cdr_key"),
        pl.col("server"),
        pl.col("tenant"),
        pl.when(pl.col("kind") == "fusionpbx").then(pl.col("tenant")).alias("account"),
        pl.when(pl.col("kind") != "lesnet").then(pl.col("ext_a")).alias("extension"),
        direction.otherwise(pl.lit("outbound")).alias("direction"),
        pl.col("src"),
        pl.col("dst"),
        pl.col("rate_number"),
        pl.col("start_utc"),
        pl.col("answer_utc"),
        pl.col("end_utc"),
        pl.col("billsec").cast(pl.Int64),
        cause.alias("hangup_cause"),
        pl.lit(None, dtype=pl.String).alias("source_row"),
        pl.col("call_id"),
        pl.col("kind"),
        pl.col("client_id").cast(pl.Int64),
        pl.col("service_id").cast(pl.Int64),
        pl.col("did"),
        cat.alias("category"),
    )
    return out.sort("start_utc", "cdr_key").collect()


def todays_calls(world: World, client_id: int, now: datetime, n: int = 5, minutes: int = 8,
                 number: str = "18765550100", seed: int = 7) -> pl.DataFrame:
    """`n` answered outbound calls of `minutes` each (Jamaica by default: 0.23/min in the generated
    tariff) that one client made in the last hour before `now`, in generate_calls' columns: a
    prepaid client running out during the day, for the demo's intraday cut-off. The calls start
    after the local midnight of `now` (the nightly billed the day before) unless `now` is within
    `minutes` of it; every call has ended by `now`."""
    c = world.clients.filter(pl.col("client_id") == client_id).row(0, named=True)
    midnight = datetime.combine(now.astimezone(ZoneInfo(world.timezone)).date(), time(0), ZoneInfo(world.timezone))
    span = timedelta(minutes=minutes + 1) * n
    latest = now - timedelta(minutes=minutes, seconds=30)  # every call has ended by `now`
    first = min(max(now - span - timedelta(minutes=5), midnight.astimezone(UTC) + timedelta(seconds=1)), latest)
    step = (latest - first) / max(n, 1)  # calls overlap when the day is young (all start at `latest` at worst)
    rows = []
    for i in range(n):
        start = (first + step * i).replace(microsecond=0)
        answer = start + timedelta(seconds=5)
        call_id = f"{seed % 10**8:08d}-0000-4000-9000-{i:012d}"
        rows.append({
            "cdr_key": f"{c['server']}:{call_id}", "server": c["server"], "tenant": c["tenant"],
            "account": c["tenant"] if c["kind"] == "fusionpbx" else None, "extension": "1001",
            "direction": "outbound", "src": c["did"], "dst": number, "rate_number": number,
            "start_utc": start, "answer_utc": answer, "end_utc": answer + timedelta(minutes=minutes),
            "billsec": minutes * 60, "hangup_cause": "NORMAL_CLEARING", "source_row": None, "call_id": call_id,
            "kind": c["kind"], "client_id": client_id, "service_id": c["service_id"], "did": c["did"],
            "category": "out_caribbean",
        })  # fmt: skip
    frame = pl.DataFrame(rows)
    return frame.with_columns(pl.col(t).dt.replace_time_zone("UTC").dt.cast_time_unit("us")
                              for t in ("start_utc", "answer_utc", "end_utc"))


# -- tariff and configuration ------------------------------------------------------------------


def tariff_frame() -> pl.DataFrame:
    """RATING.md tariff covering the generated destinations, except `MISSING` (left unrated)."""
    cols = ["prefix", "rate", "description", "connect_fee", "first_increment", "next_increment"]
    return pl.DataFrame(TARIFF_ROWS, schema=cols, orient="row")


def generate_config(
    world: World,
    server_overrides: dict[str, dict[str, Any]] | None = None,
    lesnet_base_url: str = "http://127.0.0.1:8765",
    tariff_path: str = "tariffs/retail.csv",
) -> dict[str, Any]:
    """A settings dict (validate with `autobill.config.settings_from_dict`) for the world: one
    server entry per generated server (`server_overrides[id]` merged in, e.g. FusionPBX
    connection fields), the tariff, two plans and one service per client (a tenant catch-all
    with the client's DID, so inbound calls map by DID)."""
    overrides = server_overrides or {}
    servers = []
    lesnet_accounts = dict(world.clients.filter(pl.col("kind") == "lesnet").select("server", "tenant").iter_rows())
    for sid, kind in world.servers.iter_rows():
        entry: dict[str, Any] = {"id": sid, "kind": kind}
        if kind == "fusionpbx":
            entry.update({"table": "v_xml_cdr"})
        elif kind == "file":
            # 0: the generator's writer renames finished files into place, nothing is ever half-written
            entry.update({"path": f"drop/{sid}", "pattern": "*.csv", "settle_seconds": 0})
        elif kind == "lesnet":
            entry.update({"url": f"{lesnet_base_url}/lesnet/{sid}.txt", "account": lesnet_accounts.get(sid, "")})
        elif kind == "vodia":
            entry.update({"url": "https://127.0.0.1:8443", "username": "admin", "password": {"env": "VODIA_PASSWORD"}})
        entry.update(overrides.get(sid, {}))
        servers.append(entry)
    services = [
        {"client_id": r["client_id"], "service_id": r["service_id"], "server": r["server"], "tenant": r["tenant"],
         "dids": ["1" + r["did"]], "plan": r["plan"]}
        for r in world.clients.iter_rows(named=True)
    ]  # fmt: skip
    return {
        "timezone": world.timezone,
        "currency": "USD",
        "data_dir": "data",
        "ledger_url": "sqlite:///data/ledger.db",
        "servers": servers,
        "tariffs": [{"name": "retail", "path": tariff_path, "currency": "USD"}],
        "plans": [
            {"name": "basic", "tariff": "retail", "currency": "USD"},
            {"name": "business", "tariff": "retail", "currency": "USD", "included_minutes": 500,
             "markup_percent": "20", "bill_inbound": True},
        ],  # fmt: skip
        "services": services,
    }


# -- the same services, kept in WHMCS (issue 14) -------------------------------------------------

PLAN_PRODUCTS = {"basic": (1, "VoIP Basic"), "business": (2, "VoIP Business")}  # plan -> (pid, product name)


def whmcs_services(world: World, server_record_ids: dict[str, int]) -> list[dict[str, Any]]:
    """The world's services as a WHMCS sandbox holds them (`WhmcsSandbox.bulk_services`), in the
    ictVoIP formats (seeds 001): Vodia `tenant | DID`, LesNet `Peer | DID`, FusionPBX / drop folder
    the tenant in Domain and the DID in the `DIDs` product custom field. Same services as
    `generate_config`'s `services:` list."""
    out = []
    for r in world.clients.iter_rows(named=True):
        pid, name = PLAN_PRODUCTS[r["plan"]]
        entry: dict[str, Any] = {"id": r["service_id"], "clientid": r["client_id"], "pid": pid, "name": name,
                                 "groupname": "VoIP", "serverid": server_record_ids[r["server"]], "status": "Active"}
        if r["kind"] in ("vodia", "lesnet"):
            entry["domain"] = f"{r['tenant']} | 1{r['did']}"
        else:
            entry["domain"], entry["custom_fields"] = r["tenant"], {"DIDs": "1" + r["did"]}
        out.append(entry)
    return out


def seed_whmcs_services(sandbox: Any, world: World) -> None:
    """One WHMCS server record per generated server (named as the server's id) and every service."""
    ids = {sid: sandbox.add_server(sid, f"{sid}.example.net") for sid in world.servers["id"].to_list()}
    sandbox.bulk_services(whmcs_services(world, ids))


def service_sync_section() -> dict[str, Any]:
    """The `service_sync:` config that reads `whmcs_services` back (products by group, plan by pid)."""
    return {"enabled": True, "product_groups": ["VoIP"],
            "products": [{"product": pid, "plan": plan} for plan, (pid, _) in PLAN_PRODUCTS.items()]}


# -- writers -----------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes) -> Path:
    """Write under a `.part` name and rename: a reader (the drop connector) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def write_drop_folder(folder: Path, calls: pl.DataFrame, tz: str = "America/Toronto") -> list[Path]:
    """One CSV per local day (`cdr-YYYY-MM-DD.csv`) in the drop-folder format
    (connectors/filedrop.py), times as ISO-8601 with the local offset."""
    folder = Path(folder)

    def iso(col: str) -> pl.Expr:
        return pl.col(col).dt.convert_time_zone(tz).dt.strftime("%Y-%m-%dT%H:%M:%S%:z")

    frame = calls.select(
        pl.col("call_id"), iso("start_utc").alias("start"), iso("answer_utc").alias("answer"),
        iso("end_utc").alias("end"), pl.col("billsec"), pl.col("dst"), pl.col("src"), pl.col("direction"),
        pl.col("tenant"), pl.col("extension"), pl.col("account"), pl.col("hangup_cause"),
        pl.col("start_utc").dt.convert_time_zone(tz).dt.date().alias("__day"),
    )  # fmt: skip
    paths = []
    for (day,), part in sorted(frame.partition_by("__day", as_dict=True).items()):
        buf = io.BytesIO()
        part.drop("__day").write_csv(buf)
        paths.append(_write_atomic(folder / f"cdr-{day.isoformat()}.csv", buf.getvalue()))
    return paths


def write_lesnet_file(path: Path, calls: pl.DataFrame) -> Path:
    """The fixed LesNet layout: comma-delimited, header `CallID,DateTime,Source,Destination,
    Direction,Duration`, DateTime `%Y-%m-%d %H:%M:%S` in America/Toronto local time, Direction
    `in`/`out`, Duration = billable seconds. Source/Destination: caller and DID for inbound
    calls, DID and number dialled for outbound ones (the raw `src`/`dst`). Local calls are left
    out: they never cross the carrier's trunk."""
    frame = calls.filter(pl.col("direction") != "local").sort("start_utc", "call_id").select(
        pl.col("call_id").alias("CallID"),
        pl.col("start_utc").dt.convert_time_zone(LESNET_TIMEZONE).dt.strftime("%Y-%m-%d %H:%M:%S").alias("DateTime"),
        pl.col("src").alias("Source"),
        pl.col("dst").alias("Destination"),
        pl.when(pl.col("direction") == "inbound").then(pl.lit("in")).otherwise(pl.lit("out")).alias("Direction"),
        pl.col("billsec").alias("Duration"),
    )
    buf = io.BytesIO()
    frame.write_csv(buf)
    return _write_atomic(Path(path), buf.getvalue())


FUSIONPBX_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    xml_cdr_uuid uuid PRIMARY KEY, domain_uuid uuid, extension_uuid uuid, sip_call_id text,
    domain_name text, accountcode text, direction text, context text, caller_id_name text,
    caller_id_number text, caller_destination text, source_number text, destination_number text,
    start_epoch numeric, start_stamp timestamptz, answer_stamp timestamptz, answer_epoch numeric,
    end_epoch numeric, end_stamp timestamptz, duration numeric, mduration numeric, billsec numeric,
    billmsec numeric, leg char(1), originating_leg_uuid uuid, status text, hangup_cause text,
    json jsonb, insert_date timestamptz
)
"""
EXTENSIONS_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    extension_uuid uuid PRIMARY KEY, domain_uuid uuid, extension text, number_alias text,
    accountcode text, user_context text, enabled text, description text
)
"""


def _uuid(prefix: str, number: pl.Expr) -> pl.Expr:
    """A deterministic UUID-shaped string (decimal digits are valid hex)."""
    return pl.lit(prefix) + number.cast(pl.String).str.zfill(12)


def fusionpbx_rows(calls: pl.DataFrame, tz: str = "America/Toronto", b_legs: bool = True, seed: int = 0) -> pl.DataFrame:
    """The `v_xml_cdr` rows the FusionPBX importer would write for `calls` (A-legs), plus, with
    `b_legs`, rows the connector must NOT bill: a B-leg for ~5 % of answered calls and a
    parallel-ring loser (`LOSE_RACE`, with `originating_leg_uuid`) for ~2 %."""
    def epoch(col: str) -> pl.Expr:
        return pl.col(col).dt.epoch("s")

    def stamp(col: str) -> pl.Expr:
        return pl.col(col).dt.convert_time_zone(tz)

    ext_num = pl.col("extension").cast(pl.Int64, strict=False)
    a = calls.select(
        pl.col("call_id").alias("xml_cdr_uuid"),
        _uuid("00000000-0000-4000-b000-", pl.col("client_id")).alias("domain_uuid"),
        pl.when(ext_num.is_not_null()).then(
            _uuid("00000000-0000-4000-a000-", pl.col("client_id") * 10_000 + ext_num)
        ).alias("extension_uuid"),
        pl.col("tenant").alias("domain_name"),
        pl.col("tenant").alias("accountcode"),
        pl.col("direction"),
        pl.when(pl.col("direction") == "inbound").then(pl.lit("public")).otherwise(pl.col("tenant")).alias("context"),
        pl.col("src").alias("caller_id_number"),
        pl.col("dst").alias("caller_destination"),
        pl.col("src").alias("source_number"),
        pl.col("dst").alias("destination_number"),
        epoch("start_utc").alias("start_epoch"),
        stamp("start_utc").alias("start_stamp"),
        stamp("answer_utc").alias("answer_stamp"),
        epoch("answer_utc").fill_null(0).alias("answer_epoch"),
        epoch("end_utc").alias("end_epoch"),
        stamp("end_utc").alias("end_stamp"),
        pl.col("billsec").alias("duration"),
        pl.col("billsec").alias("billsec"),
        pl.lit("a").alias("leg"),
        pl.lit(None, dtype=pl.String).alias("originating_leg_uuid"),
        pl.when(pl.col("billsec") > 0).then(pl.lit("answered")).otherwise(pl.lit("no_answer")).alias("status"),
        pl.col("hangup_cause"),
    )
    if not b_legs or a.height == 0:
        return a
    rng = np.random.default_rng([seed, 3])
    u = rng.random(a.height)
    answered = (a["billsec"] > 0).to_numpy()
    extra_b = a.filter(pl.Series(answered & (u < 0.05))).with_columns(
        (pl.col("xml_cdr_uuid").str.slice(0, 19) + "9" + pl.col("xml_cdr_uuid").str.slice(20)).alias("xml_cdr_uuid"),
        pl.lit("b").alias("leg"),
    )
    losers = a.filter(pl.Series(answered & (u >= 0.05) & (u < 0.07))).with_columns(
        (pl.col("xml_cdr_uuid").str.slice(0, 19) + "7" + pl.col("xml_cdr_uuid").str.slice(20)).alias("xml_cdr_uuid"),
        pl.col("xml_cdr_uuid").alias("originating_leg_uuid"),
        pl.lit("LOSE_RACE").alias("hangup_cause"),
        pl.lit(0, dtype=pl.Int64).alias("billsec"),
        pl.lit(None, dtype=pl.Datetime("us", tz)).alias("answer_stamp"),
        pl.lit(0, dtype=pl.Int64).alias("answer_epoch"),
        pl.lit("missed").alias("status"),
    )
    return pl.concat([a, extra_b, losers], how="vertical_relaxed")


def _pg_connect(target: Any):
    """A psycopg2 connection from a SQLAlchemy-style or libpq URL, or the connection itself."""
    if not isinstance(target, str):
        return target, False
    import psycopg2
    from sqlalchemy.engine import make_url

    url = make_url(target)
    kwargs: dict[str, Any] = {"host": url.host or "127.0.0.1", "port": url.port or 5432, "dbname": url.database,
                              "user": url.username, "password": url.password, "connect_timeout": 10}  # fmt: skip
    if "options" in url.query:
        kwargs["options"] = url.query["options"]
    return psycopg2.connect(**{k: v for k, v in kwargs.items() if v is not None}), True


def write_fusionpbx(target: Any, table: str, calls: pl.DataFrame, tz: str = "America/Toronto",
                    b_legs: bool = True, create: bool = True, extensions: bool = True, seed: int = 0) -> int:  # fmt: skip
    """Insert `calls` into a FusionPBX-schema `v_xml_cdr` (`table` may be `schema.table`) with COPY.

    `target` is a PostgreSQL URL (SQLAlchemy or libpq style) or an open psycopg2 connection.
    The table may be any FusionPBX version: only the columns it has are written (a 4.4 table's
    primary key is `uuid`, its stamps are local `timestamp`s). With `create`, a missing table is
    created with the current columns. With `extensions`, `v_extensions` in the same schema is
    created if missing and given the calls' extensions, so the connector can map
    `extension_uuid` -> extension number. Returns the number of rows written (B-legs included)."""
    from psycopg2 import sql

    schema, _, name = table.rpartition(".")
    conn, owned = _pg_connect(target)
    try:
        with conn.cursor() as cur:
            if not schema:
                cur.execute("SELECT current_schema()")
                schema = cur.fetchone()[0]
            qualified = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            if create:
                cur.execute(sql.SQL(FUSIONPBX_DDL).format(table=qualified))
            cur.execute(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (schema, name),
            )
            types = dict(cur.fetchall())
            if not types:
                raise ValueError(f"table {schema}.{name} does not exist (pass create=True)")
            rows = fusionpbx_rows(calls, tz, b_legs, seed)
            if "xml_cdr_uuid" not in types and "uuid" in types:
                rows = rows.rename({"xml_cdr_uuid": "uuid"})
            for col in ("start_stamp", "answer_stamp", "end_stamp"):
                fmt = "%Y-%m-%d %H:%M:%S" if types.get(col) == "timestamp without time zone" else "%Y-%m-%d %H:%M:%S%:z"
                rows = rows.with_columns(pl.col(col).dt.strftime(fmt))
            rows = rows.select([c for c in rows.columns if c in types])
            buf = io.BytesIO()
            rows.write_csv(buf)
            buf.seek(0)
            cur.copy_expert(
                sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)")
                .format(qualified, sql.SQL(", ").join(map(sql.Identifier, rows.columns)))
                .as_string(conn),
                buf,
            )
            if extensions:
                _write_extensions(cur, schema, calls)
            cur.execute(sql.SQL("ANALYZE {}").format(qualified))  # fresh statistics, as autovacuum would give
        conn.commit()
        return rows.height
    except BaseException:
        conn.rollback()
        raise
    finally:
        if owned:
            conn.close()


def _write_extensions(cur, schema: str, calls: pl.DataFrame) -> None:
    from psycopg2 import sql
    from psycopg2.extras import execute_values

    table = sql.SQL("{}.v_extensions").format(sql.Identifier(schema))
    cur.execute(sql.SQL(EXTENSIONS_DDL).format(table=table))
    ext = (
        calls.filter(pl.col("extension").str.contains(r"^[0-9]+$"))
        .select("client_id", "tenant", "extension")
        .unique()
        .select(
            _uuid("00000000-0000-4000-a000-", pl.col("client_id") * 10_000 + pl.col("extension").cast(pl.Int64)).alias("u"),
            _uuid("00000000-0000-4000-b000-", pl.col("client_id")).alias("d"),
            pl.col("extension"),
            pl.col("tenant"),
        )
    )
    execute_values(
        cur,
        sql.SQL(
            "INSERT INTO {t} (extension_uuid, domain_uuid, extension, user_context, enabled) "
            "SELECT v.u::uuid, v.d::uuid, v.e, v.c, 'true' FROM (VALUES %s) AS v(u, d, e, c) "
            "WHERE NOT EXISTS (SELECT 1 FROM {t} x WHERE x.extension_uuid = v.u::uuid)"
        ).format(t=table).as_string(cur),
        ext.rows(),
    )


# -- everything at once (the CLI and the demo) -------------------------------------------------


def qualified_table(target: Any, table: str) -> str:
    """`schema.table` for `table` as the connection at `target` resolves it (its current schema)."""
    if "." in table:
        return table
    conn, owned = _pg_connect(target)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_schema()")
            return f"{cur.fetchone()[0]}.{table}"
    finally:
        if owned:
            conn.close()


def fusionpbx_server_fields(url: str, table: str) -> dict[str, Any]:
    """Config fields for a FusionPBX server reached at `url`; a password becomes an env reference."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    fields: dict[str, Any] = {
        "host": u.host or "127.0.0.1", "port": u.port or 5432, "database": u.database or "fusionpbx",
        "user": u.username or "fusionpbx", "sslmode": u.query.get("sslmode", "prefer"), "table": table,
    }  # fmt: skip
    if u.password:
        fields["password"] = {"env": "AUTOBILL_FUSIONPBX_PASSWORD"}
    return fields


def write_outputs(
    out: Path,
    world: World,
    calls: pl.DataFrame,
    fusionpbx_url: str | None = None,
    fusionpbx_table: str = "v_xml_cdr",
    lesnet_base_url: str = "http://127.0.0.1:8765",
) -> dict[str, Any]:
    """Write each server's calls where its connector reads them, plus `tariffs/retail.csv` and
    `autobill.yaml`, under `out`. FusionPBX servers need `fusionpbx_url` (server i of M writes
    table `<table>_<i>` when M > 1). Vodia servers get `vodia/<id>.parquet` (canonical calls,
    for a Vodia sandbox to serve). Returns a summary."""
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fusion_ids = world.servers.filter(pl.col("kind") == "fusionpbx")["id"].to_list()
    if fusion_ids and not fusionpbx_url:
        raise ValueError("FusionPBX servers need a PostgreSQL URL to write their v_xml_cdr table into")
    overrides: dict[str, dict[str, Any]] = {}
    written: dict[str, str] = {}
    for sid, kind in world.servers.iter_rows():
        mine = calls.filter(pl.col("server") == sid)
        if kind == "file":
            paths = write_drop_folder(out / "drop" / sid, mine, world.timezone)
            written[sid] = f"{len(paths)} file(s) in {out / 'drop' / sid}"
        elif kind == "lesnet":
            path = write_lesnet_file(out / "lesnet" / f"{sid}.txt", mine)
            written[sid] = str(path)
        elif kind == "vodia":
            path = out / "vodia" / f"{sid}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            mine.write_parquet(path)
            written[sid] = str(path)
        elif kind == "fusionpbx":
            table = fusionpbx_table if len(fusion_ids) == 1 else f"{fusionpbx_table}_{fusion_ids.index(sid) + 1}"
            table = qualified_table(fusionpbx_url, table)
            rows = write_fusionpbx(fusionpbx_url, table, mine, world.timezone, seed=world.seed)
            overrides[sid] = fusionpbx_server_fields(fusionpbx_url, table)
            written[sid] = f"{rows} row(s) (B-legs included) in {table}"
    tariff_path = out / "tariffs" / "retail.csv"
    tariff_path.parent.mkdir(parents=True, exist_ok=True)
    tariff_frame().write_csv(tariff_path)
    config = generate_config(world, overrides, lesnet_base_url)
    config_path = out / "autobill.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return {
        "calls": calls.height,
        "by_server": dict(calls.group_by("server").len().sort("server").iter_rows()),
        "by_category": dict(calls.group_by("category").len().sort("len", descending=True).iter_rows()),
        "written": written,
        "config": str(config_path),
        "tariff": str(tariff_path),
    }
