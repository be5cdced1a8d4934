"""Giving the memory a finished step freed back to the operating system.

The local runner runs every step in threads of one process, so a step's peak memory starts
from whatever the earlier steps left the process holding. Much of that is memory they freed
but the allocators kept for reuse: glibc's malloc keeps freed heap pages of every arena
until `malloc_trim` (malloc(3), "Arena"; malloc_trim(3)), and pyarrow's allocator (jemalloc
or mimalloc in its wheels) keeps freed pages until `MemoryPool.release_unused()`. The local
runner calls `release_freed_memory()` after every step; Airflow runs each task in a
process of its own and needs nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys


def release_freed_memory() -> None:
    """Returns freed pages of Arrow's default memory pool (when pyarrow is loaded) and of
    glibc's malloc arenas to the OS. Memory in use is untouched; safe while other threads
    allocate (both allocators lock). A no-op where glibc is absent."""
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None:
        pyarrow.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _libc():
    """glibc, when this process has it (malloc_trim is glibc's); else None."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None
