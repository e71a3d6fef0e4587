"""steam-persona's training companion: data → QLoRA SFT → chat/eval (the `steam-train` CLI)."""

import logging

# bitsandbytes' CPU backend tries to fetch an optional kernel from a hub when it is imported and
# logs a warning when it can't (no network, and we don't depend on `kernels`); it then uses its own
# CPU kernels, so the warning only alarms users (../shared/reference/hf-stack.md). Set here, before
# any stage imports bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
