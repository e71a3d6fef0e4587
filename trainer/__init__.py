"""steam-persona's training stages (``steam_persona.trainer``): data → QLoRA SFT → eval, the plugin
packager, and the config, errors, io and console shared by every stage."""

import logging

# bitsandbytes' CPU backend tries to fetch an optional kernel from a hub when it is imported and
# logs a warning when it can't (no network, and we don't depend on `kernels`); it then uses its own
# CPU kernels, so the warning only alarms users (../shared/reference/hf-stack.md). Set here, before
# any stage imports bitsandbytes.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
