"""Step 1 of the export: the run dir + the base model → a merged 16-bit HF folder.

The base is always reloaded in 16-bit and the LoRA merged there with peft (``merge_and_unload``);
merging into 4-bit weights is lossy and LLaMA-Factory and Unsloth both refuse it. The merged
folder also holds the fixed tokenizer (eos = end-of-turn token, persona in the chat template), the
``generation_config.json`` (eos ids), ``export_merge.json`` (what it was made from) and
``verify_reference.npz`` (the merged model's logits on the verify prompts, computed while the model
is in memory so the verify step never holds the HF model and a GGUF at once).
"""

from __future__ import annotations

import gc
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steam_persona.export.convert import PEFT_PREFIX, check_architecture
from steam_persona.common.errors import UserError
from steam_persona.common.hub import ModelSource, enable_transformers_gguf
from steam_persona.common.run_files import ADAPTER_FILES, ADAPTER_FIX, check_adapter, refuse_unfinished
from steam_persona.common.run_record import RunRecord

MERGE_INFO = "export_merge.json"
REFERENCE = "verify_reference.npz"


@dataclass
class RunInfo:
    """What the export reads from a training run dir.

    Attributes:
        adapter_dir: the folder with ``adapter_config.json`` (``None``: export the base alone).
        adapter_config: its parsed ``adapter_config.json`` (``{}`` without an adapter).
        run: the run's record (``run_config.yaml``; empty when absent).
    """

    adapter_dir: Path | None
    adapter_config: dict[str, Any] = field(default_factory=dict)
    run: RunRecord = field(default_factory=RunRecord)


def read_run(adapter_name_or_path: str | None) -> RunInfo:
    """Read a run dir (or a ``checkpoint-N`` folder inside one).

    ``run_config.yaml`` is looked for in the folder and its parent (a checkpoint's run dir;
    :meth:`steam_persona.common.run_record.RunRecord.load`).

    Raises:
        UserError: the folder or its adapter files are missing, or a file is unreadable or damaged.
    """
    if not adapter_name_or_path:
        return RunInfo(None)
    d = Path(adapter_name_or_path).expanduser()
    if not d.is_dir():
        raise UserError(f"{d}: adapter folder not found; pass --adapter_name_or_path a run dir made by steam-train train")
    cfg_file = d / "adapter_config.json"
    if not cfg_file.is_file() or not any((d / f).is_file() for f in ADAPTER_FILES):
        refuse_unfinished(d)
        raise UserError(f"{d}: no LoRA adapter here (adapter_config.json + adapter_model.safetensors); "
                        "pass the run dir of a finished training or one of its checkpoint-N folders")
    return RunInfo(d, check_adapter(d, ADAPTER_FIX), RunRecord.load(d))


def base_config(src: ModelSource):
    """The base model's ``PretrainedConfig`` (read from config.json or the GGUF header, no weights).

    Raises:
        UserError: the model cannot be found or read.
    """
    from transformers import AutoConfig

    if src.gguf_file:
        enable_transformers_gguf()
    try:
        return AutoConfig.from_pretrained(src.path, **src.from_pretrained_kwargs())
    except (OSError, ValueError) as e:
        raise UserError(f"{src.path}: cannot read the base model's config ({str(e).splitlines()[0]}); "
                        "check --model_name_or_path") from None


def check_adapter_matches_base(run: RunInfo, config, base_name: str) -> None:
    """Check every LoRA pair of the adapter fits a layer of the base (names and shapes).

    Builds the base on the ``meta`` device (no memory) and reads only the adapter's tensor
    headers. A LoRA pair ``A (r × in)``, ``B (out × r)`` fits a ``Linear(in → out)`` layer.

    Same-shaped bases (a base and its instruct tune) cannot be told apart by shapes; peft's
    recorded ``auto_mapping.base_model_class`` catches another architecture of equal shapes.

    Raises:
        UserError: another architecture, or a targeted layer is missing or has another shape; the
            message names the base the adapter was trained on (``base_model_name_or_path``) and
            the one given.
    """
    if run.adapter_dir is None:
        return
    import torch
    from transformers import AutoModelForCausalLM


    trained_on = run.adapter_config.get("base_model_name_or_path") or "an unknown base"
    trained_class = (run.adapter_config.get("auto_mapping") or {}).get("base_model_class")
    arch = check_architecture(config, base_name)
    if trained_class and trained_class != arch:
        raise UserError(f"{run.adapter_dir}: adapter trained on '{trained_on}' ({trained_class}) does not fit base "
                        f"'{base_name}' ({arch}); pass --model_name_or_path the base it was trained on")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    modules = dict(model.named_modules())
    for key, shape in _adapter_shapes(run.adapter_dir).items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        name = key.removeprefix(PEFT_PREFIX).split(".lora_")[0]
        mod = modules.get(name)
        if mod is None:
            problem = f"layer {name} does not exist in the base"
        elif ".lora_A." in key and shape[-1] != getattr(mod, "in_features", shape[-1]):
            problem = f"layer {name} takes {mod.in_features} inputs, the adapter {shape[-1]}"
        elif ".lora_B." in key and shape[0] != getattr(mod, "out_features", shape[0]):
            problem = f"layer {name} gives {mod.out_features} outputs, the adapter {shape[0]}"
        else:
            continue
        raise UserError(f"{run.adapter_dir}: adapter trained on '{trained_on}' does not fit base '{base_name}' "
                        f"({problem}); pass --model_name_or_path the base it was trained on")


def _adapter_shapes(adapter_dir: Path) -> dict[str, tuple[int, ...]]:
    st = adapter_dir / "adapter_model.safetensors"
    if st.is_file():
        from safetensors import safe_open

        with safe_open(st, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    import torch

    sd = torch.load(adapter_dir / "adapter_model.bin", map_location="meta", weights_only=True)
    return {k: tuple(v.shape) for k, v in sd.items()}


def fingerprint(parts: dict[str, Any]) -> str:
    """A short sha256 of ``parts`` (JSON, sorted keys): identifies what a step was made from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (adapters are small: MBs to a few hundred MBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def merge_dtype(config, infer_dtype: str):
    """The 16-bit torch dtype to merge in: ``infer_dtype``, or for ``auto`` the base's own 16-bit
    dtype (``config.dtype``), else bfloat16 (float32 and GGUF bases)."""
    import torch

    if infer_dtype != "auto":
        return getattr(torch, infer_dtype)
    own = getattr(config, "dtype", None)  # transformers >= 4.56; reading config.torch_dtype logs a deprecation
    if isinstance(own, str):
        own = getattr(torch, own, None)
    return own if own in (torch.float16, torch.bfloat16) else torch.bfloat16


def load_tokenizer(src: ModelSource, run: RunInfo):
    """The run's tokenizer (the trainer saves it with the adapter), else the base's.

    For a GGUF base the vocabulary is rebuilt from the GGUF itself and the run contributes only what
    training set (chat template, eos, pad): transformers versions convert a GGUF vocabulary
    differently (5.17 saves SmolLM2's with ``byte_fallback`` and a ``Sequence`` decoder, 5.24 as plain
    byte-level BPE), and llama.cpp aborts (``llama_vocab::byte_to_token``) on non-ASCII text with the
    former — so a run trained on one version must still export cleanly on another.
    """
    from transformers import AutoTokenizer

    run_tok = None
    if run.adapter_dir is not None and (run.adapter_dir / "tokenizer_config.json").is_file():
        run_tok = AutoTokenizer.from_pretrained(run.adapter_dir)
        if not src.gguf_file:
            return run_tok
    if src.gguf_file:
        enable_transformers_gguf()
    tok = AutoTokenizer.from_pretrained(src.path, **src.from_pretrained_kwargs())
    if run_tok is not None:
        tok.chat_template = run_tok.chat_template
        tok.eos_token = run_tok.eos_token
        if run_tok.pad_token is not None:
            tok.pad_token = run_tok.pad_token
    return tok


def fix_tokenizer(tokenizer, system: str | None) -> str:
    """Make ``tokenizer`` ready to export, in place; return the end-of-turn token.

    * eos becomes the end-of-turn token (``<|im_end|>`` for ChatML), or servers never stop;
    * the chat template's default system prompt becomes ``system`` (see steam_persona.export.chat_template).

    Raises:
        UserError: the tokenizer has no chat template (nothing tells servers how to prompt).
    """
    from steam_persona.export.chat_template import end_of_turn_token, with_default_system

    if not tokenizer.chat_template:
        raise UserError(f"{tokenizer.name_or_path}: the tokenizer has no chat template; "
                        "export a chat (instruct) model or a run whose tokenizer carries one")
    eot = end_of_turn_token(tokenizer)
    tokenizer.eos_token = eot
    tokenizer.chat_template = with_default_system(tokenizer.chat_template, system)
    return eot


def merge(src: ModelSource, run: RunInfo, tokenizer, eot: str, out: Path, *, dtype, export_size: int,
          info: dict[str, Any], prompts: list[list[dict[str, str]]]) -> dict[str, Any]:
    """Load the base in ``dtype``, merge the adapter, save the merged folder atomically at ``out``.

    Holds one copy of the model: the base is loaded once, peft merges in place
    (``merge_and_unload``), and the model is freed before returning. The embedding keeps all its
    rows (never resized to the tokenizer). Logits on ``prompts`` are saved as the verify reference.

    Args:
        src: the base model. run: the run dir (adapter may be ``None``: export the base as is).
        tokenizer: the fixed tokenizer (:func:`fix_tokenizer`). eot: its end-of-turn token.
        out: the merged folder to create. dtype: torch.float16 or torch.bfloat16.
        export_size: max shard size in GB (safetensors shards).
        info: extra facts stored in ``export_merge.json`` (must include ``fingerprint``).
        prompts: chat conversations for the verify reference.

    Returns:
        The ``export_merge.json`` content (info + parameters, embedding rows, eos ids, seconds).

    Raises:
        UserError: full disk (nothing is left under ``out``).
    """
    import time

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no raw "Writing model shards" tqdm bar under our rich progress
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(src.path, dtype=dtype, **src.model_kwargs())
    if getattr(model, "hf_quantizer", None) is not None:  # a GGUF base: drop the dequantizer marker
        model.hf_quantizer.remove_quantization_config(model)
    if run.adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(run.adapter_dir)).merge_and_unload()
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        raise UserError(f"{run.adapter_dir or src.path}: the tokenizer has {len(tokenizer)} tokens but the model "
                        f"only {rows} embedding rows; export with the tokenizer the model was trained with")
    eos_ids = _set_eos(model, tokenizer, eot)
    n_params = sum(p.numel() for p in model.parameters())
    meta = dict(info, parameters=n_params, embedding_rows=rows, tokenizer_tokens=len(tokenizer),
                eos_token=eot, eos_token_ids=eos_ids, dtype=str(dtype).removeprefix("torch."))
    _save_merged(model, tokenizer, out, export_size, prompts, meta, t0)
    del model
    gc.collect()
    return meta


def _set_eos(model, tokenizer, eot: str) -> list[int]:
    """Make ``eot`` the model's end of sequence (config and generation config, the base's own eos ids
    kept after it) and the tokenizer's pad id the generation pad; returns the generation eos ids."""
    eot_id = tokenizer.convert_tokens_to_ids(eot)
    old = model.generation_config.eos_token_id
    old = old if isinstance(old, list) else ([] if old is None else [old])
    eos_ids = [eot_id] + [i for i in old if i != eot_id]
    model.generation_config.eos_token_id = eos_ids
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = eot_id
    return eos_ids


def _save_merged(model, tokenizer, out: Path, export_size: int, prompts: list[list[dict[str, str]]],
                 meta: dict[str, Any], t0: float) -> None:
    """Save the merged model, tokenizer, verify reference logits and ``export_merge.json`` (``meta`` plus
    ``merge_seconds`` since ``t0``) into ``out`` atomically.

    Raises:
        OSError: errno 28 when the disk is full (safetensors' own error type is turned into it).
    """
    import time

    import numpy as np

    from steam_persona.export.verify import reference_logits
    from steam_persona.common.atomic import atomic_path

    with atomic_path(out) as tmp:
        try:
            model.save_pretrained(tmp, max_shard_size=f"{export_size}GB")
            tokenizer.save_pretrained(tmp)
        except Exception as e:  # safetensors reports a full disk as its own error type
            if "No space left" in str(e) or getattr(e, "errno", None) == 28:
                raise OSError(28, "No space left on device") from None
            raise
        # fp32 arithmetic for the reference when it fits in 4 GiB (llama.cpp accumulates in fp32)
        if meta["parameters"] * 4 <= 4 << 30:
            model = model.float()
        np.savez(tmp / REFERENCE, **reference_logits(model, tokenizer, prompts))
        meta["merge_seconds"] = round(time.time() - t0, 2)
        (tmp / MERGE_INFO).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def read_merge_info(merged: Path) -> dict[str, Any] | None:
    """The ``export_merge.json`` of a finished merged folder, or ``None`` if absent/unreadable."""
    try:
        return json.loads((merged / MERGE_INFO).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
