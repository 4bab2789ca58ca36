"""A billing world for statement and dispute tests, without Prefect: generated calls go into the raw
lake, through the nightly's own rate and record functions (tasks/rate.py, tasks/aggregate.py),
and are posted to a WHMCS sandbox over loopback HTTP, as a nightly run would."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import yaml

from autobill import lake
from autobill.cdr import conform
from autobill.config import load_settings
from autobill.ledger.db import upgrade
from autobill.ledger.runs import finish_run, start_run
from connectors.whmcs import WhmcsClient
from sandboxes.generate import generate_calls, generate_config, make_world, tariff_frame
from tasks.aggregate import record_billing
from tasks.post import post_pending
from tasks.rate import rate_run
from tests.support.whmcs import IDENT, SECRET


class StatementWorld:
    def __init__(self, tmp: Path, sandbox, clients: int = 4, seed: int = 3, ledger_url: str | None = None,
                 **extra) -> None:
        self.tmp, self.sandbox = tmp, sandbox
        self.world = make_world(clients=clients, servers_per_kind=2, kinds=("file",), seed=seed)
        config = generate_config(self.world)
        (tmp / "tariffs").mkdir(parents=True, exist_ok=True)
        tariff_frame().write_csv(tmp / "tariffs" / "retail.csv")
        config["whmcs"] = {"url": sandbox.url, "identifier": {"env": "STMT_WHMCS_ID"},
                           "secret": {"env": "STMT_WHMCS_SECRET"}, "retries": 2, "timeout_seconds": 10,
                           "custom_field_ids": sandbox.custom_field_ids}
        config["statements"] = {"reseller_name": "Maple VoIP Inc.", "workers": 1}
        if ledger_url:
            config["ledger_url"] = ledger_url
        config.update(extra)
        self.config_path = tmp / "autobill.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        for i in range(clients):
            sandbox.add_client(firstname=f"Ann{i + 1}", lastname="Lee", companyname=f"Acme {i + 1} Ltd")
        self.settings = load_settings(self.config_path)
        upgrade(self.settings.ledger)

    @staticmethod
    def env() -> dict[str, str]:
        return {"STMT_WHMCS_ID": IDENT, "STMT_WHMCS_SECRET": SECRET}

    def calls(self, first: date, last: date, per_day: float = 10, seed: int = 1) -> pl.DataFrame:
        return generate_calls(self.world, first, last, calls_per_client_day=per_day, seed=seed)

    def bill(self, day: date, calls: pl.DataFrame, post: bool = True) -> int:
        """One nightly run's billing of `calls` (rate, record, post); returns the run id."""
        run_id = start_run(self.settings, "nightly", day)
        paths = []
        for (server,), part in conform(calls).partition_by("server", as_dict=True).items():
            paths += [str(p) for p in lake.write_batch(self.settings.data_path, server, f"b{run_id}", part)]
        rated = rate_run(self.settings, day, paths, None, run_id)
        record_billing(self.settings, pl.read_parquet(rated), run_id)
        if post:
            with WhmcsClient.from_settings(self.settings.whmcs) as client:
                post_pending(self.settings, client)
        finish_run(self.settings, run_id, "completed")
        return run_id
