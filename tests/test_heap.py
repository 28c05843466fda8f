"""glibc's mmap threshold is fixed before the library load (musegate.heap.map_large_blocks)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

PROBE = """
import sys
import numpy as np
from musegate.heap import map_large_blocks

if sys.argv[1] == "fixed":
    assert map_large_blocks()
big = np.ones(1 << 20)  # 8 MiB, mapped; freeing it raises glibc's threshold unless it is fixed
del big
blocks = [np.ones(40_000) for _ in range(64)]  # 64 x 320 KB, kept
heap = []
for line in open("/proc/self/maps"):
    span, *rest = line.split()
    if rest[-1] == "[heap]":
        heap.append([int(x, 16) for x in span.split("-")])
print(sum(any(lo <= b.ctypes.data < hi for lo, hi in heap) for b in blocks))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_large_blocks_get_their_own_mapping_once_fixed() -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")}

    def in_heap(mode: str) -> int:
        """How many of 64 live 320 KB blocks the heap holds (the rest are mappings)."""
        return int(subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                                  text=True, check=True, env=env).stdout)

    # glibc's own behaviour, which is what the fix is for: the freed 8 MiB block moved the
    # threshold above 320 KB, so every later block grows the heap
    assert in_heap("default") == 64
    # fixed: only what free heap space already there can hold (glibc serves a block from
    # free heap before it maps one), the rest are mappings of their own
    assert in_heap("fixed") < 16


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")
def test_a_threshold_from_the_environment_is_kept() -> None:
    code = "from musegate.heap import map_large_blocks as m; print(m(), m())"
    for extra in ({}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                  {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"}):
        env = {k: v for k, v in os.environ.items()
               if k not in ("MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")} | extra
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, env=env).stdout.split()
        assert out == (["True", "True"] if not extra else ["False", "False"])
