"""Client call statements: every billed call behind a WHMCS line, tying out to it to the cent.

- `store`: the per-call details a statement needs, kept per billing date (built from the billed
  state, the run's rated parquet and the raw lake);
- `build`: one client's statement for a period (charge lines, corrections, calls, totals);
- `render`: CSV, HTML and PDF.
"""
