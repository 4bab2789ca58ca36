"""Giving freed memory back to the operating system between the nightly's big steps.

CPython's allocator and polars' jemalloc return most freed memory by themselves, but the C
library's allocator (glibc `malloc`, which numpy, pandas and Great Expectations use) keeps the
free pages of its per-thread heaps: after the extraction threads had validated their batches, the
process kept their high-water mark and the rate step then started from it (issue #15: the 10 M
night's peak grew with the night, not with the step). `malloc_trim(0)` hands those pages back.
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_free_memory() -> bool:
    """Return the C heap's free pages to the OS (glibc `malloc_trim(0)`); True when it could."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
