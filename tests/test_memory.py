"""``common/memory``: the memory left to the process, container (cgroup) limits included, read from a fake tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from steam_persona.common import memory

GIB = 2**30


def _tree(tmp_path: Path, monkeypatch, own: str, groups: dict[str, dict[str, str]], available_kib: int = 22 * 2**20):
    """A fake ``/proc/meminfo`` (``available_kib`` available), ``/proc/self/cgroup`` (``own``) and ``/sys/fs/cgroup``
    whose folders (relative paths) hold the files given."""
    (tmp_path / "meminfo").write_text(f"MemTotal: {64 * 2**20} kB\nMemAvailable: {available_kib} kB\n")
    (tmp_path / "cgroup").write_text(own)
    root = tmp_path / "fs"
    for folder, files in groups.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (root / folder / name).write_text(text)
    root.mkdir(exist_ok=True)
    monkeypatch.setattr(memory, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(memory, "PROC_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(memory, "CGROUP_ROOT", root)


def test_a_cgroup_v2_limit_below_memavailable_is_what_is_available(tmp_path, monkeypatch):
    """Trial 35 F10: ``docker run --memory 1g`` on a host with 22 GiB available: 1 GiB less the group's usage, its
    droppable page cache not counted."""
    _tree(tmp_path, monkeypatch, "0::/\n", {".": {"memory.max": f"{GIB}\n", "memory.current": f"{300 * 2**20}\n",
                                                  "memory.stat": f"anon 1\ninactive_file {100 * 2**20}\n"}})
    assert memory.available_memory_bytes() == GIB - 200 * 2**20


def test_no_cgroup_limit_leaves_memavailable(tmp_path, monkeypatch):
    _tree(tmp_path, monkeypatch, "0::/user.slice\n", {"user.slice": {"memory.max": "max\n", "memory.current": "5\n"}})
    assert memory.available_memory_bytes() == 22 * GIB
    _tree(tmp_path, monkeypatch, "4:memory:/\n", {"memory": {"memory.limit_in_bytes": "9223372036854771712\n",
                                                             "memory.usage_in_bytes": f"{GIB}\n"}})
    assert memory.available_memory_bytes() == 22 * GIB
    _tree(tmp_path, monkeypatch, "", {})
    assert memory.available_memory_bytes() == 22 * GIB


@pytest.mark.parametrize("own", ["5:cpu,memory:/kubepods/pod1/c1\n", "5:cpu,memory:/host/path/not/shown\n"])
def test_a_cgroup_v1_limit_of_the_group_or_one_above_it_counts(tmp_path, monkeypatch, own):
    """v1 (``memory.limit_in_bytes``): the pod's limit above the container's own group is the smaller one; where
    ``/proc/self/cgroup`` names a path the container cannot see, its root is its group."""
    groups = {"memory": {"memory.limit_in_bytes": f"{4 * GIB}\n", "memory.usage_in_bytes": f"{GIB}\n"},
              "memory/kubepods/pod1": {"memory.limit_in_bytes": f"{2 * GIB}\n", "memory.usage_in_bytes": f"{GIB}\n",
                                       "memory.stat": f"cache 9\ntotal_inactive_file {GIB // 2}\n"},
              "memory/kubepods/pod1/c1": {"memory.limit_in_bytes": "9223372036854771712\n",
                                          "memory.usage_in_bytes": f"{GIB}\n"}}
    _tree(tmp_path, monkeypatch, own, groups)
    assert memory.available_memory_bytes() == (GIB + GIB // 2 if "kubepods" in own else 3 * GIB)
