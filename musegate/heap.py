"""glibc heap settings for a long-running server: what keeps the idle RSS close to live data.

Both helpers are no-ops away from glibc (musl, macOS, Windows). They import nothing but
ctypes, so `musegate serve` can apply the threshold before it imports numpy, FAISS or
aiohttp (cli.main, for `serve`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

#: glibc's mallopt parameter number for the mmap threshold (malloc.h)
_M_MMAP_THRESHOLD = -3
#: Blocks from this size up get their own mapping, returned to the system when freed.
MMAP_THRESHOLD = 128 * 1024

_large_blocks_mapped = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc, looked up once (find_library runs ldconfig)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc's own symbol: musl's mallopt is a stub
    except (OSError, AttributeError):
        return None
    return libc


def map_large_blocks() -> bool:
    """Fix glibc's mmap threshold at 128 KiB, so every block from that size up is its own
    mapping, unmapped when freed (glibc only; False, a no-op, elsewhere). Idempotent.

    glibc starts at 128 KiB but raises the threshold each time a mapped block is freed (up
    to 32 MiB), and the trim threshold with it: after a few large temporaries (the imports
    make some, the library load's 5,000-row chunk buffers are 4 MB) the later ones, and the
    catalogue's mid-sized columns, come from the heaps, where long-lived blocks pin the
    freed space around them. Fixed as early as possible (before the imports) this was
    ~20 MiB of the idle RSS at 100k tracks (bench/memory.py); fixed only before the load,
    nothing measurable. Requests' large temporaries then cost an mmap each: microseconds
    against their milliseconds of work. A threshold the environment sets
    (``MALLOC_MMAP_THRESHOLD_`` or ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...``) is
    left as it is (False).
    """
    global _large_blocks_mapped
    if _large_blocks_mapped:
        return True
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get(
            "GLIBC_TUNABLES", ""):
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _large_blocks_mapped = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _large_blocks_mapped


def release_free_memory() -> None:
    """Hand the heap freed by a (re)load back to the system (glibc only; a no-op elsewhere).

    Loading parses every stored row in worker threads; glibc keeps what they freed in
    per-thread arenas, counted in the idle server's RSS, until ``malloc_trim`` returns it.
    """
    libc = _glibc()
    if libc is None:
        return
    trim = libc.malloc_trim
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
