"""Data quality for extracted CDRs (issue #5): nothing unchecked is billed, nothing bad is lost.

- `rules`: row rules (polars): good / quarantined (rule + reason + whole row) / duplicate.
- `known`: what the ledger already knows of a batch's keys (cross-batch duplicates).
- `suites`: the batch suite (Great Expectations on a pandas copy), severities critical/warning.
- `volume`: tonight's volume against the server's own history (rows per window hour).
- `policy`: when a server's batch is rejected (bad-row fraction, critical checks).
- `quarantine`: the ledger side: record, list, show, release, re-queue.
- `report`: markdown + JSON report of one validation.

`tasks/validate.py` puts them together for the nightly flow; `autobill quarantine` is the CLI.
"""
