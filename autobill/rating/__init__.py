"""The rating engine (issue #3): tariffs, the vectorised rater, and the nightly billing rater.

- `tariff.load_tariff(path) -> LoadedTariff`: validated tariff, version = content hash.
- `engine.rate_cdrs(cdrs, tariff, numbering=, markup=)` / `engine.rate_files(...)`: RATING.md.
- `billing.rate_for_billing(cdrs, settings, tariffs, included_used)`: the nightly rater
  (included minutes, time bands, currency, inbound/local rules).

Submodules import polars; import them where they are used (the CLI imports them lazily).
"""
