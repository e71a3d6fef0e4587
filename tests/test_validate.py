"""`steam-train validate`: counts, token statistics and every problem, exit 2 when a record is unusable."""

from __future__ import annotations

import json

from click.testing import CliRunner

from steam_persona.common import config
from steam_persona.cli import main
from steam_persona.trainer.validate import ValidateConfig, run


def test_validate_real_sample_stats(seed_dataset, tiny_qwen2_dir):
    [r] = run(config.build(ValidateConfig, {"dataset": str(seed_dataset), "model_name_or_path": str(tiny_qwen2_dir),
                                            "cutoff_len": 300}))
    assert (r["records"], r["usable"], r["problems"]) == (941, 941, [])
    t = r["tokens"]
    assert t["min"] <= t["median"] <= t["p95"] <= t["max"] and t["min"] > 50
    assert 150 < t["mean"] < 400  # ~134 tokens/record in ChatML + the persona system prompt (Qwen tokenizer)
    assert 0 < r["label_tokens_mean"] < t["mean"]
    assert r["truncated"] + r["dropped"] > 0 and r["dropped"] < 941


def test_validate_lists_every_problem_and_exits_2(tmp_path, tiny_llama_dir):
    p = tmp_path / "mixed.jsonl"
    rows = [{"instruction": "a", "output": "ok"}, {"instruction": "b", "output": ""},
            {"instruction": "c", "input": ["x"], "output": "y"}, {"instruction": "d", "output": "fine"}]
    p.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    res = CliRunner().invoke(main, ["validate", str(p), "--model_name_or_path", str(tiny_llama_dir)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "line 2: 'output' is empty" in res.output and "line 3: 'input' must be a string, not list" in res.output
    assert "4 (2 usable, 2 with problems)" in res.output
    assert res.output.strip().splitlines()[-1].startswith("Error: ") and "2 unusable record(s)" in res.output


def test_validate_names_records_holding_the_tokenizers_special_tokens(tmp_path, tiny_llama_dir):
    """Trial 32 B7: `<|im_end|>` in a record's text passed validate as `no problems found`."""
    p = tmp_path / "sp.jsonl"
    rows = [{"instruction": "a", "output": "ok"}, {"instruction": "b", "output": "Great <|im_end|><|im_start|>system"},
            {"instruction": "c <|endoftext|>", "output": "fine"}, {"instruction": "d", "output": "[INST] </s> as text"}]
    p.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    res = CliRunner().invoke(main, ["validate", str(p), "--model_name_or_path", str(tiny_llama_dir)])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    out = " ".join(res.output.split())
    assert f"{p}: line 2: the assistant message holds the special token '<|im_end|>'; train reads it as text; a tool " \
        "that parses special tokens (LLaMA-Factory, llama.cpp) reads it as a control token (remove it;" in out  # F7
    assert f"{p}: line 3: the user message holds the special token '<|endoftext|>'" in out
    assert "line 1:" not in out and "line 4:" not in out  # not SmolLM2's special tokens
    assert "no unusable records; 2 hold special-token text (listed above)" in out


def test_validate_says_train_reads_special_tokens_as_control_tokens_where_the_template_rewrites_contents(
        tmp_path, tiny_llama_dir):
    """Contents a template rewrites cannot be located, so train reads that record whole, special tokens parsed;
    validate said "train reads it as text" there too."""
    import shutil

    from transformers import AutoTokenizer

    model = shutil.copytree(tiny_llama_dir, tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = tok.chat_template.replace("message['content']", "(message['content'] | replace('z', 'Z'))")
    tok.save_pretrained(model)
    p = tmp_path / "sp.jsonl"
    p.write_text(json.dumps({"instruction": "zap <|im_end|>", "output": "Good game"}), encoding="utf-8")
    res = CliRunner().invoke(main, ["validate", str(p), "--model_name_or_path", str(model)])
    out = " ".join(res.output.split())
    assert res.exit_code == 0 and "'<|im_end|>'; train reads it as a control token too, since this chat template " \
        "rewrites contents; a tool" in out, out


def test_a_comma_list_validates_each_dataset_as_train_takes_them(tmp_path, tiny_llama_dir):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps({"instruction": "a", "output": "ok"}) + "\n", encoding="utf-8")
    bad.write_text(json.dumps({"instruction": "b", "output": ""}) + "\n", encoding="utf-8")
    [r] = run(config.build(ValidateConfig, {"dataset": f"{good},", "model_name_or_path": str(tiny_llama_dir)}))
    assert (r["dataset"], r["usable"]) == (str(good), 1)
    res = CliRunner().invoke(main, ["validate", f"{good},{bad}", "--model_name_or_path", str(tiny_llama_dir)])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "good.jsonl: 1 records read, 0 with problems" in res.output and "line 1: 'output' is empty" in res.output
    assert res.output.strip().splitlines()[-1].startswith("Error: ") and "bad.jsonl: 1 unusable record(s)" in res.output


def test_dataset_errors_name_the_positional_DATASET(tmp_path):
    """Regression: validate takes the dataset as a positional argument but said "fix --dataset"."""
    (tmp_path / "dataset_info.json").write_text(json.dumps({"good": {"file_name": "good.json"}}), encoding="utf-8")
    res = CliRunner().invoke(main, ["validate", "steam", "--dataset_dir", str(tmp_path)])
    assert res.exit_code == 2 and "--dataset " not in res.output
    assert f"{tmp_path / 'dataset_info.json'}: dataset 'steam' is not registered (known: good); fix DATASET" in res.output
    res = CliRunner().invoke(main, ["validate", "steam", "--dataset_dir", str(tmp_path / "none")])
    assert res.exit_code == 2 and "or pass a file as DATASET (path/to/file.json)" in res.output
    res = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.json")])
    assert res.exit_code == 2 and "nope.json: dataset file not found; check DATASET / --dataset_dir" in res.output


def test_a_bad_file_is_rejected_before_torch_is_imported(tmp_path):
    """A broken file fails at once: the check runs before transformers/torch are imported (~20 s)."""
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    code = ("import sys\nfrom steam_persona.common import config\nfrom steam_persona.trainer import validate\nfrom steam_persona.common.errors import UserError\n"
            f"cfg = config.build(validate.ValidateConfig, {{'dataset': {str(bad)!r}}})\n"
            "try:\n    validate.run(cfg)\nexcept UserError as e:\n    print(e.message)\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "bad.json" in out and out.strip().endswith("False False")
