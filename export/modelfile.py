"""Step 6 extras: an Ollama ``Modelfile`` and a ``README.md`` for the export dir.

Modelfile syntax: https://github.com/ollama/ollama/blob/main/docs/modelfile.md (FROM, TEMPLATE,
SYSTEM, PARAMETER). The sampling parameters are the ones the model's own ``generation_config.json``
sets (Qwen2.5-Instruct ships temperature 0.7, top_p 0.8, top_k 20, repetition_penalty 1.05; a
SmolLM2 GGUF base has none); a parameter it leaves unset gets no PARAMETER line, so Ollama's own
default applies, and the Modelfile says so in a comment.
"""

from __future__ import annotations

from typing import Any

from steam_persona.export.chat_template import OLLAMA_CHATML
from steam_persona.export.verify import percent

#: generation_config.json key → Ollama PARAMETER name.
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repeat_penalty"}


def modelfile(gguf_name: str, name: str, *, system: str | None, chatml: bool, stop: list[str],
              generation: dict[str, Any], num_ctx: int) -> str:
    """The Modelfile text: ``FROM ./<gguf_name>``, ChatML TEMPLATE, SYSTEM, stop tokens, parameters.

    Args:
        gguf_name: the quantized GGUF's file name (beside the Modelfile). name: the Ollama model name.
        system: the persona (``None``: no SYSTEM line). chatml: write the ChatML TEMPLATE (else
            Ollama falls back to detecting the GGUF's own template).
        stop: stop strings (end-of-turn token first). generation: generation_config values.
        num_ctx: context window in tokens (:func:`steam_persona.common.arguments.context_size`, the
            rule ``serve`` uses too).
    """
    given = {ollama: generation[k] for k, ollama in _SAMPLING.items() if generation.get(k) is not None}
    unset = [ollama for ollama in _SAMPLING.values() if ollama not in given]
    lines = ["# Ollama Modelfile written by `steam-train export`.",
             f"# ollama create {name} -f Modelfile && ollama run {name}",
             f"FROM ./{gguf_name}", ""]
    if chatml:
        lines += [f'TEMPLATE """{OLLAMA_CHATML}"""', ""]
    if system:
        lines += [f'SYSTEM """{system.replace(chr(34) * 3, chr(34))}"""', ""]
    lines += [f'PARAMETER stop "{s}"' for s in stop]
    lines.append("# sampling: from generation_config.json" + (f"; not set there, Ollama's defaults apply: "
                                                                f"{', '.join(unset)}" if unset else ""))
    lines += [f"PARAMETER {k} {v}" for k, v in given.items()]
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def _serve_lines(name: str, report: dict[str, Any], serve_gguf: str | None, failed: list[str], num_ctx: int | None) -> str:
    """The README's "Serve it" section: commands that name only ``serve_gguf``, a GGUF that passed verification
    (the folder itself when none failed, since `serve` refuses a folder with a failed GGUF, and serves the
    Modelfile's GGUF), with the Modelfile's context size ``num_ctx``, or why there are none."""
    if serve_gguf is None:
        return ("Nothing here can be served: no GGUF passed verification (see below), so there is no `Modelfile` and "
                "`steam-train serve` / `chat` refuse this folder. The export that verifies a GGUF writes them.")
    export_dir = report.get("export_dir", ".")
    target = f"{export_dir}/{serve_gguf}" if failed else export_dir
    return f"""```bash
steam-train serve {target}                       # OpenAI-compatible API for Dify
python -m llama_cpp.server --model {serve_gguf} --n_ctx {num_ctx} --interrupt_requests False
llama-server -m {serve_gguf} --jinja -c {num_ctx}                            # llama.cpp
ollama create {name} -f Modelfile && ollama run {name}                  # Ollama
```"""


def _merged_line(report: dict[str, Any], failed: list[str]) -> str:
    """The README's line on ``merged/``: kept (``--keep_merged``), kept for the rerun (a failed verification), or deleted."""
    if (report.get("config") or {}).get("keep_merged"):
        return "`merged/` is the merged Hugging Face model (safetensors) for transformers or vLLM."
    if failed:
        return ("`merged/` (the merged 16-bit Hugging Face model) and the 16-bit GGUF made from it (a "
                "`.gguf.unverified` file unless its type was requested) are kept so that the rerun reuses them "
                "instead of merging and converting again; it deletes them once it passes. Delete this folder "
                "to free the disk.")
    return ("The merged 16-bit Hugging Face model was deleted after verification; export again with "
            "`--keep_merged` for transformers or vLLM. `generation_config.json` holds its sampling settings.")


def readme(name: str, files: list[tuple[str, int]], report: dict[str, Any], serve_gguf: str | None,
           num_ctx: int | None = None) -> str:
    """The export dir's README.md: what is here and how to serve it (steam-train, llama.cpp, Ollama); the serve
    commands name ``serve_gguf`` only, ``None`` when no GGUF passed verification, with the context size ``num_ctx``
    the Modelfile gives (tokens)."""
    rows = "\n".join(f"| `{f}` | {size / 2**20:,.1f} MiB |" for f, size in files)
    verify = report.get("verify") or {}
    vrows = "\n".join(
        f"| {q} | {percent(v['logits']['top1_agreement'])} | {v['logits']['max_abs_diff']} | "
        f"{'yes' if v['stop']['natural_stop'] else 'no'} | {'yes' if v['stop']['eot_ends_generation'] else 'no'} | "
        f"{'PASSED' if v['passed'] else 'FAILED'} |"
        for q, v in verify.items())
    failed = [q for q, v in verify.items() if not v["passed"]]
    vtable = ("| file | top-1 agreement vs HF | max abs logit diff | stopped by itself | end-of-turn stops | result |\n"
              "|---|---|---|---|---|---|\n" + vrows) if vrows else "Verification was skipped (--no_verify)."
    if failed:
        vtable += (f"\n\n{', '.join(failed)} FAILED verification (see `verify` in export_report.json): its file keeps "
                   "the `.gguf.failed` name and `steam-train serve` / `chat` refuse this folder. Rerun the export once "
                   "the cause is fixed (it verifies again), or with `--no_verify` to accept the files as they are.")
    return f"""# {name} — exported by steam-train

Base model: `{report.get('base_model')}`; adapter: `{report.get('adapter')}`.
Converter: {report.get('converter')}. The persona is the chat template's default system prompt,
so every server below speaks as the persona when a conversation has no system message.

| file | size |
|---|---|
{rows}

## Serve it

{_serve_lines(name, report, serve_gguf, failed, num_ctx)}

{_merged_line(report, failed)}

## Verification

{vtable}
"""
