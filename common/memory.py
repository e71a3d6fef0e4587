"""The memory a process can still take (serve sizes its context by it; prepare says when a file read whole
needs more)."""

from __future__ import annotations

import os


def available_memory_bytes() -> int:
    """Memory available to new allocations: ``MemAvailable`` from ``/proc/meminfo`` (Linux), else
    physical pages × page size."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
