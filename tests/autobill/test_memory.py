"""`release_free_memory`: freed C-heap pages really go back to the OS (issue #15)."""

from __future__ import annotations

import platform

import psutil
import pytest

from autobill.memory import release_free_memory

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="malloc_trim is glibc's")


def test_pages_freed_in_the_middle_of_the_heap_go_back_to_the_os():
    me = psutil.Process()
    blocks = [bytearray(100_000) for _ in range(3_000)]  # ~300 MB of heap chunks (below the mmap threshold)
    for b in blocks:
        b[::4096] = b"\x01" * len(b[::4096])  # touch every page
    pin = bytearray(100_000)  # a live chunk above them: glibc cannot shrink the heap's top by itself
    del blocks
    before = me.memory_info().rss
    assert release_free_memory() is True
    after = me.memory_info().rss
    assert before - after > 150_000_000, (before, after)
    del pin
