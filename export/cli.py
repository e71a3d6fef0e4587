"""``steam-train export``: a training run → merged HF folder → GGUF → quantized GGUFs, verified.

Steps (each reused on a rerun when its output exists and was made from the same inputs):

1. merge   — base reloaded in 16-bit + LoRA merged with peft → ``merged/`` (steam_persona.export.merge)
2. persona — the persona becomes the chat template's default system prompt (steam_persona.export.chat_template)
3. convert — ``merged/`` → ``<name>-f16.gguf`` / ``-bf16.gguf`` (steam_persona.export.convert)
4. quantize — → ``<name>-q4_k_m.gguf`` … with llama.cpp's quantizer (steam_persona.export.quantize)
5. verify  — logits vs the merged model, and the end-of-turn stop (steam_persona.export.verify)
6. extras  — ``Modelfile`` (Ollama), ``README.md``, ``generation_config.json``, optional
   ``<name>-lora.gguf``, ``export_report.json``; ``merged/`` is then deleted unless ``--keep_merged``
   (it is as large as the 16-bit model)

Every file is written under a temp name and renamed; ``export_report.json`` is written last, so a
folder without it is an unfinished export that a rerun resumes. An interrupted export (Ctrl-C)
says what it leaves: the finished steps' files, reused by the rerun.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import click

from steam_persona.trainer import arguments, config
from steam_persona.trainer.arguments import DataArguments, LlamaCppArguments, ModelArguments
from steam_persona.trainer.config import arg
from steam_persona.trainer.errors import UserError

STATE = ".steam-export.json"
REPORT = "export_report.json"


@dataclass
class ExportConfig:
    """Flags of `steam-train export` (= YAML keys). LLaMA-Factory names where it has one."""

    model_name_or_path: str | None = ModelArguments.use("model_name_or_path", None)
    adapter_name_or_path: str | None = ModelArguments.use("adapter_name_or_path")
    export_dir: str | None = arg(None, "Output folder. Default: ADAPTER_NAME_OR_PATH/export.")
    quantization: list[str] = arg(["q4_k_m"], "GGUF types to write, comma-separated: q4_k_m, q5_k_m, q6_k, "
                                              "q8_0, f16, bf16 (also q2_k … q5_k_s).")
    system: str | None = DataArguments.use("system")
    export_name: str | None = arg(None, "File name stem: <export_name>-<quant>.gguf. Default: the run dir's "
                                        "name (or the base model's).")
    infer_dtype: str = arg("auto", "16-bit dtype to merge in; auto = the base's own 16-bit dtype, else "
                                   "bfloat16.", choices=("auto", "bfloat16", "float16"))
    export_size: int = arg(5, "Max size of one merged safetensors shard, GB.")
    no_verify: bool = arg(False, "Skip verification (logits vs the merged model, end-of-turn stop).")
    lora_gguf: bool = arg(False, "Also write the adapter alone as <name>-lora.gguf for llama.cpp --lora.")
    overwrite: bool = arg(False, "Replace a finished export in --export_dir (finished steps are still reused "
                                 "when their inputs match).")
    n_threads: int = LlamaCppArguments.use("n_threads")
    keep_merged: bool = arg(False, "Keep merged/ (the merged 16-bit Hugging Face model, as large as the base in "
                                   "16-bit) for transformers or vLLM; by default it is deleted once the GGUFs are "
                                   "verified.")


class VerificationFailed(click.ClickException):
    """Some GGUF failed verification (exit 1). The files and export_report.json are kept."""

    exit_code = 1


def run(cfg: ExportConfig) -> dict[str, Any]:
    """Run the whole export; return the report (also written to ``EXPORT_DIR/export_report.json``).

    The report's keys: ``export_dir``, ``persona``, ``base_model``, ``adapter``, ``architecture``,
    ``converter``, ``files`` ({quant: {"file", "bytes"}}), ``merged`` (export_merge.json),
    ``verify`` ({quant: {"logits", "stop", "chat_template_has_persona", "passed"}} or ``None``),
    ``steps`` ({step: "done" | "reused"}), ``seconds``.

    Raises:
        UserError (exit 2): bad flags, missing adapter, adapter/base mismatch, unsupported
            architecture, unknown quant type, a non-export folder in the way, full disk.
        VerificationFailed (exit 1): a GGUF failed verification (everything is still written).
    """
    from steam_persona.trainer.console import console, progress, summary_table
    from steam_persona.trainer.hub import resolve_model
    from steam_persona.trainer.io import JsonlLog, write_json
    from steam_persona.trainer import persona

    from steam_persona.export import convert as conv
    from steam_persona.export import merge as mg
    from steam_persona.export import quantize as qz
    from steam_persona.export.verify import describe

    t_start = time.time()
    qtypes = qz.check_types(cfg.quantization)
    run_info = mg.read_run(cfg.adapter_name_or_path)
    run = run_info.run
    base = cfg.model_name_or_path or run.model_name_or_path
    if not base:
        where = run.path or (run_info.adapter_dir / "run_config.yaml" if run_info.adapter_dir else "command line")
        raise UserError(f"{where}: no base model given; pass --model_name_or_path")
    src = resolve_model(str(base))
    # '' = no persona: the model keeps its own template default
    system = persona.resolve(cfg.system, run) or None
    if cfg.export_dir:
        out = Path(cfg.export_dir).expanduser()
    elif run_info.adapter_dir is not None:
        out = run_info.adapter_dir / "export"
    else:
        raise UserError("command line: no --export_dir given (needed when there is no --adapter_name_or_path)")
    name = _safe_name(cfg.export_name or (run_info.adapter_dir.resolve().name if run_info.adapter_dir else src.name))
    n_threads = arguments.n_threads(cfg.n_threads, generate=False)

    # --- what each step is made from (reuse a finished step only when these match) ---
    merge_fp = mg.fingerprint({
        "base": src.path, "gguf_file": src.gguf_file, "base_files": _files_stamp(Path(src.path), src.gguf_file),
        "adapter": _adapter_digest(run_info.adapter_dir), "system": system, "infer_dtype": cfg.infer_dtype,
        "steam_persona": importlib.metadata.version("steam-persona")})
    merged_dir = out / "merged"
    merge_info = mg.read_merge_info(merged_dir) if merged_dir.is_dir() else None
    reuse_merge = bool(merge_info and merge_info.get("fingerprint") == merge_fp)
    if reuse_merge:  # made from these very inputs: already checked, so skip reading the base
        assert merge_info is not None
        arch, dtype_name, n_params = merge_info["architecture"], merge_info["dtype"], merge_info["parameters"]
        dtype = None  # no merge to run
    else:
        base_cfg = mg.base_config(src)
        arch = conv.check_architecture(base_cfg, str(base))
        mg.check_adapter_matches_base(run_info, base_cfg, str(base))
        dtype = mg.merge_dtype(base_cfg, cfg.infer_dtype)
        dtype_name = str(dtype).removeprefix("torch.")
        n_params = _parameter_count(base_cfg)
    state = _open_export_dir(out, cfg.overwrite)
    src16 = "bf16" if dtype_name == "bfloat16" else "f16"
    floats = [q for q in qtypes if q in qz.FLOAT_TYPES]
    source_type = src16 if src16 in floats or not floats else floats[0]
    to_convert = [source_type] + [q for q in floats if q != source_type]
    quants = [q for q in qtypes if q not in qz.FLOAT_TYPES]
    gguf_fp = {q: mg.fingerprint({"merge": merge_fp, "type": q, "converter": conv.converter_version()})
               for q in to_convert + quants}
    files = {q: out / f"{name}-{q}.gguf" for q in to_convert + quants}
    done = {q for q in files if files[q].is_file() and state["files"].get(files[q].name) == gguf_fp[q]}
    _check_free_disk(out, n_params, reuse_merge, [q for q in to_convert + quants if q not in done])

    if run.quantization_bit and not reuse_merge:
        console.print(f"[yellow]The run was QLoRA ({run.quantization_bit}-bit base); "
                      f"the base is reloaded in {dtype_name} to merge (never into 4-bit weights).[/]")
    steps: dict[str, str] = {}
    seconds: dict[str, float] = {}
    log = JsonlLog(out / "export_log.jsonl")
    n_steps = 1 + len(to_convert) + len(quants) + (0 if cfg.no_verify else len(qtypes)) + int(cfg.lora_gguf) + 1
    try:
        with _say_what_is_left_if_interrupted(out), progress() as bar:
            task = bar.add_task("export", total=n_steps)

            def step(key: str, label: str, reused: bool, fn) -> None:
                bar.update(task, description=f"{label}{' (reused)' if reused else ''}")
                t = time.time()
                log.write(event="step_start", step=key, reused=reused)
                if not reused:
                    fn()
                seconds[key] = round(time.time() - t, 2)
                steps[key] = "reused" if reused else "done"
                log.write(event="step_end", step=key, reused=reused, seconds=seconds[key])
                bar.advance(task)

            # 1-2. merge (+ tokenizer eos and persona template)
            def do_merge() -> None:
                nonlocal merge_info
                from steam_persona.export.verify import PROMPTS

                tok = mg.load_tokenizer(src, run_info)
                eot = mg.fix_tokenizer(tok, system)
                merge_info = mg.merge(src, run_info, tok, eot, merged_dir, dtype=dtype, export_size=cfg.export_size,
                                      info={"fingerprint": merge_fp, "base_model": str(base),
                                            "architecture": arch}, prompts=PROMPTS)

            step("merge", f"merge adapter into {dtype_name} base", reuse_merge, do_merge)
            assert merge_info is not None
            meta = {"steam_persona.converter": conv.converter_version(),
                    "steam_persona.base_model": str(base),
                    "steam_persona.adapter": str(run_info.adapter_dir or ""),
                    "steam_persona.system": system or ""}

            def finished(q: str) -> None:
                state["files"][files[q].name] = gguf_fp[q]
                write_json(out / STATE, state)

            # 3. convert
            for q in to_convert:
                def do_convert(q: str = q) -> None:
                    conv.convert(merged_dir, files[q], q, name=name, metadata=meta)
                    finished(q)
                step(f"convert_{q}", f"convert to GGUF {q}", q in done, do_convert)
            # 4. quantize
            for q in quants:
                def do_quantize(q: str = q) -> None:
                    qz.quantize(files[source_type], files[q], q, n_threads)
                    finished(q)
                step(f"quantize_{q}", f"quantize {q}", q in done, do_quantize)
            # 6a. LoRA GGUF
            lora_file = out / f"{name}-lora.gguf"
            if cfg.lora_gguf:
                if run_info.adapter_dir is None:
                    raise UserError("--lora_gguf: no --adapter_name_or_path to convert")
                step("lora_gguf", "convert adapter to GGUF LoRA", False,
                     lambda: conv.convert_lora(run_info.adapter_dir, merged_dir, lora_file, name=name, metadata=meta))
            # 5. verify
            verify: dict[str, Any] | None = None
            if not cfg.no_verify:
                import numpy as np

                from steam_persona.export.chat_template import jinja_string
                from steam_persona.export.verify import verify_gguf

                verify = {}
                with np.load(merged_dir / mg.REFERENCE) as z:
                    ref = {k: z[k] for k in z.files}
                for q in qtypes:
                    def do_verify(q: str = q) -> None:
                        v = verify_gguf(files[q], ref, merge_info["eos_token"], is_float=q in qz.FLOAT_TYPES,
                                        n_threads=n_threads)
                        template = v.pop("chat_template")
                        v["chat_template_has_persona"] = bool(system) and jinja_string(system) in template
                        verify[q] = v
                    step(f"verify_{q}", f"verify {q}", False, do_verify)
            # 6b. extras + report (last: its presence marks a finished export)
            bar.update(task, description="write Modelfile, README, report")
            kept = [files[q] for q in qtypes] + ([lora_file] if cfg.lora_gguf else [])
            report = _report(cfg, out, name, base, src, run_info, arch, system, qtypes, files, merge_info, verify,
                             steps, seconds, t_start)
            serve_q = next((q for q in qtypes if q not in qz.FLOAT_TYPES), qtypes[0])
            _write_extras(out, files[serve_q].name, system, merge_info, report, kept, merged_dir)
            for stale in sorted(out.glob("*.gguf")):
                if stale not in kept:  # the intermediate 16-bit file, or types of an overwritten export
                    stale.unlink()
                    state["files"].pop(stale.name, None)
            write_json(out / STATE, state)
            if not cfg.keep_merged:
                shutil.rmtree(merged_dir)
            write_json(out / REPORT, report)
            bar.advance(task)
    finally:
        log.close()

    rows: list[tuple[object, object]] = [("export dir", out), ("persona", _short(system or "(the model's own)")),
                                         ("base", base), ("adapter", run_info.adapter_dir or "(none)")]
    for q in qtypes:
        v = (verify or {}).get(q)
        check = "" if v is None else (f"  {'[green]PASSED[/]' if v['passed'] else '[red]FAILED[/]'}: "
                                      f"{describe(v, is_float=q in qz.FLOAT_TYPES)}")
        rows.append((files[q].name, f"{_size(files[q])}{check}"))
    if cfg.lora_gguf:
        rows.append((lora_file.name, _size(lora_file)))
    rows.append(("merged/", _size(merged_dir) if cfg.keep_merged else "deleted (pass --keep_merged to keep it)"))
    rows.append(("time", f"{time.time() - t_start:.1f} s"))
    summary_table("steam-train export", rows)
    failed = [q for q, v in (verify or {}).items() if not v["passed"]]
    if failed:
        raise VerificationFailed(f"{out / REPORT}: verification failed for {', '.join(failed)}; "
                                 "see 'verify' in the report")
    return report


@contextlib.contextmanager
def _say_what_is_left_if_interrupted(out: Path) -> Iterator[None]:
    """On Ctrl-C, print what the unfinished export leaves in ``out`` and how to resume, then re-raise."""
    try:
        yield
    except KeyboardInterrupt:
        from steam_persona.trainer.console import console

        left = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if not p.name.startswith("."))
        console.print(f"export interrupted: {out} keeps the finished steps ({', '.join(left) or 'nothing yet'}; no "
                      "export_report.json, so it is unfinished). Rerun the same command to resume from them, or "
                      "delete the folder to free the disk.", markup=False, soft_wrap=True)
        raise


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def _size(path: Path) -> str:
    n = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.2f} GiB"


def _files_stamp(path: Path, gguf_file: str | None) -> list:
    """Name, size and mtime of the base's weight files (hashing GBs would cost minutes)."""
    if not path.is_dir():
        return []
    pats = [gguf_file] if gguf_file else ["*.safetensors", "*.bin", "config.json"]
    return sorted((f.name, f.stat().st_size, int(f.stat().st_mtime)) for p in pats for f in path.glob(p))


def _adapter_digest(adapter_dir: Path | None) -> str | None:
    from steam_persona.export.merge import ADAPTER_FILES, file_digest

    if adapter_dir is None:
        return None
    parts = [file_digest(adapter_dir / f) for f in ("adapter_config.json", *ADAPTER_FILES) if (adapter_dir / f).is_file()]
    for tok in ("tokenizer_config.json", "chat_template.jinja", "tokenizer.json"):
        if (adapter_dir / tok).is_file():
            parts.append(file_digest(adapter_dir / tok))
    return ",".join(parts)


def _open_export_dir(out: Path, overwrite: bool) -> dict[str, Any]:
    """Check ``out`` may be written and return its resume state (``{"files": {name: fingerprint}}``).

    Raises:
        UserError: ``out`` is a file; holds a finished export and ``overwrite`` is off; or is a
            non-empty folder that is not an export and ``overwrite`` is off.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: is a file; choose another --export_dir")
    state: dict[str, Any] = {"files": {}}
    if out.is_dir() and any(out.iterdir()):
        if (out / REPORT).is_file() and not overwrite:
            raise UserError(f"{out}: holds a finished export; pass --overwrite to replace it or choose another --export_dir")
        if not (out / STATE).is_file() and not overwrite:
            raise UserError(f"{out}: folder is not empty and holds no export; choose another --export_dir or pass --overwrite")
        try:
            state = json.loads((out / STATE).read_text(encoding="utf-8"))
            state.setdefault("files", {})
        except (OSError, json.JSONDecodeError):
            state = {"files": {}}
        (out / REPORT).unlink(missing_ok=True)  # from here on the folder is an unfinished export
    out.mkdir(parents=True, exist_ok=True)
    from steam_persona.trainer.io import write_json

    write_json(out / STATE, state)
    return state


def _check_free_disk(out: Path, n: int, reuse_merge: bool, todo: list[str]) -> None:
    """Refuse to start when the disk cannot hold the outputs (16-bit merged folder + GGUFs).

    Raises:
        UserError: free space (``shutil.disk_usage``) is below the estimate.
    """
    from steam_persona.export.quantize import BITS_PER_WEIGHT

    need = (0 if reuse_merge else 2 * n) + sum(int(n * BITS_PER_WEIGHT[q] / 8) for q in todo)
    free = shutil.disk_usage(out).free
    if free < need:
        raise UserError(f"{out}: not enough disk space: the export needs about {need / 2**30:.2f} GiB, "
                        f"{free / 2**30:.2f} GiB are free; free some disk or choose another --export_dir")


def _parameter_count(base_cfg) -> int:
    """Parameters of the base, counted on the ``meta`` device (no memory, no weights read)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(base_cfg)
    return sum(p.numel() for p in model.parameters())


def _report(cfg, out, name, base, src, run_info, arch, system, qtypes, files, merge_info, verify, steps, seconds,
            t_start) -> dict[str, Any]:
    from steam_persona.export.convert import converter_version

    return {
        "export_dir": str(out), "name": name, "persona": system, "base_model": str(base), "base_model_path": src.path,
        "adapter": str(run_info.adapter_dir) if run_info.adapter_dir else None, "architecture": arch,
        "template": run_info.run.template, "run_quantization_bit": run_info.run.quantization_bit,
        "converter": converter_version(), "llama_cpp_python": importlib.metadata.version("llama_cpp_python"),
        "quantization": qtypes, "eos_token": merge_info["eos_token"],
        "files": {q: {"file": files[q].name, "bytes": files[q].stat().st_size} for q in qtypes},
        "merged": {k: v for k, v in merge_info.items() if k != "fingerprint"},
        "verify": verify, "steps": steps, "step_seconds": seconds, "seconds": round(time.time() - t_start, 2),
        "config": config.to_dict(cfg),
    }


def _write_extras(out: Path, serve_gguf: str, system: str | None, merge_info: dict, report: dict,
                  kept: list[Path], merged_dir: Path) -> None:
    from steam_persona.export.chat_template import is_chatml
    from steam_persona.export.convert import context_length
    from steam_persona.export.modelfile import modelfile, readme
    from steam_persona.trainer.io import write_text

    gen = json.loads((merged_dir / "generation_config.json").read_text(encoding="utf-8"))
    template_file = merged_dir / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else ""
    chatml = is_chatml(template)
    stop = [merge_info["eos_token"]] + (["<|im_start|>"] if chatml else [])
    num_ctx = arguments.context_size(context_length(out / serve_gguf))
    write_text(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    write_text(out / "Modelfile", modelfile(serve_gguf, report["name"], system=system, chatml=chatml, stop=stop, generation=gen,
                                            num_ctx=num_ctx))
    listing = [(f.name, f.stat().st_size) for f in kept]
    write_text(out / "README.md", readme(report["name"], listing, report, serve_gguf))


command = config.command(ExportConfig, run, name="export", config_option="positional",
                         help="Merge the LoRA adapter into its base, convert to GGUF, quantize, verify, and write "
                              "an Ollama Modelfile. Reads the base and the persona from the run's run_config.yaml.")
