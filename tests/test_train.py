"""`steam-train train`: seed flags, packing correctness, overfitting, run dir contract, resume, NaN stop,
a real 4-bit QLoRA run on the real sample, and load_for_inference."""

from __future__ import annotations

import errno
import json
import os
import shlex
import stat
import time
from pathlib import Path

import pytest
import torch
import yaml

from steam_persona.common import config
from steam_persona.common.errors import UserError
from steam_persona.trainer.train import TrainConfig, run

SEED_CMD = """llamafactory-cli train --stage sft --do_train --model_name_or_path Qwen/Qwen2.5-7B-Instruct \
  --dataset steam_reviews --dataset_dir data --template qwen --finetuning_type lora --lora_target all \
  --output_dir saves/qwen2.5-7b-steam-lora --overwrite_output_dir \
  --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --learning_rate 2e-4 \
  --num_train_epochs 3.0 --logging_steps 10 --save_steps 100 --warmup_ratio 0.1 \
  --fp16 True --quantization_bit 4"""


def test_seed_command_flags_parse():
    argv = shlex.split(SEED_CMD)[2:]  # drop "llamafactory-cli train"
    cmd = config.command(TrainConfig, lambda cfg: cfg, name="train", help="")
    cfg = cmd.main(argv, standalone_mode=False)
    assert (cfg.stage, cfg.do_train, cfg.finetuning_type, cfg.template, cfg.lora_target) == ("sft", True, "lora", "qwen", ["all"])
    assert cfg.dataset == ["steam_reviews"] and cfg.dataset_dir == "data" and cfg.overwrite_output_dir
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.learning_rate) == (4, 4, 2e-4)
    assert (cfg.num_train_epochs, cfg.logging_steps, cfg.save_steps, cfg.warmup_ratio) == (3.0, 10, 100, 0.1)
    assert cfg.fp16 is True and cfg.bf16 is False and cfg.quantization_bit == 4
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.cutoff_len) == (8, None, 0.0, 2048)


def test_yaml_example_is_the_seed_recipe():
    ex = yaml.safe_load((Path(__file__).parents[1] / "examples" / "train_qlora.yaml").read_text(encoding="utf-8"))
    cfg = config.build(TrainConfig, ex, source="examples/train_qlora.yaml")
    assert cfg.quantization_bit == 4 and cfg.lora_target == ["all"] and cfg.gradient_accumulation_steps == 4


def _samples(tok, n=3):
    from steam_persona.trainer.encode import encode_conversation
    from steam_persona.trainer.templates import ChatTemplate

    ct = ChatTemplate("auto", tok)
    convs = [[{"role": "user", "content": f"game {i} " * (i + 1)}, {"role": "assistant", "content": f"review {i}" * (3 - i)}]
             for i in range(n)]
    return [dict(zip(("input_ids", "labels"), encode_conversation(ct, c)[:2])) for c in convs]


def test_packing_positions_isolation_and_equal_loss(tiny_qwen2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steam_persona.trainer.packing import loss_sum, pack, pad

    tok = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
    feats = _samples(tok)
    lens = [len(f["input_ids"]) for f in feats]
    packed = pack(feats)
    assert packed["input_ids"].shape == (1, sum(lens))
    assert packed["position_ids"][0].tolist() == [p for n in lens for p in range(n)]
    with torch.no_grad():
        logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        at = 0
        for f in feats:  # each sample alone gives the same logits: no attention across samples
            alone = model(input_ids=torch.tensor([f["input_ids"]])).logits[0]
            torch.testing.assert_close(logits[at:at + len(f["input_ids"])], alone, atol=1e-4, rtol=1e-4)
            at += len(f["input_ids"])
        ls_packed, n_packed = loss_sum(model, packed)
        ls_padded, n_padded = loss_sum(model, pad(feats, tok.pad_token_id))
    assert n_packed == n_padded == sum(sum(1 for t in f["labels"][1:] if t != -100) for f in feats)
    assert abs(float(ls_packed) - float(ls_padded)) < 1e-3 * n_packed


def _cfg(model_dir, data_path, out, **kw):
    base = {"model_name_or_path": str(model_dir), "dataset": [str(data_path)], "output_dir": str(out),
            "per_device_train_batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 5e-3,
            "max_steps": 4, "logging_steps": 1, "save_steps": 2, "lora_rank": 8, "cutoff_len": 256,
            "disable_gradient_checkpointing": False}
    return config.build(TrainConfig, {**base, **kw})


def test_overfit_8_records_and_run_dir_contract(tiny_llama_dir, eight, tmp_path):
    out = tmp_path / "run"
    r = run(_cfg(tiny_llama_dir, eight, out, max_steps=12, learning_rate=5e-2, lora_rank=16, save_steps=6,
                 val_size=2, eval_steps=6, per_device_train_batch_size=8))
    # a random tiny model starts at ln(vocab) = 10.80 and, with its frozen random head, can only move a little
    assert r["loss_last"] < r["loss_first"] - 0.2, r
    assert r["global_step"] == 12 and r["num_samples"] == 6 and r["num_eval_samples"] == 2 and r["eval_loss"] > 0
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "trainer_log.jsonl",
                 "training_loss.png", "all_results.json", "run_config.yaml", "checkpoint-6/adapter_model.safetensors"):
        assert (out / name).is_file(), name
    assert (out / "training_loss.png").read_bytes()[:4] == b"\x89PNG"
    umask = os.umask(0o022)
    os.umask(umask)
    for name in ("adapter_model.safetensors", "checkpoint-6/adapter_model.safetensors", "all_results.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name  # as open() makes it, not mkstemp's 0600
    rc = yaml.safe_load((out / "run_config.yaml").read_text(encoding="utf-8"))
    assert rc["model_name_or_path"] == str(tiny_llama_dir) and rc["system"].startswith("你是“老G”")
    assert (rc["template"], rc["cutoff_len"], rc["quantization_bit"], rc["lora_rank"], rc["lora_alpha"]) == ("auto", 256, None, 16, 32)
    assert config.build(TrainConfig, rc).output_dir == str(out)  # run_config.yaml is itself a valid config
    rows = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    train_rows = [x for x in rows if "loss" in x]
    assert [x["current_steps"] for x in train_rows] == list(range(1, 13))
    assert {"loss", "lr", "epoch", "grad_norm", "throughput", "elapsed_time", "remaining_time"} <= set(train_rows[0])
    evals = [(x["current_steps"], x["eval_loss"]) for x in rows if "eval_loss" in x]
    assert [s for s, _ in evals] == [6, 12] and evals[1][1] < evals[0][1]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    assert json.loads((out / "all_results.json").read_text())["loss_last"] == r["loss_last"]


def test_resume_after_crash_matches_uninterrupted(tiny_llama_dir, eight, tmp_path):
    full = run(_cfg(tiny_llama_dir, eight, tmp_path / "full"))

    def crash(step, row):
        if step == 3:
            raise RuntimeError("simulated crash")

    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(_cfg(tiny_llama_dir, eight, out), callbacks=(crash,))
    assert (out / "checkpoint-2").is_dir() and not (out / "adapter_model.safetensors").exists()
    resumed = run(_cfg(tiny_llama_dir, eight, out))
    assert abs(resumed["loss_last"] - full["loss_last"]) < 1e-3, (resumed, full)
    assert resumed["loss_first"] == full["loss_first"]
    steps = [json.loads(x)["current_steps"] for x in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_non_finite_loss_stops_at_once_and_saves_nothing(tiny_llama_dir, eight, tmp_path):
    out = tmp_path / "nan"
    with pytest.raises(UserError, match=r"step 2: the (loss|gradient norm) became (nan|inf).*Lower --learning_rate$"):
        run(_cfg(tiny_llama_dir, eight, out, learning_rate=1e30, max_grad_norm=0.0, save_steps=1))  # float32: no bf16 advice
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    assert not (out / "adapter_model.safetensors").exists()


def test_real_data_qlora_4bit_smollm2_and_inference(seed_dataset, tmp_path):
    """The real embedded SmolLM2-135M in 4-bit (bitsandbytes NF4 on CPU) on the real sample, seed-style flags."""
    out = tmp_path / "qlora"
    r = run(config.build(TrainConfig, {
        "model_name_or_path": "smollm2", "dataset": [str(seed_dataset)], "output_dir": str(out), "template": "default",
        "quantization_bit": 4, "fp16": True, "max_samples": 8, "max_steps": 2, "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1, "learning_rate": 2e-4, "warmup_ratio": 0.1, "cutoff_len": 384,
        "save_steps": 100, "logging_steps": 1}))
    assert r["global_step"] == 2 and 0.5 < r["loss_first"] < 6 and r["loss_last"] < 6
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert sorted(cfg["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (8, 16, 0.0)

    from steam_persona.trainer.model import load_for_inference

    model, tok = load_for_inference(None, str(out))
    assert tok.eos_token == "<|im_end|>" and "Human: " in tok.chat_template
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("Human: Hi<|im_end|>\nAssistant:") and "System: 你是“老G”" in prompt
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert gen.shape[1] > ids["input_ids"].shape[1]


def test_rerunning_a_finished_run_says_so_and_how_to_go_on(tiny_llama_dir, eight, tmp_path):
    """Regression: the same `steam-train train` command after a finished run said "holds no resumable
    checkpoint" (no checkpoint kept) or silently retrained from the last checkpoint (one kept)."""
    from click.testing import CliRunner

    from steam_persona.cli import main

    def argv(out, **kw):
        flags = {"model_name_or_path": tiny_llama_dir, "dataset": eight, "output_dir": out, "max_steps": 4,
                 "save_steps": 2, "logging_steps": 1, "per_device_train_batch_size": 4, "cutoff_len": 256, **kw}
        return ["train"] + [x for k, v in flags.items() for x in (f"--{k}", str(v))]

    kept = tmp_path / "kept" / "checkpoint-4"  # the last step is saved too (HF Trainer), so training longer is exact
    for out, only_model, hint in [(tmp_path / "kept", False, f"--resume_from_checkpoint {kept}: it goes on from step 4"),
                                  (tmp_path / "none", True, "start over with a larger --max_steps (no resumable")]:
        first = CliRunner().invoke(main, argv(out, save_only_model=only_model))
        assert first.exit_code == 0, first.output
        again = CliRunner().invoke(main, argv(out, save_only_model=only_model))
        msg = again.output.strip()
        assert again.exit_code == 2 and "Traceback" not in msg and len(msg.splitlines()) == 1, msg
        assert f"{out}: this run already finished at step 4 (final adapter {out / 'adapter_model.safetensors'})" in msg
        assert "pass --overwrite_output_dir to start over" in msg and hint in msg
    # saving the final adapter leaves no `<output_dir>.new/` or other temp folder beside the run dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept", "none"]
    assert not [p.name for p in (tmp_path / "none").iterdir() if p.name.startswith(".")]
    # the advice for training longer works: steps 5..6 from checkpoint-4, one log row per step
    longer = CliRunner().invoke(main, argv(tmp_path / "kept", max_steps=6, resume_from_checkpoint=kept))
    assert longer.exit_code == 0, longer.output
    assert json.loads((tmp_path / "kept" / "all_results.json").read_text())["resumed_from_step"] == 4
    assert json.loads((tmp_path / "kept" / "all_results.json").read_text())["global_step"] == 6
    steps = [json.loads(x)["current_steps"] for x in (tmp_path / "kept" / "trainer_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    again = CliRunner().invoke(main, argv(tmp_path / "none", overwrite_output_dir=True))
    assert again.exit_code == 0, again.output


def test_plain_progress_lines_when_not_a_terminal(tiny_llama_dir, eight, tmp_path, monkeypatch):
    """Regression: with stderr not a terminal (CI log, `| tee`, a file) rich's live bar printed nothing for
    the whole run; now each logging step prints one plain line with trainer_log.jsonl's figures."""
    import io as _io
    import re

    from steam_persona.common import console as console_mod

    buf = _io.StringIO()
    # Patch rich's private _file (None = follow sys.stderr): patching the `file` property would
    # pin the console to this test's stderr afterwards, and later CliRunner tests would see nothing.
    monkeypatch.setattr(console_mod.console, "_file", buf)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")  # rich: not a terminal, whatever FORCE_COLOR says
    assert not console_mod.console.is_terminal
    run(_cfg(tiny_llama_dir, eight, tmp_path / "run", max_steps=5, logging_steps=2, save_steps=100))
    lines = [m.groups() for m in re.finditer(
        r"^train step (\d+)/(\d+)  loss (\S+)  lr (\S+)  tokens/s (\d+)  elapsed (\S+)  ETA (\S+)$", buf.getvalue(), re.M)]
    rows = [json.loads(x) for x in (tmp_path / "run" / "trainer_log.jsonl").read_text().splitlines()]
    # step 1 is logged at once (speed early in a CI log, and the log starts where the summary does);
    # then one line and row per logged step, with the same figures
    assert [(int(s), int(t)) for s, t, *_ in lines] == [(1, 5), (2, 5), (4, 5), (5, 5)]
    assert [(r["current_steps"], 5) for r in rows] == [(1, 5), (2, 5), (4, 5), (5, 5)]
    for (_, _, loss, lr, tps, elapsed, eta), row in zip(lines, rows):
        assert (float(loss), lr, elapsed, eta) == (row["loss"], f"{row['lr']:.2e}", row["elapsed_time"], row["remaining_time"])
        assert int(tps) == round(row["throughput"]) and eta.count(":") == 2
    assert ("dataset: 8 read: 0 dropped (reply longer than --cutoff_len 256), 8 kept, none truncated (prompt cut to "
            "fit)") in buf.getvalue()
    # on a terminal the rich bar shows progress and no plain line is printed
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    buf.truncate(0)
    console_mod.plain_progress("train step", 1, 5, {"loss": "1.0"})
    assert buf.getvalue() == ""


def test_eval_dataset_and_load_best_model_at_end(tiny_llama_dir, eight, tmp_path):
    """--eval_dataset scores a separate file each --eval_steps; --load_best_model_at_end saves the adapter of
    the lowest eval loss (kept in best/ during the run), not the last one."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from steam_persona.trainer import model as model_lib
    from steam_persona.trainer.evaluate import held_out_loss
    from steam_persona.trainer.templates import ChatTemplate

    other = tmp_path / "other.json"  # another distribution: overfitting `eight` at a high lr drives its loss up
    other.write_text(json.dumps([{"instruction": f"Write about topic {i}.", "output": f"Topic {i}: " + "lorem ipsum " * 6}
                                 for i in range(3)]), encoding="utf-8")
    out = tmp_path / "run"
    r = run(_cfg(tiny_llama_dir, eight, out, max_steps=10, learning_rate=2e-1, eval_dataset=[str(other)],
                 eval_steps=1, save_steps=4, load_best_model_at_end=True, per_device_train_batch_size=8))
    evals = [(x["current_steps"], x["eval_loss"]) for x in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines())
             if "eval_loss" in x]
    assert [s for s, _ in evals] == list(range(1, 11)) and r["num_eval_samples"] == 3 and r["num_samples"] == 8
    best_step, best = min(evals, key=lambda e: (e[1], e[0]))
    assert (r["best_global_step"], r["best_eval_loss"], r["eval_loss"]) == (best_step, best, evals[-1][1])
    assert best_step < 10 and r["eval_loss"] > best, evals  # the case under test: the last adapter is not the best
    assert r["kept"] == f"best eval loss (step {best_step})"
    saved, kept = load_file(str(out / "adapter_model.safetensors")), load_file(str(out / "best" / "adapter_model.safetensors"))
    assert saved.keys() == kept.keys() and all(torch.equal(saved[k], kept[k]) for k in saved)
    # the saved adapter scores the best eval loss again, through eval's own (padded) loss code
    base = model_lib.load_base(str(tiny_llama_dir), quantization_bit=None, dtype=torch.float32, device="cpu")
    tok = model_lib.load_tokenizer(str(tiny_llama_dir))
    from steam_persona.trainer import data

    convs = data.load_conversations([str(other)], ".", system=yaml.safe_load((out / "run_config.yaml").read_text())["system"])
    loss = held_out_loss(PeftModel.from_pretrained(base, out).eval(), ChatTemplate("auto", tok), convs, 256, 8)["loss"]
    assert abs(loss - best) < 2e-3, (loss, best)


@pytest.mark.parametrize("flags, fix", [
    ({"eval_dataset": "EVAL", "val_size": 2}, "--eval_dataset and --val_size 2 are both set"),
    ({"load_best_model_at_end": True}, "--load_best_model_at_end needs eval samples: add --eval_dataset FILE"),
    ({"learning_rate": "nan"}, "--learning_rate nan: must be a positive number"),  # was torch's traceback at step 1
    ({"learning_rate": "inf"}, "--learning_rate inf: must be a positive number"),
    # each was a traceback after loading, or trained as if the value were sane
    ({"lora_dropout": 1.5}, "--lora_dropout 1.5: must be in [0, 1)"),
    ({"lora_dropout": -0.1}, "--lora_dropout -0.1: must be in [0, 1)"),
    ({"num_train_epochs": "nan"}, "--num_train_epochs nan: must be a finite number above 0 (or pass --max_steps)"),
    ({"max_steps": -5, "num_train_epochs": 0}, "--num_train_epochs 0.0: must be a finite number above 0"),
    ({"weight_decay": "inf"}, "--weight_decay inf: must be a finite number, 0 or more"),
    ({"max_grad_norm": "nan"}, "--max_grad_norm nan: must be a finite number, 0 or more"),
    ({"lora_alpha": -3}, "--lora_alpha -3: must be at least 1"),
    ({"val_size": -0.1}, "--val_size -0.1: must be a finite number, 0 or more"),
    ({"max_samples": 0}, "--max_samples 0: must be at least 1"),
    ({"eval_steps": 0}, "--eval_steps 0: must be at least 1 (unset: every --save_steps)"),  # trial 38 (12): taken as unset
])
def test_eval_flag_misuse_is_exit_2_and_writes_nothing(tiny_llama_dir, eight, tmp_path, flags, fix):
    from click.testing import CliRunner

    from steam_persona.cli import main

    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", str(tiny_llama_dir), "--dataset", str(eight), "--output_dir", str(out)]
    argv += [x for k, v in flags.items() for x in (f"--{k}", str(eight) if v == "EVAL" else str(v))]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 2 and fix in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


@pytest.mark.parametrize("extra, shown", [
    ({}, "nan"),  # a NaN eval loss never becomes a best: the summary still prints (was a KeyError)
    ({"best_eval_loss": 2.5, "best_global_step": 3}, "2.6 (best 2.5 at step 3)"),
    ({"best_eval_loss": 2.5, "best_global_step": 3, "kept": "best eval loss (step 3)"}, "2.6 (best 2.5 at step 3, kept)"),
])
def test_summary_eval_loss_row(tmp_path, monkeypatch, extra, shown):
    import types

    from steam_persona.trainer import train as train_mod

    rows = {}
    monkeypatch.setattr(train_mod, "summary_table", lambda title, r: rows.update(r))
    r = {"num_samples": 8, "num_eval_samples": 2, "truncated": 0, "dropped": 0, "global_step": 4, "loss_first": 3.0,
         "loss_last": 2.0, "eval_loss": float("nan") if not extra else 2.6, "train_samples_per_second": 1.0,
         "train_tokens_per_second": 100.0, "train_runtime": 5.0, "output_dir": str(tmp_path), **extra}
    train_mod._summary(_cfg("m", "d.json", tmp_path), r, types.SimpleNamespace(eot_token="<|im_end|>"), "float32 on cpu")
    assert rows["eval loss (training weights)"] == shown


def test_loss_agrees_across_log_summary_and_results(tiny_llama_dir, eight, tmp_path, monkeypatch):
    """Regression: the step line said `loss 2.2474` (mean of the logging window) where the summary said
    `2.3327` (the last step alone), and the summary started at step 1, which the log omitted."""
    from steam_persona.trainer import train as train_mod

    shown = {}
    monkeypatch.setattr(train_mod, "summary_table", lambda title, r: shown.update(r))
    seen = []
    r = run(_cfg(tiny_llama_dir, eight, tmp_path / "run", max_steps=7, logging_steps=3, save_steps=100,
                 learning_rate=5e-2), callbacks=(lambda step, row: seen.append(row["loss"]),))
    rows = [json.loads(x) for x in (tmp_path / "run" / "trainer_log.jsonl").read_text().splitlines()]
    assert [x["current_steps"] for x in rows] == [1, 3, 6, 7]
    # each row is the mean of the steps since the previous row; step 1 alone starts the log
    assert [x["loss"] for x in rows] == [round(v, 4) for v in (seen[0], sum(seen[1:3]) / 2, sum(seen[3:6]) / 3, seen[6])]
    assert (r["loss_first"], r["loss_last"], r["loss_last_steps"]) == (rows[0]["loss"], rows[-1]["loss"], 1)
    assert shown["loss"] == f"{rows[0]['loss']} (step 1) → {rows[-1]['loss']} (step 7)"
    res = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert (res["loss_first"], res["loss_last"]) == (rows[0]["loss"], rows[-1]["loss"])
    # on CPU nothing is compiled: no warm-up steps, every step counts for the speed
    assert res["compile_seconds"] is None and res["steady_tokens_per_second"] > 0
    assert train_mod._loss_shown({**r, "global_step": 100, "loss_last_steps": 10}).endswith("(mean of steps 91-100)")


def test_ctrl_c_says_how_to_resume(tiny_llama_dir, eight, tmp_path, monkeypatch):
    import io as _io

    from steam_persona.common import console as console_mod
    from steam_persona.trainer import train as train_mod

    buf = _io.StringIO()
    monkeypatch.setattr(console_mod.console, "_file", buf)

    def ctrl_c(step, row):
        if step == 3:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_llama_dir, eight, out, save_steps=2), callbacks=(ctrl_c,))
    said = " ".join(buf.getvalue().split())
    assert f"interrupted after step 3 of 4: rerun the same command to resume from {out / 'checkpoint-2'} (step 2)" in said
    # no resumable checkpoint in a dir that holds more than a run's leftovers: how to start over instead
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        with train_mod._resume_hint_on_interrupt(other, _cfg("m", "d.json", tmp_path, save_steps=100),
                                                 lambda: "after step 1 of 4", True, train_mod.Interrupts()):
            raise KeyboardInterrupt
    assert ("interrupted after step 1 of 4: no resumable checkpoint yet (one is saved every --save_steps 100 steps); "
            "rerun with --overwrite_output_dir to start over") in " ".join(buf.getvalue().split())


def test_ctrl_c_in_step_1_says_so_and_the_same_command_starts_over(tiny_llama_dir, eight, tmp_path, monkeypatch):
    """Trial 27 N1: a Ctrl-C during step 1 said "after step 0 of 3" and left run_config.yaml + an empty
    trainer_log.jsonl that made the same command demand --overwrite_output_dir."""
    import io as _io

    from steam_persona.common import console as console_mod
    from steam_persona.trainer import train as train_mod

    buf = _io.StringIO()
    monkeypatch.setattr(console_mod.console, "_file", buf)
    train_step = train_mod.TrainRecipe.train_step

    def ctrl_c_in_step_1(self, step):
        if step == 0:
            raise KeyboardInterrupt
        return train_step(self, step)

    monkeypatch.setattr(train_mod.TrainRecipe, "train_step", ctrl_c_in_step_1)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_llama_dir, eight, out, save_steps=100))
    said = " ".join(buf.getvalue().split())
    assert ("interrupted in step 1 of 4: no checkpoint saved yet (one is saved every --save_steps 100 steps); "
            "rerun the same command to start over") in said, said
    assert sorted(p.name for p in out.iterdir()) == ["run_config.yaml", "trainer_log.jsonl"]
    monkeypatch.setattr(train_mod.TrainRecipe, "train_step", train_step)
    r = run(_cfg(tiny_llama_dir, eight, out, save_steps=100, max_steps=1))
    assert r["global_step"] == 1 and (out / "adapter_model.safetensors").is_file()
    assert (f"{out}: starting over (it holds only run_config.yaml and trainer_log.jsonl of a run stopped before its "
            "first checkpoint)") in " ".join(buf.getvalue().split())
    # anything else in the dir keeps the refusal
    other = tmp_path / "other"
    other.mkdir()
    for name in ("run_config.yaml", "trainer_log.jsonl", "notes.txt"):
        (other / name).write_text("", encoding="utf-8")
    with pytest.raises(UserError, match="holds no resumable checkpoint; pass --overwrite_output_dir"):
        train_mod._resume_point(_cfg("m", "d.json", other), other)


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_a_run_as_ctrl_c_does(tiny_llama_dir, eight, tmp_path, monkeypatch, sig,
                                                    stop_signals_at_default):
    """A scheduler's SIGTERM (or a closed terminal's SIGHUP) killed train without a word (rc 143): it now says
    where the run stopped and how to resume, as Ctrl-C does, and the signal's own handler comes back after."""
    import io as _io
    import os
    import signal

    from steam_persona.common import console as console_mod

    buf = _io.StringIO()
    monkeypatch.setattr(console_mod.console, "_file", buf)
    signum = getattr(signal, sig)

    def stop(step, row):
        if step == 3:
            os.kill(os.getpid(), signum)

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_llama_dir, eight, out, save_steps=2), callbacks=(stop,))
    said = " ".join(buf.getvalue().split())
    assert f"interrupted after step 3 of 4: rerun the same command to resume from {out / 'checkpoint-2'} (step 2)" in said
    assert signal.getsignal(signum) is signal.SIG_DFL


def test_a_ctrl_c_that_python_drops_while_loading_still_stops_the_run(tiny_llama_dir, eight, tmp_path, monkeypatch):
    """Trial 26: a Ctrl-C in train's first seconds landed in a finalizer (the regex package's ``Group.__del__``);
    Python printed "Exception ignored … KeyboardInterrupt" and the run trained to the end, exit 0."""
    import io as _io
    import os
    import signal

    from steam_persona.common import console as console_mod
    from steam_persona.trainer import train as train_mod

    buf = _io.StringIO()
    monkeypatch.setattr(console_mod.console, "_file", buf)
    setup_model = train_mod.TrainRecipe.setup_model

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the Ctrl-C's KeyboardInterrupt is raised here, inside __del__, and dropped

    def with_a_dropped_ctrl_c(self):
        setup_model(self)
        Finalized()

    monkeypatch.setattr(train_mod.TrainRecipe, "setup_model", with_a_dropped_ctrl_c)
    out = tmp_path / "run"
    dropped = []  # what Python would print as "Exception ignored in …"
    monkeypatch.setattr("sys.unraisablehook", dropped.append)
    with pytest.raises(KeyboardInterrupt):
        run(_cfg(tiny_llama_dir, eight, out))
    assert "interrupted while loading, before the first step" in " ".join(buf.getvalue().split())
    assert dropped == []  # no traceback of the dropped Ctrl-C beside that line
    assert not (out / "adapter_model.safetensors").exists() and not list(out.glob("checkpoint-*"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_eta_counts_the_evaluations_to_come_and_plain_lines_frame_each_eval(tiny_llama_dir, eight, tmp_path,
                                                                            monkeypatch):
    """Regression (F11): the ETA left evaluations out (ETA 0:00:00 at the last step, then minutes of final eval)
    and a non-terminal run printed nothing while one ran. Each eval here takes 2 s more than its work."""
    import io as _io
    import re
    import time as _time

    from steam_persona.common import console as console_mod
    from steam_persona.trainer import train as train_mod

    buf = _io.StringIO()
    monkeypatch.setattr(console_mod.console, "_file", buf)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    evaluate = train_mod.TrainRecipe.evaluate

    def slow_eval(self):
        _time.sleep(2.0)
        return evaluate(self)

    monkeypatch.setattr(train_mod.TrainRecipe, "evaluate", slow_eval)
    run(_cfg(tiny_llama_dir, eight, tmp_path / "run", val_size=2, eval_steps=2, save_steps=100))
    out = buf.getvalue()
    eta = {int(s): e for s, e in re.findall(r"^train step (\d+)/4 .*  ETA (\S+)$", out, re.M)}

    def seconds(hms):
        h, m, sec = map(int, hms.split(":"))
        return 3600 * h + 60 * m + sec

    # step 3: one step and the step-4 eval to come; step 4: only the final eval (was 0:00:00)
    assert seconds(eta[3]) >= 2 and seconds(eta[4]) >= 2, eta
    assert re.search(r"^eval at step 2: 2 samples …$", out, re.M) and re.search(r"^eval at step 4: 2 samples …$", out, re.M)
    assert len(re.findall(r"^step [24]: eval loss \(training weights\) \d+\.\d{4} \(0:00:0[2-9]\)$", out, re.M)) == 2


def test_throughput_keeps_compile_steps_out_of_speed_and_eta():
    """Regression: step 1 of a compiled GPU run printed 50 tokens/s and an ETA of 27 minutes for a 65 s run."""
    from steam_persona.trainer.throughput import Throughput

    t = Throughput(total=10, warmup_steps=2, window=3)
    t.add(1000, 60.0, 61.0)  # compiling
    assert t.warming_up and t.tokens_per_s() is None and t.eta_s() is None
    t.add(1000, 5.0, 5.0)
    assert t.warming_up
    for train_s, wall_s in ((0.1, 0.2), (0.1, 0.2), (0.2, 0.3), (0.1, 0.1)):
        t.add(1000, train_s, wall_s)
    # window: the last 3 steady steps
    assert t.tokens_per_s() == pytest.approx(3000 / 0.4) and t.eta_s() == pytest.approx(4 * 0.6 / 3)
    assert t.steady_tokens_per_s() == pytest.approx(4000 / 0.5)
    # the warm-up took 66 s; at the steady 8,000 tokens/s its 2,000 tokens need 0.25 s
    assert t.warmup_overhead_s() == pytest.approx(66 - 0.25)
    assert Throughput(total=3, warmup_steps=2).warmup_overhead_s() == 0.0
    # an evaluation is kept out of the next step's wall time and counted for each one still to come
    t.add_eval(3.0)
    t.add(1000, 0.1, 3.2)
    assert t.eta_s() == pytest.approx(3 * 0.6 / 3) and t.eta_s(evals_left=2) == pytest.approx(0.6 + 6.0)


def test_eta_before_the_first_eval_estimates_the_evals_from_the_forward_speed():
    """Trial 27: before the first eval the ETA left the evals out (step 2: ETA 0:00:06, then two 25 s evals)."""
    from steam_persona.trainer.throughput import Throughput, forward_share

    t = Throughput(total=10, eval_tokens=3000)
    t.add(1000, 1.0, 2.0)  # 1,000 tokens/s training: a forward alone 3,000 tokens/s
    assert t.eval_estimate_s() == pytest.approx(1.0)
    checkpointed = Throughput(total=10, eval_tokens=3000, share=forward_share(True))  # the forward runs twice
    checkpointed.add(1000, 1.0, 2.0)
    assert checkpointed.eval_estimate_s() == pytest.approx(0.75)
    assert t.eta_s(evals_left=2) == pytest.approx(9 * 2.0 + 2 * 1.0)
    t.add_eval(25.0)  # measured: replaces the estimate
    t.add(1000, 1.0, 27.0)
    assert t.eta_s(evals_left=1) == pytest.approx(8 * 2.0 + 25.0)
    assert Throughput(total=4, eval_tokens=3000).eval_estimate_s() == 0.0  # no speed yet


def test_the_first_eval_of_a_compiled_run_does_not_set_the_eta_of_the_later_ones():
    """GPU, 2026-12-07 (bench/progress_probe.py, 7B): the first eval took 5 s compiling the no-grad graphs, the
    later ones under 0.5 s; its 5 s for each eval to come made the ETA 16 s where 6 s were left."""
    from steam_persona.trainer.throughput import Throughput

    t = Throughput(total=30, eval_tokens=3000, eval_warmup=1)
    t.add(10_000, 0.35, 0.37)
    estimate = t.eval_estimate_s()
    t.add_eval(5.0)  # compiling: says nothing of the next evals
    assert t.eval_estimate_s() == pytest.approx(estimate)
    t.add_eval(0.3)
    assert t.eval_estimate_s() == pytest.approx(0.3)


def test_a_train_time_eval_leaves_4bit_training_unchanged(tiny_llama_dir, eight, tmp_path):
    """Regression: on an AVX512-BF16 CPU, bitsandbytes repacked every 4-bit layer for inference at the first
    train-time eval, and training went on without the gradient through those layers (the demo's recipe:
    the same losses up to the eval at step 10, then 20-30 % higher)."""
    losses = []
    for name, extra in (("plain", {}), ("eval", {"eval_dataset": [str(eight)], "eval_steps": 1})):
        out = tmp_path / name
        run(_cfg(tiny_llama_dir, eight, out, quantization_bit=4, bf16=True, per_device_train_batch_size=2, **extra))
        rows = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text().splitlines()]
        losses.append([r["loss"] for r in rows if "loss" in r])
    assert len(losses[0]) == 4 and losses[1] == losses[0]


def test_one_train_per_output_dir_and_a_dead_runs_lock_is_taken_over(tiny_llama_dir, eight, tmp_path):
    from steam_persona.common import lock

    out = tmp_path / "run"
    with lock.folder_lock(out, "train", "--output_dir"):  # another train is writing out
        with pytest.raises(UserError, match=rf"run: in use by another train \(pid {os.getpid()}, started "
                                            r"\d\d:\d\d\); wait for it to end or pick another --output_dir"):
            run(_cfg(tiny_llama_dir, eight, out, max_steps=1))
    assert not out.exists()
    (tmp_path / "run.lock").write_text("999999")  # left by a killed run: nobody holds it
    assert run(_cfg(tiny_llama_dir, eight, out, max_steps=1))["global_step"] == 1
    assert not (tmp_path / "run.lock").exists()


def test_a_failed_data_check_leaves_no_new_parent_folders(tiny_llama_dir, eight, tmp_path):
    """A train that stops at its data check removes the parent folders of --output_dir that it made."""
    from click.testing import CliRunner

    from steam_persona.cli import main

    out = tmp_path / "new" / "deeper" / "run"
    r = CliRunner().invoke(main, ["train", "--model_name_or_path", str(tiny_llama_dir), "--dataset",
                                  str(tmp_path / "nosuch.json"), "--output_dir", str(out)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert list(tmp_path.iterdir()) == []


def _train_cli(tiny_llama_dir, eight, out):
    from click.testing import CliRunner

    from steam_persona.cli import main

    return CliRunner().invoke(main, ["train", "--model_name_or_path", str(tiny_llama_dir), "--dataset", str(eight),
                                     "--output_dir", str(out), "--max_steps", "1", "--cutoff_len", "128"])


def test_an_output_dir_that_cannot_be_written_is_one_line_exit_2(tiny_llama_dir, eight, tmp_path):
    (tmp_path / "f").write_text("a file")
    r = _train_cli(tiny_llama_dir, eight, tmp_path / "f" / "run")  # the lock beside it cannot be made
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "f/run: cannot write there (" in r.output and "is a file, not a folder); pick another --output_dir" in r.output
    r = _train_cli(tiny_llama_dir, eight, tmp_path / "f")  # the run dir itself, made after the model loads
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "f: cannot write (not a directory); move the file out of the way or pick another --output_dir; nothing " \
           "half-written was kept" in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   Exception("No space left on device (os error 28)"),  # as tokenizers' save says it
                                   OSError(errno.EROFS, "Read-only file system", "OUT/run_config.yaml")])
def test_a_full_or_read_only_disk_mid_run_is_one_line(tmp_path, error):
    from steam_persona.common import atomic

    if getattr(error, "filename", None):
        error.filename = str(tmp_path / "run" / "run_config.yaml")
    e = atomic.write_error(tmp_path / "run", error, "--output_dir")
    assert str(e.message).startswith(f"{tmp_path / 'run'}: cannot write (")
    assert ("free some disk" if "space" in str(error) else "make it writable") in e.message


def test_an_input_that_cannot_be_read_is_not_blamed_on_the_output_dir(tmp_path):
    from steam_persona.common import atomic

    assert atomic.write_error(tmp_path / "run", PermissionError(errno.EACCES, "denied", "/data/x.json"), "--output_dir") is None
    assert atomic.write_error(tmp_path / "run", ValueError("bad"), "--output_dir") is None


@pytest.mark.parametrize("has_bf16, dtype", [(False, torch.float32), (True, torch.bfloat16)])
def test_bf16_on_a_cpu_without_bf16_trains_in_float32_and_says_so(monkeypatch, capsys, has_bf16, dtype):
    from steam_persona.trainer import train

    monkeypatch.setattr(train, "_cpu_has_bf16", lambda: has_bf16)
    device, got, _ = train.resolve_precision(config.build(TrainConfig, {"bf16": True, "use_cpu": True}))
    assert (device, got) == ("cpu", dtype)  # emulated bf16 was ~30x slower (trial 23)
    assert ("training in float32 instead" in " ".join(capsys.readouterr().err.split())) is not has_bf16


def test_llama_factory_double_quantization_is_an_accepted_no_op():
    cfg = config.build(TrainConfig, {"double_quantization": True, "dataset": ["x"]})
    assert (cfg.double_quantization, cfg.deepspeed) == (True, None)
    with pytest.raises(UserError, match=r"x.yaml: --double_quantization False: 4-bit QLoRA here always "
                                        r"double-quantizes"):
        config.build(TrainConfig, {"double_quantization": False}, source="x.yaml")


@pytest.mark.parametrize("argv, says, not_says", [
    (["--deepspeed", "ds.json"], "--deepspeed ds.json: not supported; train on several GPUs with DDP instead: "
                                 "--nproc_per_node N, docs/multi-gpu.md", "Traceback"),
    (["--enable_thinking", "true"], "No such option '--enable_thinking'.", "Did you mean"),  # was "--enable_liger_kernel?"
    (["--lora_rnak", "8"], "No such option '--lora_rnak'. Did you mean '--lora_rank'?", "Traceback"),
])
def test_cli_deepspeed_and_did_you_mean_only_for_close_names(argv, says, not_says):
    from click.testing import CliRunner

    from steam_persona.cli import main

    r = CliRunner().invoke(main, ["train", *argv])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert says in r.output and not_says not in r.output, r.output


def test_resume_from_a_missing_checkpoint_says_it_does_not_exist(tiny_llama_dir, eight, tmp_path):
    with pytest.raises(UserError, match=r"nonexist/checkpoint-3: --resume_from_checkpoint: no such folder; pass an "
                                        r"existing checkpoint-N folder$"):
        run(_cfg(tiny_llama_dir, eight, tmp_path / "run", resume_from_checkpoint=str(tmp_path / "nonexist" / "checkpoint-3")))


@pytest.mark.parametrize("load, threads", [(1.5, 1), (0.4, 2)])
def test_train_on_a_busy_cpu_uses_one_thread_and_records_it(tiny_llama_dir, eight, tmp_path, monkeypatch, capsys,
                                                           load, threads):
    """Trial 24: on a 2-core CPU with a load average above 1, torch's two threads ran ~8x slower than one (57 s
    against 7 s); train now takes the demo's heuristic, says so once, and records the threads in
    all_results.json. The user's OMP_NUM_THREADS is left alone (test_demo)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        r = run(_cfg(tiny_llama_dir, eight, tmp_path / "run", max_steps=1))
        err = " ".join(capsys.readouterr().err.split())
    finally:
        torch.set_num_threads(before)
    assert r["torch_threads"] == threads
    assert json.loads((tmp_path / "run" / "all_results.json").read_text())["torch_threads"] == threads
    said = f"this machine is busy (load average {load} on 2 cores): training with one thread"
    assert (said in err) == (threads == 1), err
    assert f"on cpu ({threads} thread" in err


@pytest.mark.parametrize("yaml_keys, flags, says", [
    # checks that run after the flags are read (they depend on each other or on the data) name their source too
    ({}, {"val_size": 300}, "command line: --val_size 300: leaves no training samples out of 8; use a smaller value"),
    ({}, {"max_steps": -5, "num_train_epochs": 0},
     "command line: --num_train_epochs 0.0: must be a finite number above 0 (or pass --max_steps)"),
    ({"max_steps": 0, "num_train_epochs": float("nan")}, {},
     "Y: --num_train_epochs nan: must be a finite number above 0 (or pass --max_steps)"),
    ({"learning_rate": 0}, {}, "Y: --learning_rate 0.0: must be a positive number"),
    ({"bf16": True}, {"fp16": True}, "Y: --bf16 and --fp16 are both set; pick one"),
    # a flag's value is the command line's even when a YAML file is given too
    ({"lora_rank": 8}, {"lora_dropout": 1}, "command line: --lora_dropout 1.0: must be in [0, 1)"),
    # --val_size above 1 is a record count: a whole number (LLaMA-Factory / datasets refuse 1.5; it was taken as 1)
    ({}, {"val_size": 1.5}, "command line: --val_size 1.5: above 1 it is a record count: give a whole number (e.g. 2), "
                           "or a fraction below 1"),
    ({"val_size": 2.5}, {}, "Y: --val_size 2.5: above 1 it is a record count"),
    # LLaMA-Factory's keys, one check shared with chat and export (common/arguments.py)
    ({"finetuning_type": "freeze"}, {}, "Y: --finetuning_type freeze: only LoRA adapters exist here (LLaMA-Factory's "
                                        "full and freeze fine-tuning are not supported); set lora or delete the key"),
    ({"template": "qwen3"}, {}, "Y: --template qwen3: unknown template; use auto or one of: default, chatml, qwen"),
])
def test_every_flag_check_names_its_source(tiny_llama_dir, eight, tmp_path, yaml_keys, flags, says):
    """Trial 24: from YAML, `num_train_epochs: .nan` (max_steps 0) gave an error without `y.yaml:`; on the command
    line the --val_size "no training samples" and epochs checks had no `command line:` prefix."""
    from click.testing import CliRunner

    from steam_persona.cli import main

    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", str(tiny_llama_dir), "--dataset", str(eight), "--output_dir", str(out)]
    if yaml_keys:
        y = tmp_path / "y.yaml"
        y.write_text(yaml.safe_dump(yaml_keys), encoding="utf-8")
        argv.insert(1, str(y))
        says = says.replace("Y:", f"{y}:")
    argv += [x for k, v in flags.items() for x in (f"--{k}", str(v))]
    r = CliRunner().invoke(main, argv)
    line = r.output.strip()
    assert r.exit_code == 2 and len(line.splitlines()) == 1 and line.startswith(f"Error: {says}"), r.output
    assert not out.exists()


@pytest.mark.parametrize("read, dropped, truncated, says", [
    (244, 15, 229, "244 read: 15 dropped (reply longer than --cutoff_len 128), 229 kept, all 229 truncated (prompt cut "
                   "to fit)"),
    (10, 2, 3, "10 read: 2 dropped (reply longer than --cutoff_len 128), 8 kept, 3 of them truncated"),
    (8, 0, 0, "8 read: 0 dropped (reply longer than --cutoff_len 128), 8 kept, none truncated"),
])
def test_dataset_counts_say_which_is_part_of_which(read, dropped, truncated, says):
    """Trial 24: "229 samples, 229 truncated, 15 dropped" left open whether the 15 were among the 229."""
    from steam_persona.trainer.encode import data_line

    enc = type("Enc", (), {"truncated": truncated, "dropped": list(range(dropped)), "__len__": lambda self: read - dropped})()
    assert says in data_line(enc, 128)


def test_too_little_free_space_for_a_checkpoint_is_exit_2_before_training(tiny_llama_dir, eight, tmp_path,
                                                                          monkeypatch):
    """A disk too full for one checkpoint stops before the first step (it used to fail at the first save),
    naming the dir, the space one checkpoint needs and the space free."""
    import shutil
    from collections import namedtuple

    from click.testing import CliRunner

    from steam_persona.cli import main
    from steam_persona.trainer import train as train_mod

    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 300 * 1024, 300 * 1024))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--model_name_or_path", str(tiny_llama_dir), "--dataset", str(eight),
                                  "--output_dir", str(out), "--max_steps", "1"])
    errors = [x for x in r.output.splitlines() if x.startswith("Error:")]
    assert r.exit_code == 2 and len(errors) == 1 and errors[0] == r.output.strip().splitlines()[-1], r.output
    line = errors[0]
    assert (f"Error: {out}: --output_dir: not enough free disk for a checkpoint: one needs about " in line
            and f"and {tmp_path} has 0.3 MiB free; free some disk or pick another --output_dir" in line), line
    assert not out.exists()
    # the estimate: the LoRA weights and AdamW's two fp32 moments, plus the tokenizer
    import torch

    params = [torch.zeros(10, 4), torch.zeros(4, 10)]
    assert train_mod.checkpoint_bytes(params, None) == 80 * 4 * 3 + 64 * 1024
    monkeypatch.setattr(shutil, "disk_usage", real)


def test_llamafactory_flash_attn_is_accepted_with_one_note(tiny_llama_dir, eight, tmp_path):
    """LLaMA-Factory configs carry `flash_attn: auto|disabled|sdpa|fa2`: train takes it, says once that it chooses
    the attention itself, and may resume with another value."""
    from click.testing import CliRunner

    from steam_persona.cli import main

    y = tmp_path / "y.yaml"
    y.write_text(yaml.safe_dump({"model_name_or_path": str(tiny_llama_dir), "dataset": str(eight), "max_steps": 1,
                                 "output_dir": str(tmp_path / "run"), "flash_attn": "fa2"}), encoding="utf-8")
    r = CliRunner().invoke(main, ["train", str(y)])
    assert r.exit_code == 0, r.output
    assert " ".join(r.output.split()).count("flash_attn: no effect here; training chooses the attention itself") == 1
    from steam_persona.trainer.train import RESUMABLE_CHANGES

    assert "flash_attn" in RESUMABLE_CHANGES  # no effect, so a resume may change it


def test_the_eval_datasets_drops_are_reported_like_the_train_datasets(tmp_path, monkeypatch):
    """Trial 27 N8: --eval_dataset (50 records) evaluated 26 samples at --cutoff_len 256 and no line said why."""
    import io as _io

    from steam_persona.common import console as console_mod
    from steam_persona.trainer import train as train_mod
    from steam_persona.trainer.encode import Encoded

    buf = _io.StringIO()
    monkeypatch.setattr(console_mod.console, "_file", buf)
    recipe = train_mod.TrainRecipe(_cfg("m", "d.json", tmp_path, eval_dataset=["val.json"]))
    recipe.enc = Encoded(input_ids=[[1, 2]] * 40, labels=[[1, 2]] * 40, dropped=[3])
    recipe.eval_enc = Encoded(input_ids=[[1, 2]] * 26, labels=[[1, 2]] * 26, dropped=list(range(24)), truncated=26)
    recipe.device, recipe.dtype = "cpu", torch.bfloat16
    recipe._print_setup()
    said = " ".join(buf.getvalue().split())
    assert ("dataset: 41 read: 1 dropped (reply longer than --cutoff_len 256), 40 kept, none truncated" in said)
    assert ("eval dataset: 50 read: 24 dropped (reply longer than --cutoff_len 256), 26 kept, all 26 truncated "
            "(prompt cut to fit)") in said


def test_a_run_that_is_all_warm_up_warns_once_and_step_1_trains_at_lr_0_as_hf_trainer(tiny_llama_dir, eight,
                                                                                        tmp_path):
    """Trial 30 S7: ``--max_steps 1`` with LLaMA-Factory's ``warmup_ratio: 0.1`` is one warm-up step; HF Trainer's
    linear warm-up (LLaMA-Factory's) trains its first step at lr 0, and so does this run, with a warning."""
    from click.testing import CliRunner

    from steam_persona.cli import main
    from steam_persona.trainer.train import _all_warmup_line

    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--model_name_or_path", str(tiny_llama_dir), "--dataset", str(eight),
                                  "--max_steps", "1", "--warmup_ratio", "0.1", "--logging_steps", "1",
                                  "--output_dir", str(out)])
    assert r.exit_code == 0, r.output
    line = "warning: --max_steps 1 is all warm-up (--warmup_ratio 0.1 (1 step)): every step trains below"
    assert r.output.count(line) == 1
    assert any(x.startswith(line) and x.endswith("or raise --max_steps") for x in r.output.splitlines())
    rows = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["lr"] for x in rows if "loss" in x] == [0.0]
    assert _all_warmup_line(_cfg(tiny_llama_dir, eight, out, max_steps=0, warmup_steps=5), 3, 5).startswith(
        "warning: this run's 3 steps are all warm-up (--warmup_steps 5)")
    assert _all_warmup_line(_cfg(tiny_llama_dir, eight, out, max_steps=0, warmup_steps=5), 1, 5).startswith(
        "warning: this run's 1 step is all warm-up (--warmup_steps 5)")
