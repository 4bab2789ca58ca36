"""FusionPBX CDRs: read-only SQL against the PBX's PostgreSQL `v_xml_cdr` (domain.md §1).

What is read, and why:
- A-legs only (`leg = 'a'`), without parallel-ring losers (`hangup_cause = 'LOSE_RACE'`, or a
  non-null `originating_leg_uuid` where that column exists): FusionPBX's own summary query
  does the same, and a B-leg is the same call seen twice.
- Unanswered calls are read too (`billsec` 0): they end as zero-cost, never silently dropped.
- `billsec` is the billed time, never `duration` (which was ring+talk before 5.2.0).
- Times come from the `*_epoch` columns (exact UTC); the `*_stamp` columns are in the PBX's
  local zone and were `timestamp` without zone on 4.x installs.
- The number rated: outbound/local calls the `destination_number`, inbound calls the
  `caller_destination` (the DID dialled; `destination_number` when it is empty), normalised once
  here with the server's numbering rules (RATING.md).
- Extension: `v_extensions.extension` through `extension_uuid` when that table is readable in
  the same schema; otherwise (or no match) the `accountcode` when it looks like an extension
  (2–6 digits, operators who set per-extension account codes), else null. `caller_id_number`
  is not used: on outbound calls it is usually the DID shown to the callee, not the extension.
- Incremental on `end_epoch` ([since - overlap, until)): a call is written when it ends, so the
  end is what grows; the overlap re-reads late rows and the extraction step drops keys it stored.
  The window is written so that an index on `end_epoch` serves it (`window_condition`); a table
  without one is read whole on every run, and the run's notes say so, with the statement that
  adds one (autobill never writes to the PBX's database).

The connection is read-only (`default_transaction_read_only` and a READ ONLY session), every SQL
is parameterised (identifiers through `psycopg2.sql`), and every network step has a timeout:
`connect_timeout` and `statement_timeout` from `server.timeout_seconds`. Different versions
are handled by reading the table's columns from `information_schema` first.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl
import psycopg2
from psycopg2 import sql

from autobill.cdr import conform
from autobill.config import FusionPBXServer, Settings
from autobill.numbering import normalise_expr
from autobill.secrets import SecretError
from connectors.base import Extracted, SourceError, merge_problems

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LOSE_RACE = "LOSE_RACE"

# Columns kept in `source_row` (audit / quarantine) when the table has them; never xml/json blobs.
SOURCE_COLUMNS = (
    "xml_cdr_uuid", "uuid", "domain_uuid", "domain_name", "extension_uuid", "accountcode", "direction",
    "context", "caller_id_name", "caller_id_number", "caller_destination", "source_number",
    "destination_number", "start_epoch", "answer_epoch", "end_epoch", "start_stamp", "answer_stamp",
    "end_stamp", "duration", "billsec", "leg", "originating_leg_uuid", "hangup_cause", "hangup_cause_q850",
    "status", "missed_call", "sip_call_id", "cc_side",
)  # fmt: skip
# How `source_row` writes each column's value, by its PostgreSQL type (information_schema's
# data_type): exactly as to_json would. Text-like values are fetched as text and JSON-encoded here;
# numbers and booleans are fetched as text and written as they are (NaN and +-Infinity quoted, as
# to_json quotes them); any other type (timestamps, char(n) with its padding, json, arrays, ...)
# is fetched as PostgreSQL's own to_json text. Building the object in PostgreSQL (to_json of a
# sub-select) cost 4 of the 5.2 s a 211k-row COPY took (issue #15).
STRING_TYPES = frozenset({"text", "character varying", "uuid"})
LITERAL_TYPES = frozenset({"numeric", "integer", "bigint", "smallint", "real", "double precision", "boolean"})
REQUIRED = ("domain_name", "direction", "destination_number", "start_epoch", "end_epoch", "billsec")
OPTIONAL_TEXT = ("accountcode", "caller_id_number", "caller_destination", "hangup_cause")

_FETCH_SCHEMA = {
    "call_id": pl.String(),
    "domain_name": pl.String(),
    "accountcode": pl.String(),
    "direction": pl.String(),
    "caller_id_number": pl.String(),
    "caller_destination": pl.String(),
    "destination_number": pl.String(),
    "start_us": pl.Int64(),
    "answer_us": pl.Int64(),
    "end_us": pl.Int64(),
    "billsec": pl.Int64(),
    "hangup_cause": pl.String(),
    "extension_uuid": pl.String(),
    "problem": pl.String(),
}  # then one text column per source column (`source_columns`), `_source_<i>`
SPOOL_BUFFER = 1 << 20  # bytes buffered before the COPY spool is written to disk
# The largest |epoch| (seconds) whose microseconds fit a bigint, and the largest |billsec| that
# fits one: a NaN, an Infinity or a bigger value is read as NULL plus a problem text (the row is
# quarantined as `unreadable_row`), never cast in SQL, where it would fail the whole extraction.
MAX_EPOCH = 9_200_000_000_000
MAX_BILLSEC = 9_200_000_000_000_000_000


def source_columns(columns: dict[str, str]) -> list[tuple[str, str]]:
    """(column, how `source_row` writes it: "string" | "literal" | "json") for each of
    SOURCE_COLUMNS the table has, in that order (`columns`: name -> PostgreSQL data_type)."""
    def kind(data_type: str) -> str:
        return "string" if data_type in STRING_TYPES else "literal" if data_type in LITERAL_TYPES else "json"

    return [(name, kind(columns[name])) for name in SOURCE_COLUMNS if name in columns]


def source_row_expr(sources: Sequence[tuple[str, str]]) -> pl.Expr:
    """`source_row` from the fetched `_source_<i>` columns: the JSON object PostgreSQL's to_json
    gives for these columns of the row (same keys in the same order, same values, nulls kept)."""
    def value(i: int, name: str, kind: str) -> pl.Expr:
        col = pl.col(f"_source_{i}")
        if kind == "string":  # polars escapes the text as JSON does; keep what follows the key
            return (pl.struct(col.alias(name)).struct.json_encode()
                    .str.strip_prefix(f'{{"{name}":').str.strip_suffix("}"))
        if kind == "literal":
            return pl.when(col.is_in(["NaN", "Infinity", "-Infinity"])).then('"' + col + '"').otherwise(col)
        return col

    parts: list[pl.Expr] = []
    for i, (name, kind) in enumerate(sources):
        parts += [pl.lit(("{" if i == 0 else ",") + f'"{name}":'), value(i, name, kind).fill_null("null")]
    return pl.concat_str([*parts, pl.lit("}")])


def _scan_copy(path: str, sources: Sequence[tuple[str, str]]) -> pl.LazyFrame:
    """The rows `COPY (...) TO STDOUT WITH (FORMAT csv)` wrote to `path`, typed as the SELECT.

    Why COPY into a file: one stream the server writes and polars reads, instead of a Python
    tuple per row (the cursor path spent most of a 200k-row extraction building tuples), and a
    lazy scan that the streaming engine turns into canonical rows without holding the fetched
    rows as well. CSV keeps NULL (an empty field) apart from an empty string (`""`), and quotes
    whatever holds a comma, a quote or a line break."""
    schema = {**_FETCH_SCHEMA, **{f"_source_{i}": pl.String() for i in range(len(sources))}}
    return pl.scan_csv(path, has_header=False, schema=schema, encoding="utf8")


def _collect(server_id: str, frame: pl.LazyFrame) -> pl.DataFrame:
    try:
        return frame.collect(engine="streaming")
    except pl.exceptions.NoDataError:
        return frame.clear().collect()
    except Exception as exc:  # noqa: BLE001 - the rows read are unusable as a whole: retried next run
        raise SourceError(f"{server_id}: the rows read could not be parsed: {_first_line(exc)}") from None


def epoch_seconds(moment: datetime) -> Decimal:
    """Exact seconds since the epoch (no binary float on the way to a numeric comparison)."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: pass an aware UTC time")
    delta = moment - EPOCH
    return Decimal(delta.days * 86_400 + delta.seconds) + Decimal(delta.microseconds).scaleb(-6)


def window_condition(end: sql.Composable, start: sql.Composable) -> sql.Composed:
    """Which rows a run reads (`%(low)s`/`%(high)s`: epoch seconds, `low` NULL on a first run).

    Incremental on end_epoch; a row whose end_epoch is NULL/NaN/Infinity is windowed on its
    start_epoch instead, and a row with neither usable is read on every run (the lake then skips
    it as already stored): no row is filtered out before it is counted. Written as plain ranges
    on the columns, not as a CASE over them, so that PostgreSQL can answer it from an index on
    `end_epoch` and read only the window: v_xml_cdr keeps years of calls (730 days by default),
    and a CASE made every run read the whole table (issue #15). "Usable" is `abs(x) < MAX_EPOCH`;
    NaN sorts above every number and NULL compares to nothing, so the ranges below keep the same
    rows (tests/connectors/test_fusionpbx_window.py holds the CASE as the reference)."""
    bound = sql.Literal(MAX_EPOCH)

    def in_window(col: sql.Composable) -> sql.Composed:  # usable, and in [low, high)
        return sql.SQL("({c} > -{b} AND {c} < {b} AND ({c} >= %(low)s OR %(low)s IS NULL) AND {c} < %(high)s)").format(
            c=col, b=bound)

    def unusable(col: sql.Composable) -> sql.Composed:
        return sql.SQL("({c} IS NULL OR {c} >= {b} OR {c} <= -{b})").format(c=col, b=bound)

    return sql.SQL("({end_in} OR ({end_bad} AND ({start_in} OR {start_bad})))").format(
        end_in=in_window(end), end_bad=unusable(end), start_in=in_window(start), start_bad=unusable(start))


def split_table(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return (schema or None), table


class FusionPBXConnector:
    """Reads one FusionPBX server's CDRs; see the module docstring for the rules."""

    def __init__(self, server: FusionPBXServer, settings: Settings | None = None) -> None:
        self.server = server
        self.settings = settings

    # -- connection ----------------------------------------------------------------------

    def connect(self):
        srv = self.server
        try:
            password = srv.password.get() if srv.password is not None else None
        except SecretError as exc:
            raise SourceError(f"{srv.id}: {exc}") from None
        timeout_ms = int(srv.timeout_seconds * 1000)
        try:
            conn = psycopg2.connect(
                host=srv.host,
                port=srv.port,
                dbname=srv.database,
                user=srv.user,
                password=password,
                sslmode=srv.sslmode,
                connect_timeout=max(2, math.ceil(srv.timeout_seconds)),
                application_name="autobill-extract",
                client_encoding="UTF8",  # COPY writes bytes in the client encoding
                options=f"-c default_transaction_read_only=on -c statement_timeout={timeout_ms}",
            )
        except psycopg2.Error as exc:
            raise SourceError(f"{srv.id}: cannot connect to {srv.host}:{srv.port}/{srv.database}: {_first_line(exc)}") from None
        conn.set_session(readonly=True, autocommit=False)
        return conn

    # -- extraction ----------------------------------------------------------------------

    def extract(self, since: datetime | None, until: datetime, cursor: dict[str, Any] | None = None) -> Extracted:
        srv = self.server
        low = None if since is None else since - timedelta(minutes=srv.overlap_minutes)
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                schema, table = self._resolve(cur)
                columns = self._columns(cur, schema, table)
                query, count_query = self._queries(cur, schema, table, columns)
                unindexed = not self._window_indexed(cur, schema, table)
                extensions = self._extensions(cur, schema) if "extension_uuid" in columns else None
            params = {
                "low": epoch_seconds(low) if low is not None else None,
                "high": epoch_seconds(until),
            }
            with conn.cursor() as cur, tempfile.NamedTemporaryFile(prefix="autobill-copy-", suffix=".csv") as spool:
                copy = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(sql.SQL(cur.mogrify(query, params).decode()))
                # psycopg2 writes each row with its own write(): a plain buffered writer with a big
                # buffer takes them at half the cost of the temporary file's wrapper.
                with open(spool.name, "wb", buffering=SPOOL_BUFFER) as out:
                    cur.copy_expert(copy, out)
                cur.execute(count_query, params)
                excluded = cur.fetchone()
                conn.rollback()
                sources = source_columns(columns)
                read = _collect(srv.id, self.canonical(_scan_copy(spool.name, sources), extensions, sources))
        except psycopg2.Error as exc:
            raise SourceError(f"{srv.id}: reading {srv.table} failed: {_first_line(exc)}") from None
        finally:
            conn.close()
        notes = []
        if unindexed:
            notes.append(f"{srv.id}: {schema}.{table} has no index on end_epoch, so every run reads the whole table; "
                         f"with one (CREATE INDEX CONCURRENTLY ON {schema}.{table} (end_epoch)) PostgreSQL can read the window only")
        labels = ("B-leg rows", "LOSE_RACE rows", "rows with an originating_leg_uuid")
        for label, n in zip(labels, excluded, strict=True):
            if n:
                notes.append(f"{srv.id}: skipped {n} {label} in the window (not billable legs)")
        unreadable = read["_problem"].is_not_null().sum()
        if unreadable:
            notes.append(f"{srv.id}: {unreadable} row(s) with unusable epochs or billsec (quarantined as unreadable_row)")
        cdrs = conform(merge_problems(read, "_problem"))
        return Extracted(cdrs=cdrs, watermark=cdrs["end_utc"].max(), cursor=None, notes=notes)

    def canonical(self, raw: pl.LazyFrame, extensions: pl.DataFrame | None,
                  sources: Sequence[tuple[str, str]]) -> pl.LazyFrame:
        """Fetched rows (+ the extension_uuid -> extension map) -> canonical CDRs (lazy; `_problem`
        still apart from `source_row`, see `merge_problems`; `sources`: `source_columns`).

        The extension map is joined here rather than in SQL: `v_extensions` is small, and a
        join in the PBX database is at the mercy of its planner statistics (a freshly loaded,
        never analysed table made PostgreSQL pick a nested loop: 7 s for 100k rows)."""
        num = self.server.numbering
        if extensions is None:
            extensions = pl.DataFrame(schema={"extension_uuid": pl.String(), "ext_number": pl.String()})
        # The lake's row order: end, then call id (nulls last; strings by their bytes). Sorted
        # here, not in the query: PostgreSQL's sort took a quarter of the COPY (issue #15).
        raw = raw.sort(["end_us", "call_id"], nulls_last=True, maintain_order=True)
        raw = raw.join(extensions.unique("extension_uuid").lazy(), on="extension_uuid", how="left",
                       maintain_order="left")

        def text(col: str) -> pl.Expr:
            stripped = pl.col(col).str.strip_chars()
            return pl.when(stripped != "").then(stripped)

        def ts(col: str) -> pl.Expr:
            return pl.from_epoch(pl.col(col), time_unit="us").dt.replace_time_zone("UTC")

        direction = pl.col("direction").str.strip_chars().str.to_lowercase()
        rate_source = (
            pl.when(direction == "inbound")
            .then(pl.coalesce(text("caller_destination"), text("destination_number")))
            .otherwise(text("destination_number"))
        )
        account_ext = pl.when(pl.col("accountcode").str.contains(r"^[0-9]{2,6}$")).then(pl.col("accountcode"))
        return (
            raw.lazy().select(
                (pl.lit(f"{self.server.id}:") + pl.col("call_id")).alias("cdr_key"),
                pl.lit(self.server.id).alias("server"),
                pl.col("domain_name").alias("tenant"),
                pl.col("accountcode").alias("account"),
                pl.coalesce(text("ext_number"), account_ext).alias("extension"),
                direction.alias("direction"),
                pl.col("caller_id_number").alias("src"),
                pl.col("destination_number").alias("dst"),
                normalise_expr(rate_source, num.country_code, num.intl_prefix, num.trunk_prefix).alias("rate_number"),
                ts("start_us").alias("start_utc"),
                ts("answer_us").alias("answer_utc"),
                ts("end_us").alias("end_utc"),
                pl.col("billsec"),
                pl.col("hangup_cause"),
                source_row_expr(sources).alias("source_row"),
                pl.col("problem").alias("_problem"),
            )
        )

    # -- SQL -----------------------------------------------------------------------------

    def _resolve(self, cur) -> tuple[str, str]:
        schema, table = split_table(self.server.table)
        if schema is None:
            cur.execute("SELECT current_schema()")
            schema = cur.fetchone()[0]
        return schema, table

    @staticmethod
    def _columns(cur, schema: str, table: str) -> dict[str, str]:
        """The table's columns: name -> data_type (information_schema's spelling)."""
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (schema, table),
        )
        return dict(cur.fetchall())

    @staticmethod
    def _window_indexed(cur, schema: str, table: str) -> bool:
        """Whether the run's window can be read from an index: the table has a valid index whose
        first column is end_epoch (a view, or a table we cannot see, is taken as indexed: nothing
        to advise)."""
        cur.execute(
            "SELECT t.relkind IN ('r', 'p') AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] "
            "WHERE i.indrelid = t.oid AND i.indisvalid AND a.attname = 'end_epoch') "
            "FROM pg_class t JOIN pg_namespace n ON n.oid = t.relnamespace WHERE n.nspname = %s AND t.relname = %s",
            (schema, table),
        )
        row = cur.fetchone()
        return not (row and row[0])

    def _extensions(self, cur, schema: str) -> pl.DataFrame | None:
        """extension_uuid -> extension number from `v_extensions` in the same schema, when readable."""
        cur.execute(
            "SELECT has_table_privilege(c.oid, 'SELECT') FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'v_extensions'",
            (schema,),
        )
        row = cur.fetchone()
        if not (row and row[0]) or not {"extension_uuid", "extension"} <= self._columns(cur, schema, "v_extensions").keys():
            return None
        cur.execute(
            sql.SQL("SELECT extension_uuid::text, extension::text FROM {}.v_extensions WHERE extension_uuid IS NOT NULL")
            .format(sql.Identifier(schema))
        )
        return pl.DataFrame(cur.fetchall(), schema={"extension_uuid": pl.String(), "ext_number": pl.String()}, orient="row")

    def _queries(self, cur, schema: str, table: str, columns: dict[str, str]):
        srv = self.server
        if not columns:
            raise SourceError(f"{srv.id}: table {schema}.{table} not found (or not readable)")
        id_col = "xml_cdr_uuid" if "xml_cdr_uuid" in columns else "uuid" if "uuid" in columns else None
        missing = [c for c in REQUIRED if c not in columns] + ([] if id_col else ["xml_cdr_uuid"])
        if missing:
            raise SourceError(f"{srv.id}: table {schema}.{table} lacks column(s) {', '.join(missing)}")

        def c(name: str) -> sql.Composed:
            return sql.SQL("c.{}").format(sql.Identifier(name))

        def opt_text(name: str) -> sql.Composable:
            return sql.SQL("{}::text").format(c(name)) if name in columns else sql.SQL("NULL::text")

        def usable(name: str, bound: int) -> sql.Composed:
            # NaN sorts above every number in PostgreSQL, so NaN, +-Infinity and NULL are all "not usable".
            return sql.SQL("abs({}) < {}").format(c(name), sql.Literal(bound))

        def micros(name: str) -> sql.Composed:
            return sql.SQL("CASE WHEN {ok} THEN round({c} * 1000000)::bigint END").format(
                ok=usable(name, MAX_EPOCH), c=c(name))

        def unusable(name: str, bound: int) -> sql.Composed:
            return sql.SQL("CASE WHEN {c} IS NOT NULL AND NOT {ok} THEN {label} || {c}::text || {what} END").format(
                c=c(name), ok=usable(name, bound), label=sql.Literal(f"{name} "),
                what=sql.Literal(" is not a usable value" if name == "billsec" else " is not a usable epoch"))

        answer = (
            sql.SQL("CASE WHEN {a} > 0 AND {ok} THEN round({a} * 1000000)::bigint END").format(
                a=c("answer_epoch"), ok=usable("answer_epoch", MAX_EPOCH))
            if "answer_epoch" in columns
            else sql.SQL("NULL::bigint")
        )
        checked = [("start_epoch", MAX_EPOCH), ("end_epoch", MAX_EPOCH), ("billsec", MAX_BILLSEC)]
        if "answer_epoch" in columns:
            checked.append(("answer_epoch", MAX_EPOCH))
        problem = sql.SQL("NULLIF(concat_ws('; ', {}), '')").format(
            sql.SQL(", ").join(unusable(name, bound) for name, bound in checked))
        # The source columns, one text field each, for `source_row_expr` (see STRING_TYPES).
        source = sql.SQL(", ").join(
            sql.SQL("to_json({})::text" if kind == "json" else "{}::text").format(c(name))
            for name, kind in source_columns(columns)
        )
        table_ref = sql.SQL("{}.{} AS c").format(sql.Identifier(schema), sql.Identifier(table))
        window = window_condition(c("end_epoch"), c("start_epoch"))
        keep = [sql.SQL("{} IS DISTINCT FROM {}").format(c("hangup_cause"), sql.Literal(LOSE_RACE))]
        if "leg" in columns:
            keep.append(sql.SQL("{} = 'a'").format(c("leg")))
        if "originating_leg_uuid" in columns:
            keep.append(sql.SQL("{} IS NULL").format(c("originating_leg_uuid")))
        if "hangup_cause" not in columns:
            keep = keep[1:]
        select = sql.SQL(
            "SELECT {id}::text AS call_id, {domain}, {acct}, {direction}, {cid}, {cdest}, {dest}, "
            "{start} AS start_us, {answer} AS answer_us, {end} AS end_us, "
            "CASE WHEN {billsec_ok} THEN round({billsec})::bigint END AS billsec, "
            "{cause}, {ext} AS extension_uuid, {problem} AS problem, {source} "
            "FROM {table} WHERE {window} AND {keep}"  # no ORDER BY: `canonical` sorts
        ).format(
            id=c(id_col),
            domain=sql.SQL("{}::text").format(c("domain_name")),
            acct=opt_text("accountcode"),
            direction=sql.SQL("{}::text").format(c("direction")),
            cid=opt_text("caller_id_number"),
            cdest=opt_text("caller_destination"),
            dest=sql.SQL("{}::text").format(c("destination_number")),
            start=micros("start_epoch"),
            answer=answer,
            end=micros("end_epoch"),
            billsec=c("billsec"),
            billsec_ok=usable("billsec", MAX_BILLSEC),
            problem=problem,
            cause=opt_text("hangup_cause"),
            ext=opt_text("extension_uuid"),
            source=source,
            table=table_ref,
            window=window,
            keep=sql.SQL(" AND ").join(keep) if keep else sql.SQL("TRUE"),
        )
        counts = [
            sql.SQL("count(*) FILTER (WHERE {} IS DISTINCT FROM 'a')").format(c("leg")) if "leg" in columns else None,
            sql.SQL("count(*) FILTER (WHERE {} = {})").format(c("hangup_cause"), sql.Literal(LOSE_RACE))
            if "hangup_cause" in columns
            else None,
            sql.SQL("count(*) FILTER (WHERE {} IS NOT NULL)").format(c("originating_leg_uuid"))
            if "originating_leg_uuid" in columns
            else None,
        ]
        count_query = sql.SQL("SELECT {} FROM {}.{} AS c WHERE {}").format(
            sql.SQL(", ").join(x if x is not None else sql.SQL("0") for x in counts),
            sql.Identifier(schema),
            sql.Identifier(table),
            window,
        )
        return select, count_query


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
