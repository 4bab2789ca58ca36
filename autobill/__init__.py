"""Autobill: the billing pipeline's core (see DESIGN.md for the layout)."""

import os

# polars allocates with jemalloc, which by default keeps freed pages for 10 s and hands them back
# only when it allocates again: a night's extraction threads left the process at their high-water
# mark for the steps after them (issue #15: the 10 M night's peak grew with the night). Handing
# pages back at once keeps the peak to what a step holds. Read when jemalloc starts, so only if
# this package is imported before polars (the CLI, the flows and the deployments do); an operator's
# own `_RJEM_MALLOC_CONF` wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")
