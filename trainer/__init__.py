"""steam-persona's training companion: data → QLoRA SFT → chat/eval (the `steam-train` CLI)."""

from trainer import offline

offline.install()
