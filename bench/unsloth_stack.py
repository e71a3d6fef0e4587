"""Unsloth as a measured anchor for bench/train_speed.py (not a dependency of steam-persona).

Run its recommended way: ``FastLanguageModel.from_pretrained(..., load_in_4bit=True)`` (NF4 + double
quantization, bf16 compute), ``FastLanguageModel.get_peft_model`` with LoRA r8/alpha16 on the same seven
linear layers as ours and ``use_gradient_checkpointing="unsloth"`` (its offloaded checkpointing), trained by
TRL's ``SFTTrainer`` on pre-tokenized rows (``input_ids`` + ``completion_mask``, ``completion_only_loss``:
the same learned positions as ours). The optimizer is the same as ours (fused AdamW, fp32 state), so the
figures compare the training paths, not the optimizers. Needs a CUDA GPU and the packages listed in
``../shared/reference/hf-stack.md`` (unsloth, unsloth_zoo, trl, datasets, ...); ``import unsloth`` must
come before transformers, so `train_speed.worker` imports this module first for the ``unsloth`` stack.
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")

import unsloth  # noqa: E402,F401  (patches transformers/trl: must be imported first)
import torch  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build(model_dir: Path, max_seq_length: int):
    """The 4-bit model with LoRA as Unsloth's notebooks build it; returns (model, tokenizer, report)."""
    from unsloth import FastLanguageModel

    model, tok = FastLanguageModel.from_pretrained(model_name=str(model_dir), max_seq_length=max_seq_length,
                                                   dtype=torch.bfloat16, load_in_4bit=True, local_files_only=True)
    model = FastLanguageModel.get_peft_model(model, r=8, lora_alpha=16, lora_dropout=0, bias="none",
                                             target_modules=TARGETS, use_gradient_checkpointing="unsloth",
                                             random_state=0)
    return model, tok, {"stack": f"unsloth {unsloth.__version__}: FastLanguageModel 4-bit, "
                                 "use_gradient_checkpointing='unsloth', TRL SFTTrainer"}


def to_dataset(samples: list[dict]):
    """Our encoded samples as TRL's pre-tokenized form: input_ids + completion_mask (1 where ours learns)."""
    from datasets import Dataset

    return Dataset.from_list([{"input_ids": s["input_ids"], "completion_mask": [int(x != -100) for x in s["labels"]]}
                              for s in samples])


def run(model, tok, samples: list[dict], batch_size: int, steps: int, warmup: int, padding_free: bool,
        max_length: int, tmp: Path, timing, accum: int = 1, callbacks: tuple = ()) -> dict:
    """`steps` optimizer steps of SFTTrainer, each of `accum` micro-batches of `batch_size` samples
    (padding_free: a micro-batch is one packed row); times the last `steps - warmup` with `timing`
    (train_speed._timing) from the token counts of each step."""
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    ends: list[float] = []
    counts: list[tuple[int, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            ends.append(time.perf_counter())

    args = SFTConfig(output_dir=str(tmp), per_device_train_batch_size=batch_size, max_steps=steps,
                     gradient_accumulation_steps=accum,
                     learning_rate=2e-4, lr_scheduler_type="constant", bf16=True, logging_steps=10_000,
                     save_strategy="no", report_to="none", dataloader_num_workers=0, seed=0, disable_tqdm=True,
                     optim="adamw_torch_fused", max_grad_norm=1.0, warmup_steps=0, max_length=max_length,
                     packing=False, padding_free=padding_free, completion_only_loss=True, dataset_num_proc=1)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer = SFTTrainer(model=model, processing_class=tok, train_dataset=to_dataset(samples), args=args,
                         callbacks=[Clock(), *callbacks])
    collate = trainer.data_collator

    def counting(feats):
        out = collate(feats)
        counts.append((sum(len(f["input_ids"]) for f in feats), out["input_ids"].numel()))
        return out

    trainer.data_collator = counting
    t0 = time.perf_counter()
    out = trainer.train()
    del trainer
    gc.collect()
    if len(counts) < len(ends) * accum:  # a collator Unsloth wrapped again: count the samples a step took
        n = sum(len(s["input_ids"]) for s in samples[:batch_size * accum])
        counts = [(n, n)] * len(ends)
    else:
        counts = [tuple(map(sum, zip(*counts[i:i + accum]))) for i in range(0, len(counts), accum)]
    return {**timing(ends, counts, warmup, out.training_loss), "warmup_steps_s": ends[warmup - 1] - t0,
            "padding_free": padding_free, "last_loss_is": "mean training loss over all steps"}


def profile(model, tok, samples: list[dict], batch_size: int, tmp: Path, summary) -> dict:
    """torch.profiler over the last optimizer steps of a padding-free run of `batch_size` samples a step (one
    packed row): 2 warm-up steps, then 2 profiled (1 for rows of 16k tokens or more); `summary` (train_speed.
    kernel_summary) turns the profiler into figures."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    from transformers import TrainerCallback

    n = 1 if len(samples[0]["input_ids"]) * batch_size >= 16384 else 2
    prof = torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    clock: dict[str, float] = {}

    class Profile(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 2:
                torch.cuda.synchronize()
                prof.start()
                clock["t0"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2 + n:
                torch.cuda.synchronize()
                clock["wall"] = time.perf_counter() - clock["t0"]
                prof.stop()

    rows = max(len(s["input_ids"]) for s in samples) * batch_size
    run(model, tok, samples, batch_size, 2 + n, 1, True, rows, tmp, lambda *a: {}, callbacks=(Profile(),))
    return summary(prof, clock["wall"], n)


def loss_check(model, samples: list[dict]) -> dict:
    """Per-token mean loss over `samples`, each alone (train mode, no grad, bf16 autocast): the model's own
    loss (Unsloth's) weighted by each sample's learned tokens."""
    dev = next(model.parameters()).device
    model.train()
    tot = n = 0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for s in samples:
            ids = torch.tensor([s["input_ids"]], device=dev)
            labels = torch.tensor([s["labels"]], device=dev)
            k = int((labels[:, 1:] != -100).sum())
            tot, n = tot + float(model(input_ids=ids, labels=labels).loss) * k, n + k
    return {"alone": tot / n}
