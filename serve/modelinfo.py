"""What serve needs to know about a GGUF before loading it: where it is, its training context,
its chat template (and that template's default system prompt), and a memory-capped ``n_ctx``.

Metadata is read with llama.cpp itself (``Llama(vocab_only=True)``, ≈0.1 s) so that the keys and
their parsing are exactly the ones the server will use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steam_persona.export.quantize import QUANT_TYPES
from steam_persona.common.arguments import context_size
from steam_persona.common.console import byte_size
from steam_persona.common.errors import UserError
from steam_persona.common.hub import embedded_gguf, is_embedded
from steam_persona.common.run_files import refuse_unfinished
from steam_persona.common.memory import available_memory_bytes

#: When an export dir holds several GGUFs, serve the first of these that exists (smallest good one first).
QUANT_PREFERENCE = ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0", "q4_1", "f16", "bf16", "f32")
#: Suffixes of an export's ``<name>-<quant>.gguf`` files (the types `steam-train export` writes).
_QUANT_SUFFIXES = frozenset(QUANT_TYPES) | {"f32"}
_MARK_SYSTEM, _MARK_USER = "\x00SYSTEM\x00", "\x00USER\x00"


@dataclass(frozen=True)
class ModelInfo:
    """Facts about one GGUF file.

    Attributes:
        path: the ``.gguf`` file.
        name: a default model alias (see :func:`default_alias`).
        architecture: ``general.architecture`` (``llama``, ``qwen2`` …).
        n_ctx_train: ``{arch}.context_length`` in tokens (0 when absent).
        chat_template: ``tokenizer.chat_template`` (Jinja2 text) or ``None``.
        template_system: the system prompt the template inserts when a request has none, or ``None``.
        kv_bytes_per_token: f16 KV-cache bytes per context token (see :func:`kv_bytes_per_token`).
        file_bytes: size of the GGUF file in bytes.
        export_report: the export dir's ``export_report.json`` as a dict, or ``None``.
    """

    path: Path
    name: str
    architecture: str
    n_ctx_train: int
    chat_template: str | None
    template_system: str | None
    kv_bytes_per_token: int
    file_bytes: int
    export_report: dict[str, Any] | None


def find_gguf(model: str | Path) -> tuple[Path, dict[str, Any] | None]:
    """Resolve ``EXPORT_DIR_OR_GGUF`` to ``(gguf file, export_report or None)``; a name of the embedded default
    model (``smollm2``, :func:`~steam_persona.common.hub.is_embedded`) that is no path gives its GGUF.

    An export dir gives the GGUF its ``export_report.json`` names for the ``Modelfile`` (``modelfile.from``: the
    first verified type of the export, which its README serves too), else its ``*.gguf`` other than
    ``*-lora.gguf`` in :data:`QUANT_PREFERENCE` order by the ``-<quant>.gguf`` suffix; its ``export_report.json`` is
    read when present and required when the folder is one `steam-train export` began, and an export whose
    report records a failed verification is refused. A ``.gguf`` path is used as is (verified or not); the
    report beside it is read too. Nothing is loaded: `chat` calls this before it says it loads the model.

    Raises:
        UserError: the path does not exist, the folder holds no GGUF, is an unfinished export (no
            report beside its state file or log) or failed verification, the path is an export's
            ``.gguf.unverified`` or ``.gguf.failed`` file, or the report is not JSON.
    """
    p = Path(model).expanduser()
    if not p.exists() and is_embedded(str(model)):
        return embedded_gguf().resolve(), None
    if p.is_dir():
        # <name>-lora.gguf (a LoRA adapter export) cannot be served on its own
        found = sorted(f for f in p.glob("*.gguf") if not f.stem.lower().endswith("-lora"))
        rank = {q: i for i, q in enumerate(QUANT_PREFERENCE)}
        gguf = min(found, key=lambda f: (rank.get(f.stem.rsplit("-", 1)[-1].lower(), len(rank)), f.name), default=None)
        _refuse_unfinished_export(p, gguf)
        report = _read_report(p)
        _refuse_failed_export(p, report, gguf)
        named = ((report or {}).get("modelfile") or {}).get("from")
        if named and (p / named).is_file():
            gguf = p / named
        if gguf is None:
            refuse_unfinished(p, use="export (steam-train export --adapter_name_or_path) and serve")
            raise UserError(f"{p}: no .gguf file in this folder; {_where_the_gguf_is(p)}")
        return gguf.resolve(), report
    if p.is_file():
        _refuse_unverified_file(p)
        if p.suffix != ".gguf":
            raise UserError(f"{p}: not a .gguf file; pass an export dir or a .gguf file")
        return p.resolve(), _read_report(p.parent)
    raise UserError(f"{p}: not found; pass an export dir (from `steam-train export`) or a .gguf file")


def _read_report(folder: Path) -> dict[str, Any] | None:
    """``folder``'s ``export_report.json``, or ``None`` when there is none.

    Raises:
        UserError: the report is not JSON.
    """
    from steam_persona.export.cli import REPORT, read_report

    return read_report(folder) if (folder / REPORT).is_file() else None


def is_export_dir(folder: Path) -> bool:
    """True for a folder `steam-train export` wrote into (its resume state or its log is there)."""
    from steam_persona.export.cli import LOG, STATE

    return any((folder / f).is_file() for f in (STATE, LOG))


def _refuse_unfinished_export(folder: Path, gguf: Path | None) -> None:
    """Refuse an export dir that `steam-train export` began (its state file or log is there) but did not
    finish: without ``export_report.json`` its GGUFs were never verified.

    Raises:
        UserError: ``folder`` is such an unfinished export.
    """
    from steam_persona.export.cli import REPORT

    if (folder / REPORT).is_file() or not is_export_dir(folder):
        return
    unverified = f", or pass the .gguf file itself ({gguf}) to use it unverified" if gguf else ""
    raise UserError(f"{folder}: an unfinished export (no {REPORT}: its GGUFs were never verified); rerun the same "
                    f"`steam-train export` command to finish it (export resumes){unverified}")


def _refuse_failed_export(folder: Path, report: dict[str, Any] | None, gguf: Path | None) -> None:
    """Refuse an export dir whose report records a failed verification, naming the failed checks.

    Raises:
        UserError: some GGUF of ``folder``'s export failed verification.
    """
    from steam_persona.export.cli import failed_text
    from steam_persona.export.verify import failures

    failed = failures((report or {}).get("verify"))
    if failed:
        passed = f", or pass {gguf} itself, which passed" if gguf else ""
        raise UserError(f"{folder}: an export that failed verification ({failed_text(failed, report)}); "
                        f"{_RERUN_FAILED}{passed}")


def _refuse_unverified_file(path: Path) -> None:
    """Refuse a GGUF that an export left unverified (``.gguf.unverified``) or that failed verification
    (``.gguf.failed``), with how to finish or redo that export.

    Raises:
        UserError: ``path`` is such a file.
    """
    from steam_persona.export.cli import FAILED, UNVERIFIED
    from steam_persona.export.verify import failures

    if path.name.endswith(".gguf" + UNVERIFIED):
        raise UserError(f"{path}: an unverified GGUF of an unfinished export; rerun the same `steam-train export` "
                        "command to finish it (export resumes and verifies it)")
    if path.name.endswith(".gguf" + FAILED):
        try:
            report = _read_report(path.parent) or {}
        except UserError:
            report = {}
        checks = "".join(f" ({c})" for q, c in failures(report.get("verify")).items()
                         if report["files"][q]["file"] == path.name)
        raise UserError(f"{path}: a GGUF that failed its export's verification{checks}; {_RERUN_FAILED}")


#: The way out of a failed verification, for :func:`_refuse_failed_export` and :func:`_refuse_unverified_file`.
_RERUN_FAILED = ("rerun the same `steam-train export` command once the cause is fixed (it verifies again), or with "
                 "--no_verify to accept the files as they are")


def _where_the_gguf_is(folder: Path) -> str:
    """The fix for a folder without a GGUF: its ``export/`` (a train run dir exported with the default
    ``--export_dir``) when that holds one, else how to make one."""
    export = folder / "export"
    inside = sorted(f.name for f in export.glob("*.gguf") if not f.stem.lower().endswith("-lora")) \
        if export.is_dir() else []
    if inside:
        return f"it is a train run dir: pass its export, {export} (holding {', '.join(inside)})"
    if (folder / "adapter_config.json").is_file():
        return f"it is a train run dir: run `steam-train export --adapter_name_or_path {folder}` first"
    return "run `steam-train export` first or pass a .gguf path"


def default_alias(model: str | Path, gguf: Path, report: dict[str, Any] | None) -> str:
    """The model id to serve under when ``--model_alias`` is not given.

    For an export dir: the export's name (``export_report.json``'s ``name``, i.e. ``--export_name``
    or the run dir's name), else the GGUF file stem without its ``-<quant>`` suffix
    (``persona-q4_k_m.gguf`` → ``persona``). Never the folder's own name, which is ``export`` for
    every run's default export dir. For a ``.gguf`` path: its file stem, as given.
    """
    if not Path(model).expanduser().is_dir():
        return gguf.stem
    name = report.get("name") if isinstance(report, dict) else None
    if isinstance(name, str) and name.strip():
        return name.strip()
    stem, _, quant = gguf.stem.rpartition("-")
    return stem if stem and quant.lower() in _QUANT_SUFFIXES else gguf.stem


def kv_bytes_per_token(meta: dict[str, str]) -> int:
    """f16 KV-cache bytes per context token: ``2 (K and V) × n_layer × n_head_kv × head_dim × 2 bytes``.

    Source: llama.cpp's KV cache (``src/llama-kv-cache.cpp``: one K and one V row of
    ``n_embd_k_gqa = head_dim × n_head_kv`` per layer per cell, f16 by default). ``head_dim`` is
    ``{arch}.attention.key_length`` when present, else ``embedding_length / head_count``.
    Returns 0 when the metadata lacks the keys.
    """
    arch = meta.get("general.architecture", "")
    try:
        n_layer = int(meta[f"{arch}.block_count"])
        n_head = int(meta[f"{arch}.attention.head_count"])
        n_head_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
        head_dim = int(meta.get(f"{arch}.attention.key_length") or int(meta[f"{arch}.embedding_length"]) // n_head)
    except (KeyError, ValueError, ZeroDivisionError):
        return 0
    return 2 * n_layer * n_head_kv * head_dim * 2


def template_default_system(template: str, bos: str = "", eos: str = "") -> str | None:
    """The system prompt a chat template inserts when the messages have none, or ``None``.

    Renders ``[user]`` and ``[system, user]`` with marker strings: whatever the no-system render
    holds where the system marker sits in the other is the template's default (SmolLM2's template
    gives "You are a helpful AI assistant named SmolLM, trained by Hugging Face"; an exported
    persona model gives the persona).
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
    try:
        with_sys = fmt(messages=[{"role": "system", "content": _MARK_SYSTEM},
                                 {"role": "user", "content": _MARK_USER}]).prompt
        no_sys = fmt(messages=[{"role": "user", "content": _MARK_USER}]).prompt
    except Exception:  # a template that rejects these messages has no default we can find
        return None
    if _MARK_SYSTEM not in with_sys:
        return None
    pre, post = with_sys.split(_MARK_SYSTEM, 1)
    if not (no_sys.startswith(pre) and no_sys.endswith(post)) or len(no_sys) < len(pre) + len(post):
        return None
    default = no_sys[len(pre):len(no_sys) - len(post)]
    return default or None


def _quiet_llama():
    """llama-cpp-python's fd-level stdout/stderr silencer (``llama_cpp._utils``), or a no-op without it."""
    import contextlib

    try:
        from llama_cpp._utils import suppress_stdout_stderr
    except ImportError:
        return contextlib.nullcontext()
    return suppress_stdout_stderr(disable=False)


def read_model_info(model: str | Path) -> ModelInfo:
    """Read a GGUF's metadata (export dir or ``.gguf`` path; see :func:`find_gguf`).

    Raises:
        UserError: no GGUF found, or the file is not a GGUF llama.cpp can read.
    """
    import llama_cpp

    gguf, report = find_gguf(model)
    try:
        # llama.cpp warns "n_ctx_seq (512) > n_ctx_train (0)" for every vocab-only load (no hparams are read):
        # meaningless here, so its C-level stderr is muted with llama-cpp-python's own helper
        with _quiet_llama():
            vocab = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    except ValueError as e:
        raise UserError(f"{gguf}: llama.cpp cannot read this GGUF ({e}); re-export it") from None
    meta = dict(vocab.metadata)
    arch = meta.get("general.architecture", "")
    template = meta.get("tokenizer.chat_template")
    bos, eos = special_token_texts(vocab)
    vocab.close()
    return ModelInfo(
        path=gguf,
        name=default_alias(model, gguf, report),
        architecture=arch,
        n_ctx_train=int(meta.get(f"{arch}.context_length", 0) or 0),
        chat_template=template,
        template_system=template_default_system(template, bos, eos) if template else None,
        kv_bytes_per_token=kv_bytes_per_token(meta),
        file_bytes=gguf.stat().st_size,
        export_report=report,
    )


def special_token_texts(llama: Any) -> tuple[str, str]:
    """``(bos, eos)`` token texts of a loaded ``llama_cpp.Llama`` ("" when the model has none)."""
    def text(tok: int) -> str:
        return llama.detokenize([tok], special=True).decode("utf-8", "replace") if tok != -1 else ""
    return text(llama.token_bos()), text(llama.token_eos())


def completion_prompt_tokens(llama: Any, prompt: str) -> list[int]:
    """A /v1/completions ``prompt``'s token ids (the library's tokenization: special tokens parsed, BOS
    added when the model wants one). An empty prompt, which OpenAI accepts and continues "as if from the
    beginning of a new document" (its ``<|endoftext|>``), is the model's BOS token, else its EOS token:
    llama.cpp cannot generate from no token at all."""
    tokens = llama.tokenize(prompt.encode("utf-8"), True, True)
    if tokens:
        return tokens
    return [llama.token_bos() if llama.token_bos() != -1 else llama.token_eos()]


def check_kv_fits(info: ModelInfo, n_ctx: int, slots: int = 1, memory_bytes: int | None = None) -> None:
    """Refuse a context whose f16 KV cache (``n_ctx × slots ×`` :attr:`ModelInfo.kv_bytes_per_token`) is larger
    than the memory available (:func:`available_memory_bytes`, or ``memory_bytes``) beside the weights,
    before llama.cpp allocates any of it. Only host memory is measured: the caller skips this where the
    cache may sit in GPU memory. A GGUF without the metadata (``kv_bytes_per_token`` 0) is not checked.

    Raises:
        UserError: naming ``--n_ctx``, the cache's size and the free memory.
    """
    need = n_ctx * slots * info.kv_bytes_per_token
    free = max(_free_beside_weights(info, memory_bytes), 0)
    if need <= free:
        return
    flag = f"--n_ctx {n_ctx}" + (f" × --parallel {slots}" if slots > 1 else "")
    raise UserError(f"{flag}: its KV cache needs {byte_size(need)}, this machine has {byte_size(free)} free beside "
                    f"the model's weights; lower --n_ctx{trained_on(info)}")


def cache_may_sit_on_gpu(n_gpu_layers: int, engine: str = "llama-cpp-python") -> bool:
    """Whether llama.cpp may put the KV cache in GPU memory, which :func:`check_kv_fits` does not measure: layers
    are offloaded (``--n_gpu_layers`` not 0) by a GPU build of llama-cpp-python, or by a llama-server binary,
    whose build cannot be asked."""
    import llama_cpp

    return n_gpu_layers != 0 and (engine == "llama-server" or bool(llama_cpp.llama_supports_gpu_offload()))


def _free_beside_weights(info: ModelInfo, memory_bytes: int | None) -> int:
    """Bytes of memory left once the GGUF's weights are loaded (:func:`available_memory_bytes`, or
    ``memory_bytes``, minus the file's size); negative when they do not fit."""
    return (available_memory_bytes() if memory_bytes is None else memory_bytes) - info.file_bytes


def trained_on(info: ModelInfo) -> str:
    """`` (the model was trained on 8,192 tokens)`` for a line that says to lower ``--n_ctx`` ("" when unknown)."""
    return f" (the model was trained on {info.n_ctx_train:,} tokens)" if info.n_ctx_train else ""


def choose_n_ctx(info: ModelInfo, requested: int = 0, memory_bytes: int | None = None,
                 memory_fraction: float = 0.5) -> tuple[int, str]:
    """Pick the context size in tokens and say why.

    ``requested > 0`` is used as given. Otherwise
    :func:`steam_persona.common.arguments.context_size` (the model's training context, 4096 when
    the GGUF does not say; the export's Modelfile writes the same) capped so that the f16 KV cache
    takes at most ``memory_fraction`` of the memory left after the weights, rounded down to a
    multiple of 256 and at least 512.

    Returns:
        ``(n_ctx, reason)``, e.g. ``(8192, "training context")``.
    """
    if requested > 0:
        return requested, "--n_ctx"
    want = context_size(info.n_ctx_train)
    reason = "training context" if info.n_ctx_train else "default (GGUF has no context_length)"
    if info.kv_bytes_per_token:
        free = _free_beside_weights(info, memory_bytes)
        cap = int(max(free, 0) * memory_fraction) // info.kv_bytes_per_token // 256 * 256
        if cap < want:
            return max(cap, 512), f"training context {want} capped by memory"
    return want, reason
