"""steam-persona's training companion: data → QLoRA SFT → chat/eval (the `steam-train` CLI)."""

import logging
import warnings

# bitsandbytes' CPU backend tries to fetch an optional kernel from a hub when it is imported and
# logs a warning when it can't (no network, and we don't depend on `kernels`); it then uses its own
# CPU kernels, so the warning only alarms users (../shared/reference/hf-stack.md). Set here, before
# any stage imports bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# peft's PeftModel reads transformers' deprecated `model.is_gradient_checkpointing` when it wraps a
# model (peft/peft_model.py), so every adapter load (train, chat, eval, export) printed a FutureWarning
# that no user call causes and no user can fix.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated.*", category=FutureWarning)
