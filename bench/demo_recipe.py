"""Which training recipe meets the demo's held-out loss goal (tuned >= 20 % below the base's).

For each recipe: the demo's own prepare (the embedded English reviews, its seeded split), the demo's
train settings (:func:`steam_persona.demo.train_settings`) with the recipe's overrides (LLaMA-Factory
names), then the held-out loss of base and tuned on the eval slice with the compare stage's
function (:func:`steam_persona.trainer.evaluate.held_out_loss`, inference weights). The base is
measured once per split in the same process. No train-time eval: rows with ``train_time_eval`` true
(an ``eval_curve`` every 10 steps) trained worse after the first eval (the same losses up to step 10,
then higher: bitsandbytes repacked the 4-bit layers for CPU inference at the first eval, which ``train``
now avoids), so compare only rows without it. One torch thread. Prints one line per recipe and appends it
to ``bench/results/demo_recipe.json`` (recipes already there are skipped).

Usage: ``.venv/bin/python bench/demo_recipe.py [RECIPE ...]`` (names from :data:`RECIPES`; all by default)
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "demo_recipe.json"
#: name -> (demo flags, train overrides), on the embedded reviews as they are now. ``results/demo_recipe.json``
#: also keeps the runs on earlier versions of the data (each row's ``data``).
RECIPES: dict[str, tuple[dict, dict]] = {
    "demo": ({}, {}),
    "lr1e-3": ({"learning_rate": 1e-3}, {}),
    "lr3e-3": ({"learning_rate": 3e-3}, {}),
    "r16-alpha16": ({"lora_rank": 16}, {"lora_alpha": 16}),
    "steps140": ({"max_steps": 140}, {}),
    "warmup0.3": ({}, {"warmup_ratio": 0.3}),
    "seed1": ({"seed": 1}, {}),
    "seed7": ({"seed": 7}, {}),
    "steps140-seed1": ({"max_steps": 140, "seed": 1}, {}),
}


def held_out(base: str, adapter: str | None, val_file: str, cutoff_len: int) -> float:
    """Held-out loss (nats per reply token) of ``base`` (+ ``adapter``) on ``val_file``, as the compare stage."""
    from steam_persona.trainer import data, evaluate
    from steam_persona.trainer.model import load_for_inference
    from steam_persona.common.persona import DEFAULT_SYSTEM
    from steam_persona.trainer.templates import ChatTemplate

    model, tokenizer = load_for_inference(base, adapter)
    val = data.load_conversations(val_file, system=DEFAULT_SYSTEM)
    return evaluate.held_out_loss(model, ChatTemplate("auto", tokenizer), val, cutoff_len, 8)["loss"]


def measure(name: str, flags: dict, overrides: dict, work: Path, bases: dict) -> dict:
    """Prepare, train and evaluate one recipe under ``work/name``; ``bases`` caches the base's loss per split."""
    from steam_persona import demo
    from steam_persona.trainer import train
    from steam_persona.common import config

    cfg = config.build(demo.DemoConfig, {**flags, "output_dir": str(work / name)})
    out = Path(cfg.output_dir)
    prepared = demo._prepare(cfg, out)
    split = (cfg.seed, cfg.val_size)
    if split not in bases:
        bases[split] = held_out(cfg.model_name_or_path, None, prepared["val"], cfg.cutoff_len)
    t0 = time.perf_counter()
    settings = {**demo.train_settings(cfg, out, True, demo._bf16_supported()), **overrides}
    res = train.run(config.build(train.TrainConfig, settings))
    seconds = time.perf_counter() - t0
    tuned = held_out(cfg.model_name_or_path, res["output_dir"], prepared["val"], cfg.cutoff_len)
    base = bases[split]
    return {"recipe": name, "data": "embedded", "flags": flags, "overrides": overrides,
            "train": prepared["counts"]["train"], "val": prepared["counts"]["val"], "base": base, "tuned": tuned,
            "change": round((tuned - base) / base, 4), "loss_last": round(res["loss_last"], 4),
            "steps": res["global_step"], "train_s": round(seconds, 1)}


def _runs() -> list[dict]:
    """The runs already in :data:`RESULTS` (read again before each write: sweeps may run side by side)."""
    return json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() else []


def _note() -> str:
    return json.loads(RESULTS.read_text()).get("note", "") if RESULTS.is_file() else ""


def main(names: list[str]) -> None:
    import torch

    torch.set_num_threads(1)
    seen = {r["recipe"] for r in _runs() if r["data"] == "embedded" and not r.get("train_time_eval")}
    bases: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(RECIPES):
            if name in seen:
                continue
            flags, overrides = RECIPES[name]
            row = measure(name, flags, overrides, Path(tmp), bases)
            row["date"], row["load_average"] = datetime.date.today().isoformat(), os.getloadavg()[0]
            print(json.dumps(row), flush=True)
            RESULTS.write_text(json.dumps({"note": _note(), "runs": [*_runs(), row]}, indent=1) + "\n",
                               encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
