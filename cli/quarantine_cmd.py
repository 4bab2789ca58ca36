"""`autobill quarantine list|show|release|files`: see the CDRs validation held back, and let them go;
list the drop files quarantined whole.

A quarantined row is never billed until released; releasing only re-queues it: the next
nightly run validates it again (with today's config) and rates it if it now passes. Imports
are light (no prefect, no GX) so the command answers at once.
"""

from __future__ import annotations

import getpass
import json
from typing import Annotated

import typer

from cli.common import ConfigOption, check_choice, check_servers, settings_or_exit, usage
from cli.tables import DEFAULT_LIMIT, AllOption, Column, JsonOption, LimitOption, print_listing, row_limit

QUARANTINE_COLUMNS = (
    Column("id", "id", right=True), Column("status", "status"), Column("server", "server"),
    Column("billing_date", "date"), Column("rule", "rule"), Column("cdr_key", "cdr key", max_width=30),
    Column("reason", "reason", max_width=50),
)

FILE_COLUMNS = (
    Column("name", "file", max_width=40), Column("server", "server"), Column("hash", "sha256"),
    Column("reason", "reason", max_width=50), Column("first_seen", "first seen (UTC)"),
)
SHORT_HASH = 12  # hex digits of the sha256 shown in the table (--json gives all 64)

quarantine_app = typer.Typer(help="CDRs held back by validation (issue #5).", no_args_is_help=True)

RELEASE_HELP = """\
Release quarantined rows after fixing their cause (e.g. a newly mapped extension in `services`).
They are validated again by the next nightly run and billed if they pass; a row that still
fails is quarantined again with the new reason. Only held rows are released.
"""


def _settings(config):
    from autobill.ledger.db import upgrade

    settings = settings_or_exit(config)
    upgrade(settings.ledger)
    return settings


def register(app: typer.Typer) -> None:
    @quarantine_app.command("list")
    def list_(
        config: ConfigOption = None,
        server: Annotated[str | None, typer.Option(help="Only this server.")] = None,
        rule: Annotated[str | None, typer.Option(help="Only this rule, e.g. unknown_service.")] = None,
        status: Annotated[str | None, typer.Option(help="held | released | requeued (default: all).")] = None,
        limit: LimitOption = DEFAULT_LIMIT,
        show_all: AllOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """List quarantined rows, oldest first, with a count per rule (of every matching row)."""
        from data_quality.quarantine import STATUSES, count_by, list_quarantine
        from data_quality.rules import RULE_ORDER

        check_choice(status, STATUSES, "--status")
        check_choice(rule, RULE_ORDER, "--rule")
        settings = _settings(config)
        entries = list_quarantine(settings, server=server, rule=rule, status=status,
                                  limit=row_limit(limit, show_all))
        counts = {k: n for k, n in count_by(settings, status=status).items()
                  if (server is None or k[0] == server) and (rule is None or k[1] == rule)}
        by_rule: dict[str, int] = {}
        for (_, r), n in counts.items():
            by_rule[r] = by_rule.get(r, 0) + n
        rows = [{**e.to_dict(), "billing_date": e.billing_date.isoformat() if e.billing_date else "-",
                 "cdr_key": e.cdr_key or "(no key)"} for e in entries]
        summary = ", ".join(f"{r} {n}" for r, n in sorted(by_rule.items()))
        print_listing(rows if not as_json else [e.to_dict() for e in entries], QUARANTINE_COLUMNS,
                      title="Quarantined rows", total=sum(by_rule.values()), as_json=as_json,
                      notes=[f"by rule: {summary}"] if summary else [])

    @quarantine_app.command("show")
    def show_(
        entry_id: Annotated[int, typer.Argument(help="Quarantine id (first column of `list`).")],
        config: ConfigOption = None,
    ) -> None:
        """Everything about one quarantined row: rule, full reason and the original row."""
        from data_quality.quarantine import get_entry

        entry = get_entry(_settings(config), entry_id)
        if entry is None:
            raise usage(f"no quarantined row {entry_id} (see `autobill quarantine list`)")
        typer.echo(json.dumps(entry.to_dict(with_row=True), indent=2, sort_keys=True))

    @quarantine_app.command("release", help=RELEASE_HELP)
    def release_(
        ids: Annotated[list[int] | None, typer.Argument(help="Quarantine ids to release.")] = None,
        rule: Annotated[str | None, typer.Option(help="Release every held row of this rule.")] = None,
        server: Annotated[str | None, typer.Option(help="With --rule: only this server.")] = None,
        by: Annotated[str | None, typer.Option(help="Who releases (default: your user name).")] = None,
        config: ConfigOption = None,
    ) -> None:
        from data_quality.quarantine import get_entry, release
        from data_quality.rules import RULE_ORDER

        if not ids and not rule:
            raise usage("give quarantine ids, or --rule RULE [--server SERVER]")
        if server and not rule:
            raise usage("--server narrows --rule; give --rule too")
        check_choice(rule, RULE_ORDER, "--rule")
        settings = _settings(config)
        missing = [i for i in dict.fromkeys(ids or ()) if get_entry(settings, i) is None]
        if missing:
            raise usage(f"no quarantined row {', '.join(map(str, missing))} (nothing released)")
        try:
            who = by or getpass.getuser()
        except (KeyError, OSError):
            who = "operator"
        count = release(settings, ids=ids or (), rule=rule, server=server, by=who)
        typer.echo(f"released {count} row(s); the next nightly run validates them again")

    @quarantine_app.command("files")
    def files_(
        config: ConfigOption = None,
        server: Annotated[str | None, typer.Option(help="Only this server.")] = None,
        limit: LimitOption = DEFAULT_LIMIT,
        show_all: AllOption = False,
        as_json: JsonOption = False,
    ) -> None:
        """List drop-folder files quarantined whole (unreadable), oldest first: name, server, hash,
        reason, first seen. A file is read again once its content changes (a new hash)."""
        from autobill.ledger.batches import quarantined_files

        settings = _settings(config)
        check_servers(settings, [server] if server else None)
        files = quarantined_files(settings, server)
        shown = files[: row_limit(limit, show_all)]
        if as_json:
            print_listing(shown, FILE_COLUMNS, title="Quarantined files", total=len(files), as_json=True)
            return
        rows = [{**f, "hash": f["sha256"][:SHORT_HASH], "first_seen": f["created_at"][:19].replace("T", " "),
                 "reason": f["reason"].removeprefix(f"{f['name']}: ")} for f in shown]
        print_listing(rows, FILE_COLUMNS, title="Quarantined files", total=len(files),
                      notes=["fix the file (its content changes, so its hash does) and the next run reads it"]
                      if files else [])

    app.add_typer(quarantine_app, name="quarantine")
