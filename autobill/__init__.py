"""Autobill: the billing pipeline's core (see DESIGN.md for the layout)."""

import os

# polars allocates with jemalloc, which by default keeps freed pages for 10 s and hands them back
# only when it allocates again: a night's extraction threads left the process at their high-water
# mark for the steps after them (issue #15: the 10 M night's peak grew with the night). Pages are
# handed back after one second instead. Not at once (decay 0): then every big step faulted in
# fresh pages for each intermediate column, and on a small VM, where a page fault is dear, that
# was a third of `autobill rate`'s time (5 M rows: 8.5 s -> 5.7 s; a 1 M night 55.7 s -> 48.6 s,
# peak 1,027 -> 1,066 MB; docs/nightly-scale.md). Read when jemalloc starts, so only if this
# package is imported before polars (the CLI, the flows and the deployments do); an operator's
# own `_RJEM_MALLOC_CONF` wins.
JEMALLOC_CONF = "dirty_decay_ms:1000,muzzy_decay_ms:1000"
os.environ.setdefault("_RJEM_MALLOC_CONF", JEMALLOC_CONF)
