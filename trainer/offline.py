"""No code from a hub at run time: hub kernels off in transformers, bitsandbytes imported with the hub offline.

transformers ≥ 5.25 depends on the ``kernels`` package, and bitsandbytes' CPU backend calls
``kernels.get_kernel("kernels-community/quantization-bitsandbytes")`` when it is imported (on CPUs with
AVX512-BF16): a request to the HF hub and, where it answers, compiled code downloaded and run inside our
process. steam-persona only downloads what the user names (``--model_name_or_path`` a hub id), so:

- ``USE_HUB_KERNELS=NO`` (transformers' own switch) keeps ``from_pretrained(use_kernels=...)`` and
  ``kernelize`` from the hub;
- bitsandbytes has no switch, so `install` adds an import hook that runs its module code with
  ``huggingface_hub.constants.HF_HUB_OFFLINE`` set, which ``kernels`` reads to look only in the local cache;
  bitsandbytes then falls back to its own CPU kernels, and its warning about that is silenced.

`install` runs when the ``trainer`` package is imported, before any stage can import bitsandbytes; the
``export`` package, which reaches bitsandbytes through peft without needing the trainer, imports it first
for that.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys

_BNB = "bitsandbytes"


class _OfflineLoader(importlib.abc.Loader):
    """Wraps bitsandbytes' own loader: runs its module code with the HF hub offline."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        import huggingface_hub.constants as hub

        kernels_log = logging.getLogger("kernels")  # "skipping publisher trust check … offline mode"
        offline, level = hub.HF_HUB_OFFLINE, kernels_log.level
        hub.HF_HUB_OFFLINE = True
        kernels_log.setLevel(logging.ERROR)
        try:
            self.loader.exec_module(module)
        finally:
            hub.HF_HUB_OFFLINE = offline
            kernels_log.setLevel(level)


class _OfflineBitsandbytes(importlib.abc.MetaPathFinder):
    """Meta path finder that gives bitsandbytes' spec `_OfflineLoader`."""

    def find_spec(self, name, path, target=None):
        if name != _BNB:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _OfflineLoader(spec.loader)
        return spec


def install() -> None:
    """Turn hub kernels off and route the first bitsandbytes import through `_OfflineBitsandbytes`.
    Idempotent; does nothing for bitsandbytes when it is already imported."""
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    if _BNB in sys.modules or any(isinstance(f, _OfflineBitsandbytes) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _OfflineBitsandbytes())
