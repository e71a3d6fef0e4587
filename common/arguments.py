"""The settings groups every stage composes: each flag's name, type, help text and check, once.

The groups follow LLaMA-Factory's ``hparams/`` (``ModelArguments``, ``QuantizationArguments``,
``DataArguments``, ``LoraArguments``, ``GeneratingArguments``; transformers' ``TrainingArguments``
for the few optimisation flags the demo and eval share with train) plus llama.cpp's runtime settings
(``LlamaCppArguments``, named as llama-cpp-python's ``server/settings.py``). A stage config takes a
field with ``Group.use(name[, default])`` (:class:`steam_persona.common.config.Arguments`): only
the default may differ per stage; the help text says what an unset value means where a stage
allows one (``None``: taken from the run or the model).

Which stage takes which group: train (model, quantization, data, LoRA, finetuning), validate (model, data),
eval (model, data, generating), chat (model, quantization, data's system and template, generating, llama.cpp,
finetuning, inference), export (model, data's system and template, llama.cpp's threads, finetuning, export),
serve (data's system, llama.cpp), demo (a few of each), prepare (data's encoding, val_size and seed). The
finetuning, inference and export groups are LLaMA-Factory's keys, so its train, inference
(``examples/inference``) and merge (``examples/merge_lora``) YAML files run here: a value that means what
these stages do is accepted, any other refused in one line naming the key, the value and what happens here.

This module imports only the standard library and the config glue, so every stage can use it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from steam_persona.common.config import Arguments, arg

#: ``--cutoff_len`` when neither the flag nor the run gives one (LLaMA-Factory's default too).
CUTOFF_LEN = 2048
#: Context size in tokens for a model that does not record its training context.
FALLBACK_N_CTX = 4096


def quantization_bits(value: int | None) -> int | None:
    """``--quantization_bit``: 4 or 8; 0 (the demo's spelling) and ``None`` both mean a 16-bit base.

    Raises:
        ValueError: any other number.
    """
    if value in (None, 0):
        return None
    if value not in (4, 8):
        raise ValueError("use 4 (QLoRA) or 8 bits, or 0 / unset for a 16-bit base")
    return value


def _positive(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ValueError("must be at least 1")
    return value


def _not_negative(value: int | None) -> int | None:
    if value is not None and value < 0:
        raise ValueError("must be 0 (automatic) or more")
    return value


def _layers(value: int | None) -> int | None:
    if value is not None and value < -1:
        raise ValueError("must be -1 (all), 0 (none) or more")
    return value


def not_negative_finite(value: float | None) -> float | None:
    """A float flag that is 0 or more (nan and inf refused)."""
    if value is not None and not 0 <= value < math.inf:
        raise ValueError("must be a finite number, 0 or more")
    return value


#: Inclusive ranges of the sampling settings, which serve checks a request's fields against (OpenAI's where it has
#: one, else llama.cpp's meaning; ``top_k`` -1 is vLLM's "disabled", ``repeat_penalty`` is HF's ``repetition_penalty``).
SAMPLING_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "top_k": (-1, 2**31 - 1), "repeat_penalty": (0.0, 10.0)}


def sampling_range(name: str, *, low: float | None = None, above: bool = False,
                   meaning: str = "") -> Callable[[Any], Any]:
    """The check of a sampling flag: within :data:`SAMPLING_RANGES` ``[name]`` (nan refused), from ``low`` instead
    where given, its low end excluded when ``above``; ``meaning`` is added to the message (``"0 = greedy"``)."""
    bottom, top = SAMPLING_RANGES[name]
    bottom = bottom if low is None else low

    def check(value: float | None) -> float | None:
        if value is None or ((bottom < value) if above else (bottom <= value)) and value <= top:
            return value
        note = f" ({meaning})" if meaning else ""
        raise ValueError(f"must be {'above' if above else 'at least'} {_bound(bottom)} and at most {_bound(top)}{note}")
    return check


def _bound(value: float) -> str:
    """A range's end as text: integers in full (``2147483647``), decimals short (``0``, ``0.5``)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def as_typed(value: float) -> str:
    """A float flag's value as the user typed it in a message: ``200`` (not ``200.0``), ``0.05``."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _val_size(value: float) -> float:
    """``--val_size``: a fraction below 1 or a whole record count (as LLaMA-Factory / ``datasets`` take it)."""
    not_negative_finite(value)
    if value > 1 and not float(value).is_integer():
        raise ValueError("above 1 it is a record count: give a whole number (e.g. 2), or a fraction below 1")
    return value


def _dropout(value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError("must be in [0, 1)")
    return value


#: ``--flash_attn`` words meaning on / off: llama.cpp's bool and LLaMA-Factory's choice (``fa2`` = FlashAttention-2;
#: ``disabled``, ``sdpa``: not flash attention; ``auto`` = the default, off).
FLASH_ATTN_ON = ("true", "on", "yes", "1", "fa2")
FLASH_ATTN_OFF = ("false", "off", "no", "0", "disabled", "sdpa", "auto")


def flash_attention(value: bool | str) -> bool:
    """``--flash_attn``: on or off, from a bool or a word of :data:`FLASH_ATTN_ON` / :data:`FLASH_ATTN_OFF`."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in FLASH_ATTN_ON or word in FLASH_ATTN_OFF:
        return word in FLASH_ATTN_ON
    raise ValueError("use true or false (also on/off, and LLaMA-Factory's fa2 = on; disabled, sdpa or auto = off)")


@dataclass
class ModelArguments(Arguments):
    """Which model to load (LLaMA-Factory's ``ModelArguments``)."""

    model_name_or_path: str | None = arg(
        "smollm2", "Base model: 'smollm2' (the embedded SmolLM2-135M-Instruct, no download), an HF hub id "
                   "(honours HF_ENDPOINT), a local folder or a .gguf file.",
        unset="the adapter run's base (run_config.yaml), else smollm2")
    adapter_name_or_path: str | None = arg(
        None, "LoRA adapter: a train run dir or one of its checkpoint-N folders.", unset="the base model alone")
    trust_remote_code: bool = arg(False, "Allow model code from the hub/folder.")


def _only(allowed: Any, why: str) -> Callable[[Any], Any]:
    """A ``check`` for a LLaMA-Factory key that this project does one way: ``allowed`` passes, any other value
    raises ``ValueError(why)``."""
    def check(value: Any) -> Any:
        if value != allowed:
            raise ValueError(why)
        return value

    return check


@dataclass
class FinetuningArguments(Arguments):
    """The adapter's kind (LLaMA-Factory's ``FinetuningArguments``)."""

    finetuning_type: str = arg("lora", "Fine-tuning method (only lora; with --quantization_bit it is QLoRA).",
                               check=_only("lora", "only LoRA adapters exist here (LLaMA-Factory's full and freeze "
                                                   "fine-tuning are not supported); set lora or delete the key"))


@dataclass
class InferenceArguments(Arguments):
    """The inference engine (LLaMA-Factory's ``InferenceArguments``)."""

    infer_backend: str = arg("huggingface", "Inference engine, LLaMA-Factory's key: only huggingface "
                                            "(transformers, for an adapter or a Hugging Face model); a GGUF "
                                            "runs in llama.cpp.",
                             check=_only("huggingface", "chat runs an adapter or a Hugging Face model with "
                                            "transformers (LLaMA-Factory's huggingface) and a GGUF with llama.cpp; "
                                            "set huggingface or delete the key"))


@dataclass
class ExportArguments(Arguments):
    """Merge settings of LLaMA-Factory's ``ExportArguments`` that export does one way."""

    export_device: str = arg("cpu", "Device to merge on, LLaMA-Factory's key: only cpu (export merges on the CPU).",
                             check=_only("cpu", "export merges the adapter on the CPU; set cpu or delete the key"))
    export_legacy_format: bool = arg(False, "Write the merged model as .bin (LLaMA-Factory's key): only false "
                                            "(safetensors).",
                                  check=_only(False, "the merged model is written as safetensors only; "
                                                     "set false or delete the key"))


@dataclass
class QuantizationArguments(Arguments):
    """How the frozen HF base is loaded (LLaMA-Factory's ``QuantizationArguments``)."""

    quantization_bit: int | None = arg(
        None, "Load the frozen HF base in 4 bits (QLoRA: NF4 + double quant) or 8 bits with bitsandbytes; 0 or unset "
              "= 16-bit (plain LoRA).", check=quantization_bits)


#: The named ``--template`` values (LLaMA-Factory's names), in the order of
#: ``steam_persona.trainer.templates.TEMPLATES``, which defines each (tests/test_arguments.py holds the two equal).
TEMPLATE_NAMES = ("default", "chatml", "qwen", "llama3", "gemma", "mistral", "alpaca")


def _template_name(value: str | None) -> str | None:
    if value not in (None, "auto", *TEMPLATE_NAMES):
        raise ValueError(f"unknown template; use auto or one of: {', '.join(TEMPLATE_NAMES)}")
    return value


@dataclass
class DataArguments(Arguments):
    """Records, their prompt format and length (LLaMA-Factory's ``DataArguments``)."""

    dataset_dir: str = arg("data", "Folder holding dataset_info.json, where dataset names are looked up.")
    encoding: str = arg("utf-8", "Text encoding of the input files (utf-8 also accepts a BOM; e.g. gbk).")
    template: str | None = arg(
        "auto", f"Prompt format: auto = the tokenizer's chat template; or {', '.join(TEMPLATE_NAMES)}.",
        unset="the run's (run_config.yaml), else auto", check=_template_name)
    system: str | None = arg(
        None, "Persona system prompt ('' = none).", unset="the run's (run_config.yaml), else the built-in persona")
    cutoff_len: int | None = arg(
        CUTOFF_LEN, "Max tokens per sample (prompt + reply); longer prompts are cut, samples whose reply cannot fit "
                    "are dropped.", unset=f"the run's, else {CUTOFF_LEN}", check=_positive)
    max_samples: int | None = arg(None, "Use at most this many records of each dataset (default: all).",
                                  check=_positive)
    val_size: float = arg(0.0, "Validation split: a fraction in (0, 1) or a whole record count (>= 1); 0 = none.",
                          check=_val_size)
    seed: int = arg(42, "Random seed.")


@dataclass
class LoraArguments(Arguments):
    """The LoRA adapter's shape (LLaMA-Factory's ``FinetuningArguments``, lora part)."""

    lora_rank: int = arg(8, "LoRA rank r.", check=_positive)
    lora_alpha: int | None = arg(None, "LoRA alpha (default 2 × rank).", check=_positive)
    lora_dropout: float = arg(0.0, "LoRA dropout, in [0, 1) (> 0 turns the GPU's fused LoRA MLPs off: more memory "
                                   "on long rows, docs/gpu.md).", check=_dropout)
    lora_target: list[str] = arg(["all"], "Linear layers to adapt: all (every linear but the output head) or names "
                                          "like q_proj,v_proj.")


@dataclass
class TrainingArguments(Arguments):
    """The optimisation settings other stages also take (names as transformers' ``TrainingArguments``)."""

    per_device_train_batch_size: int = arg(8, "Samples per micro-batch.", check=_positive)
    per_device_eval_batch_size: int = arg(8, "Samples per eval forward pass (loss; eval also generates in them).",
                                          check=_positive)
    learning_rate: float = arg(5e-5, "Peak AdamW learning rate.")
    max_steps: int = arg(-1, "Optimizer steps; overrides num_train_epochs when > 0.")


@dataclass
class GeneratingArguments(Arguments):
    """Decoding settings (LLaMA-Factory's ``GeneratingArguments``)."""

    max_new_tokens: int | None = arg(256, "Most tokens per reply.", unset="the model's generation config, else 512",
                                     check=_positive)
    do_sample: bool = arg(True, "Sample (True) or greedy-decode (False).")
    temperature: float | None = arg(0.7, "Sampling temperature, 0 to 2; 0 = greedy.", unset="the model's generation config",
                                    check=sampling_range("temperature", meaning="0 = greedy"))
    top_p: float | None = arg(0.9, "Nucleus sampling probability mass, in (0, 1].", unset="the model's generation config",
                              check=sampling_range("top_p", above=True))
    top_k: int | None = arg(50, "Top-k sampling: only the k likeliest tokens; 0 = off.",
                            unset="the model's generation config (a GGUF: llama.cpp's 40)",
                            check=sampling_range("top_k", low=0, meaning="0 = off"))
    repetition_penalty: float = arg(1.0, "Penalty on repeating earlier tokens, in (0, 10] (HF generate's "
                                         "repetition_penalty, Keskar et al. 2019 CTRL; 1.0 = off; llama-cpp-python's "
                                         "server applies 1.1).",
                                    check=sampling_range("repeat_penalty", above=True, meaning="1 = off"))


@dataclass
class LlamaCppArguments(Arguments):
    """llama.cpp runtime settings for a GGUF (names as llama-cpp-python's ``server/settings.py``)."""

    n_ctx: int = arg(0, "Context size in tokens; 0 = the model's training context (4096 when the GGUF does not say), "
                        "capped by memory.", check=_not_negative)
    n_threads: int = arg(0, "llama.cpp CPU threads; 0 = automatic: half the usable cores to generate (one per "
                            "physical core), all of them to quantize and verify.", check=_not_negative)
    n_gpu_layers: int = arg(-1, "Layers to offload to the GPU; -1 = all (a CPU build ignores it).", check=_layers)
    n_batch: int = arg(512, "Prompt tokens evaluated per batch (llama.cpp's n_batch; llama-server's -b). Smaller "
                            "batches evaluate prompts slower on a GPU; a served client that leaves during its "
                            "prompt frees the model after at most one batch.", check=_positive)
    flash_attn: bool = arg(False, "Flash attention: true/on or false/off; LLaMA-Factory's words also work (fa2 = "
                                  "on; disabled, sdpa, auto = off). For a GGUF: llama.cpp's flash attention (helps on "
                                  "GPUs; on CPU measure first: bench/serve_latency.py).", check=flash_attention,
                           text=True)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def n_threads(requested: int, *, generate: bool) -> int:
    """The thread count for ``--n_threads requested`` (0 = automatic).

    Automatic is half the usable cores to generate tokens (llama-cpp-python's own default: llama.cpp's
    threads spin while they wait, so one per physical core is fastest and more threads than free
    cores slow decoding down; docs/serving.md has the figures) and all of them for batch work
    (quantizing, scoring a prompt's logits), which scales with cores.
    """
    if requested > 0:
        return requested
    cores = usable_cores()
    return max(1, cores // 2) if generate else cores


def context_size(n_ctx_train: int) -> int:
    """The context size a GGUF is run with, in tokens, when ``--n_ctx`` is 0: its training context
    (``{arch}.context_length``, from the HF config's ``max_position_embeddings``), else
    :data:`FALLBACK_N_CTX`. ``serve`` and ``chat`` then cap it by memory
    (:func:`steam_persona.serve.modelinfo.choose_n_ctx`); the export's Ollama Modelfile writes it as
    ``num_ctx``."""
    return n_ctx_train if n_ctx_train > 0 else FALLBACK_N_CTX
