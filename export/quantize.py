"""Step 4: 16-bit GGUF → quantized GGUF with llama.cpp's own quantizer (``llama_model_quantize``).

Names are llama.cpp's (``q4_k_m``, ``q8_0`` …), lower-case. K-quants need tensor rows divisible by
256; llama.cpp falls back per tensor (e.g. to q5_0/q8_0) where they are not (small test models).
"""

from __future__ import annotations

from pathlib import Path

from steam_persona.common.errors import UserError
from steam_persona.common.atomic import atomic_path
from steam_persona.export.interrupt import held_interrupt

#: Accepted --quantization names. f16/bf16 come from the converter; the others from llama.cpp's
#: quantizer. (IQ types need an importance matrix and are left out.)
QUANT_TYPES = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16",
               "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_0", "q4_1", "q4_k_s", "q5_0", "q5_1", "q5_k_s")
FLOAT_TYPES = ("f16", "bf16")
#: Approximate bits per weight of each type, for the free-disk check before an export (llama.cpp
#: ``tools/quantize/quantize.cpp`` size table for Llama-3-8B; the token embedding and output
#: tensors may be kept at higher precision, hence the round-up).
BITS_PER_WEIGHT = {"q2_k": 3.0, "q3_k_s": 3.5, "q3_k_m": 3.9, "q3_k_l": 4.3, "q4_0": 4.6, "q4_1": 5.0,
                   "q4_k_s": 4.7, "q4_k_m": 4.9, "q5_0": 5.6, "q5_1": 6.0, "q5_k_s": 5.6, "q5_k_m": 5.7,
                   "q6_k": 6.6, "q8_0": 8.5, "f16": 16.0, "bf16": 16.0}


def check_types(names: list[str]) -> list[str]:
    """Normalise and check ``--quantization`` names (lower-case, de-duplicated, order kept).

    Raises:
        UserError: an unknown name or an empty list; the message lists the known ones.
    """
    out: list[str] = []
    for n in names:
        n = n.strip().lower()
        if n not in QUANT_TYPES:
            raise UserError(f"--quantization: unknown type '{n}'; use one or more of {', '.join(QUANT_TYPES)}")
        if n not in out:
            out.append(n)
    if not out:
        raise UserError(f"--quantization: give at least one of {', '.join(QUANT_TYPES)}")
    return out


def quantize(src: Path, dst: Path, qtype: str, n_threads: int) -> None:
    """Quantize the GGUF ``src`` to ``qtype`` at ``dst`` (temp name, then rename).

    Uses ``llama_cpp.llama_model_quantize`` with ``LLAMA_FTYPE_MOSTLY_<QTYPE>`` (llama.h); it
    copies every header key (chat template, our ``steam_persona.*`` keys) to the new file. Ctrl-C
    takes effect when llama.cpp returns (:func:`~steam_persona.export.interrupt.held_interrupt`;
    the quantizer cannot be stopped midway), and the unfinished file is removed.

    Raises:
        UserError: full disk. RuntimeError: llama.cpp reported another failure.
    """
    import shutil

    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr  # llama.cpp prints one line per tensor

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}")
    params.nthread = n_threads
    with atomic_path(dst) as tmp:
        with held_interrupt(), suppress_stdout_stderr(disable=False):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
        if rc != 0:
            if shutil.disk_usage(dst.parent).free < src.stat().st_size // 2:
                raise OSError(28, "No space left on device")
            raise RuntimeError(f"llama_model_quantize({src.name} → {qtype}) failed with code {rc}")
