"""The one prompt format (common/persona.py) reproduces the seed data's records exactly."""

import json

import pytest

from steam_persona.common import persona


def test_seed_format_round_trip(seed_dataset):
    records = json.loads(seed_dataset.read_text(encoding="utf-8"))
    rec = next(r for r in records if r["input"])
    name = rec["instruction"].split("《", 1)[1].rsplit("》", 1)[0]
    tags = rec["input"].split("：", 1)[1].split(", ")
    assert persona.build_review_prompt(name, tags) == (rec["instruction"], rec["input"])


def test_clean_name_and_options():
    assert persona.clean_game_name("《暗黑破坏神® IV》") == "暗黑破坏神 IV"
    ins, inp = persona.build_review_prompt("Hades™", "Roguelike, Action", verdict="not recommend",
                                           language="en", length="short")
    assert ins == 'As a veteran gamer, review the game "Hades".'
    assert inp.splitlines() == ["Genre tags: Roguelike, Action", "Verdict: Not recommended",
                                "Length: short, two or three sentences."]
    assert persona.user_message(ins, inp) == ins + "\n" + inp
    assert (persona.user_message(ins), persona.user_message("", inp)) == (ins, inp)  # as LLaMA-Factory joins them
    with pytest.raises(ValueError):
        persona.build_review_prompt("", None)


def test_resolve_precedence_explicit_then_export_then_run_then_default():
    from steam_persona.common.run_record import RunRecord

    run, untold = RunRecord(system="RUN"), RunRecord()
    assert persona.resolve("", run, "GGUF") == ""  # an explicit '' means no system prompt
    assert persona.resolve("X", run, "GGUF") == "X"
    assert persona.resolve(None, run, "GGUF") == "GGUF"
    assert persona.resolve(None, run) == "RUN"
    assert persona.resolve(None, RunRecord(system="")) == ""  # the run trained without one
    assert persona.resolve(None, untold) == persona.resolve(None) == persona.DEFAULT_SYSTEM
    assert persona.resolve(None, untold, default=None) is None  # chat/serve: the model's own template default


def test_exported_persona_from_an_export_report():
    assert persona.exported({"persona": "老G"}) == "老G"
    assert persona.exported({"persona": {"system": "S"}}) == "S" == persona.exported({"persona": {"text": "S"}})
    for report in (None, {}, {"persona": None}, {"persona": "  "}, {"persona": 3}):
        assert persona.exported(report) is None  # then resolve goes on to the run's, then the default
