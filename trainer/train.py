"""``steam-train train``: LoRA / QLoRA supervised fine-tuning with LLaMA-Factory's flags.

The seed command of the LLaMA-Factory recipe runs verbatim with ``steam-train train`` in place of
``llamafactory-cli train``; the same keys work in a YAML file (``steam-train train config.yaml``).

Python API::

    from steam_persona.trainer import config
    from steam_persona.trainer.train import TrainConfig, run
    cfg = config.build(TrainConfig, {"dataset": ["data.json"], "output_dir": "saves/x", "max_steps": 10})
    results = run(cfg)   # dict: output_dir, loss_first, loss_last, global_step, train_tokens_per_second, ...

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
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from steam_persona.trainer import config, io
from steam_persona.trainer.config import arg
from steam_persona.trainer.console import console, plain_progress, progress, summary_table
from steam_persona.trainer.errors import UserError
from steam_persona.trainer.persona import DEFAULT_SYSTEM
from steam_persona.trainer.throughput import COMPILE_WARMUP_STEPS, Throughput


@dataclass
class TrainConfig:
    """One training run. Field names and defaults follow LLaMA-Factory (``hparams/*_args.py``) and
    HF ``TrainingArguments``; ours are marked (ours)."""

    # --- LLaMA-Factory stage selection (accepted for compatibility; only SFT + LoRA exist here)
    stage: str = arg("sft", "Training stage (only sft).", choices=("sft",))
    do_train: bool = arg(True, "Run training (accepted for LLaMA-Factory compatibility).")
    finetuning_type: str = arg("lora", "Fine-tuning method (only lora; with --quantization_bit it is QLoRA).",
                               choices=("lora",))
    # --- model
    model_name_or_path: str = arg("smollm2", "Base model: HF hub id (honours HF_ENDPOINT), local folder, .gguf file, "
                                             "or 'smollm2' for the embedded SmolLM2-135M-Instruct.")
    trust_remote_code: bool = arg(False, "Allow model code from the hub/folder.")
    quantization_bit: int | None = arg(None, "Quantize the frozen base: 4 (QLoRA, NF4 + double quant) or 8 bits.")
    # --- data
    dataset: list[str] = arg([], "Dataset name(s) in DATASET_DIR/dataset_info.json, or .json/.jsonl path(s); comma-separated.")
    dataset_dir: str = arg("data", "Folder holding dataset_info.json.")
    encoding: str = arg("utf-8", "Text encoding of the dataset files (utf-8 also accepts a BOM; e.g. gbk). (ours)")
    template: str = arg("auto", "Prompt format: auto = the tokenizer's chat template; or default, chatml, qwen, "
                                "llama3, gemma, mistral, alpaca.")
    system: str = arg(DEFAULT_SYSTEM, "System prompt (the persona) for samples without one; '' for none. Recorded "
                                      "in run_config.yaml for export and serve.")
    cutoff_len: int = arg(2048, "Max tokens per sample (prompt + reply); longer prompts are cut, samples whose "
                                "reply cannot fit are dropped.")
    max_samples: int | None = arg(None, "Use at most this many samples per dataset (debugging).")
    val_size: float = arg(0.0, "Held-out eval split: a fraction (< 1) or a record count (>= 1).")
    eval_dataset: list[str] = arg([], "Eval dataset name(s) or .json/.jsonl path(s), e.g. prepare's _val file; "
                                      "used instead of a --val_size split.")
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
    # --- optimisation
    per_device_train_batch_size: int = arg(8, "Samples per micro-batch.")
    per_device_eval_batch_size: int = arg(8, "Samples per eval micro-batch.")
    gradient_accumulation_steps: int = arg(1, "Micro-batches per optimizer step (effective batch = product).")
    learning_rate: float = arg(5e-5, "Peak AdamW learning rate.")
    weight_decay: float = arg(0.0, "AdamW weight decay.")
    max_grad_norm: float = arg(1.0, "Gradient clipping norm (0 = off).")
    num_train_epochs: float = arg(3.0, "Epochs (may be fractional).")
    max_steps: int = arg(-1, "Optimizer steps; overrides num_train_epochs when > 0.")
    lr_scheduler_type: str = arg("linear", "LR schedule after warmup.",
                                 choices=("linear", "cosine", "constant", "constant_with_warmup", "polynomial",
                                          "inverse_sqrt", "cosine_with_restarts"))
    warmup_ratio: float = arg(0.0, "Warmup as a fraction of all optimizer steps.")
    warmup_steps: int = arg(0, "Warmup optimizer steps (overrides warmup_ratio when > 0).")
    eval_steps: int | None = arg(None, "Eval every this many optimizer steps with --val_size or --eval_dataset (default: save_steps).")
    eval_strategy: str = arg("steps", "When to evaluate (with --val_size or --eval_dataset): steps or no.", choices=("steps", "no"))
    load_best_model_at_end: bool = arg(False, "Save the adapter of the lowest eval loss as the run's adapter (kept in "
                                              "best/ while training); needs --val_size or --eval_dataset.")
    seed: int = arg(42, "Random seed (data order, LoRA init).")
    bf16: bool = arg(False, "Train in bfloat16 (the default on GPUs that support it, even without this flag).")
    fp16: bool = arg(False, "Train in float16 (warned on bf16-capable hardware: overflow risk).")
    use_cpu: bool = arg(False, "Train on the CPU even when a GPU is present.")
    nproc_per_node: int = arg(1, "Processes (one per GPU) on this host: > 1 re-runs this training under torchrun "
                                 "(torch.distributed.run) as DDP. Not needed when started by torchrun/accelerate. (ours)")
    # --- LoRA
    lora_rank: int = arg(8, "LoRA rank r.")
    lora_alpha: int | None = arg(None, "LoRA alpha (default 2 × rank).")
    lora_dropout: float = arg(0.0, "LoRA dropout.")
    lora_target: list[str] = arg(["all"], "Linear layers to adapt: all (every linear but the output head) or names "
                                          "like q_proj,v_proj.")
    disable_gradient_checkpointing: bool = arg(False, "Turn gradient (activation) checkpointing off (faster, more memory).")
    padding_free: bool = arg(True, "Pack each optimizer step's samples into rows without padding (per-sample "
                                   "positions, no cross-sample attention); False pads each micro-batch to its "
                                   "longest sample. (ours)")
    torch_compile: bool = arg(True, "Compile each decoder layer with torch.compile (CUDA with Triton only; "
                                    "ignored on CPU). Costs 1-2 minutes once at the first steps (a 7B on an H200).")
    enable_liger_kernel: bool = arg(False, "Use Liger-Kernel's RMSNorm/RoPE/SwiGLU (CUDA; replaces --torch_compile; "
                                           "slower in our measurements, docs/gpu.md). Its fused loss is always on.")


class NonFiniteError(UserError):
    """Loss or gradient norm became NaN/inf; raised at once, before anything is saved."""


# ---------------------------------------------------------------- precision / device


def resolve_precision(cfg: TrainConfig) -> tuple[str, Any, Any]:
    """Pick ``(device, weight dtype, autocast dtype or None)`` from ``--bf16/--fp16/--use_cpu``.

    fp16 on bf16-capable hardware is honoured on CUDA with a warning (fp16 overflows on Qwen2.5:
    NaN or loss 0). With neither flag a CUDA GPU trains in bf16 when it supports it, else fp32;
    the CPU trains in fp32. On CPU float16 has no fast kernels, so ``--fp16`` trains in bfloat16 when the
    CPU has bf16 instructions, else float32, and says so.

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
    if cfg.bf16:
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
        raise UserError(f"--val_size {val_size}: leaves no training samples out of {n}; use a smaller value")
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
    """``all_results.json`` of the finished run in ``out`` (written after the final adapter), else ``None``."""
    if (out / "adapter_model.safetensors").is_file() and (out / "all_results.json").is_file():
        return json.loads((out / "all_results.json").read_text(encoding="utf-8"))
    return None


def _resume_point(cfg: TrainConfig, out: Path) -> Path | None:
    if cfg.resume_from_checkpoint:
        p = Path(cfg.resume_from_checkpoint)
        if not (p / "trainer_state.json").is_file() or not (p / "optimizer.pt").is_file():
            raise UserError(f"{p}: not a resumable checkpoint (needs trainer_state.json and optimizer.pt); "
                            "pass a checkpoint-N folder saved without --save_only_model")
        return p
    if cfg.overwrite_output_dir or not out.exists():
        return None
    ckpt = resumable_checkpoint(out)
    finished = finished_run(out)
    if finished is not None:  # rerunning a finished command must not silently retrain its tail
        longer = (f"raise --max_steps (or --num_train_epochs) and pass --resume_from_checkpoint {ckpt}" if ckpt else
                  "start over with a larger --max_steps (no resumable checkpoint-N was kept; see --save_steps)")
        raise UserError(f"{out}: this run already finished at step {finished.get('global_step')} (final adapter "
                        f"{out / 'adapter_model.safetensors'}); pass --overwrite_output_dir to start over or pick "
                        f"another --output_dir; to train longer, {longer}")
    if ckpt is not None:
        return ckpt
    if any(out.iterdir()):
        raise UserError(f"{out}: output dir exists and holds no resumable checkpoint; pass --overwrite_output_dir "
                        "to start over or pick another --output_dir")
    return None


def _clear_run(out: Path) -> None:
    """--overwrite_output_dir: remove our own artifacts only (never unrelated files)."""
    for p in [*out.glob("checkpoint-*"), out / BEST_DIR]:
        shutil.rmtree(p, ignore_errors=True)
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)


def _save_adapter_and_tokenizer(model: Any, tokenizer: Any, target: Path) -> None:
    """Save the PEFT adapter (+ tokenizer) into ``target``: written into a temp folder inside it, then each
    file renamed into place; the temp folder is removed (also on error).

    Raises:
        UserError: the disk is full (ENOSPC); files already in ``target`` stay whole.
    """
    import tempfile

    target.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".save-", dir=target) as tmp:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            for f in Path(tmp).iterdir():
                os.replace(f, target / f.name)
    except OSError as e:
        if e.errno == 28:  # ENOSPC, as io.atomic_path
            raise UserError(f"{target}: no space left on the device; free some disk and rerun") from None
        raise


def _save_checkpoint(out: Path, step: int, model: Any, tokenizer: Any, optimizer: Any, scheduler: Any,
                     state: dict, cfg: TrainConfig) -> None:
    import torch

    target = out / f"checkpoint-{step}"
    with io.atomic_path(target) as tmp:
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
    if cfg.save_total_limit:
        ckpts = sorted((int(p.name.split("-")[1]), p) for p in out.glob("checkpoint-*") if p.name.split("-")[1].isdigit())
        for _, p in ckpts[: max(0, len(ckpts) - cfg.save_total_limit)]:
            shutil.rmtree(p, ignore_errors=True)


def _load_checkpoint(ckpt: Path, model: Any, optimizer: Any, scheduler: Any) -> dict:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", map_location="cpu", weights_only=True))
    rng_file = ckpt / "rng_state.pth"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=False)
        random.setstate(rng["python"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- the run


def prepare_data(cfg: TrainConfig, tokenizer: Any) -> tuple[Any, Any]:
    """Load, template, tokenize and truncate the datasets. Returns ``(ChatTemplate, Encoded)``.

    Raises:
        UserError: any dataset problem, or no sample fitting ``cutoff_len``.
    """
    from steam_persona.trainer import data
    from steam_persona.trainer.encode import encode_dataset
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
        raise UserError("no dataset given; pass --dataset NAME (with --dataset_dir) or --dataset path/to/file.json")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "save_steps", "logging_steps", "lora_rank", "cutoff_len"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name} {getattr(cfg, name)}: must be at least 1")
    if cfg.quantization_bit not in (None, 4, 8):
        raise UserError(f"--quantization_bit {cfg.quantization_bit}: use 4 or 8 (or leave it unset)")
    if not 0 <= cfg.warmup_ratio < 1:
        raise UserError(f"--warmup_ratio {cfg.warmup_ratio}: must be in [0, 1)")
    if cfg.learning_rate <= 0:
        raise UserError(f"--learning_rate {cfg.learning_rate}: must be positive")
    if cfg.eval_dataset and cfg.val_size:
        raise UserError(f"--eval_dataset and --val_size {cfg.val_size} are both set; give one source of eval samples")
    if cfg.load_best_model_at_end and (cfg.eval_strategy == "no" or not (cfg.val_size or cfg.eval_dataset)):
        raise UserError("--load_best_model_at_end needs eval samples: add --eval_dataset FILE or --val_size 0.05 "
                        "(and keep --eval_strategy steps)")


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
        this invocation's steps), ``eval_loss`` (the last eval, when ``--val_size`` or ``--eval_dataset``),
        ``best_eval_loss`` / ``best_global_step`` (the lowest eval loss and its step; with
        ``--load_best_model_at_end`` that adapter is the one saved, and ``kept`` says so), ``train_runtime`` (s),
        ``train_samples_per_second``, ``train_tokens_per_second`` (over the whole runtime),
        ``steady_tokens_per_second`` (after the warm-up steps, :mod:`steam_persona.trainer.throughput`),
        ``compile_seconds`` (the warm-up steps' time beyond steady speed; ``None`` when not compiling),
        ``num_samples``, ``truncated``, ``dropped``.

    Raises:
        UserError: bad data/flags (nothing is written to ``output_dir``), or a non-finite loss/grad
            norm (:class:`NonFiniteError`; the adapter is not saved).
    """
    import torch
    from rich.progress import TextColumn
    from transformers import get_scheduler

    from steam_persona.trainer import accel, distributed
    from steam_persona.trainer import model as model_lib
    from steam_persona.trainer.packing import collate, loss_sum
    from steam_persona.trainer.plotting import plot_loss

    _check(cfg)
    out = Path(cfg.output_dir)
    resume = _resume_point(cfg, out)
    if cfg.nproc_per_node > 1 and not distributed.launched():
        # --nproc_per_node N: check the user's input here (one-line errors, exit 2), then run N copies under torchrun
        prepare_data(cfg, model_lib.load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code))
        return distributed.relaunch(cfg, cfg.nproc_per_node)
    device, dtype, amp = resolve_precision(cfg)
    rank, world = distributed.init(device)  # (0, 1) unless started by torchrun / accelerate launch
    main = rank == 0

    # Everything that can fail on user input happens before the output dir is touched.
    tokenizer = model_lib.load_tokenizer(cfg.model_name_or_path, cfg.trust_remote_code)
    with console.status("reading and tokenizing the dataset"):
        template, enc = prepare_data(cfg, tokenizer)
        eval_enc = encode_datasets(cfg, template, cfg.eval_dataset) if cfg.eval_dataset else enc
    train_idx, eval_idx = split_eval(len(enc), cfg.val_size, cfg.seed)
    if cfg.eval_dataset:
        eval_idx = list(range(len(eval_enc)))
    torch.manual_seed(cfg.seed)
    with console.status(f"loading {cfg.model_name_or_path}" + (f" in {cfg.quantization_bit}-bit" if cfg.quantization_bit else "")):
        model = model_lib.load_base(cfg.model_name_or_path, quantization_bit=cfg.quantization_bit, dtype=dtype,
                                    device=device, trust_remote_code=cfg.trust_remote_code)
        model = model_lib.add_lora(model, lora_target=cfg.lora_target, lora_rank=cfg.lora_rank,
                                   lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                   gradient_checkpointing=not cfg.disable_gradient_checkpointing)
        if amp is not None:  # training runs under autocast: it casts the LoRA matmuls' operands itself
            model_lib.skip_lora_input_casts(model)
        # GPU speed/memory levers (docs/gpu.md); each reports off on CPU
        levers = accel.accelerate(model, liger_kernels=cfg.enable_liger_kernel, compile_layers=cfg.torch_compile)
    if main:  # after the model loaded: a bad --lora_target or model stays a one-line error
        console.print(_data_line(enc, cfg.cutoff_len))
    if main and device.startswith("cuda"):
        console.print("[dim]" + "; ".join(f"{k}: {v}" for k, v in levers.items()) + "[/dim]")
    if main and device == "cpu" and dtype == torch.float32 and _cpu_has_bf16():
        console.print("[dim]CPU: training in float32 (LLaMA-Factory's default); this CPU has bf16 instructions: "
                      "--bf16 True is about 2x faster[/dim]")
    # the saved tokenizer carries the training format and stops at the end-of-turn token
    tokenizer.chat_template = template.saved_jinja(cfg.system)
    tokenizer.eos_token = template.eot_token

    # a checkpoint from another process count keeps its micro-batches per step (steam_persona.trainer.distributed)
    accum = distributed.accum_for_resume(resume, cfg.gradient_accumulation_steps, world) if resume else \
        cfg.gradient_accumulation_steps
    plan = StepPlan(len(train_idx), cfg.per_device_train_batch_size, accum,
                    cfg.num_train_epochs, cfg.max_steps, cfg.seed, rank, world)
    total = plan.total
    warmup = cfg.warmup_steps if cfg.warmup_steps > 0 else math.ceil(cfg.warmup_ratio * total)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=device.startswith("cuda"))
    scheduler = get_scheduler(cfg.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None

    state: dict[str, Any] = {"total_tokens": 0, "elapsed": 0.0}
    start = 0
    distributed.barrier()  # every rank has chosen its resume point before rank 0 writes
    if main and out.exists() and cfg.overwrite_output_dir and resume is None:
        _clear_run(out)
    if resume is not None:
        state = _load_checkpoint(resume, model, optimizer, scheduler)
        start = state["global_step"]
        console.print(f"resuming from {resume} (step {start} of {total})")
    if main:
        out.mkdir(parents=True, exist_ok=True)
    log_path = out / "trainer_log.jsonl"
    rows = [r for r in io.read_jsonl_log(log_path) if r.get("current_steps", 0) <= start] if start else []
    if main:
        io.write_jsonl(log_path, rows)
        io.write_text(out / "run_config.yaml", _run_config_yaml(cfg))
    log = io.JsonlLog(log_path) if main else None

    def batch_of(indices: list[int], pool: list[int], src: Any = enc) -> dict[str, Any]:
        feats = [{"input_ids": src.input_ids[pool[i]], "labels": src.labels[pool[i]]} for i in indices]
        b = collate(feats, cfg.padding_free, tokenizer.pad_token_id)
        return {k: v.to(device) for k, v in b.items()}

    def learned(i: int, pool: list[int]) -> int:
        return sum(1 for t in enc.labels[pool[i]][1:] if t != -100)

    def evaluate() -> float:
        _eval_mode(model)
        tot, n = 0.0, 0
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
            for i in range(0, len(eval_idx), cfg.per_device_eval_batch_size):
                ls, k = loss_sum(model, batch_of(list(range(i, min(i + cfg.per_device_eval_batch_size, len(eval_idx)))),
                                                 eval_idx, eval_enc))
                tot, n = tot + float(ls), n + k
        model.train()
        return tot / max(n, 1)

    eval_every = cfg.eval_steps or cfg.save_steps
    do_eval = bool(eval_idx) and cfg.eval_strategy != "no"
    step_losses: list[float] = []
    pending: list[float] = []
    last_logged, last_window = None, 0
    tokens_run, samples_run = 0, 0
    compiling = levers.get("compile", "").startswith("on")
    speed = Throughput(total, start, COMPILE_WARMUP_STEPS if compiling else 1 if device.startswith("cuda") else 0)
    t0 = time.time()
    t_end = t0
    elapsed0 = float(state.get("elapsed", 0.0))
    last_eval: float | None = None
    model.train()
    ddp = distributed.wrap(model, device)  # DDP over the LoRA weights in a multi-process run, else the model
    bar = progress(TextColumn("loss {task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
                   TextColumn("{task.fields[tps]} tok/s"), TextColumn("ETA {task.fields[eta]}"), eta=False) \
        if main else _Null()
    if main and compiling and not console.is_terminal:
        console.print(f"{COMPILING} …", markup=False, highlight=False)
    with bar as prog, _resume_hint_on_interrupt(out, cfg, speed, main and resume_hint):
        task = prog.add_task(COMPILING if compiling else "train", total=total, completed=start, loss="-", lr="-",
                             tps="-", eta="-") if main else None
        for step in range(start, total):
            t_step = time.time()
            micro = plan.step(step)
            if cfg.padding_free:  # fewer, longer packed rows (steam_persona.trainer.accel); per-sample attention keeps them cheap
                row_budget = max(cfg.per_device_train_batch_size * cfg.cutoff_len, accel.ROW_TOKENS)
                micro = accel.merge_micro_batches(micro, lambda i: len(enc.input_ids[train_idx[i]]), row_budget)
            # learned tokens of the whole step (all ranks: the plan is known everywhere), the loss's divisor
            n_tok = sum(learned(i, train_idx) for mb in plan.group(step) for i in mb)
            loss_total, step_tokens, step_samples = 0.0, 0, 0
            # multi-process: a rank left without a micro-batch (short last step) joins DDP's all-reduce with a
            # zero-weighted one; gradients are all-reduced on the last micro-batch only (steam_persona.trainer.distributed)
            runs = micro or plan.group(step)[:1]
            for j, mb in enumerate(runs):
                batch = batch_of(mb, train_idx)
                with distributed.sync_grads(ddp, last=j == len(runs) - 1):
                    with torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
                        ls, _ = loss_sum(ddp, batch)
                    if not torch.isfinite(ls):
                        raise NonFiniteError(f"{out}: step {step + 1}: the loss became {float(ls)}; stopped without "
                                             "saving this step. Train in bf16 (--bf16 True) instead of fp16, or lower "
                                             "--learning_rate")
                    scaled = ls / max(n_tok, 1)
                    if world > 1:  # DDP averages over ranks: × world makes it the sum over the step's tokens
                        scaled = scaled * (world if micro else 0)
                    (scaler.scale(scaled) if scaler else scaled).backward()
                if micro:
                    loss_total += ls.detach().item()
                    step_tokens += int(batch["input_ids"].numel() if cfg.padding_free else batch["attention_mask"].sum())
                    step_samples += len(mb)
            loss_total, step_tokens, step_samples = distributed.all_reduce_sum([loss_total, step_tokens, step_samples],
                                                                               device)
            tokens_run += int(step_tokens)
            samples_run += int(step_samples)
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
            if not torch.isfinite(grad_norm) and scaler is None:
                raise NonFiniteError(f"{out}: step {step + 1}: the gradient norm became {float(grad_norm)}; stopped "
                                     "without saving this step. Train in bf16 (--bf16 True), or lower --learning_rate")
            lr = scheduler.get_last_lr()[0]
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss = loss_total / max(n_tok, 1)
            step_losses.append(step_loss)
            pending.append(step_loss)
            done = step + 1
            now = time.time()
            speed.add(int(step_tokens), now - t_step, now - t_end)
            t_end, el = now, now - t0
            tps, remaining = speed.tokens_per_s(), speed.eta_s()
            # every figure shown (bar, step line, log, plot, summary) is the mean loss of the steps since the
            # last logged one; step 1 is always logged, so the log starts where the summary does
            row = {"current_steps": done, "total_steps": total, "loss": round(sum(pending) / len(pending), 4),
                   "lr": lr, "epoch": plan.epoch_at(step), "grad_norm": round(float(grad_norm), 4),
                   "throughput": None if tps is None else round(tps, 1),
                   "total_tokens": int(state.get("total_tokens", 0)) + tokens_run,
                   "percentage": round(100 * done / total, 2), "elapsed_time": _hms(elapsed0 + el),
                   "remaining_time": None if remaining is None else _hms(remaining)}
            if main:
                shown = {"tps": "-" if tps is None else f"{tps:.0f}", "eta": row["remaining_time"] or "-"}
                prog.update(task, completed=done, loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", **shown,
                            description=COMPILING if speed.warming_up and compiling else "train")
                logged = done % cfg.logging_steps == 0 or done == total or done == 1
                if logged or done == start + 1:  # without a terminal, a resumed run's first step shows at once too
                    plain_progress("train step", done, total, {
                        "loss": f"{row['loss']:.4f}", "lr": f"{lr:.2e}", "tokens/s": shown["tps"],
                        "elapsed": row["elapsed_time"], "ETA": shown["eta"]})
                if logged:
                    log.write(**row)
                    rows.append(row)
                    last_logged, last_window, pending = row["loss"], len(pending), []
                if do_eval and (done % eval_every == 0 or done == total):
                    last_eval = evaluate()
                    erow = {"current_steps": done, "total_steps": total, "eval_loss": round(last_eval, 4),
                            "epoch": plan.epoch_at(step)}
                    log.write(**erow)
                    rows.append(erow)
                    console.print(f"step {done}: eval loss (training weights) {last_eval:.4f}")
                    if last_eval < state.get("best_eval_loss", math.inf):
                        state["best_eval_loss"], state["best_global_step"] = round(last_eval, 4), done
                        if cfg.load_best_model_at_end:
                            _save_adapter_and_tokenizer(model, None, out / BEST_DIR)
                if done % cfg.save_steps == 0 and done < total:
                    st = {"total_tokens": row["total_tokens"], "elapsed": elapsed0 + el,
                          "first_loss": state.get("first_loss", step_losses[0]),
                          **{k: state[k] for k in ("best_eval_loss", "best_global_step") if k in state},
                          "world_size": world, "gradient_accumulation_steps": accum}  # for resume on other counts
                    _save_checkpoint(out, done, model, tokenizer, optimizer, scheduler, st, cfg)
                for cb in callbacks:
                    cb(done, {**row, "loss": step_loss})
    if log:
        log.close()
    runtime = time.time() - t0
    steady = speed.steady_tokens_per_s()
    results: dict[str, Any] = {
        "output_dir": str(out), "global_step": total, "epoch": plan.epoch_at(total - 1),
        "loss_first": round(state.get("first_loss", step_losses[0] if step_losses else float("nan")), 4),
        "loss_last": last_logged if last_logged is not None else None,
        "loss_last_steps": last_window,
        "train_loss": round(sum(step_losses) / len(step_losses), 4) if step_losses else None,
        "train_runtime": round(runtime, 2),
        "train_samples_per_second": round(samples_run / runtime, 3) if runtime > 0 else None,
        "train_steps_per_second": round(len(step_losses) / runtime, 4) if runtime > 0 else None,
        "train_tokens_per_second": round(tokens_run / runtime, 1) if runtime > 0 else None,
        "steady_tokens_per_second": None if steady is None else round(steady, 1),
        "compile_seconds": round(speed.warmup_overhead_s(), 1) if compiling else None,
        "total_tokens": int(state.get("total_tokens", 0)) + tokens_run,
        "num_samples": len(train_idx), "num_eval_samples": len(eval_idx),
        "truncated": enc.truncated, "dropped": len(enc.dropped),
    }
    if last_eval is not None:
        results["eval_loss"] = round(last_eval, 4)
    if "best_eval_loss" in state:
        results["best_eval_loss"], results["best_global_step"] = state["best_eval_loss"], state["best_global_step"]
    if main:
        if cfg.load_best_model_at_end and (out / BEST_DIR / "adapter_model.safetensors").is_file():
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(out / BEST_DIR / "adapter_model.safetensors")))
            results["kept"] = f"best eval loss (step {results['best_global_step']})"
        _save_adapter_and_tokenizer(model, tokenizer, out)
        plot_loss(rows, out / "training_loss.png", title=f"{Path(cfg.output_dir).name}: loss")
        io.write_json(out / "all_results.json", results)
        _summary(cfg, results, template, f"{str(amp or dtype).removeprefix('torch.')} on {device}")
    distributed.finish()  # the other ranks wait here until rank 0 has saved
    return results


#: What the progress shows while the first steps compile the decoder layers (steam_persona.trainer.throughput).
COMPILING = "compiling (first steps, about a minute)"


def _data_line(enc: Any, cutoff_len: int) -> str:
    """The dataset line printed before the first step: samples kept, truncated and dropped."""
    line = (f"dataset: {len(enc)} samples, {enc.truncated} truncated (prompt cut to fit --cutoff_len {cutoff_len}), "
            f"{len(enc.dropped)} dropped (reply longer than --cutoff_len)")
    return f"[yellow]{line}[/yellow]" if enc.truncated or enc.dropped else line


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


@contextlib.contextmanager
def _resume_hint_on_interrupt(out: Path, cfg: TrainConfig, speed: Throughput, main: bool):
    """On Ctrl-C (KeyboardInterrupt) print, on rank 0, where the run stopped and how to go on, then re-raise."""
    try:
        yield
    except KeyboardInterrupt:
        if main:
            ckpt = resumable_checkpoint(out)
            how = (f"rerun the same command to resume from {ckpt} (step {ckpt.name.split('-')[1]})" if ckpt else
                   f"no resumable checkpoint yet (one is saved every --save_steps {cfg.save_steps} steps"
                   f"{' without --save_only_model' if cfg.save_only_model else ''}); rerun with "
                   "--overwrite_output_dir to start over")
            console.print(f"[yellow]interrupted after step {speed.done} of {speed.total}: {how}[/yellow]")
        raise


class _Null:
    def __enter__(self) -> "_Null":
        return self

    def __exit__(self, *a: object) -> None:
        return None


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _run_config_yaml(cfg: TrainConfig) -> str:
    import yaml

    d = config.to_dict(cfg)
    d["lora_alpha"] = cfg.lora_alpha or 2 * cfg.lora_rank
    return yaml.safe_dump(d, allow_unicode=True, sort_keys=False)


def _loss_shown(r: dict) -> str:
    """``"10.83 (step 1) → 2.25 (mean of steps 91-100)"``: the first and last rows of trainer_log.jsonl."""
    n, last = r.get("loss_last_steps") or 1, r["global_step"]
    span = f"step {last}" if n == 1 else f"mean of steps {last - n + 1}-{last}"
    return f"{r['loss_first']} (step 1) → {r['loss_last']} ({span})"


def _summary(cfg: TrainConfig, r: dict, template: Any, precision: str) -> None:
    rows = [("base model", cfg.model_name_or_path + (f" ({cfg.quantization_bit}-bit)" if cfg.quantization_bit else "")),
            ("template", f"{cfg.template} (end of turn {template.eot_token})"),
            ("samples", f"{r['num_samples']} train, {r['num_eval_samples']} eval, {r['truncated']} truncated, "
                        f"{r['dropped']} dropped (cutoff_len {cfg.cutoff_len})"),
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
    rows += [("runtime", _hms(r["train_runtime"])), ("output", r["output_dir"])]
    summary_table("training done", rows)


warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*deprecated.*")

command = config.command(TrainConfig, run, name="train", help=(
    "LoRA/QLoRA SFT with LLaMA-Factory's flags: `steam-train train --stage sft --do_train --model_name_or_path "
    "Qwen/Qwen2.5-7B-Instruct --dataset steam_reviews --dataset_dir data --template qwen --finetuning_type lora "
    "--lora_target all --output_dir saves/x --quantization_bit 4 ...`, or `steam-train train config.yaml`. "
    "An unfinished run resumes from its last checkpoint unless --overwrite_output_dir."))
