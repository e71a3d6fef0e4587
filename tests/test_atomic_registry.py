"""Atomic writes leave nothing half-written; the registry round-trips LLaMA-Factory entries."""

import json
import os

import pytest

from conftest import DEAD_PID

from steam_persona.common import atomic
from steam_persona.common import registry
from steam_persona.common.errors import UserError


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_remove_stale_takes_the_temps_of_dead_writers_only(tmp_path):
    dead_file, dead_dir = tmp_path / f".a.gguf.tmp-{DEAD_PID}", tmp_path / f".checkpoint-2.tmp-{DEAD_PID}"
    live = tmp_path / f".a.gguf.tmp-{os.getpid()}"
    others = [tmp_path / ".a.gguf.tmp-x", tmp_path / f"a.tmp-{DEAD_PID}", tmp_path / "a.gguf"]
    for p in [dead_file, live, *others]:
        p.write_text("x", encoding="utf-8")
    dead_dir.mkdir()
    (dead_dir / "adapter.bin").write_text("x", encoding="utf-8")
    assert atomic.remove_stale(tmp_path / "b.gguf") == []
    assert atomic.remove_stale(tmp_path / "a.gguf") == [dead_file]
    dead_file.write_text("x", encoding="utf-8")
    assert atomic.remove_stale_in(tmp_path) == [dead_file, dead_dir]
    assert sorted(tmp_path.iterdir()) == sorted([live, *others])
    assert atomic.remove_stale_in(tmp_path / "missing") == []


def test_registry_round_trip(tmp_path):
    reg = tmp_path / "dataset_info.json"
    reg.write_text(json.dumps({"other": {"file_name": "o.json"}}), encoding="utf-8")
    (tmp_path / "steam.json").write_text("[]", encoding="utf-8")
    registry.register(reg, "steam_reviews", str(tmp_path / "steam.json"))
    path, entry = registry.lookup(tmp_path, "steam_reviews")
    assert path == tmp_path / "steam.json"
    assert entry["columns"]["prompt"] == "instruction" and entry["formatting"] == "alpaca"
    assert registry.load(reg)["other"] == {"file_name": "o.json"}
    with pytest.raises(UserError, match="not registered .*known: other, steam_reviews"):
        registry.lookup(tmp_path, "nope")


def test_replaced_together_renames_all_or_none(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("old a", encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic.replaced_together():
            atomic.write_text(a, "new a")
            assert a.read_text(encoding="utf-8") == "old a"
            atomic.write_text(b, "new b")
            raise RuntimeError("crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"] and a.read_text(encoding="utf-8") == "old a"
    with atomic.replaced_together():
        atomic.write_text(a, "new a")
        atomic.write_text(b, "new b")
    assert [p.read_text(encoding="utf-8") for p in (a, b)] == ["new a", "new b"]
    with pytest.raises(ValueError, match="written twice"), atomic.replaced_together():
        atomic.write_text(a, "1")
        atomic.write_text(a, "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]
    (tmp_path / "c").mkdir()
    with pytest.raises(IsADirectoryError), atomic.replaced_together():  # a rename that fails: no temp file left
        atomic.write_text(tmp_path / "c", "x")
        atomic.write_text(b, "newer b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json", "c"]


def test_registry_update_adds_and_drops_in_one_write(tmp_path):
    reg = tmp_path / "dataset_info.json"
    reg.write_text(json.dumps({"s_val": {"file_name": "v.json"}, "other": {"file_name": "v2.json"}}), encoding="utf-8")
    assert registry.update(reg, {"s": str(tmp_path / "t.json")}, {"s_val": tmp_path / "v.json", "other": "x.json"}) == ["s_val"]
    assert sorted(registry.load(reg)) == ["other", "s"] and registry.load(reg)["s"]["file_name"] == "t.json"
