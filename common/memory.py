"""The memory a process can still take (serve sizes its context by it; prepare says when a file read whole
needs more)."""

from __future__ import annotations

import os
from pathlib import Path

#: where the kernel's figures are read (tests point these at a fake tree)
MEMINFO = Path("/proc/meminfo")
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: per cgroup version: the controller's folder under :data:`CGROUP_ROOT`, the limit's file, the usage's file, and the
#: ``memory.stat`` key of the page cache the kernel drops before it kills (usage less it is what the limit judges)
_CGROUP_FILES = (("", "memory.max", "memory.current", "inactive_file"),
                 ("memory", "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"))


def available_memory_bytes() -> int:
    """Memory available to new allocations: ``MemAvailable`` from ``/proc/meminfo`` (Linux), else physical pages ×
    page size; less where the process's cgroup (a Docker ``--memory`` or Kubernetes limit) leaves less
    (:func:`cgroup_free_bytes`)."""
    free = _meminfo_available()
    limited = cgroup_free_bytes()
    return free if limited is None else min(free, limited)


def _meminfo_available() -> int:
    try:
        with open(MEMINFO) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cgroup_free_bytes() -> int | None:
    """What the memory limits of the process's cgroup and the groups above it leave, the least of them: each limit
    less its usage (page cache the kernel can drop not counted); cgroup v2 ``memory.max`` − ``memory.current`` and
    v1 ``memory.limit_in_bytes`` − ``memory.usage_in_bytes``. ``None`` where no group sets a limit (v2's ``max``;
    v1's no-limit value is a number beyond any machine's memory, so :func:`available_memory_bytes` ignores it)."""
    paths = _own_groups()
    free = [f for sub, limit, usage, cache in _CGROUP_FILES
            for group in _up_to(CGROUP_ROOT / sub, paths.get(sub, ""))
            if (f := _group_free(group, limit, usage, cache)) is not None]
    return min(free, default=None)


def _own_groups() -> dict[str, str]:
    """The process's group path per controller folder of :data:`_CGROUP_FILES`, from ``/proc/self/cgroup``: ``""``
    for v2's single hierarchy (``0::/path``), ``"memory"`` for v1's memory controller (``4:memory:/path``)."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        if line.count(":") < 2:
            continue
        _, controllers, path = line.split(":", 2)
        if not controllers:
            out[""] = path
        elif "memory" in controllers.split(","):
            out["memory"] = path
    return out


def _up_to(base: Path, path: str) -> list[Path]:
    """``base`` / ``path`` and the folders above it up to ``base``, those that exist (a container shows its own
    group as the root, while ``/proc/self/cgroup`` may name the host's path)."""
    group = base / path.strip("/")
    return [d for d in (group, *group.parents) if d.is_relative_to(base) and d.is_dir()]


def _group_free(group: Path, limit: str, usage: str, cache: str) -> int | None:
    try:
        cap = (group / limit).read_text().strip()
        used = int((group / usage).read_text())
    except (OSError, ValueError):
        return None
    if not cap.isdigit():
        return None  # "max"
    return int(cap) - max(used - _stat(group, cache), 0)


def _stat(group: Path, key: str) -> int:
    """``key``'s value in the group's ``memory.stat`` (0 when absent)."""
    try:
        for line in (group / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0
