"""The settings groups (common/arguments.py): each flag declared once, one type, one check, one meaning."""

import dataclasses
import typing

import pytest
from click.testing import CliRunner

from steam_persona.chat import ChatConfig
from steam_persona.cli import main
from steam_persona.demo import DemoConfig
from steam_persona.export.cli import ExportConfig
from steam_persona.serve.cli import ServeConfig
from steam_persona.common import arguments
from steam_persona.common import config
from steam_persona.reviews.collect import CollectConfig
from steam_persona.common.errors import UserError
from steam_persona.trainer.evaluate import EvalConfig
from steam_persona.reviews.prepare import PrepareConfig
from steam_persona.trainer.train import TrainConfig
from steam_persona.trainer.validate import ValidateConfig

STAGES = (TrainConfig, ValidateConfig, EvalConfig, ChatConfig, ExportConfig, ServeConfig, DemoConfig, PrepareConfig)
GROUPS = (arguments.ModelArguments, arguments.QuantizationArguments, arguments.DataArguments,
          arguments.LoraArguments, arguments.TrainingArguments, arguments.GeneratingArguments,
          arguments.LlamaCppArguments)


def _base(tp):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if typing.get_origin(tp) in (typing.Union, __import__("types").UnionType) else tp


def test_every_group_field_is_declared_once_and_taken_with_its_help_and_type():
    declared = {f.name: (g, f) for g in GROUPS for f in dataclasses.fields(g)}
    for stage in STAGES:
        hints = typing.get_type_hints(stage)
        for f in dataclasses.fields(stage):
            if f.name not in declared or f.name in ("dataset",):
                continue
            group, gf = declared[f.name]
            # a stage field named like a group field is the group's: its help (plus at most a stage's note
            # on what it does with the value), check, and base type
            assert f.metadata.get("group") == group.__name__, (stage.__name__, f.name)
            assert f.metadata["help"].startswith(gf.metadata["help"]) and f.metadata["check"] is gf.metadata["check"]
            assert _base(hints[f.name]) == _base(typing.get_type_hints(group)[f.name]), (stage.__name__, f.name)


#: flags that several stages spell alike but that are different settings (so each stage declares its own)
SAME_NAME_OTHER_SETTING = {
    "dataset": "train: a list to train on; eval: one validation set; validate: the positional file",
    "output_dir": "train: the run dir; eval: its report dir; demo: the folder of every artefact",
    "language": "collect: a Steam API code; prepare: languages to keep; demo: the persona's language",
    "quantization": "export: the GGUF types to write; demo: the one type to export and serve",
    "overwrite": "collect: fetch again; export: replace a finished export",
    "appid": "collect: the apps to fetch; prepare: the app of records that have none",
    "out": "collect: the JSON Lines output; prepare: the alpaca output",
    "preprocessing_num_workers": "prepare: processes for the per-record rules; train: LLaMA-Factory's key, no effect",
}


def test_a_flag_in_several_stages_is_a_group_field_or_a_known_other_setting():
    seen: dict[str, list[str]] = {}
    for stage in (*STAGES, CollectConfig):
        for f in dataclasses.fields(stage):
            if "group" not in f.metadata:
                seen.setdefault(f.name, []).append(stage.__name__)
    twice = {name for name, stages in seen.items() if len(stages) > 1}
    assert twice <= set(SAME_NAME_OTHER_SETTING), twice - set(SAME_NAME_OTHER_SETTING)


def test_a_stage_overrides_only_the_default():
    demo = {f.name: f for f in dataclasses.fields(DemoConfig)}
    assert demo["cutoff_len"].default == 384 and demo["quantization_bit"].default == 4
    assert {f.name: f for f in dataclasses.fields(TrainConfig)}["cutoff_len"].default == arguments.CUTOFF_LEN == 2048
    assert {f.name: f for f in dataclasses.fields(EvalConfig)}["cutoff_len"].default is None


@pytest.mark.parametrize("given,expected", [(4, 4), (8, 8), (0, None), (None, None)])
def test_quantization_bit_is_int_or_none_everywhere(given, expected):
    for stage in (TrainConfig, ChatConfig, DemoConfig):
        assert config.build(stage, {"quantization_bit": given}).quantization_bit == expected


@pytest.mark.parametrize("stage", ["train", "chat", "demo"])
def test_quantization_bit_3_is_exit_2_naming_the_flag(stage, tmp_path):
    r = CliRunner().invoke(main, [stage, "--quantization_bit", "3", "--output_dir" if stage == "demo" else "--seed",
                                  str(tmp_path) if stage == "demo" else "1"])
    assert r.exit_code == 2 and "--quantization_bit 3: use 4 (QLoRA) or 8 bits" in r.output


def test_demo_keeps_0_for_plain_lora_on_the_command_line():
    seen = {}
    cmd = config.command(DemoConfig, lambda c: seen.setdefault("cfg", c), name="demo", help="h")
    assert CliRunner().invoke(cmd, ["--quantization_bit", "0"]).exit_code == 0
    assert seen["cfg"].quantization_bit is None  # 0 given = no quantization, not "not given" (the default 4)


def test_checks_run_on_yaml_values_with_the_source_named():
    with pytest.raises(UserError, match=r"^x.yaml: --cutoff_len 0: must be at least 1$"):
        config.build(TrainConfig, {"cutoff_len": 0}, source="x.yaml")
    with pytest.raises(UserError, match=r"--n_threads -1: must be 0 \(automatic\) or more"):
        config.build(ServeConfig, {"n_threads": -1})


@pytest.mark.parametrize("value", ["0", "-1"])
def test_n_batch_below_1_is_exit_2_in_one_line_before_anything_loads(value, tmp_path):
    r = CliRunner().invoke(main, ["serve", str(tmp_path / "missing.gguf"), "--n_batch", value])
    assert r.exit_code == 2 and r.output.strip() == f"Error: command line: --n_batch {value}: must be at least 1"
    with pytest.raises(UserError, match=rf"^x.yaml: --n_batch {value}: must be at least 1$"):
        config.build(ServeConfig, {"n_batch": int(value)}, source="x.yaml")


def test_unset_meaning_is_shown_only_where_a_stage_can_leave_it_unset():
    runner = CliRunner()
    eval_help = " ".join(runner.invoke(main, ["eval", "--help"]).output.split())
    train_help = " ".join(runner.invoke(main, ["train", "--help"]).output.split())
    assert "Unset: the run's, else 2048." in eval_help and "Unset: the run's, else 2048." not in train_help


def test_n_threads_0_means_half_the_cores_to_generate_and_all_to_quantize(monkeypatch):
    monkeypatch.setattr(arguments, "usable_cores", lambda: 8)
    assert arguments.n_threads(0, generate=True) == 4 and arguments.n_threads(0, generate=False) == 8
    assert arguments.n_threads(3, generate=True) == 3 == arguments.n_threads(3, generate=False)
    monkeypatch.setattr(arguments, "usable_cores", lambda: 1)
    assert arguments.n_threads(0, generate=True) == 1


def test_context_size_is_the_training_context_else_4096():
    assert arguments.context_size(8192) == 8192 and arguments.context_size(2048) == 2048
    assert arguments.context_size(0) == arguments.FALLBACK_N_CTX == 4096


def test_a_stage_notes_its_use_of_a_shared_flag_and_what_unset_means_there():
    from steam_persona.serve.cli import ServeConfig
    from steam_persona.trainer.train import TrainConfig

    train = {f.name: f for f in dataclasses.fields(TrainConfig)}["system"].metadata
    serve = {f.name: f for f in dataclasses.fields(ServeConfig)}["system"].metadata
    base = {f.name: f for f in dataclasses.fields(arguments.DataArguments)}["system"].metadata
    assert train["help"] == base["help"] + " Added to records that have none; recorded in run_config.yaml."
    assert serve["help"] == base["help"] and "GGUF chat template" in serve["unset"] and "GGUF" not in base["unset"]
    for meta in (train, serve, base):  # no stage's wording in another's help
        assert "serve" not in meta["help"] and "chat:" not in meta["help"]


@pytest.mark.parametrize("argv, says", [
    (["serve", "--n_batch", "abc"], "Error: Invalid value for '--n_batch': 'abc' is not a valid integer. "
                                    "(flags: 'steam-train serve --help')"),
    (["plugin", "package", "--bogus"], "Error: No such option '--bogus'. "  # no far guess ('--out', 0.6 alike)
                                       "(flags: 'steam-train plugin package --help')"),
    (["plugin", "package", "--outt", "x"], "Error: No such option '--outt'. Did you mean '--out'? "
                                           "(flags: 'steam-train plugin package --help')"),
    (["nosuch"], "Error: No such command 'nosuch'. (flags: 'steam-train --help')"),
    (["--bogus"], "Error: No such option '--bogus'. (flags: 'steam-train --help')"),
])
def test_a_usage_error_is_exit_2_in_one_line_naming_where_the_flags_are(argv, says):
    r = CliRunner().invoke(main, argv, prog_name="steam-train")
    assert r.exit_code == 2 and r.output.strip() == says


def test_a_group_run_without_a_command_shows_its_help():
    r = CliRunner().invoke(main, ["plugin"], prog_name="steam-train")
    assert r.output.startswith("Usage: steam-train plugin [OPTIONS] COMMAND") and "Error" not in r.output


@pytest.mark.parametrize("word, on", [("fa2", True), ("auto", False), ("disabled", False), ("sdpa", False),
                                      ("true", True), ("False", False), ("on", True), ("off", False)])
def test_flash_attn_takes_llamafactory_and_llamacpp_words_in_every_stage(word, on, tmp_path):
    """LLaMA-Factory's `flash_attn: fa2` (auto, disabled, sdpa, fa2) was "unknown key" for train and "No such
    option" on its command line, because the name is llama.cpp's bool for chat/serve: one declaration now takes
    both, normalised to on/off."""
    for stage in (TrainConfig, ChatConfig, ServeConfig):
        assert config.build(stage, {"flash_attn": word}).flash_attn is on
    assert config.build(TrainConfig, {"flash_attn": on}).flash_attn is on  # YAML's true/false
    seen = []
    cmd = config.command(ChatConfig, seen.append, name="chat", config_option="option", help="h")
    assert CliRunner().invoke(cmd, ["--flash_attn", word]).exit_code == 0 and seen[-1].flash_attn is on
    assert CliRunner().invoke(cmd, ["--flash_attn"]).exit_code == 0 and seen[-1].flash_attn is True  # alone: on
    assert CliRunner().invoke(cmd, []).exit_code == 0 and seen[-1].flash_attn is False


def test_flash_attn_other_words_are_one_line():
    r = CliRunner().invoke(main, ["train", "--flash_attn", "maybe"])
    assert r.exit_code == 2 and r.output.strip() == (
        "Error: command line: --flash_attn maybe: use true or false (also on/off, and LLaMA-Factory's fa2 = on; "
        "disabled, sdpa or auto = off)")


@pytest.mark.parametrize("stage", ["chat", "eval"])
@pytest.mark.parametrize("flag, value, says", [
    ("--temperature", "-1", "--temperature -1.0: must be at least 0 and at most 2 (0 = greedy)"),
    ("--temperature", "nan", "--temperature nan: must be at least 0"),
    ("--top_p", "2", "--top_p 2.0: must be above 0 and at most 1"),
    ("--top_p", "0", "--top_p 0.0: must be above 0 and at most 1"),
    ("--top_k", "-1", "--top_k -1: must be at least 0 and at most 2147483647 (0 = off)"),
    ("--max_new_tokens", "0", "--max_new_tokens 0: must be at least 1"),
    ("--repetition_penalty", "0", "--repetition_penalty 0.0: must be above 0 and at most 10 (1 = off)"),
])
def test_bad_sampling_values_are_refused_in_one_line(stage, flag, value, says):
    """Trial 30 B6: eval --temperature -1 was transformers' traceback; chat and eval took --top_p 2 silently.
    The ranges are serve's (one declaration)."""
    r = CliRunner().invoke(main, [stage, flag, value])
    assert r.exit_code == 2 and says in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_serve_checks_a_request_against_the_same_sampling_ranges():
    from steam_persona.serve import validate

    assert all(validate._RANGES[k] == v for k, v in arguments.SAMPLING_RANGES.items())


def test_the_template_names_of_the_shared_check_are_the_trainers_templates():
    from steam_persona.trainer.templates import TEMPLATES

    assert arguments.TEMPLATE_NAMES == tuple(TEMPLATES)
