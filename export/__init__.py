"""Export stage: run dir → merged HF folder → GGUF → quantized GGUFs, verified (``steam-train export``).

For code and tests: ``steam_persona.export.export(adapter_name_or_path=..., export_dir=..., quantization=["q8_0"])``
takes the flags of :class:`steam_persona.export.cli.ExportConfig` as keywords and returns the report dict.
"""

from __future__ import annotations

from typing import Any

# The merge imports peft, which imports bitsandbytes; importing the trainer package first routes that
# import through its offline hook (no hub kernel fetch, no "Failed to load CPU gemm_4bit_forward from
# kernels-community" warning) and silences peft's deprecated-attribute FutureWarning (trainer/__init__.py).
import steam_persona.trainer  # noqa: F401  (imported for those side effects)


def export(**flags: Any) -> dict[str, Any]:
    """Run ``steam-train export`` in-process with ``flags`` (ExportConfig field names); return the report.

    Raises:
        steam_persona.common.errors.UserError: bad input (what the CLI turns into exit 2).
        steam_persona.export.cli.VerificationFailed: a GGUF failed verification.
    """
    from steam_persona.export.cli import ExportConfig, run
    from steam_persona.common import config

    return run(config.build(ExportConfig, flags, source="export()"))
