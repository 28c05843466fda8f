"""Functions run inside analysis worker processes by tests.

Kept apart from the test modules on purpose: a worker unpickling a test function
imports its whole module, and the test modules import faiss and the gateway,
which would load libraries the real worker never has.
"""

from __future__ import annotations


def numeric_thread_counts() -> list[tuple[int, str]]:
    """(threads, library path) of every BLAS/OpenMP library loaded in this process."""
    from threadpoolctl import threadpool_info

    return [(int(i["num_threads"]), i["filepath"]) for i in threadpool_info()]
