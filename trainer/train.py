"""``steam-train train``: LoRA / QLoRA supervised fine-tuning with LLaMA-Factory's flags.

The seed command of the LLaMA-Factory recipe runs verbatim with ``steam-train train`` in place of
``llamafactory-cli train``; the same keys work in a YAML file (``steam-train train config.yaml``).

Python API::

    from steam_persona.common import config
    from steam_persona.trainer.train import TrainConfig, run
    cfg = config.build(TrainConfig, {"dataset": ["data.json"], "output_dir": "saves/x", "max_steps": 10})
    results = run(cfg)   # dict: output_dir, loss_first, loss_last, global_step, train_tokens_per_second, ...

``run`` checks the flags, picks the resume point and drives a :class:`TrainRecipe` (torchtune's recipe
shape): ``setup_precision``, ``setup_data``, ``setup_model``, ``setup_optimizer``, ``open_run_dir``, then
``train`` (``train_step``, ``maybe_eval``, ``save_checkpoint`` per step) and ``finish``.

Why a lean loop of our own instead of HF ``Trainer``: the CPU speed goal needs padding-free packed
micro-batches and a loss that projects only learned positions onto the vocabulary
(:mod:`steam_persona.trainer.packing`); we also need the non-finite stop at the exact step, exact resume
(a deterministic sample plan per optimizer step, so no sampler state to restore), our
``trainer_log.jsonl``/plot/summary, and one code path for transformers 5.17 and 5.24. Building
blocks stay the libraries': peft (LoRA), bitsandbytes (4/8-bit), torch AdamW, transformers'
``get_scheduler``. Multi-GPU (torchrun / accelerate launch / ``--nproc_per_node``) is DDP through the thin
glue in :mod:`steam_persona.trainer.distributed`: logging and saving happen on rank 0 only and each step's
micro-batches are split by rank (docs/multi-gpu.md).

Output dir (LLaMA-Factory compatible): ``adapter_config.json``, ``adapter_model.safetensors``,
tokenizer files (chat template; eos = end-of-turn token), ``trainer_log.jsonl``,
``training_loss.png``, ``all_results.json``, ``run_config.yaml`` (every resolved setting),
``checkpoint-N/`` every ``--save_steps``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from steam_persona.common import atomic
from steam_persona.common import config
from steam_persona.common import lock as locking
from steam_persona.common.arguments import (DataArguments, FinetuningArguments, LlamaCppArguments, LoraArguments,
                                             ModelArguments, QuantizationArguments, TrainingArguments, as_typed,
                                             not_negative_finite)
from steam_persona.common.config import arg
from steam_persona.common.console import byte_size, console, plain_progress, progress, summary_table
from steam_persona.common.errors import (STOP_SIGNALS, Interrupts, UserError, nothing_written, stop_signals_interrupt,
                                         while_loading)
from steam_persona.common.persona import DEFAULT_SYSTEM
from steam_persona.common.run_files import check_checkpoint, read_json
from steam_persona.trainer.encode import counts_line, data_line
from steam_persona.trainer.threads import threads_for_load
from steam_persona.trainer.throughput import COMPILE_WARMUP_STEPS, Throughput, forward_share


def _bitsandbytes_only(value: str) -> str:
    if value.lower() not in ("bitsandbytes", "bnb"):
        raise ValueError("only bitsandbytes (bnb) quantizes here; use a 16-bit base with --quantization_bit 4 or 8 "
                         "instead of a GPTQ/AWQ/other quantization")
    return "bitsandbytes"


def _double_quantization(value: bool) -> bool:
    if not value:
        raise ValueError("4-bit QLoRA here always double-quantizes (NF4 + double quant); drop the key or set it true")
    return value


def _no_deepspeed(value: str | None) -> str | None:
    if value is not None:
        raise ValueError("not supported; train on several GPUs with DDP instead: --nproc_per_node N, "
                         "docs/multi-gpu.md")
    return value


@dataclass
class TrainConfig:
    """One training run. Field names and defaults follow LLaMA-Factory (``hparams/*_args.py``) and
    HF ``TrainingArguments``; ours are marked (ours)."""

    # --- LLaMA-Factory stage selection (accepted for compatibility; only SFT + LoRA exist here)
    stage: str = arg("sft", "Training stage (only sft).", choices=("sft",))
    do_train: bool = arg(True, "Run training (accepted for LLaMA-Factory compatibility).")
    finetuning_type: str = FinetuningArguments.use("finetuning_type")
    # --- model
    model_name_or_path: str = ModelArguments.use("model_name_or_path")
    trust_remote_code: bool = ModelArguments.use("trust_remote_code")
    quantization_bit: int | None = QuantizationArguments.use("quantization_bit")
    # --- data
    dataset: list[str] = arg([], "Dataset name(s) in DATASET_DIR/dataset_info.json, or .json/.jsonl path(s); several are "
                                 "joined: comma-separated (LLaMA-Factory) or the flag repeated.")
    dataset_dir: str = DataArguments.use("dataset_dir")
    encoding: str = DataArguments.use("encoding")
    template: str = DataArguments.use("template")
    system: str = DataArguments.use(
        "system", DEFAULT_SYSTEM, note="Added to records that have none; recorded in run_config.yaml.")
    cutoff_len: int = DataArguments.use("cutoff_len")
    max_samples: int | None = DataArguments.use("max_samples")
    val_size: float = DataArguments.use("val_size")
    eval_dataset: list[str] = arg([], "Eval dataset name(s) or .json/.jsonl path(s), e.g. prepare's _val file; "
                                      "used instead of a --val_size split; several: as --dataset.")
    # --- output / resume
    output_dir: str = arg("saves/steam-persona-lora", "Run directory (adapter, logs, checkpoints).")
    overwrite_output_dir: bool = arg(False, "Start over in an existing run dir instead of resuming from its last checkpoint.")
    resume_from_checkpoint: str | None = arg(None, "Resume from this checkpoint-N folder.")
    save_steps: int = arg(500, "Save checkpoint-N every this many optimizer steps.")
    save_total_limit: int | None = arg(None, "Keep at most this many checkpoints (oldest deleted).")
    save_only_model: bool = arg(False, "Checkpoints hold only the adapter (no optimizer state: smaller, not resumable).")
    logging_steps: int = arg(10, "Log (trainer_log.jsonl, console) every this many optimizer steps.")
    plot_loss: bool = arg(True, "Write training_loss.png (always on; accepted for LLaMA-Factory compatibility).")
    report_to: str = arg("none", "Experiment trackers (only none; logs are trainer_log.jsonl).", choices=("none",))
    # --- LLaMA-Factory keys that change nothing here (accepted so its configs run as they are)
    quantization_method: str = arg("bitsandbytes", "Quantization backend of --quantization_bit (only bitsandbytes, "
                                                   "LLaMA-Factory's bnb).", check=_bitsandbytes_only)
    overwrite_cache: bool = arg(False, "Accepted for LLaMA-Factory compatibility; no effect (datasets are tokenized "
                                       "in memory each run, no cache).")
    preprocessing_num_workers: int | None = arg(None, "Accepted for LLaMA-Factory compatibility; no effect "
                                                      "(tokenizing runs in this process).")
    dataloader_num_workers: int = arg(0, "Accepted for LLaMA-Factory compatibility; no effect (batches are built "
                                         "in the training process from tokenized samples).")
    ddp_timeout: int | None = arg(None, "Accepted for LLaMA-Factory compatibility; no effect (seconds; "
                                        "torch.distributed's default timeout applies).")
    include_num_input_tokens_seen: bool = arg(False, "Accepted for HF compatibility; no effect (trainer_log.jsonl "
                                                     "always has total_tokens).")
    double_quantization: bool = arg(True, "Accepted for LLaMA-Factory compatibility: 4-bit QLoRA always uses NF4 + "
                                          "double quantization; False is refused.", check=_double_quantization)
    flash_attn: bool = LlamaCppArguments.use(
        "flash_attn", note="Train: accepted for LLaMA-Factory compatibility (its auto, disabled, sdpa, fa2); no effect: "
                           "attention is chosen automatically (docs/training.md, Speed).")
    deepspeed: str | None = arg(None, "Not supported (LLaMA-Factory's DeepSpeed config); several GPUs train with DDP: "
                                      "--nproc_per_node, docs/multi-gpu.md.", check=_no_deepspeed)
    # --- optimisation
    per_device_train_batch_size: int = TrainingArguments.use("per_device_train_batch_size")
    per_device_eval_batch_size: int = TrainingArguments.use("per_device_eval_batch_size")
    gradient_accumulation_steps: int = arg(1, "Micro-batches per optimizer step (effective batch = product).")
    learning_rate: float = TrainingArguments.use("learning_rate")
    weight_decay: float = arg(0.0, "AdamW weight decay (0 or more).", check=not_negative_finite)
    max_grad_norm: float = arg(1.0, "Gradient clipping norm (0 = off).", check=not_negative_finite)
    num_train_epochs: float = arg(3.0, "Epochs (may be fractional; used when --max_steps is not > 0).")
    max_steps: int = TrainingArguments.use("max_steps")
    lr_scheduler_type: str = arg("linear", "LR schedule after warmup.",
                                 choices=("linear", "cosine", "constant", "constant_with_warmup", "polynomial",
                                          "inverse_sqrt", "cosine_with_restarts"))
    warmup_ratio: float = arg(0.0, "Warmup as a fraction of all optimizer steps.")
    warmup_steps: int = arg(0, "Warmup optimizer steps (overrides warmup_ratio when > 0).")
    eval_steps: int | None = arg(None, "Eval every this many optimizer steps with --val_size or --eval_dataset (default: save_steps).")
    eval_strategy: str = arg("steps", "When to evaluate (with --val_size or --eval_dataset): steps or no.", choices=("steps", "no"))
    load_best_model_at_end: bool = arg(False, "Save the adapter of the lowest eval loss as the run's adapter (kept in "
                                              "best/ while training); needs --val_size or --eval_dataset.")
    seed: int = DataArguments.use("seed", note="It seeds the data order, the validation split and the LoRA init.")
    bf16: bool = arg(False, "Train in bfloat16 (the default on GPUs that support it, even without this flag; a CPU "
                            "without bf16 instructions trains in float32 instead, with a warning).")
    fp16: bool = arg(False, "Train in float16 (warned on bf16-capable hardware: overflow risk).")
    use_cpu: bool = arg(False, "Train on the CPU even when a GPU is present.")
    nproc_per_node: int = arg(1, "Processes (one per GPU) on this host: > 1 re-runs this training under torchrun "
                                 "(torch.distributed.run) as DDP. Not needed when started by torchrun/accelerate. (ours)")
    # --- LoRA
    lora_rank: int = LoraArguments.use("lora_rank")
    lora_alpha: int | None = LoraArguments.use("lora_alpha")
    lora_dropout: float = LoraArguments.use("lora_dropout")
    lora_target: list[str] = LoraArguments.use("lora_target")
    disable_gradient_checkpointing: bool = arg(False, "Turn gradient (activation) checkpointing off (faster, more memory).")
    padding_free: bool = arg(True, "Pack each optimizer step's samples into rows without padding (per-sample "
                                   "positions, no cross-sample attention); False pads each micro-batch to its "
                                   "longest sample. (ours)")
    torch_compile: bool = arg(True, "Compile each decoder layer with torch.compile (CUDA with Triton only; "
                                    "ignored on CPU). Costs about a minute once at the first steps (a 7B). False "
                                    "also turns off the fused LoRA MLPs: more memory on rows of 4,096+ tokens "
                                    "(docs/gpu.md).")
    enable_liger_kernel: bool = arg(False, "Use Liger-Kernel's RMSNorm/RoPE/SwiGLU (CUDA; replaces --torch_compile, "
                                           "so the fused LoRA MLPs are off too; slower in our measurements, "
                                           "docs/gpu.md). Its fused loss is always on.")


class NonFiniteError(UserError):
    """Loss or gradient norm became NaN/inf; raised at once, before anything is saved."""


# ---------------------------------------------------------------- precision / device


def resolve_precision(cfg: TrainConfig) -> tuple[str, Any, Any]:
    """Pick ``(device, weight dtype, autocast dtype or None)`` from ``--bf16/--fp16/--use_cpu``.

    fp16 on bf16-capable hardware is honoured on CUDA with a warning (fp16 overflows on Qwen2.5:
    NaN or loss 0). With neither flag a CUDA GPU trains in bf16 when it supports it, else fp32;
    the CPU trains in fp32. On CPU float16 has no fast kernels, so ``--fp16`` trains in bfloat16 when the
    CPU has bf16 instructions, else float32, and says so; ``--bf16`` on a CPU without them (emulated
    bfloat16 is ~30x slower) trains in float32 and says so too.

    Raises:
        UserError: both --bf16 and --fp16, or --bf16 on hardware without bf16.
    """
    import torch

    if cfg.bf16 and cfg.fp16:
        raise UserError("--bf16 and --fp16 are both set; pick one (bf16 where the hardware supports it)")
    device = "cuda" if torch.cuda.is_available() and not cfg.use_cpu else "cpu"
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local}"
        bf16_ok = torch.cuda.is_bf16_supported()
        if cfg.fp16:
            if bf16_ok:
                console.print("[yellow]warning: --fp16 on a GPU that supports bf16: fp16 can overflow (NaN or loss 0, "
                              "common with Qwen2.5); pass --bf16 True instead[/yellow]")
            return device, torch.float16, torch.float16
        if cfg.bf16:
            if not bf16_ok:
                raise UserError("--bf16: this GPU has no bfloat16 support; use --fp16 True")
            return device, torch.bfloat16, torch.bfloat16
        # Neither flag: like LLaMA-Factory's inferred compute dtype, use bf16 where the GPU has it,
        # so the fast path (bf16 kernels, fused loss) needs no flag; fp32 otherwise.
        return (device, torch.bfloat16, torch.bfloat16) if bf16_ok else (device, torch.float32, None)
    cpu_bf16 = _cpu_has_bf16()
    if cfg.fp16:
        alt = "bfloat16" if cpu_bf16 else "float32"
        console.print(f"[yellow]warning: --fp16 on CPU: CPUs have no fast float16 math; training in {alt} instead"
                      f"{' (this CPU supports bf16: pass --bf16 True)' if cpu_bf16 else ''}[/yellow]")
        return (device, torch.bfloat16, torch.bfloat16) if cpu_bf16 else (device, torch.float32, None)
    if cfg.bf16 and not cpu_bf16:
        console.print("[yellow]warning: --bf16 on a CPU without bf16 instructions (AVX512-BF16/AMX): emulated "
                      "bfloat16 is ~30x slower; training in float32 instead[/yellow]")
    if cfg.bf16 and cpu_bf16:
        return device, torch.bfloat16, torch.bfloat16
    return device, torch.float32, None


def _cpu_has_bf16() -> bool:
    try:
        import torch

        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # older torch without the probe
        return False


# ---------------------------------------------------------------- data plan


def split_eval(n: int, val_size: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train indices, eval indices) for ``--val_size`` (fraction < 1 or count ≥ 1).

    Raises:
        UserError: the eval split would take every sample.
    """
    if val_size <= 0:
        return list(range(n)), []
    k = int(val_size) if val_size >= 1 else max(1, round(n * val_size))
    if k >= n:
        raise UserError(f"--val_size {as_typed(val_size)}: leaves no training samples out of {n}; use a smaller value")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[k:]), sorted(order[:k])


class StepPlan:
    """Which samples each optimizer step uses: a seeded permutation per epoch, cut into micro-batches
    of ``batch_size``, grouped ``accum`` per step (a last partial group is a shorter step).

    Deterministic from ``(seed, epoch)``, so resuming at step N needs no sampler state.
    ``rank``/``world_size`` shard each step's micro-batches for data-parallel runs.
    """

    def __init__(self, n: int, batch_size: int, accum: int, epochs: float, max_steps: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.n, self.bs, self.accum, self.seed = n, batch_size, accum, seed
        self.rank, self.world = rank, world_size
        micro_per_epoch = math.ceil(n / batch_size)
        self.steps_per_epoch = math.ceil(micro_per_epoch / (accum * world_size))
        self.total = max_steps if max_steps > 0 else max(1, math.ceil(epochs * self.steps_per_epoch))
        self._cache: dict[int, list[list[list[int]]]] = {}

    def _epoch(self, e: int) -> list[list[list[int]]]:
        if e not in self._cache:
            order = list(range(self.n))
            random.Random(self.seed * 1000003 + e).shuffle(order)
            micro = [order[i: i + self.bs] for i in range(0, self.n, self.bs)]
            per = self.accum * self.world
            self._cache = {e: [micro[i: i + per] for i in range(0, len(micro), per)]}
        return self._cache[e]

    def group(self, s: int) -> list[list[int]]:
        """All micro-batches of optimizer step ``s`` (0-based), over every rank."""
        return self._epoch(s // self.steps_per_epoch)[s % self.steps_per_epoch]

    def step(self, s: int) -> list[list[int]]:
        """Micro-batches (lists of sample indices) of optimizer step ``s`` (0-based) for this rank."""
        return self.group(s)[self.rank:: self.world]

    def epoch_at(self, s: int) -> float:
        """Epochs completed after step ``s`` (0-based)."""
        return round((s + 1) / self.steps_per_epoch, 4)


# ---------------------------------------------------------------- run dir / checkpoints

#: --load_best_model_at_end: the adapter of the lowest eval loss so far, saved at each improvement.
BEST_DIR = "best"
_RUN_FILES = ("adapter_config.json", "adapter_model.safetensors", "trainer_log.jsonl", "training_loss.png",
              "all_results.json", "run_config.yaml", "README.md", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "special_tokens_map.json")


#: What a run leaves before its first checkpoint: nothing to keep, so the same command starts over there.
_LEFTOVERS = ("run_config.yaml", "trainer_log.jsonl")


def only_leftovers(out: Path) -> bool:
    """True when ``out`` holds files and all of them are :data:`_LEFTOVERS` (a run stopped before its first
    checkpoint); anything else in it (a checkpoint, an adapter, a file of the user's) makes it False."""
    names = {p.name for p in out.iterdir()} if out.is_dir() else set()
    return bool(names) and names <= set(_LEFTOVERS)


def last_checkpoint(out: Path) -> Path | None:
    """The highest ``checkpoint-N`` folder with a complete ``trainer_state.json``, or ``None``."""
    best = None
    for p in out.glob("checkpoint-*") if out.is_dir() else []:
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "trainer_state.json").is_file() and (best is None or int(m.group(1)) > best[0]):
            best = (int(m.group(1)), p)
    return best[1] if best else None


def resumable_checkpoint(out: Path) -> Path | None:
    """:func:`last_checkpoint` when it holds the optimizer state (saved without --save_only_model), else ``None``."""
    ckpt = last_checkpoint(out)
    return ckpt if ckpt is not None and (ckpt / "optimizer.pt").is_file() else None


def finished_run(out: Path) -> dict | None:
    """``all_results.json`` of the finished run in ``out`` (written after the final adapter), else ``None``.

    Raises:
        UserError: the file is damaged.
    """
    if (out / "adapter_model.safetensors").is_file() and (out / "all_results.json").is_file():
        return read_json(out / "all_results.json", "pass --overwrite_output_dir to start over or pick another --output_dir")
    return None


def _resume_point(cfg: TrainConfig, out: Path) -> Path | None:
    if cfg.resume_from_checkpoint:
        p = Path(cfg.resume_from_checkpoint)
        if not p.is_dir():
            newest = resumable_checkpoint(p.parent)
            raise UserError(f"{p}: --resume_from_checkpoint: no such folder; pass an existing checkpoint-N folder"
                            + (f" (the newest resumable one there is {newest})" if newest else ""))
        if not (p / "trainer_state.json").is_file() or not (p / "optimizer.pt").is_file():
            raise UserError(f"{p}: not a resumable checkpoint (needs trainer_state.json and optimizer.pt); "
                            "pass a checkpoint-N folder saved without --save_only_model")
        check_checkpoint(p, _damaged_checkpoint_fix(p))
        return p
    if cfg.overwrite_output_dir or not out.exists():
        return None
    ckpt = resumable_checkpoint(out)
    finished = finished_run(out)
    if finished is not None:  # rerunning a finished command must not silently retrain its tail
        raise UserError(f"{out}: this run already finished at step {finished.get('global_step')} (final adapter "
                        f"{out / 'adapter_model.safetensors'}); pass --overwrite_output_dir to start over or pick "
                        f"another --output_dir; to train longer, {_train_longer(cfg, ckpt, finished.get('global_step'))}")
    if ckpt is not None:
        check_checkpoint(ckpt, _damaged_checkpoint_fix(ckpt))
        return ckpt
    if any(out.iterdir()) and not only_leftovers(out):
        raise UserError(f"{out}: output dir exists and holds no resumable checkpoint; pass --overwrite_output_dir "
                        "to start over or pick another --output_dir")
    return None


def _longer(cfg: TrainConfig, above: int | None) -> str:
    """The flag that makes the run longer: ``--max_steps`` when it is set (it overrides ``--num_train_epochs``, as
    in HF Trainer), else ``--num_train_epochs``."""
    steps = "a larger --max_steps" if above is None else f"a --max_steps above {above}"
    if cfg.max_steps > 0:
        return f"{steps} (it overrides --num_train_epochs; or --max_steps -1 and a larger --num_train_epochs)"
    return f"a larger --num_train_epochs (or {steps})"


def _damaged_checkpoint_fix(ckpt: Path) -> str:
    """The way out of a damaged ``ckpt``: resuming from the newest checkpoint before it, else starting over."""
    steps = {int(c.name.split("-")[1]): c for c in ckpt.parent.glob("checkpoint-*")
             if re.fullmatch(r"checkpoint-\d+", c.name) and (c / "optimizer.pt").is_file()}
    mine = re.fullmatch(r"checkpoint-(\d+)", ckpt.name)
    earlier = [steps[n] for n in sorted(steps) if mine and n < int(mine.group(1))]
    over = "start over with --overwrite_output_dir"
    return f"resume from an earlier checkpoint with --resume_from_checkpoint {earlier[-1]}, or {over}" if earlier else over


def _train_longer(cfg: TrainConfig, ckpt: Path | None, last: int | None) -> str:
    """How a finished run trains on: from its ``checkpoint-<last>`` (saved at the last step, as HF Trainer does)
    exactly where it stopped; from an older checkpoint (a run from before the last step was saved) redoing the
    steps after it; else over from the start."""
    if ckpt is None:
        which = "--max_steps" if cfg.max_steps > 0 else "--num_train_epochs"
        return (f"start over with a larger {which} (no resumable checkpoint-N was kept: they were saved with "
                "--save_only_model)")
    step = int(ckpt.name.split("-")[1])
    how = f"pass {_longer(cfg, None)} and --resume_from_checkpoint {ckpt}"
    return how + (f": it goes on from step {step}" if step == last else
                  f" (step {step}: steps {step + 1}-{last} are trained again)")


#: Settings that may differ when a run resumes: how often to log, save and evaluate, where the run is and
#: how it resumes, the eval batch size, the speed/memory levers that leave each step's samples and loss the
#: same, the process count (:func:`steam_persona.trainer.distributed.accum_for_resume` keeps the micro-batches per
#: step), the no-op LLaMA-Factory keys, and the length of the run (``max_steps`` / ``num_train_epochs``:
#: training longer, docs/training.md). Every other setting defines the run and must match the checkpoint's.
RESUMABLE_CHANGES = frozenset({
    "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "do_train", "save_steps", "save_total_limit",
    "save_only_model", "logging_steps", "plot_loss", "report_to", "eval_steps", "eval_strategy",
    "load_best_model_at_end", "per_device_eval_batch_size", "max_steps", "num_train_epochs", "nproc_per_node",
    "disable_gradient_checkpointing", "padding_free", "torch_compile", "enable_liger_kernel", "quantization_method",
    "overwrite_cache", "preprocessing_num_workers", "dataloader_num_workers", "ddp_timeout",
    "include_num_input_tokens_seen", "double_quantization", "deepspeed", "flash_attn"})


def _text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else repr(value) if isinstance(value, str) else str(value)


def _shown_pair(new: Any, old: Any) -> tuple[str, str]:
    """``new`` and ``old`` as the resume refusal shows them: in full (paths, lists, numbers); texts over 80
    characters (a persona) from 20 characters before where the two first differ, 60 characters long, ``…``
    marking what is left out, so the difference itself can be read."""
    a, b = _text(new), _text(old)
    if not (isinstance(new, str) and isinstance(old, str)) or max(len(a), len(b)) <= 80:
        return a, b
    start = max(0, len(os.path.commonprefix([a, b])) - 20)

    def cut(t: str) -> str:
        return ("…" if start else "") + t[start:start + 60] + ("…" if len(t) > start + 60 else "")

    return cut(a), cut(b)


def _resume_diffs(cfg: TrainConfig, old: dict, may_change: set[str]) -> list[str]:
    """One ``--key new (checkpoint: old)`` per setting that differs from the record ``old``. ``lora_alpha``
    left unset follows the rank: it is left out when ``--lora_rank`` is listed, else named as derived."""
    new = _run_config_dict(cfg)
    diffs = {k: v for k, v in new.items() if k not in may_change and k in old and old[k] != v}
    derived_alpha = cfg.lora_alpha is None and "lora_alpha" in diffs
    if derived_alpha and "lora_rank" in diffs:
        del diffs["lora_alpha"]
    out = []
    for k, v in diffs.items():
        shown, was = _shown_pair(v, old[k])
        flag = f"lora_alpha {shown} (2 × --lora_rank)" if k == "lora_alpha" and derived_alpha else f"--{k} {shown}"
        out.append(f"{flag} (checkpoint: {was})")
    return out


def _other_process_count(cfg: TrainConfig, ckpt: Path) -> bool:
    """True when ``ckpt`` resumes on another number of processes than it was saved from: the accumulation is
    then the checkpoint's micro-batches per step over the new count, whatever the flag says
    (:func:`steam_persona.trainer.distributed.accum_for_resume`)."""
    from steam_persona.trainer import distributed

    world = distributed.rank_world()[1] if distributed.launched() else cfg.nproc_per_node
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("world_size", world)) != world


def check_resume_settings(cfg: TrainConfig, ckpt: Path) -> None:
    """Refuse to resume ``ckpt`` with settings that define the run (all but :data:`RESUMABLE_CHANGES`)
    other than those it was trained with: its ``run_config.yaml``, else its run dir's for a checkpoint saved
    without one (:meth:`RunRecord.find`); keys the record lacks are not compared. Runs before anything heavy
    is loaded.

    Raises:
        UserError: one line listing every differing setting with the checkpoint's value, and the two ways
            out (the checkpoint's values, or starting over); or the record is not valid YAML.
    """
    from steam_persona.common.run_record import RunRecord

    record = RunRecord.load(ckpt)
    if record.path is None:
        return
    may_change = RESUMABLE_CHANGES | ({"gradient_accumulation_steps"} if _other_process_count(cfg, ckpt) else set())
    diffs = _resume_diffs(cfg, record.raw, may_change)
    if diffs:
        start_over = ("drop --resume_from_checkpoint and pass --overwrite_output_dir to start over"
                      if cfg.resume_from_checkpoint else "pass --overwrite_output_dir to start over")
        raise UserError(f"{ckpt}: resuming with settings that differ from the checkpoint's: {', '.join(diffs)}; "
                        f"rerun with the checkpoint's values (recorded in {record.path}) or {start_over}")


def data_fingerprint(cfg: TrainConfig) -> dict[str, str]:
    """sha256 (hex) of the bytes of each file of ``--dataset`` and ``--eval_dataset``, keyed by its path (a
    registered name resolved through ``dataset_info.json``). A missing file is left out: reading it says so.
    Costs one sequential read of each file (``hashlib.file_digest``), well under the tokenizing that follows.

    Raises:
        UserError: a name unknown to the registry (as reading the data would).
    """
    import hashlib

    from steam_persona.trainer import data

    paths = [data.resolve(name, cfg.dataset_dir).path for name in [*cfg.dataset, *cfg.eval_dataset]]
    out = {}
    for p in paths:
        if p.is_file():
            with p.open("rb") as f:
                out[str(p)] = hashlib.file_digest(f, "sha256").hexdigest()
    return out


def data_reading(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    """How each file of ``--dataset`` and ``--eval_dataset`` is read, keyed by its path: the ``formatting``,
    ``columns`` and ``tags`` of its ``dataset_info.json`` entry (a direct file: the defaults).

    Raises:
        UserError: a name unknown to the registry (as reading the data would).
    """
    from steam_persona.trainer import data

    specs = [data.resolve(name, cfg.dataset_dir) for name in [*cfg.dataset, *cfg.eval_dataset]]
    return {str(s.path): {"formatting": s.formatting, "columns": s.columns, "tags": s.tags} for s in specs}


def check_resume_data(cfg: TrainConfig, ckpt: Path) -> None:
    """Refuse to resume ``ckpt`` when a dataset file's bytes changed since it was saved (same path, other
    contents: a rerun ``prepare``), or how it is read (its ``dataset_info.json`` entry: columns swapped, another
    formatting). Compares :func:`data_fingerprint` and :func:`data_reading` with ``trainer_state.json``'s
    ``data_sha256`` and ``data_reading``; a checkpoint without one (saved before it was recorded) is not compared
    on it.

    Raises:
        UserError: one line naming the changed file and the two ways out.
    """
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    start_over = ("drop --resume_from_checkpoint and pass --overwrite_output_dir" if cfg.resume_from_checkpoint
                  else "pass --overwrite_output_dir")
    saved = state.get("data_sha256") or {}
    changed = [p for p, h in data_fingerprint(cfg).items() if p in saved and saved[p] != h]
    if changed:
        also = f"; so did {', '.join(changed[1:])}" if changed[1:] else ""
        raise UserError(f"{changed[0]}: the dataset changed since {ckpt} was saved (its sha256 differs{also}); "
                        f"put back the data the run "
                        f"was trained on, or {start_over} to start over on the new data")
    saved = state.get("data_reading") or {}
    for path, now in data_reading(cfg).items():
        was = saved.get(path, now)
        if was != now:
            what = "; ".join(f"{k} {json.dumps(was[k])} then, {json.dumps(now[k])} now" for k in now if was.get(k) != now[k])
            raise UserError(f"{path}: the dataset is read differently since {ckpt} was saved (its dataset_info.json "
                            f"entry: {what}); put back the entry the run was trained with, or {start_over} to start "
                            "over")


def _clear_run(out: Path) -> None:
    """--overwrite_output_dir: remove our own artifacts only (never unrelated files)."""
    for p in [*out.glob("checkpoint-*"), out / BEST_DIR]:
        _remove_checkpoint(p)
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _remove_checkpoint(ckpt: Path) -> None:
    """Remove a checkpoint folder (``--save_total_limit``, ``--overwrite_output_dir``), first moving an ``export``
    folder inside it (an ``--export_dir`` the user put there) out beside it, as ``export-checkpoint-N`` (where
    ``steam-train export`` puts a checkpoint's export), with a line saying so: a verified GGUF is never removed."""
    inner = ckpt / "export"
    if inner.is_dir():
        target = ckpt.parent / f"export-{ckpt.name}"
        target = target if not target.exists() else ckpt.parent / f"export-{ckpt.name}-{time.time_ns()}"
        inner.rename(target)
        console.print(f"[yellow]{inner} moved to {target}[/] before {ckpt.name} was removed")
    shutil.rmtree(ckpt, ignore_errors=True)


def checkpoint_bytes(params: list[Any], tokenizer: Any) -> int:
    """About what one ``checkpoint-N`` takes on disk: the trainable (LoRA) weights as they are stored, AdamW's
    two moments per weight in fp32 (``optimizer.pt``), and the tokenizer files (``tokenizer.json`` as saved, plus
    64 KiB for the small ones and the template)."""
    n = sum(p.numel() for p in params)
    weights = sum(p.numel() * p.element_size() for p in params)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    tok = len(backend.to_str(pretty=True).encode("utf-8")) if backend is not None else 0  # as saved: indented
    return weights + 2 * 4 * n + tok + 64 * 1024


def check_free_space(out: Path, need: int) -> None:
    """Refuse to start when the ``--output_dir`` filesystem has less free space than one checkpoint needs
    (:func:`checkpoint_bytes`): the run would fail at its first save.

    Raises:
        UserError: one line naming the dir, the need and the free space.
    """
    where = out
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < need:
        raise UserError(f"{out}: --output_dir: not enough free disk for a checkpoint: one needs about {byte_size(need)} "
                        f"(LoRA weights, AdamW's two moments in fp32, the tokenizer) and {where} has {byte_size(free)} "
                        "free; free some disk or pick another --output_dir")


def _save_adapter_and_tokenizer(model: Any, tokenizer: Any, target: Path) -> None:
    """Save the PEFT adapter (+ tokenizer) into ``target``: written into a temp folder inside it, then each
    file renamed into place, with plain modes; the temp folder is removed (also on error), so files already
    in ``target`` stay whole when a write fails (:func:`run` says why in one line). The temp folder is named as
    :mod:`steam_persona.common.atomic` names its temps (``.save.tmp-<pid>``), so a rerun removes one that a killed
    run left (:func:`~steam_persona.common.atomic.remove_stale_in`)."""
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f".save.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        atomic.plain_modes(tmp)
        for f in tmp.iterdir():
            os.replace(f, target / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _save_checkpoint(out: Path, step: int, model: Any, tokenizer: Any, optimizer: Any, scheduler: Any,
                     state: dict, cfg: TrainConfig) -> None:
    import torch

    target = out / f"checkpoint-{step}"
    with atomic.atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if not cfg.save_only_model:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            rng = {"python": random.getstate(), "torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save(rng, tmp / "rng_state.pth")
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "global_step": step}, indent=2), encoding="utf-8")
        (tmp / "run_config.yaml").write_text(_run_config_yaml(cfg), encoding="utf-8")
    if cfg.save_total_limit:
        ckpts = sorted((int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
        for _, p in ckpts[: max(0, len(ckpts) - cfg.save_total_limit)]:
            _remove_checkpoint(p)


def _load_checkpoint(ckpt: Path, model: Any, optimizer: Any, scheduler: Any) -> dict:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", map_location="cpu", weights_only=True))
    _follow_schedule(scheduler)
    rng_file = ckpt / "rng_state.pth"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))


def _follow_schedule(scheduler: Any) -> None:
    """Set the optimizer's lr to this run's schedule at the restored step. ``optimizer.pt`` holds the lr of the
    schedule the checkpoint was saved under, which differs when a resume trains longer (``--max_steps`` /
    ``--num_train_epochs``); without this the first resumed step would use it. Stepping back one step and
    stepping again recomputes the lr through the scheduler's own (public) ``step``."""
    scheduler.last_epoch -= 1
    scheduler.step()


# ---------------------------------------------------------------- the run


def prepare_data(cfg: TrainConfig, tokenizer: Any) -> tuple[Any, Any]:
    """Load, template, tokenize and truncate the datasets. Returns ``(ChatTemplate, Encoded)``.

    Raises:
        UserError: any dataset problem, or no sample fitting ``cutoff_len``.
    """
    from steam_persona.trainer.templates import ChatTemplate

    template = ChatTemplate(cfg.template, tokenizer)
    return template, encode_datasets(cfg, template, cfg.dataset)


def encode_datasets(cfg: TrainConfig, template: Any, datasets: list[str]) -> Any:
    """Read, template, tokenize and truncate `datasets` (``--dataset`` or ``--eval_dataset``) with the run's
    persona, encoding, ``max_samples`` and ``cutoff_len``. Returns ``Encoded``.

    Raises:
        UserError: any dataset problem, or no sample fitting ``cutoff_len``.
    """
    from steam_persona.trainer import data
    from steam_persona.trainer.encode import encode_dataset

    convs = data.load_conversations(datasets, cfg.dataset_dir, system=cfg.system or None,
                                    encoding=cfg.encoding, max_samples=cfg.max_samples)
    enc = encode_dataset(template, convs, cfg.cutoff_len)
    if not len(enc):
        raise UserError(f"{','.join(datasets)}: no sample's reply fits --cutoff_len {cfg.cutoff_len}; raise --cutoff_len")
    return enc


def _check(cfg: TrainConfig) -> None:
    if not cfg.dataset:
        raise UserError("--dataset: none given; pass --dataset NAME (with --dataset_dir) or --dataset path/to/file.json")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "save_steps", "logging_steps", "lora_rank", "cutoff_len"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} {getattr(cfg, name)}: must be at least 1")
    if cfg.eval_steps is not None and cfg.eval_steps < 1:
        raise UserError(f"--eval_steps {cfg.eval_steps}: must be at least 1 (unset: every --save_steps)")
    if cfg.quantization_bit not in (None, 4, 8):
        raise UserError(f"--quantization_bit {cfg.quantization_bit}: use 4 or 8 (or leave it unset)")
    if not 0 <= cfg.warmup_ratio < 1:
        raise UserError(f"--warmup_ratio {cfg.warmup_ratio}: must be in [0, 1)")
    if not 0 < cfg.learning_rate < math.inf:  # also nan, which every comparison refuses
        raise UserError(f"--learning_rate {cfg.learning_rate}: must be a positive number")
    if cfg.max_steps <= 0 and not 0 < cfg.num_train_epochs < math.inf:
        raise UserError(f"--num_train_epochs {cfg.num_train_epochs}: must be a finite number above 0 (or pass "
                        "--max_steps)")
    if cfg.eval_dataset and cfg.val_size:
        raise UserError(f"--eval_dataset and --val_size {as_typed(cfg.val_size)} are both set; give one source of eval samples")
    if cfg.load_best_model_at_end and (cfg.eval_strategy == "no" or not (cfg.val_size or cfg.eval_dataset)):
        raise UserError("--load_best_model_at_end needs eval samples: add --eval_dataset FILE or --val_size 0.05 "
                        "(and keep --eval_strategy steps)")


def check_datasets(cfg: TrainConfig) -> None:
    """Each ``--dataset`` and ``--eval_dataset`` is a registered name or a file that exists: checked before the
    tokenizer and model load, so a typo in the data costs no model load (a hub download or its retries).

    Raises:
        UserError: a missing ``--dataset_dir`` registry, an unknown name, or a missing file.
    """
    from steam_persona.trainer import data

    for flag, names in (("--dataset", cfg.dataset), ("--eval_dataset", cfg.eval_dataset)):
        for name in names:
            data.require_file(data.resolve(name, cfg.dataset_dir, flag))


def run(cfg: TrainConfig, *, callbacks: tuple[Callable[[int, dict], None], ...] = (),
        resume_hint: bool = True) -> dict[str, Any]:
    """Train a LoRA/QLoRA adapter; resume automatically from the run dir's last checkpoint.

    Args:
        cfg: the run's settings (see :class:`TrainConfig`).
        callbacks: called on rank 0 after each optimizer step as ``cb(step, log_row)`` (1-based step;
            ``log_row`` has loss, lr, grad_norm, epoch, tokens). An exception stops the run (tests
            simulate crashes with it); checkpoints already written stay valid.
        resume_hint: on Ctrl-C, print how this command resumes; False for a caller that prints its own
            (``steam-train demo``, whose rerun is a different command).

    Returns:
        ``all_results.json``'s content: ``output_dir``, ``global_step``, ``loss_first`` (mean loss per
        learned token of step 1), ``loss_last`` (mean over the last ``loss_last_steps`` steps: the last
        ``trainer_log.jsonl`` row, as the step line, bar and plot show it), ``train_loss`` (mean over
        every step of the run), ``eval_loss`` (the last eval, when ``--val_size`` or ``--eval_dataset``),
        ``best_eval_loss`` / ``best_global_step`` (the lowest eval loss and its step; with
        ``--load_best_model_at_end`` that adapter is the one saved, and ``kept`` says so), ``train_runtime`` (s of
        training of the steps kept, summed over resumed sessions), ``train_samples_per_second``,
        ``train_tokens_per_second`` (over that runtime), ``resumed_from_step`` (0 unless this session resumed),
        ``steady_tokens_per_second`` (this session, after its warm-up steps,
        :mod:`steam_persona.trainer.throughput`), ``compile_seconds`` (this session's warm-up steps' time beyond
        steady speed; ``None`` when not compiling),
        ``num_samples``, ``truncated``, ``dropped``.

    Raises:
        UserError: bad data/flags (nothing is written to ``output_dir``), or a non-finite loss/grad
            norm (:class:`NonFiniteError`; the adapter is not saved), or another ``train`` writing
            ``output_dir`` (``<output_dir>.lock`` beside it holds its pid).
    """
    from steam_persona.trainer import distributed

    main = distributed.rank_world()[0] == 0
    recipe = TrainRecipe(cfg, callbacks)
    # SIGTERM / SIGHUP (a scheduler's stop, a closed terminal) end a run as Ctrl-C does: where it stopped and how
    # to go on, exit 128+signum; a Ctrl-C that Python dropped (raised inside a finalizer while loading) still stops it
    # before the next step. Installed first, so a stop at any moment says so and removes the lock; the stop line
    # inside the block, so a second signal while it is printed quits at once (Interrupts.handler). Not under a
    # launcher: its agent stops the workers with SIGTERM, maybe inside a collective. --nproc_per_node's process
    # hands its signals to torchrun's agent while the workers run (distributed.relaunch).
    stop = contextlib.nullcontext(Interrupts()) if distributed.launched() else \
        stop_signals_interrupt(STOP_SIGNALS + (signal.SIGINT,))
    with stop as recipe.interrupts, \
            _resume_hint_on_interrupt(Path(cfg.output_dir), cfg, recipe.where, main and resume_hint,
                                      recipe.interrupts):
        _check(cfg)
        check_datasets(cfg)
        if config.given(cfg, "flash_attn") and main and not os.environ.get(locking.HELD_ENV):
            console.print("[dim]flash_attn: no effect here; training chooses the attention itself (per-sample "
                          "FlashAttention or SDPA, docs/training.md)[/dim]")
        lock = locking.folder_lock(Path(cfg.output_dir), "train", "--output_dir") if main else contextlib.nullcontext()
        with lock, atomic.writing_into(Path(cfg.output_dir), "--output_dir"):
            return _run(recipe)


def _run(recipe: TrainRecipe) -> dict[str, Any]:
    from steam_persona.trainer import distributed
    from steam_persona.trainer import model as model_lib

    cfg = recipe.cfg
    if distributed.rank_world()[0] == 0 and not locking.inherited():
        out = Path(cfg.output_dir)
        atomic.note_removed(atomic.remove_stale_in(out) + atomic.remove_stale_in(out / BEST_DIR))
    resume = _resume_point(cfg, Path(cfg.output_dir))
    if resume is None and not cfg.overwrite_output_dir and only_leftovers(Path(cfg.output_dir)) \
            and distributed.rank_world()[0] == 0 and not locking.inherited():
        console.print(f"{cfg.output_dir}: starting over (it holds only {' and '.join(_LEFTOVERS)} of a run stopped "
                      "before its first checkpoint)", markup=False, highlight=False)
    if resume is not None:
        check_resume_settings(cfg, resume)
        check_resume_data(cfg, resume)
    if cfg.nproc_per_node > 1 and not distributed.launched():
        # --nproc_per_node N: check the user's input here (one-line errors, exit 2), then run N copies under torchrun
        prepare_data(cfg, model_lib.load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code))
        return distributed.relaunch(cfg, cfg.nproc_per_node)
    recipe.setup(resume)
    recipe.interrupts.check()
    recipe.train()
    return recipe.finish()


class TrainRecipe:
    """One training run in parts, after torchtune's ``LoRAFinetuneRecipeSingleDevice``: :meth:`setup`
    (precision, data, model, optimizer, run dir), :meth:`train` (a loop of :meth:`train_step`,
    :meth:`maybe_eval`, :meth:`save_checkpoint`) and :meth:`finish` (best adapter, final save, plot,
    results). Each part can be called alone once the parts it reads have run (tests do).

    Everything that can fail on user input (tokenizer, data, model, LoRA targets) happens before the
    output dir is touched (:meth:`open_run_dir`).
    """

    def __init__(self, cfg: TrainConfig, callbacks: tuple[Callable[[int, dict], None], ...] = ()) -> None:
        self.cfg, self.callbacks = cfg, callbacks
        self.out = Path(cfg.output_dir)
        self.state: dict[str, Any] = {"total_tokens": 0, "elapsed": 0.0}
        self.start = 0
        self.rows: list[dict] = []
        self.log: Any = None
        self.last_eval: float | None = None
        # running figures of this invocation's steps (:meth:`train` adds to them)
        self.step_losses: list[float] = []
        self.pending: list[float] = []
        self.last_logged: float | None = None
        self.last_window = 0
        self.tokens_run = 0
        self.t0 = time.time()
        self.threads: int | None = None  # torch CPU threads (setup; None on a GPU)
        self.interrupts = Interrupts()  # the stop signals received (run's stop_signals_interrupt)
        self.speed: Throughput | None = None  # the loop's speed and ETA (train)
        self.stepping = False  # inside an optimizer step (train)

    def setup(self, resume: Path | None) -> None:
        """Every setup part in order; ``resume``: the checkpoint to continue from (:func:`_resume_point`).
        Ends with the model in training mode, wrapped for DDP in a multi-process run."""
        from steam_persona.trainer import distributed

        self.setup_precision()
        self.setup_data()
        self.setup_model()
        self.setup_optimizer(resume)
        if self.main:
            check_free_space(self.out, checkpoint_bytes(self.params, self.tokenizer))
        # after the checks of the user's input, whose errors stay one line
        self.threads = threads_for_load() if self.device == "cpu" else None
        self.open_run_dir(resume)
        self.model.train()
        self.ddp = distributed.wrap(self.model, self.device)  # DDP over the LoRA weights, else the model itself

    def setup_precision(self) -> None:
        """Device, dtypes (:func:`resolve_precision`) and this process's rank in a multi-process run."""
        from steam_persona.trainer import distributed

        self.device, self.dtype, self.amp = resolve_precision(self.cfg)
        self.rank, self.world = distributed.init(self.device)  # (0, 1) unless started by torchrun / accelerate
        self.main = self.rank == 0

    def setup_data(self) -> None:
        """Tokenizer, chat template, encoded train/eval samples, the ``--val_size`` split and the data's
        :func:`data_fingerprint` (saved in each checkpoint).

        Raises:
            UserError: any dataset problem (:func:`prepare_data`), or a ``--val_size`` taking every sample.
        """
        from steam_persona.trainer import model as model_lib

        cfg = self.cfg
        self.tokenizer = model_lib.load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
        with console.status("reading and tokenizing the dataset"):
            self.template, self.enc = prepare_data(cfg, self.tokenizer)
            self.eval_enc = encode_datasets(cfg, self.template, cfg.eval_dataset) if cfg.eval_dataset else self.enc
        self.train_idx, self.eval_idx = split_eval(len(self.enc), cfg.val_size, cfg.seed)
        if cfg.eval_dataset:
            self.eval_idx = list(range(len(self.eval_enc)))
        self.data_sha256, self.data_reading = data_fingerprint(cfg), data_reading(cfg)

    def setup_model(self) -> None:
        """Seed, load the base (quantized with ``--quantization_bit``), add LoRA, apply the speed levers
        (:func:`steam_persona.trainer.accel.apply_fast_path`), and give the tokenizer the training format."""
        import torch

        from steam_persona.trainer import accel
        from steam_persona.trainer import model as model_lib

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        with console.status(f"loading {cfg.model_name_or_path}" + (f" in {cfg.quantization_bit}-bit" if cfg.quantization_bit else "")):
            model = model_lib.load_base(cfg.model_name_or_path, quantization_bit=cfg.quantization_bit, dtype=self.dtype,
                                        device=self.device, trust_remote_code=cfg.trust_remote_code)
            model = model_lib.add_lora(model, lora_target=cfg.lora_target, lora_rank=cfg.lora_rank,
                                       lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                       gradient_checkpointing=not cfg.disable_gradient_checkpointing)
            if self.amp is not None:  # training runs under autocast: it casts the LoRA matmuls' operands itself
                model_lib.skip_lora_input_casts(model)
            # GPU speed/memory levers (docs/gpu.md); each reports off on CPU
            self.levers = accel.apply_fast_path(model, liger_kernels=cfg.enable_liger_kernel,
                                                compile_layers=cfg.torch_compile)
        self.model = model
        if self.main:  # after the model loaded: a bad --lora_target or model stays a one-line error
            self._print_setup()
        # the saved tokenizer carries the training format and stops at the end-of-turn token
        self.tokenizer.chat_template = self.template.saved_jinja(cfg.system)
        self.tokenizer.eos_token = self.template.eot_token

    def _print_setup(self) -> None:
        import torch

        console.print(data_line(self.enc, self.cfg.cutoff_len))
        if self.cfg.eval_dataset:
            console.print(data_line(self.eval_enc, self.cfg.cutoff_len, "eval dataset"))
        if self.device.startswith("cuda"):
            console.print("[dim]" + "; ".join(f"{k}: {v}" for k, v in self.levers.items()) + "[/dim]")
        if self.device == "cpu" and self.dtype == torch.float32 and _cpu_has_bf16():
            console.print("[dim]CPU: training in float32 (LLaMA-Factory's default); this CPU has bf16 instructions: "
                          "--bf16 True is about 2x faster[/dim]")

    def setup_optimizer(self, resume: Path | None = None) -> None:
        """The step plan, AdamW over the trainable (LoRA) parameters, the LR schedule and, for fp16, a
        gradient scaler. A checkpoint from another process count keeps its micro-batches per step
        (:func:`steam_persona.trainer.distributed.accum_for_resume`)."""
        import torch
        from transformers import get_scheduler

        from steam_persona.trainer import distributed

        cfg = self.cfg
        self.accum = distributed.accum_for_resume(resume, cfg.gradient_accumulation_steps, self.world) if resume \
            else cfg.gradient_accumulation_steps
        self.plan = StepPlan(len(self.train_idx), cfg.per_device_train_batch_size, self.accum,
                             cfg.num_train_epochs, cfg.max_steps, cfg.seed, self.rank, self.world)
        self.total = self.plan.total
        warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * self.total)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                           fused=self.device.startswith("cuda"))
        self.scheduler = get_scheduler(cfg.lr_scheduler_type, self.optimizer, num_warmup_steps=warmup,
                                       num_training_steps=self.total)
        if self.main and warmup >= self.total and cfg.lr_scheduler_type != "constant":
            console.print(f"[yellow]{_all_warmup_line(cfg, self.total, warmup)}[/yellow]")
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None

    def open_run_dir(self, resume: Path | None) -> None:
        """Clear (``--overwrite_output_dir``) or resume the run dir, then (rank 0) write ``run_config.yaml``
        and keep ``trainer_log.jsonl``'s rows up to the resumed step."""
        from steam_persona.trainer import distributed

        distributed.barrier()  # every rank has chosen its resume point before rank 0 writes
        if self.main and self.out.exists() and self.cfg.overwrite_output_dir and resume is None:
            _clear_run(self.out)
        if resume is not None:
            self.state = _load_checkpoint(resume, self.model, self.optimizer, self.scheduler)
            self.start = self.state["global_step"]
            self.pending = [float(x) for x in self.state.get("pending_losses", [])]  # the log row's window so far
            if self.start > self.total or (self.start == self.total and self.cfg.resume_from_checkpoint):
                unfinished = self.start == self.total and finished_run(self.out) is None
                raise UserError(f"{resume}: this checkpoint is at step {self.start} and the run has {self.total} "
                                f"steps; to train longer, pass {_longer(self.cfg, self.start)}" + ("; to finish the run (save its final adapter), rerun "
                                                         "without --resume_from_checkpoint" if unfinished else ""))
            console.print(f"resuming from {resume} (step {self.start} of {self.total})")
        log_path = self.out / "trainer_log.jsonl"
        self.rows = [r for r in atomic.read_jsonl_log(log_path) if r.get("current_steps", 0) <= self.start] \
            if self.start else []
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic.write_jsonl(log_path, self.rows)
            atomic.write_text(self.out / "run_config.yaml", _run_config_yaml(self.cfg))
            self.log = atomic.JsonlLog(log_path)

    # ------------------------------------------------------------ steps

    def batch(self, indices: list[int], pool: list[int], src: Any = None) -> dict[str, Any]:
        """Collated tensors (on the training device) of samples ``pool[i] for i in indices`` of ``src``
        (default: the training samples): padding-free packed rows or a padded batch (``--padding_free``)."""
        from steam_persona.trainer.packing import collate

        src = src if src is not None else self.enc
        feats = [{"input_ids": src.input_ids[pool[i]], "labels": src.labels[pool[i]]} for i in indices]
        b = collate(feats, self.cfg.padding_free, self.tokenizer.pad_token_id)
        return {k: v.to(self.device) for k, v in b.items()}

    def _learned(self, i: int) -> int:
        return sum(1 for t in self.enc.labels[self.train_idx[i]][1:] if t != -100)

    def _autocast(self) -> Any:
        import torch

        return torch.autocast(self.device.split(":")[0], dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def _micro_batches(self, step: int) -> list[list[int]]:
        """This rank's micro-batches of ``step``; padding-free, consecutive ones merged into longer packed rows
        (:func:`steam_persona.trainer.accel.merge_micro_batches`; per-sample attention keeps them cheap)."""
        from steam_persona.trainer import accel

        micro = self.plan.step(step)
        if self.cfg.padding_free:
            row_budget = max(self.cfg.per_device_train_batch_size * self.cfg.cutoff_len, accel.ROW_TOKENS)
            micro = accel.merge_micro_batches(micro, lambda i: len(self.enc.input_ids[self.train_idx[i]]), row_budget)
        return micro

    def train_step(self, step: int) -> dict[str, Any]:
        """Optimizer step ``step`` (0-based): forward/backward over this rank's micro-batches, the loss being
        the sum over the step's learned tokens (all ranks) divided by their count; clip, AdamW, LR schedule.

        Returns:
            ``{"loss": float, "tokens": int, "samples": int, "grad_norm": float, "lr": float}``: the step's
            mean loss per learned token, tokens and samples over all ranks, the gradient norm before
            clipping, and the learning rate the step used.

        Raises:
            NonFiniteError: the loss or (without a gradient scaler) the gradient norm is NaN/inf; the
                optimizer has not stepped.
        """
        import torch

        from steam_persona.trainer import distributed

        n_tok = sum(self._learned(i) for mb in self.plan.group(step) for i in mb)  # the loss's divisor
        loss_total, tokens, samples = self._forward_backward(step, n_tok)
        loss_total, tokens, samples = distributed.all_reduce_sum([loss_total, tokens, samples], self.device)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if not torch.isfinite(grad_norm) and self.scaler is None:
            raise NonFiniteError(f"{self.out}: step {step + 1}: the gradient norm became {float(grad_norm)}; stopped "
                                 f"without saving this step. {self._non_finite_fix()}")
        lr = self.scheduler.get_last_lr()[0]
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_total / max(n_tok, 1), "tokens": int(tokens), "samples": int(samples),
                "grad_norm": float(grad_norm), "lr": lr}

    def _non_finite_fix(self) -> str:
        import torch

        if self.amp == torch.float16:
            return "Train in bf16 (--bf16 True) instead of fp16, or lower --learning_rate"
        return "Lower --learning_rate"

    def _forward_backward(self, step: int, n_tok: int) -> tuple[float, int, int]:
        """Accumulate the gradients of ``step``; returns this rank's (loss sum, tokens, samples).

        In a multi-process run a rank left without a micro-batch (short last step) joins DDP's all-reduce
        with a zero-weighted one; gradients are all-reduced on the last micro-batch only
        (:mod:`steam_persona.trainer.distributed`)."""
        from steam_persona.trainer import distributed
        from steam_persona.trainer.packing import loss_sum

        micro = self._micro_batches(step)
        runs = micro or self.plan.group(step)[:1]
        loss_total, tokens, samples = 0.0, 0, 0
        for j, mb in enumerate(runs):
            batch = self.batch(mb, self.train_idx)
            with distributed.sync_grads(self.ddp, last=j == len(runs) - 1):
                with self._autocast():
                    ls, _ = loss_sum(self.ddp, batch)
                scaled = ls / max(n_tok, 1)
                if self.world > 1:  # DDP averages over ranks: × world makes it the sum over the step's tokens
                    scaled = scaled * (self.world if micro else 0)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            # read after the backward is queued: a check before it would leave the GPU idle while the host
            # launches the backward's first kernels
            value = ls.detach().item()
            if not math.isfinite(value):
                raise NonFiniteError(f"{self.out}: step {step + 1}: the loss became {value}; stopped without "
                                     f"saving this step. {self._non_finite_fix()}")
            if micro:
                loss_total += value
                tokens += int(batch["input_ids"].numel() if self.cfg.padding_free else batch["attention_mask"].sum())
                samples += len(mb)
        return loss_total, tokens, samples

    def evaluate(self) -> float:
        """Mean loss per learned token over the eval samples, with the current (training) weights."""
        import torch

        from steam_persona.trainer.packing import loss_sum

        bs, n_eval = self.cfg.per_device_eval_batch_size, len(self.eval_idx)
        _eval_mode(self.model)
        tot, n = 0.0, 0
        with torch.no_grad(), self._autocast():
            for i in range(0, n_eval, bs):
                ls, k = loss_sum(self.model, self.batch(list(range(i, min(i + bs, n_eval))), self.eval_idx, self.eval_enc))
                tot, n = tot + float(ls), n + k
        self.model.train()
        return tot / max(n, 1)

    def maybe_eval(self, done: int) -> float | None:
        """After ``done`` steps (1-based): evaluate every ``--eval_steps`` (default ``--save_steps``) and at
        the last step when there are eval samples; log the row, track the best eval loss, and with
        ``--load_best_model_at_end`` save that adapter to ``best/``. Returns the eval loss, or ``None``."""
        cfg = self.cfg
        if not self.evaluates(done):
            return None
        if not console.is_terminal:
            console.print(f"eval at step {done}: {len(self.eval_idx)} samples …", markup=False, highlight=False)
        t_eval = time.time()
        self.last_eval = self.evaluate()
        seconds = time.time() - t_eval
        if self.speed is not None:  # an eval of the loop: the ETA counts the ones to come at its duration
            self.speed.add_eval(seconds)
        erow = {"current_steps": done, "total_steps": self.total, "eval_loss": round(self.last_eval, 4),
                "epoch": self.plan.epoch_at(done - 1)}
        self._log_row(erow)
        console.print(f"step {done}: eval loss (training weights) {self.last_eval:.4f} ({_hms(seconds)})")
        if self.last_eval < self.state.get("best_eval_loss", math.inf):
            self.state["best_eval_loss"], self.state["best_global_step"] = round(self.last_eval, 4), done
            if cfg.load_best_model_at_end:
                _save_adapter_and_tokenizer(self.model, None, self.out / BEST_DIR)
        return self.last_eval

    def evaluates(self, done: int) -> bool:
        """Whether the run evaluates after ``done`` steps: every ``--eval_steps`` (default ``--save_steps``) and
        at the last step, when there are eval samples."""
        if not self.evaluating:
            return False
        return done % (self.cfg.eval_steps or self.cfg.save_steps) == 0 or done == self.total

    @property
    def evaluating(self) -> bool:
        """Whether the run has eval samples and evaluates them (``--eval_strategy steps``)."""
        return bool(self.eval_idx) and self.cfg.eval_strategy != "no"

    def save_checkpoint(self, done: int) -> Path:
        """Write ``checkpoint-<done>/`` (adapter, tokenizer, optimizer/scheduler/RNG state unless
        ``--save_only_model``, ``trainer_state.json`` with what resuming on other process counts needs and the
        step losses since the last log row, so that a resumed run logs the rows an unbroken one does);
        returns its path. Older checkpoints beyond ``--save_total_limit`` are deleted."""
        first = self.state.get("first_loss", self.step_losses[0] if self.step_losses else None)
        st = {"total_tokens": int(self.state.get("total_tokens", 0)) + self.tokens_run,
              "elapsed": float(self.state.get("elapsed", 0.0)) + time.time() - self.t0,
              "loss_sum": self._loss_sum_before() + sum(self.step_losses),
              **({"first_loss": first} if first is not None else {}),
              **{k: self.state[k] for k in ("best_eval_loss", "best_global_step") if k in self.state},
              "world_size": self.world, "gradient_accumulation_steps": self.accum, "data_sha256": self.data_sha256,
              "data_reading": self.data_reading, "pending_losses": list(self.pending)}
        _save_checkpoint(self.out, done, self.model, self.tokenizer, self.optimizer, self.scheduler, st, self.cfg)
        return self.out / f"checkpoint-{done}"

    # ------------------------------------------------------------ the loop

    def train(self) -> None:
        """Steps ``start .. total-1`` with progress, logs, evals, checkpoints and callbacks (rank 0)."""
        self.compiling = self.levers.get("compile", "").startswith("on")
        warm = COMPILE_WARMUP_STEPS if self.compiling else 1 if self.device.startswith("cuda") else 0
        eval_tokens = sum(len(self.eval_enc.input_ids[i]) for i in self.eval_idx) if self.evaluating else 0
        self.speed = Throughput(self.total, self.start, warm, eval_tokens=eval_tokens,
                                share=forward_share(not self.cfg.disable_gradient_checkpointing),
                                eval_warmup=1 if self.compiling else 0)
        self.t0 = self.t_end = time.time()
        if self.main and self.compiling and not console.is_terminal:
            console.print(f"{COMPILING} …", markup=False, highlight=False)
        with self._progress() as self.prog:
            self.task = self.prog.add_task(COMPILING if self.compiling else "train", total=self.total,
                                           completed=self.start, loss="-", lr="-", tps="-", eta="-") \
                if self.main else None
            for step in range(self.start, self.total):
                self.interrupts.check()
                t_step = time.time()
                self.stepping = True
                stats = self.train_step(step)
                row = self._account(step, stats, t_step)
                self.stepping = False
                if self.main:
                    self._after_step(row, stats)

    def where(self) -> str | None:
        """Where the run is, as the interrupt line says it: ``"in step 3 of 10"``, ``"after step 3 of 10"``, or
        ``None`` before the loop (loading)."""
        if self.speed is None:
            return None
        done = self.speed.done
        return f"in step {done + 1} of {self.total}" if self.stepping else f"after step {done} of {self.total}"

    def _progress(self) -> Any:
        from rich.progress import TextColumn

        if not self.main:
            return contextlib.nullcontext()
        return progress(TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
                        TextColumn("{task.fields[tps]} tok/s"), TextColumn("ETA {task.fields[eta]}"), eta=False)

    def _account(self, step: int, stats: dict[str, Any], t_step: float) -> dict[str, Any]:
        """Add the step to the running figures; return its ``trainer_log.jsonl`` row.

        Every figure shown (bar, step line, log, plot, summary) is the mean loss of the steps since the
        last logged one; step 1 is always logged, so the log starts where the summary does."""
        self.tokens_run += stats["tokens"]
        self.step_losses.append(stats["loss"])
        self.pending.append(stats["loss"])
        done, now = step + 1, time.time()
        self.speed.add(stats["tokens"], now - t_step, now - self.t_end)
        self.t_end = now
        tps = self.speed.tokens_per_s()
        remaining = self.speed.eta_s(sum(map(self.evaluates, range(done, self.total + 1))))
        return {"current_steps": done, "total_steps": self.total,
                "loss": round(sum(self.pending) / len(self.pending), 4), "lr": stats["lr"],
                "epoch": self.plan.epoch_at(step), "grad_norm": round(stats["grad_norm"], 4),
                "throughput": None if tps is None else round(tps, 1),
                "total_tokens": int(self.state.get("total_tokens", 0)) + self.tokens_run,
                "percentage": round(100 * done / self.total, 2),
                "elapsed_time": _hms(float(self.state.get("elapsed", 0.0)) + now - self.t0),
                "remaining_time": None if remaining is None else _hms(remaining)}

    def _after_step(self, row: dict[str, Any], stats: dict[str, Any]) -> None:
        """Rank 0 after a step: progress, step line and log row, eval, checkpoint, callbacks."""
        done = row["current_steps"]
        tps = "-" if row["throughput"] is None else f"{row['throughput']:.0f}"
        eta = row["remaining_time"] or "-"
        self.prog.update(self.task, completed=done, loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", tps=tps, eta=eta,
                         description=COMPILING if self.speed.warming_up and self.compiling else "train")
        logged = done % self.cfg.logging_steps == 0 or done == self.total or done == 1
        if logged or done == self.start + 1:  # without a terminal, a resumed run's first step shows at once too
            # this session's time, as the bar shows it (the log's elapsed_time adds the earlier sessions')
            elapsed = _hms(self.t_end - self.t0) + (" this run" if self.start else "")
            plain_progress("train step", done, self.total, {
                "loss": f"{row['loss']:.4f}", "lr": f"{row['lr']:.2e}", "tokens/s": tps,
                "elapsed": elapsed, "ETA": eta})
        if logged:
            self._log_row(row)
            self.last_logged, self.last_window, self.pending = row["loss"], len(self.pending), []
        self.maybe_eval(done)
        if done % self.cfg.save_steps == 0 or done == self.total:  # the last step too, as HF Trainer: a run
            with self.interrupts.held_until_done():  # trains longer from there (--max_steps M --resume_from_checkpoint)
                self.save_checkpoint(done)
        for cb in self.callbacks:
            cb(done, {**row, "loss": stats["loss"]})

    def _log_row(self, row: dict[str, Any]) -> None:
        self.log.write(**row)
        self.rows.append(row)

    # ------------------------------------------------------------ the end

    def _loss_sum_before(self) -> float:
        """Sum of the step losses before the resumed step: the checkpoint's ``loss_sum``, else (a checkpoint
        saved before it was recorded) rebuilt from the kept log rows, each the mean of the steps since the last."""
        if "loss_sum" in self.state or not self.start:
            return float(self.state.get("loss_sum", 0.0))
        train_rows = [r for r in self.rows if "loss" in r and r["current_steps"] <= self.start]
        return sum(r["loss"] * (r["current_steps"] - prev["current_steps"])
                   for prev, r in zip([{"current_steps": 0}, *train_rows], train_rows))

    def results(self, runtime: float) -> dict[str, Any]:
        """``all_results.json``'s content (see :func:`run`) after ``runtime`` seconds of :meth:`train`; after a
        resume the loss, runtime and speed figures cover the whole run, the steady speed and compile time this
        session."""
        steps, steady = self.step_losses, self.speed.steady_tokens_per_s()
        if self.last_logged is None:  # resumed at the last step (stopped while saving the final adapter)
            train_rows = [r for r in self.rows if "loss" in r]
            if train_rows:
                before = train_rows[-2]["current_steps"] if len(train_rows) > 1 else 0
                self.last_logged, self.last_window = train_rows[-1]["loss"], train_rows[-1]["current_steps"] - before
        runtime = float(self.state.get("elapsed", 0.0)) + runtime
        tokens = int(self.state.get("total_tokens", 0)) + self.tokens_run
        samples = sum(len(mb) for s in range(self.total) for mb in self.plan.group(s))
        r: dict[str, Any] = {
            "output_dir": str(self.out), "global_step": self.total, "epoch": self.plan.epoch_at(self.total - 1),
            "resumed_from_step": self.start,
            "loss_first": round(self.state.get("first_loss", steps[0] if steps else float("nan")), 4),
            "loss_last": self.last_logged, "loss_last_steps": self.last_window,
            "train_loss": round((self._loss_sum_before() + sum(steps)) / self.total, 4) if steps or self.start
            else None,
            "train_runtime": round(runtime, 2),
            "train_samples_per_second": round(samples / runtime, 3) if runtime > 0 else None,
            "train_steps_per_second": round(self.total / runtime, 4) if runtime > 0 else None,
            "train_tokens_per_second": round(tokens / runtime, 1) if runtime > 0 else None,
            "steady_tokens_per_second": None if steady is None else round(steady, 1),
            "compile_seconds": round(self.speed.warmup_overhead_s(), 1) if self.compiling else None,
            "total_tokens": tokens,
            "num_samples": len(self.train_idx), "num_eval_samples": len(self.eval_idx),
            "num_records": len(self.enc) + len(self.enc.dropped),
            "truncated": self.enc.truncated, "dropped": len(self.enc.dropped),
            "torch_threads": self.threads,
        }
        if self.last_eval is not None:
            r["eval_loss"] = round(self.last_eval, 4)
        if "best_eval_loss" in self.state:
            r["best_eval_loss"], r["best_global_step"] = self.state["best_eval_loss"], self.state["best_global_step"]
        return r

    def finish(self) -> dict[str, Any]:
        """Close the log; on rank 0 keep the best adapter (``--load_best_model_at_end``), save the adapter and
        tokenizer, ``training_loss.png``, ``all_results.json`` and print the summary. Returns the results."""
        from steam_persona.trainer import distributed
        from steam_persona.trainer.plotting import plot_loss

        if self.log is not None:
            self.log.close()
        results = self.results(time.time() - self.t0)
        if self.main:
            best = self.out / BEST_DIR / "adapter_model.safetensors"
            if self.cfg.load_best_model_at_end and best.is_file():
                from peft import set_peft_model_state_dict
                from safetensors.torch import load_file

                set_peft_model_state_dict(self.model, load_file(str(best)))
                results["kept"] = f"best eval loss (step {results['best_global_step']})"
            _save_adapter_and_tokenizer(self.model, self.tokenizer, self.out)
            plot_loss(self.rows, self.out / "training_loss.png", title=f"{Path(self.cfg.output_dir).name}: loss")
            atomic.write_json(self.out / "all_results.json", results)
            precision = f"{str(self.amp or self.dtype).removeprefix('torch.')} on {self.device}" + (
                f" ({self.threads} thread{'s' if self.threads != 1 else ''})" if self.threads else "")
            _summary(self.cfg, results, self.template, precision)
        distributed.finish()  # the other ranks wait here until rank 0 has saved
        return results


#: What the progress shows while the first steps compile the decoder layers (steam_persona.trainer.throughput).
COMPILING = "compiling (first steps, about a minute)"


def _eval_mode(model: Any) -> None:
    """``model.eval()`` for a train-time eval, with the 4-bit layers left in train mode.

    bitsandbytes (0.50) repacks a ``Linear4bit`` weight for CPU inference on its first eval-mode forward
    on an AVX512-BF16 CPU, and from then on runs that layer through ``gemv_4bit``, which has no autograd,
    even back in train mode: training after the eval would lose the gradient through every quantized
    layer (bitsandbytes warns "gemv_4bit: an autograd kernel was not registered"). Those layers have no
    dropout, so train mode changes nothing else for them.
    """
    from bitsandbytes.nn import Linear4bit

    model.eval()
    for m in model.modules():
        if isinstance(m, Linear4bit):
            m.train()


def _all_warmup_line(cfg: TrainConfig, total: int, warmup: int) -> str:
    """The warning for a run that is all warm-up: every step trains below ``--learning_rate``, the first at 0
    (the warm-up of HF Trainer and LLaMA-Factory starts at lr 0)."""
    n = cfg.max_steps if cfg.max_steps > 0 else total
    steps = f"--max_steps {n}" if cfg.max_steps > 0 else f"this run's {n} step{'s' if n > 1 else ''}"
    given = f"--warmup_steps {cfg.warmup_steps}" if cfg.warmup_steps > 0 else \
        f"--warmup_ratio {cfg.warmup_ratio:g} ({warmup} step{'s' if warmup > 1 else ''})"
    return (f"warning: {steps} {'are' if n > 1 else 'is'} all warm-up ({given}): every step trains below --learning_rate "
            f"{cfg.learning_rate:g}, step 1 at lr 0; lower --warmup_steps / --warmup_ratio (0 for none) or raise "
            "--max_steps")


@contextlib.contextmanager
def _resume_hint_on_interrupt(out: Path, cfg: TrainConfig, where: Callable[[], str | None], main: bool,
                              interrupts: Interrupts):
    """On Ctrl-C (KeyboardInterrupt, or an error raised after one of `interrupts` came, which
    :func:`stop_signals_interrupt` raises as one) print, on rank 0, where the run stopped and how to go on, then
    re-raise. ``where`` says where the run is (:meth:`TrainRecipe.where`): ``None`` while loading, before the
    first step."""
    try:
        yield
    except Exception:
        if interrupts.received is None:
            raise
        _say_interrupted(out, cfg, where, main)
        raise
    except KeyboardInterrupt as e:
        from steam_persona.trainer import distributed

        if not isinstance(e, distributed.WorkersStopped):  # rank 0 of the launch has said where it stopped
            _say_interrupted(out, cfg, where, main)
        raise


def _say_interrupted(out: Path, cfg: TrainConfig, where: Callable[[], str | None], main: bool) -> None:
    if main:
        console.print(f"[yellow]{_interrupted_line(out, cfg, where())}[/yellow]")


def _interrupted_line(out: Path, cfg: TrainConfig, at: str | None) -> str:
    ckpt = resumable_checkpoint(out)
    when = at or while_loading("the first step")
    every = f"one is saved every --save_steps {cfg.save_steps} steps" + (
        " without --save_only_model" if cfg.save_only_model else "")
    if ckpt:
        how = f"rerun the same command to resume from {ckpt} (step {ckpt.name.split('-')[1]})"
    elif not (out.is_dir() and any(out.iterdir())):
        how = nothing_written(out)
    elif only_leftovers(out):
        how = f"no checkpoint saved yet ({every}); rerun the same command to start over"
    else:
        how = f"no resumable checkpoint yet ({every}); rerun with --overwrite_output_dir to start over"
    return f"interrupted {when}: {how}"


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _run_config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Every setting as ``run_config.yaml`` records it (``lora_alpha`` resolved to 2 × rank when unset)."""
    d = config.to_dict(cfg)
    d["lora_alpha"] = cfg.lora_alpha or 2 * cfg.lora_rank
    return d


def _run_config_yaml(cfg: TrainConfig) -> str:
    import yaml

    return yaml.safe_dump(_run_config_dict(cfg), allow_unicode=True, sort_keys=False)


def _loss_shown(r: dict) -> str:
    """``"10.83 (step 1) → 2.25 (mean of steps 91-100)"``: the first and last rows of trainer_log.jsonl."""
    n, last = r.get("loss_last_steps") or 1, r["global_step"]
    span = f"step {last}" if n == 1 else f"mean of steps {last - n + 1}-{last}"
    return f"{r['loss_first']} (step 1) → {r['loss_last']} ({span})"


def _summary(cfg: TrainConfig, r: dict, template: Any, precision: str) -> None:
    rows = [("base model", cfg.model_name_or_path + (f" ({cfg.quantization_bit}-bit)" if cfg.quantization_bit else "")),
            ("template", f"{cfg.template} (end of turn {template.eot_token})"),
            ("samples", f"{r['num_samples']} train, {r['num_eval_samples']} eval; --dataset: " + counts_line(
                r.get("num_records", r["num_samples"] + r["dropped"]), r["dropped"], r["truncated"], cfg.cutoff_len)),
            ("steps", r["global_step"]),
            ("precision", precision),
            ("loss", _loss_shown(r))]
    if "eval_loss" in r:
        shown = str(r["eval_loss"])
        if "best_eval_loss" in r:
            shown += f" (best {r['best_eval_loss']} at step {r['best_global_step']}{', kept' if 'kept' in r else ''})"
        rows.append(("eval loss (training weights)", shown))
    speed = f"{r['train_samples_per_second']} samples/s, {r['train_tokens_per_second']} tokens/s overall"
    if r.get("steady_tokens_per_second") is not None:
        speed += f"; {r['steady_tokens_per_second']} tokens/s steady"
    rows.append(("speed", speed))
    if r.get("compile_seconds") is not None:
        rows.append(("compile", f"{r['compile_seconds']} s (first steps, beyond their steady-state time)"))
    resumed = f" (all sessions; this one resumed at step {r['resumed_from_step']})" if r.get("resumed_from_step") else ""
    rows += [("runtime", _hms(r["train_runtime"]) + resumed), ("output", r["output_dir"])]
    summary_table("training done", rows)


warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*deprecated.*")

command = config.command(TrainConfig, run, name="train", help=(
    "LoRA/QLoRA SFT with LLaMA-Factory's flags: `steam-train train --stage sft --do_train --model_name_or_path "
    "Qwen/Qwen2.5-7B-Instruct --dataset steam_reviews --dataset_dir data --template qwen --finetuning_type lora "
    "--lora_target all --output_dir saves/x --quantization_bit 4 ...`, or `steam-train train config.yaml`. "
    "An unfinished run resumes from its last checkpoint, with the settings it was trained with (docs/training.md "
    "lists those that may change), unless --overwrite_output_dir."))
