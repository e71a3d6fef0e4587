"""Base model loading (hub id / folder / ``.gguf``), 4/8-bit quantization, LoRA, and inference loading.

Kept as separate functions so other stages and GPU-only levers can hook in: :func:`load_tokenizer`,
:func:`load_base`, :func:`add_lora` (training), :func:`load_for_inference` (chat / eval).

* ``.gguf`` bases (and the embedded SmolLM2) are dequantized once by transformers' GGUF loader and
  cached as an HF folder (``$STEAM_PERSONA_CACHE`` or ``~/.cache/steam-persona/gguf``), because
  bitsandbytes quantization needs a regular checkpoint and re-reading GGUF costs seconds per run.
  A copy is bf16, twice the size of the parameter count in bytes (~270 MB for SmolLM2-135M); the
  cache keeps the :data:`CACHE_KEEP` most recently used and deletes older ones.
* ``--quantization_bit 4`` = QLoRA (Dettmers et al. 2023, arXiv:2305.14314): NF4 with double
  quantization, compute dtype = the training dtype. ``8`` = LLM.int8().
* ``--lora_target all`` = every linear layer except the output head (LLaMA-Factory's
  ``find_all_linear_modules``). ``--lora_alpha`` defaults to 2 × rank (LLaMA-Factory's default).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

from steam_persona.common.errors import UserError
from steam_persona.common.hub import ModelSource, enable_transformers_gguf, resolve_model
from steam_persona.common.run_files import ADAPTER_FIX, check_adapter, refuse_unfinished


#: Dequantized GGUF bases kept in :func:`cache_dir`; older ones (least recently used) are deleted.
CACHE_KEEP = 2


def cache_dir() -> Path:
    """Where dequantized GGUF bases are cached (``$STEAM_PERSONA_CACHE/gguf`` or ``~/.cache/steam-persona/gguf``)."""
    root = os.environ.get("STEAM_PERSONA_CACHE") or Path.home() / ".cache" / "steam-persona"
    return Path(root) / "gguf"


def hf_path(source: ModelSource) -> str:
    """A path ``from_pretrained`` can load with any quantization: the source itself, or for a GGUF
    file its dequantized HF copy (made on first use, atomically; keyed by file path, size, mtime)."""
    if not source.gguf_file:
        return source.path
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steam_persona.common import atomic

    gguf = Path(source.path) / source.gguf_file
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        os.utime(target)  # recently used: the last to be pruned
        return str(target)
    enable_transformers_gguf()
    from steam_persona.common.console import console

    atomic.note_removed(atomic.remove_stale_in(target.parent))
    console.print(f"[dim]converting {gguf.name} to an HF checkpoint once (cached in {target})[/dim]")
    with _no_transformers_bars():
        model = AutoModelForCausalLM.from_pretrained(source.path, dtype=torch.bfloat16, **source.model_kwargs())
        tok = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        with atomic.atomic_path(target) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    prune_cache(CACHE_KEEP)
    return str(target)


@contextlib.contextmanager
def _no_transformers_bars() -> Iterator[None]:
    """transformers' tqdm bars ("Loading weights", "Writing model shards") off inside the block: the conversion
    has its own line, and the bars' carriage returns garble logs."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def prune_cache(keep: int) -> list[Path]:
    """Delete all but the ``keep`` most recently used copies in :func:`cache_dir`; return the deleted ones."""
    entries = sorted((p for p in cache_dir().iterdir() if (p / "config.json").is_file()),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return entries[keep:]


def load_tokenizer(model_name_or_path: str, trust_remote_code: bool = False) -> Any:
    """The base model's tokenizer (pad set to eos when missing).

    Raises:
        UserError: the model cannot be found (bad path, unknown hub id, no network).
    """
    from transformers import AutoTokenizer

    source = resolve_model(model_name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(hf_path(source), trust_remote_code=trust_remote_code)
    except OSError as e:
        raise UserError(f"{model_name_or_path}: cannot load the tokenizer ({str(e).splitlines()[0]}); check "
                        "--model_name_or_path (a local folder, a .gguf file, or a hub id reachable through HF_ENDPOINT)") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(quantization_bit: int | None, compute_dtype: torch.dtype) -> Any:
    """``BitsAndBytesConfig`` for 4-bit NF4 + double quant (QLoRA) or 8-bit; ``None`` for no quantization."""
    if not quantization_bit:
        return None
    from transformers import BitsAndBytesConfig

    if quantization_bit == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype, bnb_4bit_quant_storage=torch.uint8)
    if quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise UserError(f"--quantization_bit {quantization_bit}: use 4 or 8 (or leave it unset)")


def load_base(model_name_or_path: str, *, quantization_bit: int | None, dtype: torch.dtype, device: str,
              trust_remote_code: bool = False) -> Any:
    """Load the base causal LM for training or inference.

    Args:
        model_name_or_path: hub id, local folder, ``.gguf`` file or an embedded alias (``smollm2``).
        quantization_bit: 4, 8 or ``None``.
        dtype: dtype of the non-quantized weights and the 4-bit compute dtype.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises:
        UserError: the model cannot be found or loaded.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our console shows a status line instead of per-tensor bars
    source = resolve_model(model_name_or_path)
    path = hf_path(source)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    q = quantization_config(quantization_bit, dtype)
    if q is not None:
        kwargs["quantization_config"] = q
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise UserError(f"{model_name_or_path}: cannot load the model ({str(e).splitlines()[0]}); check "
                        "--model_name_or_path") from None
    if q is None:
        model.to(device)
    return model


def linear_module_names(model: Any) -> list[str]:
    """Leaf names of every linear layer (incl. bitsandbytes ones) except the output head."""
    out_emb = model.get_output_embeddings()
    names = set()
    for name, module in model.named_modules():
        if module is out_emb or not name:
            continue
        cls = type(module).__name__
        if isinstance(module, torch.nn.Linear) or cls in ("Linear4bit", "Linear8bitLt"):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def lora_targets(model: Any, lora_target: list[str]) -> list[str]:
    """Resolve ``--lora_target`` (``all`` or module names) against the model.

    Raises:
        UserError: a name that is not a linear layer of the model (the message lists the known ones).
    """
    known = linear_module_names(model)
    wanted = [t.strip() for t in lora_target if t.strip()]
    if not wanted or wanted == ["all"]:
        return known
    bad = [t for t in wanted if t not in known]
    if bad:
        raise UserError(f"--lora_target: '{bad[0]}' is not a linear layer of this model (known: {', '.join(known)}, "
                        "or all); fix --lora_target")
    return wanted


def add_lora(model: Any, *, lora_target: list[str], lora_rank: int = 8, lora_alpha: int | None = None,
             lora_dropout: float = 0.0, gradient_checkpointing: bool = True) -> Any:
    """Freeze the base and wrap it with a fresh LoRA adapter (PEFT).

    Non-reentrant activation checkpointing is used, which needs no ``enable_input_require_grads``
    (``steam_persona.trainer.accel.enable_checkpointing``; on CPU selective, attention outputs are kept);
    the frozen base keeps its dtype (no fp32 upcast of all weights as ``prepare_model_for_kbit_training``
    does: on CPU that upcast costs time and memory for nothing).

    Raises:
        UserError: unknown ``lora_target`` names.
    """
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, lora_target)
    for p in model.parameters():
        p.requires_grad_(False)
    model.config.use_cache = False
    if gradient_checkpointing:
        from steam_persona.trainer.accel import enable_checkpointing

        enable_checkpointing(model)
    cfg = LoraConfig(r=lora_rank, lora_alpha=lora_alpha or 2 * lora_rank, lora_dropout=lora_dropout,
                     target_modules=targets, task_type="CAUSAL_LM", bias="none")
    model = get_peft_model(model, cfg)
    for p in model.parameters():  # LoRA weights train in float32 (stable updates), base stays as loaded
        if p.requires_grad:
            p.data = p.data.float()
    return model


def skip_lora_input_casts(model: Any) -> int:
    """Turn off peft's cast of each LoRA layer's input to the adapter's dtype (fp32); return how many layers.

    Only for training under ``torch.autocast``, which casts every matmul's operands itself. peft decides
    whether to cast with ``torch.is_autocast_enabled()``, which asks about CUDA autocast only, so under CPU
    autocast every LoRA layer copied its bf16 input to fp32 and autocast copied it back: two activation
    copies per layer and pass, ~10 % of a SmolLM2 QLoRA step on 2 CPU cores. peft's own switch
    (``cast_input_dtype_enabled``, see ``peft.helpers.disable_input_dtype_casting``) is used.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.cast_input_dtype_enabled = False
    return len(layers)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_adapter_dir(adapter: Path) -> None:
    """Refuse an adapter folder that is an unfinished run, holds no adapter, or a damaged one.

    Raises:
        UserError: one line naming the folder or file and the fix.
    """
    refuse_unfinished(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter}: no adapter_config.json; pass a training output dir or one of its checkpoint-N folders")
    check_adapter(adapter, ADAPTER_FIX)


def load_for_inference(base: str | None, adapter: str | None = None, quantization_bit: int | None = None,
                       device: str | None = None, dtype: torch.dtype | None = None,
                       trust_remote_code: bool = False) -> tuple[Any, Any]:
    """Load a base model (+ optional LoRA adapter) for generation, as ``chat`` and ``eval`` use it.

    Args:
        base: ``--model_name_or_path``; ``None`` takes it from ``ADAPTER/run_config.yaml``.
        adapter: a run dir or checkpoint with ``adapter_config.json``, or ``None``.
        quantization_bit: 4, 8 or ``None`` (``None`` with an adapter: the run's own setting is not
            reused; inference in the base dtype is exact and fast enough for the small models).
        device: default CUDA when available, else CPU (on a busy CPU with one torch thread:
            :func:`steam_persona.trainer.threads.threads_for_load`, two threads there made generation ~5-18x slower).
        dtype: default bfloat16 on CUDA with bf16 support, else float32.
        trust_remote_code: allow the base's own model code (also allowed when the adapter's run allowed it).

    Returns:
        ``(model, tokenizer)``: model in eval mode; the tokenizer is the adapter's when it has one
        (chat template and eos = end-of-turn token as trained), else the base's.

    Raises:
        UserError: no base given and no run_config.yaml, a missing or damaged adapter, or an unreadable
            run_config.yaml.
    """
    from steam_persona.common.run_record import RunRecord

    device = device or default_device()
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    if adapter:
        _check_adapter_dir(Path(adapter))
    run = RunRecord.load(adapter)
    base = base or run.model_name_or_path
    if not base:
        raise UserError("no base model: pass --model_name_or_path (the adapter has no run_config.yaml)")
    trust_remote_code = trust_remote_code or run.trust_remote_code
    model = load_base(base, quantization_bit=quantization_bit, dtype=dtype, device=device,
                      trust_remote_code=trust_remote_code)
    tok_dir = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else None
    if tok_dir is None and adapter and (Path(adapter).parent / "tokenizer_config.json").is_file():
        tok_dir = str(Path(adapter).parent)
    if tok_dir:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tokenizer = load_tokenizer(base, trust_remote_code)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    if device == "cpu":
        from steam_persona.trainer.threads import threads_for_load

        threads_for_load(work="generating")
    if tokenizer.eos_token_id is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer
