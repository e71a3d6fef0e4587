"""``steam-train export``: a training run → merged HF folder → GGUF → quantized GGUFs, verified.

Steps (each reused on a rerun when its output exists and was made from the same inputs):

1. merge   — base reloaded in 16-bit + LoRA merged with peft → ``merged/`` (steam_persona.export.merge)
2. persona — the persona becomes the chat template's default system prompt (steam_persona.export.chat_template)
3. convert — ``merged/`` → ``<name>-f16.gguf`` / ``-bf16.gguf`` (steam_persona.export.convert)
4. quantize — → ``<name>-q4_k_m.gguf`` … with llama.cpp's quantizer (steam_persona.export.quantize)
5. verify  — logits vs the merged model, and the end-of-turn stop (steam_persona.export.verify)
6. extras  — ``Modelfile`` (Ollama), ``README.md``, ``generation_config.json``, optional
   ``<name>-lora.gguf``, ``export_report.json``; ``merged/`` is then deleted unless ``--keep_merged``
   (it is as large as the 16-bit model) or the verification failed (its rerun reuses it)

The steps are :class:`Step` objects (name, input fingerprint, function) listed by :func:`export_steps`;
a step is reused when the fingerprint recorded beside its output (``merged/export_merge.json``,
``.steam-export.json``) equals its own. Every file is written under a temp name and renamed; each GGUF is
``<name>-<quant>.gguf.unverified`` until the export finishes (then ``<name>-<quant>.gguf``, or
``<name>-<quant>.gguf.failed`` when it failed verification), and ``export_report.json`` is written last, so a
folder without it is an unfinished export that a rerun resumes; a rerun also resumes an export whose report
records a failed verification, and verifies again. An interrupted export (Ctrl-C, at any moment:
:mod:`steam_persona.export.interrupt`) says what it leaves: the finished steps' files, which the rerun names
as it reuses them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from steam_persona.common import arguments
from steam_persona.common import atomic
from steam_persona.common import config
from steam_persona.common import lock as locking
from steam_persona.common.arguments import (DataArguments, ExportArguments, FinetuningArguments, LlamaCppArguments,
                                             ModelArguments)
from steam_persona.common.config import arg
from steam_persona.common.errors import (UserError, interrupted_before_writing, said_if_stopped_before_writing,
                                         while_loading)

STATE = ".steam-export.json"
REPORT = "export_report.json"
LOG = "export_log.jsonl"
#: Appended to a GGUF's name until the export finishes (after its verify step), so no finished name holds
#: an unverified file.
UNVERIFIED = ".unverified"
#: Appended to a GGUF's name when it failed verification: a finished export keeps it under this name.
FAILED = ".failed"


@dataclass
class ExportConfig:
    """Flags of `steam-train export` (= YAML keys). LLaMA-Factory names where it has one."""

    model_name_or_path: str | None = ModelArguments.use("model_name_or_path", None, unset="the adapter run's base (run_config.yaml)")
    adapter_name_or_path: str | None = ModelArguments.use("adapter_name_or_path")
    export_dir: str | None = arg(None, "Output folder. Default: ADAPTER_NAME_OR_PATH/export; for a checkpoint-N, "
                                       "RUN/export-checkpoint-N beside it (training's checkpoint rotation removes "
                                       "checkpoint folders).")
    quantization: list[str] = arg(["q4_k_m"], "GGUF types to write, comma-separated: q4_k_m, q5_k_m, q6_k, "
                                              "q8_0, f16, bf16 (also q2_k … q5_k_s).")
    system: str | None = DataArguments.use("system")
    export_name: str | None = arg(None, "File name stem: <export_name>-<quant>.gguf. Default: the run dir's "
                                        "name (RUN-step-N for a checkpoint-N; or the base model's).")
    infer_dtype: str = arg("auto", "16-bit dtype to merge in; auto = the base's own 16-bit dtype, else "
                                   "bfloat16.", choices=("auto", "bfloat16", "float16"))
    export_size: int = arg(5, "Max size of one merged safetensors shard, GB.")
    no_verify: bool = arg(False, "Skip verification (logits vs the merged model, end-of-turn stop).")
    lora_gguf: bool = arg(False, "Also write the adapter alone as <name>-lora.gguf for llama.cpp --lora.")
    overwrite: bool = arg(False, "Replace a finished export in --export_dir (finished steps are still reused "
                                 "when their inputs match).")
    n_threads: int = LlamaCppArguments.use("n_threads")
    keep_merged: bool = arg(False, "Keep merged/ (the merged 16-bit Hugging Face model, as large as the base in "
                                   "16-bit) for transformers or vLLM; by default it is deleted once the GGUFs pass "
                                   "verification (an export that fails verification keeps it and the 16-bit GGUF, "
                                   "so that its rerun merges and converts nothing again).")
    # --- LLaMA-Factory's merge YAML keys (examples/merge_lora/*.yaml)
    template: str | None = DataArguments.use(
        "template", None, unset="the chat template the adapter was trained with; a named one "
        "is accepted and changes nothing")
    finetuning_type: str = FinetuningArguments.use("finetuning_type")
    trust_remote_code: bool = ModelArguments.use("trust_remote_code", note="Export: also when the adapter's run "
                                                                           "allowed it.")
    export_device: str = ExportArguments.use("export_device")
    export_legacy_format: bool = ExportArguments.use("export_legacy_format")


class VerificationFailed(click.ClickException):
    """Some GGUF failed verification (exit 1). export_report.json records it; each failed GGUF is kept as
    ``<name>-<quant>.gguf.failed``, which serve and chat refuse."""

    exit_code = 1


@dataclass
class Step:
    """One export step.

    ``name`` keys the report's ``steps``/``step_seconds`` and the ``export_log.jsonl`` events; ``label`` is
    the progress text; ``fn`` does the work. ``fingerprint`` digests everything the step's output is made
    from (``None``: the step always runs); ``recorded`` reads the fingerprint that the output already on
    disk was made from (``None`` when there is none). A rerun reuses the output when the two are equal.
    """

    name: str
    label: str
    fn: Callable[[], None]
    fingerprint: str | None = None
    recorded: Callable[[], str | None] = lambda: None

    def reusable(self) -> bool:
        """True when the output on disk was made from this step's very inputs."""
        return self.fingerprint is not None and self.recorded() == self.fingerprint


@dataclass
class ExportJob:
    """The resolved inputs of one export (:func:`plan`) and what its steps leave for the next ones."""

    cfg: ExportConfig
    qtypes: list[str]
    run_info: Any
    base: str
    src: Any
    system: str | None
    out: Path
    name: str
    n_threads: int
    merge_fp: str = ""
    merge_info: dict[str, Any] | None = None
    arch: str = ""
    dtype: Any = None
    dtype_name: str = ""
    n_params: int = 0
    state: dict[str, Any] = field(default_factory=lambda: {"files": {}})
    verify: dict[str, Any] | None = None

    @property
    def merged_dir(self) -> Path:
        return self.out / "merged"

    @property
    def floats(self) -> list[str]:
        """The 16-bit GGUF types to convert to, the merge's own first (the quantizer's source)."""
        from steam_persona.export.quantize import FLOAT_TYPES

        src16 = "bf16" if self.dtype_name == "bfloat16" else "f16"
        floats = [q for q in self.qtypes if q in FLOAT_TYPES]
        source = src16 if src16 in floats or not floats else floats[0]
        return [source] + [q for q in floats if q != source]

    @property
    def quants(self) -> list[str]:
        from steam_persona.export.quantize import FLOAT_TYPES

        return [q for q in self.qtypes if q not in FLOAT_TYPES]

    def gguf(self, q: str) -> Path:
        return self.out / f"{self.name}-{q}.gguf"

    def unverified(self, q: str) -> Path:
        """Where the GGUF of type ``q`` is written and verified; :func:`_finish` renames it to :meth:`kept`."""
        return self.out / (self.gguf(q).name + UNVERIFIED)

    def kept(self, q: str) -> Path:
        """The name the GGUF of type ``q`` keeps once the export ends: :meth:`gguf` unless it failed verification."""
        failed = self.verify is not None and not self.verify[q]["passed"]
        return self.out / (self.gguf(q).name + FAILED) if failed else self.gguf(q)

    def serve_type(self) -> str | None:
        """The type the Modelfile and the README's serve lines name: the first quantized type whose GGUF passed
        verification (or was not verified), else the first such 16-bit type; ``None`` when every GGUF failed."""
        from steam_persona.export.quantize import FLOAT_TYPES

        ok = [q for q in self.qtypes if self.kept(q) == self.gguf(q)]
        return next((q for q in ok if q not in FLOAT_TYPES), ok[0] if ok else None)

    def for_rerun(self) -> list[Path]:
        """What a failed verification keeps for the rerun, which reuses it instead of merging and converting again:
        ``merged/`` (also the reference logits it verifies against) and the 16-bit GGUF that the quantized ones are
        made from, when it is not a requested type; nothing when every GGUF passed."""
        from steam_persona.export.verify import failures

        if not failures(self.verify):
            return []
        source = self.floats[0]
        return [self.merged_dir] + ([] if source in self.qtypes else [self.unverified(source)])

    def gguf_fingerprint(self, q: str) -> str:
        from steam_persona.export import convert, merge

        return merge.fingerprint({"merge": self.merge_fp, "type": q, "converter": convert.converter_version()})

    def recorded_gguf(self, q: str) -> str | None:
        """The fingerprint ``.steam-export.json`` holds for the GGUF of type ``q`` when that file exists."""
        return self.state["files"].get(self.gguf(q).name) if self.unverified(q).is_file() else None

    def finished_gguf(self, q: str) -> None:
        from steam_persona.common.atomic import write_json

        self.state["files"][self.gguf(q).name] = self.gguf_fingerprint(q)
        write_json(self.out / STATE, self.state)


def run(cfg: ExportConfig, resume_hint: bool = True) -> dict[str, Any]:
    """Run the whole export; return the report (also written to ``EXPORT_DIR/export_report.json``). On Ctrl-C,
    print what the export dir keeps and how to go on, unless ``resume_hint`` is False (a caller that prints its
    own line: the demo).

    The report's keys: ``export_dir``, ``persona``, ``base_model``, ``adapter``, ``architecture``,
    ``converter``, ``files`` ({quant: {"file", "bytes"}}), ``merged`` (export_merge.json),
    ``verify`` ({quant: {"logits", "stop", "chat_template_has_persona", "passed"}} or ``None``),
    ``steps`` ({step: "done" | "reused"}), ``seconds``.

    Raises:
        UserError (exit 2): bad flags, missing adapter, adapter/base mismatch, unsupported
            architecture, unknown quant type, a non-export folder in the way, full disk, another
            export writing the export dir (``<export_dir>.lock`` beside it holds its pid).
        VerificationFailed (exit 1): a GGUF failed verification (everything is still written).
    """
    t_start = time.time()
    out = _export_dir(cfg)
    if out is not None and not cfg.overwrite:  # before the slow imports and checks of plan()
        _refuse_finished(out)
    with said_if_stopped_before_writing(out, lambda: LOADING, say=resume_hint):
        job = plan(cfg)
    with locking.folder_lock(job.out, "export", "--export_dir"), atomic.writing_into(job.out, "--export_dir"):
        return _run(job, t_start, resume_hint)


#: Where an export stopped before its first step.
LOADING = while_loading("the first step")


def _run(job: ExportJob, t_start: float, resume_hint: bool) -> dict[str, Any]:
    from steam_persona.common.console import console

    cfg = job.cfg
    if cfg.template not in (None, "auto"):
        console.print(f"[dim]template {cfg.template}: no effect here; the GGUF carries the chat template the "
                      "adapter was trained with[/dim]")
    with _say_what_is_left_if_interrupted(job.out) if resume_hint else contextlib.nullcontext():
        existed = job.out.is_dir()
        fresh = not existed or not any(job.out.iterdir())
        job.state = _open_export_dir(job.out, cfg.overwrite)
        atomic.note_removed(atomic.remove_stale_in(job.out))
        steps = export_steps(job)
        reused = {s.name: s.reusable() for s in steps}
        gguf_todo = [s.name.split("_", 1)[1] for s in steps if s.name.startswith(("convert_", "quantize_"))
                     and not reused[s.name]]
        try:
            _check_free_disk(job.out, job.n_params, reused["merge"], gguf_todo)
        except UserError:
            if fresh:  # leave the place as it was: no folder, or the user's empty one
                (job.out / STATE).unlink(missing_ok=True)
                if not existed:
                    job.out.rmdir()
            raise
        if job.run_info.run.quantization_bit and not reused["merge"]:
            console.print(f"[yellow]The run was QLoRA ({job.run_info.run.quantization_bit}-bit base); "
                          f"the base is reloaded in {job.dtype_name} to merge (never into 4-bit weights).[/]")
        report = _run_steps(job, steps, reused, t_start)
    _summary(job, t_start)
    from steam_persona.export.verify import failures

    failed = failures(job.verify)
    if failed:
        raise VerificationFailed(f"{job.out / REPORT}: verification failed ({failed_text(failed, report)}); serve and "
                                 f"chat refuse this export.{_likely_cause(job.verify)} Rerun the same command once the "
                                 "cause is fixed (it verifies again), or with --no_verify to accept the files as they are")
    return report


def plan(cfg: ExportConfig) -> ExportJob:
    """Resolve the export's inputs (quant types, run, base, persona, export dir, name) and the merge's
    fingerprint; when no merged folder of these very inputs exists, check the base and adapter now.

    Raises:
        UserError: as :func:`run`, for everything found before the export dir is touched.
    """
    from steam_persona.export import merge as mg
    from steam_persona.export import quantize as qz
    from steam_persona.common import persona
    from steam_persona.common.hub import resolve_model

    qtypes = qz.check_types(cfg.quantization)
    run_info = mg.read_run(cfg.adapter_name_or_path)
    if cfg.lora_gguf and run_info.adapter_dir is None:
        raise UserError("--lora_gguf: no --adapter_name_or_path to convert")
    run = run_info.run
    base = cfg.model_name_or_path or run.model_name_or_path
    if not base:
        where = run.path or (run_info.adapter_dir / "run_config.yaml" if run_info.adapter_dir else "command line")
        raise UserError(f"{where}: no base model given; pass --model_name_or_path")
    src = dataclasses.replace(resolve_model(str(base)),
                              trust_remote_code=cfg.trust_remote_code or run.trust_remote_code)
    # '' = no persona: the model keeps its own template default
    system = persona.resolve(cfg.system, run) or None
    out = _export_dir(cfg)
    if out is None:
        raise UserError("command line: no --export_dir given (needed when there is no --adapter_name_or_path)")
    name = _safe_name(cfg.export_name or (_default_name(run_info.adapter_dir) if run_info.adapter_dir else src.name))
    job = ExportJob(cfg, qtypes, run_info, str(base), src, system or None, out, name,
                    arguments.n_threads(cfg.n_threads, generate=False))
    _check_base(job)
    return job


def _export_dir(cfg: ExportConfig) -> Path | None:
    """``--export_dir``, else ``ADAPTER_NAME_OR_PATH/export``, or ``RUN/export-checkpoint-N`` for a checkpoint
    (outside it: training's ``--save_total_limit`` and ``--overwrite_output_dir`` remove checkpoint folders);
    ``None`` when neither is given."""
    if cfg.export_dir:
        return Path(cfg.export_dir).expanduser()
    if not cfg.adapter_name_or_path:
        return None
    adapter = Path(cfg.adapter_name_or_path).expanduser()
    return adapter.parent / f"export-{adapter.name}" if _checkpoint_step(adapter) is not None else adapter / "export"


def _checkpoint_step(adapter: Path) -> int | None:
    """N of a ``checkpoint-N`` folder, else ``None``."""
    m = re.fullmatch(r"checkpoint-(\d+)", adapter.resolve().name)
    return int(m.group(1)) if m else None


def _default_name(adapter: Path) -> str:
    """An adapter's export name: its run dir's name, ``RUN-step-N`` for a checkpoint."""
    step, d = _checkpoint_step(adapter), adapter.resolve()
    return f"{d.parent.name}-step-{step}" if step is not None else d.name


def _likely_cause(verify: dict[str, Any]) -> str:
    """" Likely cause: …" when a quantized GGUF's logits disagree with the merged model's (too few bits for this
    model: q2_k/q3_k_s on a small one), else nothing."""
    from steam_persona.export.quantize import BITS_PER_WEIGHT, FLOAT_TYPES

    lossy = [q for q, v in verify.items() if q not in FLOAT_TYPES and not v["logits"]["passed"]]
    if not lossy:
        return ""
    least = max(BITS_PER_WEIGHT[q] for q in lossy)
    more = [q for q in ("q4_k_m", "q5_k_m", "q6_k", "q8_0", "bf16") if BITS_PER_WEIGHT[q] > least]
    return (f" Likely cause: {', '.join(lossy)} keep{'s' if len(lossy) == 1 else ''} too few bits of this model; choose a type with more bits"
            f" (--quantization {' or '.join(more)}).")


def _refuse_finished(out: Path) -> None:
    """Refuse a folder holding a finished export, unless its verification failed (a rerun verifies again)."""
    from steam_persona.export.verify import failures

    if (out / REPORT).is_file() and not failures(read_report(out).get("verify")):
        raise UserError(f"{out}: holds a finished export; pass --overwrite to replace it or choose another --export_dir")


def read_report(out: Path) -> dict[str, Any]:
    """``out``'s ``export_report.json``.

    Raises:
        UserError: the report is not JSON.
    """
    try:
        return json.loads((out / REPORT).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{out / REPORT}: not valid JSON ({e}); rerun `steam-train export` with --overwrite") from None


def failed_text(failed: dict[str, str], report: dict[str, Any]) -> str:
    """``name-q4_k_m.gguf.failed: top-1 agreement 31.2% (pass ≥ 50%)`` for each GGUF in ``failed``
    (:func:`~steam_persona.export.verify.failures` of the ``report``'s ``verify``)."""
    return "; ".join(f"{report['files'][q]['file']}: {checks}" for q, checks in failed.items())


def _check_base(job: ExportJob) -> None:
    """Fingerprint the merge's inputs; read the architecture, dtype and size from a merged folder made
    from them, else from the base's config after checking it and the adapter (no weights read)."""
    from steam_persona.export import convert as conv
    from steam_persona.export import merge as mg

    cfg, src = job.cfg, job.src
    job.merge_fp = mg.fingerprint({
        "base": src.path, "gguf_file": src.gguf_file, "base_files": _files_stamp(Path(src.path), src.gguf_file),
        "adapter": _adapter_digest(job.run_info.adapter_dir), "system": job.system, "infer_dtype": cfg.infer_dtype,
        "steam_persona": importlib.metadata.version("steam-persona")})
    info = mg.read_merge_info(job.merged_dir) if job.merged_dir.is_dir() else None
    if info and info.get("fingerprint") == job.merge_fp:  # already checked: skip reading the base
        job.merge_info = info
        job.arch, job.dtype_name, job.n_params = info["architecture"], info["dtype"], info["parameters"]
        return
    base_cfg = mg.base_config(src)
    job.arch = conv.check_architecture(base_cfg, job.base)
    mg.check_adapter_matches_base(job.run_info, base_cfg, job.base)
    job.dtype = mg.merge_dtype(base_cfg, cfg.infer_dtype)
    job.dtype_name = str(job.dtype).removeprefix("torch.")
    job.n_params = _parameter_count(base_cfg)


def export_steps(job: ExportJob) -> list[Step]:
    """The export as steps, in order: merge, convert to each 16-bit type, quantize, the LoRA GGUF
    (``--lora_gguf``), verify each kept type (unless ``--no_verify``). The merge is reused when
    ``merged/export_merge.json`` has its fingerprint, a GGUF when ``.steam-export.json`` has its."""
    from steam_persona.export import convert as conv
    from steam_persona.export import merge as mg
    from steam_persona.export import quantize as qz

    meta = {"steam_persona.converter": conv.converter_version(), "steam_persona.base_model": job.base,
            "steam_persona.adapter": str(job.run_info.adapter_dir or ""), "steam_persona.system": job.system or ""}
    source = job.unverified(job.floats[0])
    steps = [Step("merge", f"merge adapter into {job.dtype_name} base", lambda: _merge(job), job.merge_fp,
                  lambda: (mg.read_merge_info(job.merged_dir) or {}).get("fingerprint"))]
    for q in job.floats:
        steps.append(Step(f"convert_{q}", f"convert to GGUF {q}", functools.partial(
            _gguf_step, job, q, conv.convert, job.merged_dir, job.unverified(q), q, name=job.name, metadata=meta),
            job.gguf_fingerprint(q), functools.partial(job.recorded_gguf, q)))
    for q in job.quants:
        steps.append(Step(f"quantize_{q}", f"quantize {q}", functools.partial(
            _gguf_step, job, q, qz.quantize, source, job.unverified(q), q, job.n_threads),
            job.gguf_fingerprint(q), functools.partial(job.recorded_gguf, q)))
    if job.cfg.lora_gguf:
        steps.append(Step("lora_gguf", "convert adapter to GGUF LoRA", lambda: conv.convert_lora(
            job.run_info.adapter_dir, job.merged_dir, _lora_file(job), name=job.name, metadata=meta)))
    if not job.cfg.no_verify:
        job.verify = {}
        steps += [Step(f"verify_{q}", f"verify {q}", functools.partial(_verify, job, q)) for q in job.qtypes]
    return steps


def _merge(job: ExportJob) -> None:
    from steam_persona.export import merge as mg
    from steam_persona.export.verify import PROMPTS

    tok = mg.load_tokenizer(job.src, job.run_info)
    eot = mg.fix_tokenizer(tok, job.system)
    job.merge_info = mg.merge(job.src, job.run_info, tok, eot, job.merged_dir, dtype=job.dtype,
                              export_size=job.cfg.export_size,
                              info={"fingerprint": job.merge_fp, "base_model": job.base, "architecture": job.arch},
                              prompts=PROMPTS)


def _gguf_step(job: ExportJob, q: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Write the GGUF of type ``q`` with ``fn(*args, **kwargs)``, then record its fingerprint."""
    fn(*args, **kwargs)
    job.finished_gguf(q)


def _verify(job: ExportJob, q: str) -> None:
    """Verify the GGUF of type ``q`` against the merged model's reference logits; store it in ``job.verify``."""
    import numpy as np

    from steam_persona.export import merge as mg
    from steam_persona.export.chat_template import jinja_string
    from steam_persona.export.quantize import FLOAT_TYPES
    from steam_persona.export.verify import verify_gguf

    with np.load(job.merged_dir / mg.REFERENCE) as z:
        ref = {k: z[k] for k in z.files}
    v = verify_gguf(job.unverified(q), ref, job.merge_info["eos_token"], is_float=q in FLOAT_TYPES, n_threads=job.n_threads)
    template = v.pop("chat_template")
    v["chat_template_has_persona"] = bool(job.system) and jinja_string(job.system) in template
    job.verify[q] = v


def _lora_file(job: ExportJob) -> Path:
    return job.out / f"{job.name}-lora.gguf"


def _run_steps(job: ExportJob, steps: list[Step], reused: dict[str, bool], t_start: float) -> dict[str, Any]:
    """Run (or reuse) each step under one progress bar and ``export_log.jsonl``, then write the extras and,
    last, the report (its presence marks a finished export). Says which steps a rerun reuses, and
    without a terminal prints one plain line as each step starts and ends. Returns the report."""
    from steam_persona.common.atomic import JsonlLog
    from steam_persona.common.console import console, progress

    done: dict[str, str] = {}
    seconds: dict[str, float] = {}
    if any(reused.values()):
        names = ", ".join(s.name.replace("_", " ", 1) for s in steps if reused[s.name])
        console.print(f"reusing {names} from the earlier export in {job.out} (same inputs)", markup=False,
                      soft_wrap=True)
    log = JsonlLog(job.out / LOG)
    try:
        with progress() as bar:
            task = bar.add_task("export", total=len(steps) + 1)
            for i, s in enumerate(steps, 1):
                bar.update(task, description=f"{s.label}{' (reused)' if reused[s.name] else ''}")
                t = time.time()
                log.write(event="step_start", step=s.name, reused=reused[s.name])
                if not reused[s.name]:
                    _plain_line(f"export step {i}/{len(steps)}  {s.label} …", t_start)
                    s.fn()
                seconds[s.name] = round(time.time() - t, 2)
                done[s.name] = "reused" if reused[s.name] else "done"
                log.write(event="step_end", step=s.name, reused=reused[s.name], seconds=seconds[s.name])
                _plain_line(f"export step {i}/{len(steps)}  {s.label}: "
                            f"{'reused' if reused[s.name] else f'done in {seconds[s.name]:.1f} s'}", t_start)
                bar.advance(task)
            bar.update(task, description="write Modelfile, README, report")
            report = _finish(job, done, seconds, t_start)
            bar.advance(task)
    finally:
        log.close()
    return report


def _plain_line(text: str, t_start: float) -> None:
    """Print ``text`` and the time since ``t_start`` as one plain line when stderr is not a terminal (CI,
    ``| tee``), where no bar is shown (:func:`steam_persona.common.console.progress`)."""
    from steam_persona.common.console import console

    if not console.is_terminal:
        elapsed = datetime.timedelta(seconds=int(time.time() - t_start))
        console.print(f"{text}  elapsed {elapsed}", markup=False, highlight=False, soft_wrap=True)


def _finish(job: ExportJob, steps: dict[str, str], seconds: dict[str, float], t_start: float) -> dict[str, Any]:
    """Give the GGUFs their names, write the extras, drop stale GGUFs (and ``merged/`` unless
    ``--keep_merged``), then the report. A failed verification keeps what its rerun reuses (:meth:`ExportJob.for_rerun`)."""
    from steam_persona.common.atomic import write_json

    files = {q: job.kept(q) for q in job.qtypes}
    for q, final in files.items():
        job.unverified(q).replace(final)
    kept = list(files.values()) + ([_lora_file(job)] if job.cfg.lora_gguf else [])
    resume = job.for_rerun()
    report = _report(job.cfg, job.out, job.name, job.base, job.src, job.run_info, job.arch, job.system, job.qtypes,
                     files, job.merge_info, job.verify, steps, seconds, t_start)
    serve_q = job.serve_type()
    report["modelfile"] = _modelfile_entry(job, serve_q)
    _write_extras(job.out, files[serve_q].name if serve_q else None, job.system, job.merge_info, report, kept,
                  job.merged_dir)
    for stale in [f for suffix in ("", UNVERIFIED, FAILED) for f in sorted(job.out.glob("*.gguf" + suffix))]:
        if stale not in kept + resume:  # the intermediate 16-bit file, or types of an overwritten export
            stale.unlink()
            job.state["files"].pop(stale.name.removesuffix(UNVERIFIED).removesuffix(FAILED), None)
    write_json(job.out / STATE, job.state)
    if not job.cfg.keep_merged and job.merged_dir not in resume:
        shutil.rmtree(job.merged_dir)
    write_json(job.out / REPORT, report)
    return report


def _merged_row(job: ExportJob) -> str:
    """The summary's ``merged/`` cell: its size when kept (and why), else that it was deleted."""
    if job.cfg.keep_merged:
        return _size(job.merged_dir)
    resume = job.for_rerun()
    if resume:
        also = "".join(f" with {p.name}" for p in resume[1:])
        return f"{_size(job.merged_dir)}, kept{also} for the rerun to reuse (deleted once it passes)"
    return "deleted (pass --keep_merged to keep it)"


def _modelfile_entry(job: ExportJob, serve_q: str | None) -> dict[str, Any]:
    """``export_report.json``'s ``modelfile``: the GGUF its ``FROM`` line names, or why none was written."""
    if serve_q:
        return {"file": "Modelfile", "from": job.gguf(serve_q).name}
    return {"file": None, "from": None, "not_written": "no GGUF passed verification; the export that verifies one "
                                                       "writes it"}


def _summary(job: ExportJob, t_start: float) -> None:
    from steam_persona.export.quantize import FLOAT_TYPES
    from steam_persona.export.verify import describe
    from steam_persona.common.console import summary_table

    rows: list[tuple[object, object]] = [("export dir", job.out), ("persona", _short(job.system or "(the model's own)")),
                                         ("base", job.base), ("adapter", job.run_info.adapter_dir or "(none)")]
    for q in job.qtypes:
        v = (job.verify or {}).get(q)
        check = "" if v is None else (f"  {'[green]PASSED[/]' if v['passed'] else '[red]FAILED[/]'}: "
                                      f"{describe(v, is_float=q in FLOAT_TYPES)}")
        rows.append((job.kept(q).name, f"{_size(job.kept(q))}{check}"))
    if job.cfg.lora_gguf:
        rows.append((_lora_file(job).name, _size(_lora_file(job))))
    serve_q = job.serve_type()
    rows.append(("Modelfile", f"FROM ./{job.gguf(serve_q).name}" if serve_q else
                 "not written: no GGUF passed verification"))
    rows.append(("merged/", _merged_row(job)))
    rows.append(("time", f"{time.time() - t_start:.1f} s"))
    summary_table("steam-train export", rows)


@contextlib.contextmanager
def _say_what_is_left_if_interrupted(out: Path) -> Iterator[None]:
    """On Ctrl-C, print what the unfinished export leaves in ``out`` and how to resume, then re-raise."""
    try:
        yield
    except KeyboardInterrupt:
        from steam_persona.common.console import console

        if not out.is_dir():
            console.print(interrupted_before_writing(LOADING, out), markup=False, soft_wrap=True)
            raise
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
    from steam_persona.common.run_files import ADAPTER_FILES
    from steam_persona.export.merge import file_digest

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
        if not overwrite:
            _refuse_finished(out)
        if not (out / STATE).is_file() and not overwrite:
            raise UserError(f"{out}: folder is not empty and holds no export; choose another --export_dir or pass --overwrite")
        try:
            state = json.loads((out / STATE).read_text(encoding="utf-8"))
            state.setdefault("files", {})
        except (OSError, json.JSONDecodeError):
            state = {"files": {}}
        (out / REPORT).unlink(missing_ok=True)  # from here on the folder is an unfinished export
        for name in state["files"]:  # its GGUFs are verified again before they get their names back
            for kept in (out / name, out / (name + FAILED)):
                if kept.is_file():
                    kept.replace(out / (name + UNVERIFIED))
    out.mkdir(parents=True, exist_ok=True)
    from steam_persona.common.atomic import write_json

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


def _write_extras(out: Path, serve_gguf: str | None, system: str | None, merge_info: dict, report: dict,
                  kept: list[Path], merged_dir: Path) -> None:
    """Write ``generation_config.json``, ``README.md`` and the ``Modelfile`` FROM ``serve_gguf`` (a verified
    GGUF); with none, an earlier ``Modelfile`` is removed rather than left naming a file that failed."""
    from steam_persona.export.chat_template import is_chatml
    from steam_persona.export.convert import context_length
    from steam_persona.export.modelfile import modelfile, readme
    from steam_persona.common.atomic import write_text

    gen = json.loads((merged_dir / "generation_config.json").read_text(encoding="utf-8"))
    template_file = merged_dir / "chat_template.jinja"
    template = template_file.read_text(encoding="utf-8") if template_file.is_file() else ""
    chatml = is_chatml(template)
    stop = [merge_info["eos_token"]] + (["<|im_start|>"] if chatml else [])
    write_text(out / "generation_config.json", json.dumps(gen, indent=2) + "\n")
    num_ctx = arguments.context_size(context_length(out / serve_gguf)) if serve_gguf else None
    if serve_gguf:
        write_text(out / "Modelfile", modelfile(serve_gguf, report["name"], system=system, chatml=chatml, stop=stop,
                                                generation=gen, num_ctx=num_ctx))
    else:
        (out / "Modelfile").unlink(missing_ok=True)
    listing = [(f.name, f.stat().st_size) for f in kept]
    write_text(out / "README.md", readme(report["name"], listing, report, serve_gguf, num_ctx))


command = config.command(ExportConfig, run, name="export", config_option="positional",
                         help="Merge the LoRA adapter into its base, convert to GGUF, quantize, verify, and write "
                              "an Ollama Modelfile. Reads the base and the persona from the run's run_config.yaml.")
