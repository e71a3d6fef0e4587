"""steam-persona's training companion: data → QLoRA SFT → chat/eval (the `steam-train` CLI)."""

import warnings

from trainer import offline

offline.install()
# peft's PeftModel reads transformers' deprecated `model.is_gradient_checkpointing` when it wraps a
# model (peft/peft_model.py), so every adapter load (train, chat, eval, export) printed a FutureWarning
# that no user call causes and no user can fix.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated.*", category=FutureWarning)
