"""steam-persona's training companion: data → QLoRA SFT → chat/eval (the `steam-train` CLI)."""
