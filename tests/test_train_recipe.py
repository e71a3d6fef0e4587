"""The training recipe's parts called alone (a tiny random Llama with SmolLM2's real tokenizer)."""

from __future__ import annotations

import json

import pytest
import torch

from steam_persona.common import config
from steam_persona.trainer.train import BEST_DIR, TrainConfig, TrainRecipe


def _recipe(model_dir, data_path, out, **kw) -> TrainRecipe:
    base = {"model_name_or_path": str(model_dir), "dataset": [str(data_path)], "output_dir": str(out),
            "per_device_train_batch_size": 4, "learning_rate": 5e-3, "max_steps": 4, "save_steps": 100,
            "logging_steps": 1, "cutoff_len": 256}
    return TrainRecipe(config.build(TrainConfig, {**base, **kw}))


def _lora(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def test_setup_data_splits_and_touches_no_run_dir(tiny_llama_dir, eight, tmp_path):
    recipe = _recipe(tiny_llama_dir, eight, tmp_path / "run", val_size=2)
    recipe.setup_precision()
    recipe.setup_data()
    assert (len(recipe.train_idx), len(recipe.eval_idx)) == (6, 2)
    assert sorted(recipe.train_idx + recipe.eval_idx) == list(range(8))
    assert recipe.eval_enc is recipe.enc and not (tmp_path / "run").exists()


def test_train_step_loss_is_the_mean_over_the_steps_learned_tokens(tiny_llama_dir, eight, tmp_path):
    from steam_persona.trainer.packing import loss_sum

    recipe = _recipe(tiny_llama_dir, eight, tmp_path / "run")
    recipe.setup(None)
    (mb,) = recipe.plan.step(0)  # batch 4, accumulation 1: one micro-batch of 4 samples
    with torch.no_grad():
        ls, n = loss_sum(recipe.model, recipe.batch(mb, recipe.train_idx))
    before = _lora(recipe.model)
    stats = recipe.train_step(0)
    assert stats["samples"] == 4 and stats["lr"] == pytest.approx(5e-3)  # linear schedule, no warmup: step 1 at peak
    assert stats["tokens"] == sum(len(recipe.enc.input_ids[recipe.train_idx[i]]) for i in mb)
    assert stats["loss"] == pytest.approx(float(ls) / n, abs=1e-4) and stats["grad_norm"] > 0
    assert any(not torch.equal(before[k], v) for k, v in _lora(recipe.model).items())  # AdamW stepped
    assert recipe.scheduler.get_last_lr()[0] == pytest.approx(5e-3 * 3 / 4)


def test_save_checkpoint_alone_then_setup_resumes_from_it(tiny_llama_dir, eight, tmp_path):
    out = tmp_path / "run"
    first = _recipe(tiny_llama_dir, eight, out, max_steps=2)
    first.setup(None)
    first.train()
    ckpt = first.save_checkpoint(2)
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["global_step"] == 2 and state["first_loss"] == first.step_losses[0]
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / "rng_state.pth").is_file()

    again = _recipe(tiny_llama_dir, eight, out, max_steps=4)
    again.setup(ckpt)
    assert (again.start, again.total) == (2, 4)
    saved = _lora(first.model)
    assert all(torch.equal(saved[k], v) for k, v in _lora(again.model).items())
    assert again.optimizer.state_dict()["state"][0]["step"] == 2
    assert [r["current_steps"] for r in again.rows] == [1, 2]  # the log is kept up to the resumed step


def test_maybe_eval_runs_on_eval_steps_and_keeps_the_best_adapter(tiny_llama_dir, eight, tmp_path):
    recipe = _recipe(tiny_llama_dir, eight, tmp_path / "run", val_size=2, eval_steps=2, load_best_model_at_end=True)
    recipe.setup(None)
    assert recipe.maybe_eval(1) is None and not (recipe.out / BEST_DIR).exists()
    loss = recipe.maybe_eval(2)
    assert loss == pytest.approx(recipe.evaluate(), abs=1e-6)
    assert (recipe.out / BEST_DIR / "adapter_model.safetensors").is_file()
    assert (recipe.state["best_eval_loss"], recipe.state["best_global_step"]) == (round(loss, 4), 2)
    assert recipe.rows[-1] == {"current_steps": 2, "total_steps": 4, "eval_loss": round(loss, 4), "epoch": 1.0}
    recipe.state["best_eval_loss"] = 0.0  # an earlier eval that this one cannot beat
    (recipe.out / BEST_DIR / "adapter_model.safetensors").unlink()
    assert recipe.maybe_eval(4) == pytest.approx(loss, abs=1e-6)  # the last step always evaluates
    assert not (recipe.out / BEST_DIR / "adapter_model.safetensors").exists()
    assert recipe.state["best_global_step"] == 2
