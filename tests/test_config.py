"""The config glue: flags, YAML and precedence (common/config.py)."""

from dataclasses import dataclass

import pytest
from click.testing import CliRunner

from steam_persona.common import config
from steam_persona.common.config import arg, command
from steam_persona.common.errors import UserError


@dataclass
class _Cfg:
    model_name_or_path: str = arg("smollm2", "model")
    do_train: bool = arg(False, "flag")
    fp16: bool = arg(False, "flag")
    quantization: list[str] = arg(["q4_k_m"], "list")
    appid: list[int] = arg([], "ints")
    val_size: float = arg(0.0, "float")
    quantization_bit: int | None = arg(None, "optional int")
    report: str = arg("prepare_report", "text")
    columns: str = arg("", "pairs", pairs=True)
    output_format: str = arg("text", "one of", choices=("text", "jsonl"))


def _run(argv):
    seen = {}
    cmd = command(_Cfg, lambda c: seen.setdefault("cfg", c), name="x", help="h")
    result = CliRunner().invoke(cmd, argv)
    return result, seen.get("cfg")


def test_llamafactory_style_flags():
    r, cfg = _run(["--do_train", "--fp16", "True", "--quantization", "q4_k_m,q8_0",
                   "--appid", "1", "--appid", "2,3", "--quantization_bit", "4"])
    assert r.exit_code == 0, r.output
    assert cfg.do_train is True and cfg.fp16 is True
    assert cfg.quantization == ["q4_k_m", "q8_0"]
    assert cfg.appid == [1, 2, 3]
    assert cfg.quantization_bit == 4


def test_a_choice_is_taken_in_any_case_and_given_as_declared(tmp_path):
    """Trial 36: `--output_format JSONL` was refused (exit 2) where `jsonl` worked."""
    r, cfg = _run(["--output_format", "JSONL"])
    assert r.exit_code == 0, r.output
    assert cfg.output_format == "jsonl"
    p = tmp_path / "c.yaml"
    p.write_text("output_format: Text\n", encoding="utf-8")
    r, cfg = _run([str(p)])
    assert r.exit_code == 0, r.output
    assert cfg.output_format == "text"
    r, _ = _run(["--output_format", "json"])
    assert r.exit_code == 2 and "'json' is not one of 'text', 'jsonl'" in r.output


def test_yaml_then_flags_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("do_train: true\nval_size: 0.1\nappid: [5]\n", encoding="utf-8")
    r, cfg = _run([str(p), "--val_size", "0.2"])
    assert r.exit_code == 0, r.output
    assert cfg.do_train is True and cfg.val_size == 0.2 and cfg.appid == [5]


def test_one_value_for_a_list_key_in_yaml_is_a_list_of_one(tmp_path):
    """Trial 25c: `appid: 570` in a collect YAML (an int, not a list) ended in a TypeError traceback, exit 1."""
    p = tmp_path / "c.yaml"
    p.write_text("appid: 5\n", encoding="utf-8")
    r, cfg = _run([str(p)])
    assert r.exit_code == 0, r.output
    assert cfg.appid == [5]
    p.write_text("appid: {a: 1}\n", encoding="utf-8")
    r, cfg = _run([str(p)])
    assert r.exit_code == 2 and "'appid' must be a list or one value, not a mapping" in r.output
    assert "Traceback" not in r.output


def test_unknown_yaml_key_is_exit_2_with_suggestion(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("do_trian: true\n", encoding="utf-8")
    r, cfg = _run([str(p)])
    assert r.exit_code == 2 and cfg is None
    assert "unknown key 'do_trian'" in r.output and "did you mean 'do_train'" in r.output


def test_yaml_whole_float_is_an_int_for_every_stage(tmp_path):
    from steam_persona.trainer.train import TrainConfig
    p = tmp_path / "c.yaml"
    p.write_text("quantization_bit: 4.0\nval_size: 1\n", encoding="utf-8")
    r, cfg = _run([str(p)])
    assert r.exit_code == 0, r.output
    assert cfg.quantization_bit == 4 and type(cfg.quantization_bit) is int and cfg.val_size == 1.0
    cfg = config.build(TrainConfig, {"max_steps": 2.0, "lora_rank": 8, "learning_rate": 1}, source="t.yaml")
    assert (cfg.max_steps, cfg.lora_rank, cfg.learning_rate) == (2, 8, 1.0)
    for key, value in [("max_steps", 2.5), ("lora_rank", 8.9), ("learning_rate", True)]:
        with pytest.raises(UserError, match=f"^t.yaml: '{key}': .* is not a valid"):
            config.build(TrainConfig, {key: value}, source="t.yaml")


@pytest.mark.parametrize("line, message", [
    ("quantization_bit: 2.5", "'quantization_bit': '2.5' is not a valid integer."),
    ("val_size: true", "'val_size': 'true' is not a valid float."),
    ("quantization_bit: false", "'quantization_bit': 'false' is not a valid integer."),
    ("appid: [1.5]", "'appid': '1.5' is not a valid integer."),
    ("fp16: 2", "'fp16': '2' is not a valid boolean; give true or false."),
    ("fp16: 1.0", "'fp16': '1.0' is not a valid boolean; give true or false."),
    ("fp16: 2024-01-01", "'fp16': '2024-01-01' is not a valid boolean; give true or false."),
    ("fp16: {a: 1}", "'fp16' must be one boolean value, not a mapping"),
    ("fp16: [true]", "'fp16' must be one boolean value, not a list"),
    ("val_size: [0.1]", "'val_size' must be one float value, not a list"),
    ("val_size: {a: 1}", "'val_size' must be one float value, not a mapping"),
    ("quantization_bit: [4]", "'quantization_bit' must be one integer value, not a list"),
    ("quantization_bit: 2024-01-01", "'quantization_bit': '2024-01-01' is not a valid integer."),
    ("appid: [[1]]", "each item of 'appid' must be one integer value, not a list"),
    ("report: {a: 1}", "'report' must be one text value, not a mapping"),
    ("report: [a, b]", "'report' must be one text value, not a list"),
    ("model_name_or_path: [smollm2]", "'model_name_or_path' must be one text value, not a list"),
    ("quantization: [[q8_0]]", "each item of 'quantization' must be one text value, not a list"),
    ("columns: [review=text]", "'columns' must be one text value, not a list"),
])
def test_yaml_value_of_the_wrong_shape_is_exit_2_not_a_traceback(tmp_path, line, message):
    """Trial 32 B6: `max_steps: 2.5` trained 2 steps, `learning_rate: true` at lr 1.0 (click's convert casts).
    Trial 33 F1: `bf16: 1` was an AttributeError in click.BOOL, `val_size: [0.1]` a TypeError, exit 1. F2: a list
    or mapping for a text key was used as its repr (`report: {a: 1}` wrote the report to files named `{'a': 1}`)."""
    p = tmp_path / "c.yaml"
    p.write_text(line + "\n", encoding="utf-8")
    r, cfg = _run([str(p)])
    assert r.exit_code == 2 and cfg is None, r.output
    assert r.output.strip() == f"Error: {p}: {message}"


def test_yaml_bool_takes_0_and_1_as_llamafactory_does(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("fp16: 1\ndo_train: 0\n", encoding="utf-8")
    r, cfg = _run([str(p)])
    assert r.exit_code == 0, r.output
    assert cfg.fp16 is True and cfg.do_train is False


@pytest.mark.parametrize("stage, values, message", [
    ("trainer.train:TrainConfig", {"bf16": 2}, "'bf16': '2' is not a valid boolean"),
    ("reviews.prepare:PrepareConfig", {"dedup": {"a": 1}}, "'dedup' must be one boolean value, not a mapping"),
    ("reviews.prepare:PrepareConfig", {"val_size": [0.1]}, "'val_size' must be one float value, not a list"),
    ("reviews.prepare:PrepareConfig", {"report": {"a": 1}}, "'report' must be one text value, not a mapping"),
    ("reviews.prepare:PrepareConfig", {"encoding": ["gbk"]}, "'encoding' must be one text value, not a list"),
    ("serve.cli:ServeConfig", {"model": "m.gguf", "n_ctx": [2048]}, "'n_ctx' must be one integer value, not a list"),
])
def test_every_stage_refuses_a_yaml_value_of_the_wrong_shape(stage, values, message):
    import importlib

    module, cls = stage.split(":")
    cls = getattr(importlib.import_module(f"steam_persona.{module}"), cls)
    with pytest.raises(UserError, match=f"^x.yaml: {message}"):
        config.build(cls, values, source="x.yaml")


def test_yaml_scalars_for_text_keys_and_mappings_for_pairs_keys_still_work(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("report: 2024\ncolumns: {review: 评论, appid: id}\nquantization: [q8_0, 4]\n", encoding="utf-8")
    r, cfg = _run([str(p)])
    assert r.exit_code == 0, r.output
    assert cfg.report == "2024" and cfg.columns == "review=评论,appid=id" and cfg.quantization == ["q8_0", "4"]


def test_bad_value_is_exit_2():
    r, cfg = _run(["--appid", "x"])
    assert r.exit_code == 2 and "'appid'" in r.output


def test_the_readme_names_each_config_stages_positional_argument_as_help_shows_it():
    """The README said collect, chat, demo and plugin package "already take positional inputs"; they take none."""
    import re

    from steam_persona.cli import main as cli
    from conftest import REPO

    text = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    said = re.search(r"`--config FILE` for the stages whose positional argument is not a config file: (.*?) take "
                     r"none\.", text).group(1)
    with_input = dict(re.findall(r"`([a-z ]+)` \(([A-Z_]+)\)", said))
    without = re.findall(r"`([a-z ]+)`", said.split("take their input there,")[1])
    assert with_input and without
    for stage in [*with_input, *without]:
        usage = CliRunner().invoke(cli, [*stage.split(), "--help"]).output
        assert "--config" in usage, stage
        first = usage.splitlines()[0]
        assert first.endswith(f"[OPTIONS] [{with_input[stage]}]" + ("..." if stage == "prepare" else "")
                              if stage in with_input else "[OPTIONS]"), (stage, first)


def test_a_missing_examples_file_names_its_packaged_copy(tmp_path, monkeypatch):
    """The README's `examples/…` paths, run from another folder: the error says where the shipped copy is."""
    from steam_persona.common.config import load_yaml
    from steam_persona.resources import shipped

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="packaged copy is at") as e:
        load_yaml("examples/train_qlora.yaml")
    assert str(shipped("examples/train_qlora.yaml")) in e.value.message
    with pytest.raises(UserError) as e:
        load_yaml("mine.yaml")
    assert e.value.message == "mine.yaml: config file not found; check the path"


def test_prepare_of_a_missing_examples_file_names_its_packaged_copy_too(tmp_path, monkeypatch):
    """Trial 26: `prepare examples/persona_reviews.json` outside a checkout said only "input not found"."""
    from steam_persona.resources import shipped
    from steam_persona.reviews.sources import expand_inputs

    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="input not found; check the path; the packaged copy is at") as e:
        expand_inputs(["examples/persona_reviews.json"])
    assert str(shipped("examples/persona_reviews.json")) in e.value.message


@pytest.mark.parametrize("unknown, suggested", [
    ("save_strategy", None), ("ddp_timeout", None),  # trial 26: "did you mean eval_strategy / read_timeout?"
    ("learning_rat", "learning_rate"), ("num_epochs", "num_train_epochs"), ("learningrate", "learning_rate"),
    ("per_device_batch_size", "per_device_train_batch_size"), ("deepspeed", None),
])
def test_did_you_mean_names_a_typo_of_a_setting_never_another_setting(unknown, suggested):
    known = ["eval_strategy", "learning_rate", "num_train_epochs", "per_device_train_batch_size", "read_timeout",
             "seed"]
    assert config.close_name(unknown, known) == suggested


def test_help_shows_defaults_as_typed():
    """List and string defaults read as a user types them; an empty list or unset value shows no default."""
    from steam_persona.reviews.prepare import command as prepare
    from steam_persona.trainer.train import command as train

    def flag(cmd, name: str) -> str:
        text = CliRunner().invoke(cmd, ["--help"], terminal_width=1000).output
        return next(line for line in text.splitlines() if line.strip().startswith(f"--{name} "))

    assert flag(prepare, "language").endswith("[default: schinese]")
    assert "default" not in flag(prepare, "app_name")
    assert flag(train, "lora_target").endswith("[default: all]")
    assert flag(train, "stage").endswith("[default: sft]")
    assert "default" not in flag(train, "dataset")

