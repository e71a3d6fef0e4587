"""steam-persona's training stage (``steam_persona.trainer``): dataset loading and encoding, QLoRA
SFT, eval and validate; importing it keeps bitsandbytes and transformers off the network
(:mod:`.offline`)."""

import warnings

from steam_persona.trainer import offline

offline.install()
# peft's PeftModel reads transformers' deprecated `model.is_gradient_checkpointing` when it wraps a
# model (peft/peft_model.py), so every adapter load (train, chat, eval, export) printed a FutureWarning
# that no user call causes and no user can fix.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated.*", category=FutureWarning)
