"""Atomic writes leave nothing half-written; the registry round-trips LLaMA-Factory entries."""

import json

import pytest

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
