"""steam-persona's training stages (``steam_persona.trainer``): data → QLoRA SFT → eval, the plugin
packager, and the config, errors, io and console shared by every stage."""

import warnings

from steam_persona.trainer import offline

offline.install()
# peft's PeftModel reads transformers' deprecated `model.is_gradient_checkpointing` when it wraps a
# model (peft/peft_model.py), so every adapter load (train, chat, eval, export) printed a FutureWarning
# that no user call causes and no user can fix.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated.*", category=FutureWarning)
