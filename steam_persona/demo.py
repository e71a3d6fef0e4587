"""``steam-train demo`` (what ``make demo`` runs): the whole pipeline on the embedded default, offline.

Stages, each through the same code path as its own command (their public ``run(cfg)``):

1. **prepare** — ``steam_persona.reviews.prepare.run`` on the ``--language`` part of ``examples/persona_reviews.json``
   (244 persona reviews we wrote, 172 English and 72 Chinese, each opening with its verdict, in the seed's
   alpaca format) or on
   ``--data FILE``; its val split is the eval slice the train stage never sees;
2. **train** — ``steam_persona.trainer.train.run``: QLoRA (4-bit NF4 base) on SmolLM2-135M-Instruct with the
   persona system prompt, in bfloat16 where the hardware has it, live progress, loss plot;
3. **compare** — :mod:`steam_persona.demo_compare`: base vs tuned held-out loss on the eval slice and
   reviews of three games absent from the data, same prompts and sampling for both;
4. **export** — ``steam_persona.export.cli.run``: merge, GGUF, q4_k_m, verification;
5. **serve** — ``steam-train serve`` as a real subprocess on a free port (``/health`` polled), then
   the same three reviews through the review plugin's own code path
   (``tools/review_client.py: write_review`` of the packaged plugin, run in its own folder by
   :class:`steam_persona.plugin.call.PluginCode`) and one multi-turn chat sent the way the chat
   plugin sends it: the SDK's OpenAI-compatible streaming request (``stream_options.include_usage``,
   contents flattened by the plugins' shared ``plugin/common/server_client.py: prepare_messages``). The chat plugin's
   class itself needs ``dify_plugin`` (Python >= 3.12, installed from PyPI by Dify's daemon), which
   the demo cannot assume offline; the plugin tests run it in the real runtime instead;
6. **summary** — server stopped; base vs tuned side by side, the goals of
   :data:`steam_persona.demo_compare.GOALS` measured, loss, export sizes, tokens/s, next steps; kept in
   ``report.md``.

Every artefact lives under ``--output_dir`` (``demo_run/``). ``demo_state.json`` records each
finished stage with a fingerprint of its settings (chained through the stages before it); a rerun
skips a stage whose fingerprint matches and whose artefacts exist, and redoes it and everything
after it otherwise. Train and export also resume by themselves within a stage: an interrupted train
stage with the same settings continues from its last checkpoint; without one (or after a settings
change) the demo, which owns ``demo_run/run``, starts that run over.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from steam_persona.common import atomic
from steam_persona.common import config
from steam_persona import demo_compare
from steam_persona.common.arguments import (DataArguments, GeneratingArguments, LoraArguments, ModelArguments,
                                             QuantizationArguments, TrainingArguments)
from steam_persona.common.config import arg
from steam_persona.common.console import console, status, summary_table
from steam_persona.common.errors import STOP_SIGNALS, Interrupts, UserError, stop_signals_interrupt
from steam_persona.export.quantize import check_types
from steam_persona.resources import doc, shipped

#: The embedded demo data set (original text, written for this project).
EXAMPLES = shipped("examples/persona_reviews.json")
#: The review tool's declaration: its ``max_tokens`` parameter's ``max`` bounds ``--max_new_tokens``.
REVIEW_TOOL_YAML = shipped("plugin/review/tools/write_steam_review.yaml")
STAGES = ("prepare", "train", "compare", "export", "serve")
#: The summary's line on Chinese with the embedded base.
ZH_NOTE = ("SmolLM2-135M was trained mostly on English: a few minutes of LoRA on 65 Chinese reviews teaches "
           "it the persona's format and tone, not fluent Chinese. For real use train the reference 7B base "
           "(Qwen2.5-7B-Instruct, docs/real-run.md) with the same commands.")
#: The summary's line when a goal is not met.
MISSED_NOTE = ("A goal marked NOT met measures the embedded 135M base after a few minutes of LoRA on the demo's "
               "reviews; the README lists the recipes tried. The reference 7B base (docs/real-run.md) is the "
               "real-use path, with the same commands.")


@dataclass
class DemoConfig:
    """Settings of ``steam-train demo`` (= its flags = its YAML keys)."""

    data: str | None = arg(None, "Reviews to train on instead of the embedded examples/persona_reviews.json "
                                 "(any format prepare reads), e.g. ../shared/data/steam_sft_sample.json.")
    model_name_or_path: str = ModelArguments.use("model_name_or_path")
    language: str = arg("en", "Language of the persona: 'en' (what the embedded 135M base writes well) or 'zh' "
                              "(the Chinese persona; see the summary's note). Picks the embedded reviews and the "
                              "demo prompts; with --data only the prompts.", choices=("en", "zh"))
    output_dir: str = arg("demo_run", "Folder for every artefact; a rerun reuses the finished stages.")
    max_samples: int | None = DataArguments.use("max_samples")
    val_size: float = DataArguments.use("val_size", 0.1)
    max_steps: int = TrainingArguments.use("max_steps", 100)
    per_device_train_batch_size: int = TrainingArguments.use("per_device_train_batch_size", 2)
    learning_rate: float = TrainingArguments.use("learning_rate", 2e-3)
    cutoff_len: int = DataArguments.use("cutoff_len", 384)
    lora_rank: int = LoraArguments.use("lora_rank")
    quantization_bit: int | None = QuantizationArguments.use("quantization_bit", 4)
    quantization: str = arg("q4_k_m", "GGUF type to export and serve.")
    max_new_tokens: int = GeneratingArguments.use("max_new_tokens")
    seed: int = DataArguments.use("seed", note="It seeds the data order and split, the LoRA init and sampling.")
    force: bool = arg(False, "Redo every stage even when a finished one matches.")


@dataclass
class DemoResult:
    """What :func:`run` returns: per-stage records (``status``, ``reused``, ``seconds``, ``result``)
    and the summary written to ``demo_summary.json``."""

    stages: dict[str, dict[str, Any]]
    summary: dict[str, Any]
    output_dir: Path


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _Stages:
    """Runs stages in order, records them in ``demo_state.json``, and reuses finished ones."""

    def __init__(self, out: Path, force: bool, on_interrupt: Callable[[str], str] | None = None,
                 interrupts: Interrupts | None = None) -> None:
        self.path = out / "demo_state.json"
        self.state: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.force = force
        #: on Ctrl-C in a stage: the line saying what a rerun does (given the stage's name)
        self.on_interrupt = on_interrupt
        #: the signals received while the demo runs: an error after one is how a library ended on the interrupt
        self.interrupts = interrupts or Interrupts()
        self.log = atomic.JsonlLog(out / "demo_log.jsonl")
        self.upstream = ""
        self.records: dict[str, dict[str, Any]] = {}
        #: while a stage runs: whether its last attempt, with the same fingerprint, did not finish
        self.resumable = False

    def run(self, name: str, settings: dict[str, Any], done: Callable[[dict], bool],
            fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run stage ``name`` unless a finished run with the same settings (and upstream) exists
        and ``done(result)`` confirms its artefacts."""
        n = STAGES.index(name) + 1
        fp = _fingerprint(self.upstream, settings)
        self.upstream = fp
        old = self.state.get(name)
        if (not self.force and old and old.get("status") == "done" and old.get("fingerprint") == fp
                and done(old["result"])):
            console.rule(f"[bold]{n}/{len(STAGES)} {name}[/] — reused from {self.path.parent}")
            self.log.write(event="stage", stage=name, status="reused")
            self.records[name] = {**old, "reused": True}
            return old["result"]
        console.rule(f"[bold]{n}/{len(STAGES)} {name}")
        self.resumable = (not self.force and bool(old) and old.get("status") != "done"
                          and old.get("fingerprint") == fp)
        self.state[name] = {"status": "running", "fingerprint": fp}  # stays so if the process is killed
        atomic.write_json(self.path, self.state)
        self.log.write(event="stage_start", stage=name)
        t0 = time.perf_counter()
        try:
            result = fn()
        except BaseException as e:
            self.state[name] = {"status": "failed", "fingerprint": fp, "error": f"{type(e).__name__}: {e}"}
            atomic.write_json(self.path, self.state)
            self.log.write(event="stage_failed", stage=name, error=str(e))
            if (isinstance(e, KeyboardInterrupt) or self.interrupts.received is not None) and self.on_interrupt:
                console.print(f"[yellow]{self.on_interrupt(name)}[/yellow]", soft_wrap=True)
            raise
        seconds = round(time.perf_counter() - t0, 1)
        self.state[name] = {"status": "done", "fingerprint": fp, "seconds": seconds, "result": result}
        atomic.write_json(self.path, self.state)
        self.log.write(event="stage_done", stage=name, seconds=seconds)
        self.records[name] = {**self.state[name], "reused": False}
        return result


# -------------------------------------------------------------------------------------------- stages

def examples(language: str) -> list[dict[str, str]]:
    """The embedded reviews of one language (``"en"``/``"zh"``), told apart by their instruction template."""
    from steam_persona.common.persona import INSTRUCTION_TEMPLATE_EN

    records = json.loads(EXAMPLES.read_text(encoding="utf-8"))
    english = INSTRUCTION_TEMPLATE_EN.split("{")[0]
    return [r for r in records if r["instruction"].startswith(english) == (language == "en")]


def review_max_tokens() -> int:
    """The largest ``max_tokens`` the review tool accepts (the ``max`` of its YAML's parameter)."""
    params = yaml.safe_load(REVIEW_TOOL_YAML.read_text(encoding="utf-8"))["parameters"]
    return next(int(p["max"]) for p in params if p.get("name") == "max_tokens")


def _prepare(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    from steam_persona.reviews import prepare

    if cfg.data:
        data = Path(cfg.data)
        if not data.exists():
            raise UserError(f"{data}: --data not found; give a review file (e.g. ../shared/data/steam_sft_sample.json)")
    else:
        data = out / "data" / f"persona_reviews_{cfg.language}.json"
        atomic.write_json(data, examples(cfg.language))
    pcfg = config.build(prepare.PrepareConfig, {
        "inputs": [str(data)], "out": str(out / "data" / "persona_train.json"), "val_size": cfg.val_size,
        "register": str(out / "data" / "dataset_info.json"), "name": "persona", "seed": cfg.seed})
    return prepare.run(pcfg, resume_hint=False)


def train_settings(cfg: DemoConfig, out: Path, overwrite: bool, bf16: bool) -> dict[str, Any]:
    """The train stage's ``TrainConfig`` values (LLaMA-Factory names) for ``cfg``, training into ``out/run``
    (``bench/demo_recipe.py`` sweeps variations of these)."""
    from steam_persona.common.persona import DEFAULT_SYSTEM

    return {
        "model_name_or_path": cfg.model_name_or_path, "dataset": "persona", "dataset_dir": str(out / "data"),
        "template": "auto", "system": DEFAULT_SYSTEM, "finetuning_type": "lora", "lora_target": ["all"],
        "lora_rank": cfg.lora_rank, "quantization_bit": cfg.quantization_bit or None, "cutoff_len": cfg.cutoff_len,
        "max_samples": cfg.max_samples, "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": 1, "learning_rate": cfg.learning_rate, "max_steps": cfg.max_steps,
        "warmup_ratio": 0.1, "logging_steps": 5, "save_steps": max(10, cfg.max_steps // 4), "seed": cfg.seed,
        "output_dir": str(out / "run"), "overwrite_output_dir": overwrite, "disable_gradient_checkpointing": True,
        "bf16": bf16}


def _train(cfg: DemoConfig, out: Path, resume: bool) -> dict[str, Any]:
    """Train into ``out/run``: continue its last checkpoint when ``resume`` (an unfinished attempt with the
    same settings), else start the run over (the demo owns that folder; it has no --overwrite_output_dir)."""
    from steam_persona.trainer import train

    bf16 = _bf16_supported()
    keep = resume and train.finished_run(out / "run") is None and train.resumable_checkpoint(out / "run") is not None
    res = train.run(config.build(train.TrainConfig, train_settings(cfg, out, not keep, bf16)), resume_hint=False)
    run_dir = Path(res["output_dir"])
    return {"run_dir": str(run_dir), "loss_start": res["loss_first"], "loss_end": res["loss_last"],
            "steps": res["global_step"], "loss_plot": str(run_dir / "training_loss.png"),
            "train_runtime_s": res.get("train_runtime"), "train_tokens_per_second": res.get("train_tokens_per_second"),
            "dtype": "bfloat16" if bf16 else "float32", "torch_threads": res.get("torch_threads")}


def interrupt_hint(cfg: DemoConfig, out: Path, stage: str) -> str:
    """What rerunning the demo does after Ctrl-C in ``stage``: finished stages are reused; an interrupted
    train stage continues from its last checkpoint, or starts over when it has none yet."""
    from steam_persona.trainer.train import resumable_checkpoint

    how = f"{RERUN} to go on: the finished stages are reused"
    if stage == "train":
        ckpt = resumable_checkpoint(out / "run")
        how += (f" and training resumes from {ckpt} (step {ckpt.name.split('-')[1]})" if ckpt else
                f" and training starts over (no checkpoint yet; one is saved every "
                f"{train_settings(cfg, out, False, False)['save_steps']} steps)")
    return (f"demo interrupted in the {stage} stage: {how}; changed flags redo the stages they affect, "
            "--force redoes every stage")


def _bf16_supported() -> bool:
    """Whether this machine trains fast in bfloat16: a CUDA GPU with bf16, else a CPU with bf16
    instructions (AVX512-BF16 / AMX, oneDNN's probe)."""
    import torch

    from steam_persona.trainer.train import _cpu_has_bf16

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return _cpu_has_bf16()


def _compare(cfg: DemoConfig, out: Path, prepared: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    from steam_persona import demo_compare
    from steam_persona.common.persona import DEFAULT_SYSTEM

    result = demo_compare.compare(cfg.model_name_or_path, trained["run_dir"], prepared["val"], cfg.language,
                                  DEFAULT_SYSTEM, cfg.cutoff_len, cfg.max_new_tokens, cfg.seed)
    atomic.write_json(out / "compare.json", result)
    return result


def _export(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    from steam_persona.export import cli as export_cli

    ecfg = config.build(export_cli.ExportConfig, {
        "model_name_or_path": cfg.model_name_or_path, "adapter_name_or_path": str(out / "run"),
        "export_dir": str(out / "export"), "quantization": [cfg.quantization], "export_name": "steam-persona"})
    report = export_cli.run(ecfg, resume_hint=False)
    files = {q: {"file": str(Path(report["export_dir"]) / Path(f["file"]).name), "bytes": f["bytes"]}
             for q, f in report["files"].items()}
    verify = report.get("verify") or {}
    return {"export_dir": report["export_dir"], "files": files,
            "verified": {q: bool(v.get("passed")) for q, v in verify.items()}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """``steam-train serve EXPORT_DIR`` as a subprocess on a free loopback port (log in the run dir)."""

    def __init__(self, export_dir: str, log: Path, timeout: float = 180.0) -> None:
        import httpx

        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        cmd = [sys.executable, "-m", "steam_persona", "serve", export_dir, "--port", str(self.port), "--n_ctx", "2048"]
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"})
        deadline = time.monotonic() + timeout
        with status(f"starting the server on {self.base_url}"):
            while True:
                if self.proc.poll() is not None:
                    self.stop()
                    raise UserError(f"{log}: the server exited with code {self.proc.returncode}; see that log")
                try:
                    if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise UserError(f"{log}: the server was not healthy after {timeout:.0f} s; see that log")
                time.sleep(0.25)

    def stop(self) -> int:
        """SIGTERM, wait 20 s, then SIGKILL; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait()
        self._log.close()
        return code


def _chat_like_plugin(endpoint: str, model: str, turns: list[str], max_tokens: int, seed: int) -> dict[str, Any]:
    """A multi-turn chat sent as the chat plugin sends it (SDK ``OAICompatLargeLanguageModel``):
    ``POST {endpoint}/chat/completions`` with ``stream: true`` and ``stream_options.include_usage``,
    the plugins' own message preparation, Server-Sent Events read until ``[DONE]``."""
    import httpx

    from steam_persona.plugin.common import server_client

    messages: list[dict[str, str]] = []
    out = []
    for text in turns:
        messages.append({"role": "user", "content": [{"type": "text", "text": text}]})  # as Dify sends it
        body = {"model": model, "messages": server_client.prepare_messages(messages), "stream": True,
                "stream_options": {"include_usage": True}, "max_tokens": max_tokens, "temperature": 0.7,
                "seed": seed}
        reply, finish, chunks, usage = "", None, 0, {}
        t0 = time.perf_counter()
        with httpx.stream("POST", server_client.api_url(endpoint, "chat/completions"), json=body,
                          headers=server_client.headers(None), timeout=300) as r:
            if r.status_code != 200:
                r.read()
                raise server_client.error_for_status(r.status_code, r.text, endpoint)
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    reply += piece
                    chunks += bool(piece)
                    finish = choice.get("finish_reason") or finish
        seconds = time.perf_counter() - t0
        messages.append({"role": "assistant", "content": reply.strip()})
        out.append({"user": text, "assistant": reply.strip(), "finish_reason": finish, "stream_chunks": chunks,
                    "tokens": usage.get("completion_tokens"), "seconds": round(seconds, 2)})
    return {"turns": out}


def _reviews_by_the_tool(cfg: DemoConfig, credentials: dict[str, str]) -> list[dict[str, Any]]:
    """The reviews of :data:`demo_compare.PROMPTS`, each written by the packaged review tool's
    ``write_review`` in its own folder; timed, printed as they come.

    Raises:
        PluginCallError: the tool failed (server down, refused request), with its one-line message.
    """
    from rich.markup import escape

    from steam_persona.demo_compare import PROMPTS
    from steam_persona.plugin.call import PluginCode

    reviews = []
    with PluginCode("review") as review_tool:
        for game, tags in PROMPTS[cfg.language]:
            t0 = time.perf_counter()
            with status(f"review of {game}"):
                r = review_tool.call("tools.review_client:write_review", credentials, game, tags=tags,
                                     language=cfg.language, max_tokens=cfg.max_new_tokens, temperature=0.7,
                                     seed=cfg.seed)
            seconds = time.perf_counter() - t0
            tokens = int((r.get("usage") or {}).get("completion_tokens") or 0)
            reviews.append({"game": r["game"], "tags": tags, "language": cfg.language, "review": r["review"],
                            "tokens": tokens, "seconds": round(seconds, 2),
                            "tokens_per_second": round(tokens / seconds, 1)})
            console.print(f"[bold]{escape(r['game'])}:[/] {escape(r['review'])}", soft_wrap=True)
    return reviews


def _serve_and_use(cfg: DemoConfig, out: Path, export_dir: str) -> dict[str, Any]:
    import httpx

    from rich.markup import escape

    from steam_persona.plugin.common import server_client
    from steam_persona.demo_compare import CHAT_TURNS
    from steam_persona.plugin.call import PluginCallError

    server = _Server(export_dir, out / "serve.log")
    try:
        endpoint = f"{server.base_url}/v1"
        model = server_client.list_models(endpoint)[0]
        reviews = _reviews_by_the_tool(cfg, {"endpoint_url": endpoint, "api_key": "", "model": model})
        with status("multi-turn chat"):
            chat = _chat_like_plugin(endpoint, model, CHAT_TURNS[cfg.language], cfg.max_new_tokens, cfg.seed)
        for t in chat["turns"]:
            console.print(f"[bold]user:[/] {escape(t['user'])}\n[bold]persona:[/] {escape(t['assistant'])}", soft_wrap=True)
    except (PluginCallError, server_client.ServerError, httpx.HTTPError) as e:
        raise UserError(f"{server.log_path}: the served model failed ({' '.join(str(e).split())[:300]}); "
                        "see that log, fix, and rerun (finished stages are reused)") from None
    finally:
        code = server.stop()
    total_tokens = sum(r["tokens"] for r in reviews)
    total_s = sum(r["seconds"] for r in reviews)
    result = {"endpoint": endpoint, "model": model, "max_tokens": cfg.max_new_tokens, "reviews": reviews, "chat": chat,
              "tokens_per_second": round(total_tokens / total_s, 1) if total_s else None,
              "server_exit_code": code, "server_log": str(server.log_path)}
    atomic.write_json(out / "reviews.json", result)
    return result


# ----------------------------------------------------------------------------------------------- run

def run(cfg: DemoConfig) -> DemoResult:
    """Run (or resume) the demo pipeline under ``cfg.output_dir``, print the summary and write
    ``demo_summary.json`` + ``report.md``. Ctrl-C or a stop signal ends it with one line: the stage's
    (:func:`interrupt_hint`), or, outside a stage, what a rerun does.

    Raises:
        UserError: a missing ``--data`` file, an unknown ``--language``, ``--max_new_tokens`` above
            the review tool's limit (checked before any work), or a stage's own user error
            (the stage is recorded as failed in ``demo_state.json``; fix and rerun to continue from it).
    """
    said: list[str] = []  # the stages that said where the demo stopped
    try:
        with stop_signals_interrupt(STOP_SIGNALS + (signal.SIGINT,)) as interrupts:
            return _run(cfg, interrupts, said)
    except KeyboardInterrupt:
        if not said:
            console.print(f"[yellow]demo interrupted outside a stage: {RERUN} to go on (the finished stages are "
                          "reused)[/yellow]", soft_wrap=True)
        raise


#: How to go on after an interrupted demo.
RERUN = "rerun steam-train demo with the same flags"


def _run(cfg: DemoConfig, interrupts: Interrupts, said: list[str]) -> DemoResult:
    def hint(stage: str) -> str:
        said.append(stage)
        return interrupt_hint(cfg, out, stage)

    t0, load_start = time.perf_counter(), _load_average()
    if cfg.language not in ("en", "zh"):
        raise UserError(f"demo: --language {cfg.language}: use en or zh")
    check_types([cfg.quantization])  # export would refuse it only after the training
    if cfg.max_new_tokens > (limit := review_max_tokens()):
        raise UserError(f"demo: --max_new_tokens {cfg.max_new_tokens}: the review tool takes at most {limit}"
                        f" tokens; use {limit} or less")
    from steam_persona.trainer.threads import threads_for_load

    torch_threads = threads_for_load(load_start)
    out = Path(cfg.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    atomic.note_removed(atomic.remove_stale_in(out))
    atomic.write_json(out / "demo_config.json", config.to_dict(cfg))
    stages = _Stages(out, cfg.force, hint, interrupts)
    data_stamp: Any = _fingerprint(examples(cfg.language))
    if cfg.data and Path(cfg.data).is_file():
        st = Path(cfg.data).stat()
        data_stamp = (str(Path(cfg.data).resolve()), st.st_size, st.st_mtime_ns)
    prepared = stages.run("prepare", {"data": cfg.data, "stamp": data_stamp, "val_size": cfg.val_size,
                                      "seed": cfg.seed, "language": cfg.language},
                          lambda r: Path(r["train"]).is_file() and bool(r["val"]), lambda: _prepare(cfg, out))
    if not prepared["val"]:
        raise UserError(f"{cfg.data}: --val_size {cfg.val_size} left no eval slice; use at least 1 record")
    train_keys = ("model_name_or_path", "max_samples", "max_steps", "per_device_train_batch_size", "learning_rate",
                  "cutoff_len", "lora_rank", "quantization_bit", "seed")
    trained = stages.run("train", {k: getattr(cfg, k) for k in train_keys},
                         lambda r: (Path(r["run_dir"]) / "adapter_model.safetensors").is_file(),
                         lambda: _train(cfg, out, stages.resumable))
    compared = stages.run("compare", {"max_new_tokens": cfg.max_new_tokens, "language": cfg.language},
                          lambda r: (out / "compare.json").is_file(), lambda: _compare(cfg, out, prepared, trained))
    exported = stages.run("export", {"quantization": cfg.quantization},
                          lambda r: all(Path(f["file"]).is_file() for f in r["files"].values()),
                          lambda: _export(cfg, out))
    used = stages.run("serve", {"max_new_tokens": cfg.max_new_tokens}, lambda r: (out / "reviews.json").is_file(),
                      lambda: _serve_and_use(cfg, out, exported["export_dir"]))
    summary = _summary(cfg, out, stages, prepared, trained, compared, exported, used)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary["machine"] = {"cores": len(os.sched_getaffinity(0)), "load_start": load_start, "load_end": _load_average(),
                          "cpu_seconds": _cpu_seconds(), "train_threads": trained.get("torch_threads") or torch_threads}
    atomic.write_json(out / "demo_summary.json", summary)
    atomic.write_text(out / "report.md", demo_compare.render_report(summary))
    _print_summary(summary)
    stages.log.close()
    return DemoResult(stages.records, summary, out)


def _cpu_seconds() -> float:
    """CPU time (user + system, seconds) of this process and its finished children (the server): what
    the run costs whatever else the machine is doing; on N idle cores the wall time is at least this / N."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 1)


def _load_average() -> float:
    """The 1-minute load average (runnable processes; compare with the core count)."""
    return round(os.getloadavg()[0], 2)


def _summary(cfg: DemoConfig, out: Path, stages: _Stages, prepared: dict, trained: dict, compared: dict,
             exported: dict, used: dict) -> dict[str, Any]:
    measured = demo_compare.goals(compared, used)
    return {
        "output_dir": str(out),
        "language": cfg.language,
        "base_model": cfg.model_name_or_path,
        "quantization": cfg.quantization,
        "stages": {k: {"status": v.get("status"), "reused": v.get("reused"), "seconds": v.get("seconds")}
                   for k, v in stages.records.items()},
        "train": {**prepared["counts"], **trained, "max_samples": cfg.max_samples},
        "compare": compared,
        "goals": measured,
        "export": exported,
        "tokens_per_second": used["tokens_per_second"],
        "reviews": used["reviews"],
        "chat": used["chat"],
        "note": _note(cfg, goals_met=all(c["met"] for c in measured["checks"])),
        "next_steps": _next_steps(exported),
    }


def _note(cfg: DemoConfig, goals_met: bool) -> str | None:
    """The summary's note: what a 135M base can do in Chinese, and what a missed goal means."""
    parts = ([ZH_NOTE] if cfg.language == "zh" and not cfg.data else []) + ([] if goals_met else [MISSED_NOTE])
    return " ".join(parts) or None


def _next_steps(exported: dict[str, Any]) -> list[str]:
    """What to do with the result: serve it, connect Dify, the same on a GPU."""
    export_dir = exported["export_dir"]
    return [f"serve it: steam-train serve {export_dir} --port 8000 --n_ctx 2048  (OpenAI-compatible API at "
            "http://127.0.0.1:8000/v1; for Dify in Docker add --host 0.0.0.0 --api_key KEY)",
            "Dify: steam-train plugin package, install both .difypkg files, then Settings → Model Provider → "
            "Steam Persona → Add Model: Endpoint URL http://host.docker.internal:8000/v1, API key KEY, model "
            f"name steam-persona, Context size 2048 ({doc('dify.md')})",
            f"the same on a GPU with the 7B reference base: {doc('real-run.md')} (train "
            f"{shipped('examples/train_qlora.yaml')}, then export and serve as above)"]


def _print_summary(s: dict[str, Any]) -> None:
    from rich.markup import escape
    from rich.table import Table

    c = s["compare"]
    table = Table(title=f"base vs tuned, same prompts and sampling (seed {c['seed']}, "
                        f"max_new_tokens {c['max_new_tokens']})", title_justify="left", show_lines=True)
    for col in ("game", "base", "tuned"):
        table.add_column(col, ratio=1 if col == "game" else 3)
    for x in c["samples"]:
        table.add_row(escape(x["game"]), *(f"{escape(x[w]['text'])}\n[dim]{demo_compare.ending(x[w])}[/dim]"
                                           for w in ("base", "tuned")))
    console.print(table)
    t, e = s["train"], s["export"]
    sizes = ", ".join(f"{q} {f['bytes'] / 2**20:.1f} MiB ({'verified' if e['verified'].get(q) else 'NOT verified'})"
                      for q, f in e["files"].items())
    loss = c["loss"]
    rows = [("stages", ", ".join(f"{k} {v['seconds']} s{' (reused)' if v['reused'] else ''}"
                                 for k, v in s["stages"].items())),
            ("data", f"{demo_compare.trained_on(t)} train / {t.get('val')} held-out reviews ({s['language']})"),
            ("training loss start → end", f"{t['loss_start']:.3f} → {t['loss_end']:.3f} ({t.get('steps')} steps, "
                                          f"{t.get('dtype')})"),
            ("held-out loss base → tuned", f"{loss['base']['loss']:.3f} → {loss['tuned']['loss']:.3f} "
                                           f"({100 * c['loss_change']:+.1f} %)"),
            *((f"goal: {g['goal']}", f"{g['measured']} — {'met' if g['met'] else 'NOT met'}")
              for g in s["goals"]["checks"]),
            ("export", sizes),
            ("tokens/s (served)", s["tokens_per_second"]),
            ("wall time", demo_compare.run_time(s))]
    rows += [(f"served review: {escape(r['game'])}", escape(r["review"])) for r in s["reviews"]]
    rows += [(f"chat {i + 1}", escape(f"{turn['user']} → {turn['assistant']}"))
             for i, turn in enumerate(s["chat"]["turns"])]
    if s.get("note"):
        rows.append(("note", s["note"]))
    rows += [("report", Path(s["output_dir"]) / "report.md"), ("all artefacts", s["output_dir"])]
    summary_table("steam-persona demo", rows)
    console.print("[bold]next steps[/bold]")
    for step in s["next_steps"]:
        console.print(f"  • {step}", soft_wrap=True)


command = config.command(DemoConfig, run, name="demo", config_option="option",
                         help="Run the whole pipeline offline on the embedded default: prepare → QLoRA train → "
                              "base vs tuned → export q4_k_m → serve → plugin review + chat; artefacts and "
                              "report.md in ./demo_run, reruns reuse finished stages. The default 100 steps × 2 samples "
                              "are about 1.3 epochs of the embedded English reviews.")
