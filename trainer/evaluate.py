"""``steam-train eval``: did fine-tuning improve the persona? Held-out loss and generation checks,
tuned against base, written to ``eval_report.json`` + ``eval_report.md`` + ``length_hist.png``.

What is measured (the same way for the base and the tuned model):

* **Held-out loss (inference weights)** — mean cross-entropy in nats per *response* token on the
  validation file, of the weights that will be served (unquantized base + adapter, or the GGUF);
  not the same figure as ``train``'s ``eval loss``, which is measured during training on the
  4-bit training base;
  pooled over all tokens (sum of token losses / number of response tokens); prompt and system
  tokens are masked exactly as in training (the train stage's encoder, :mod:`steam_persona.trainer.data`), so
  the figure means the same as the training loss. Perplexity = exp(loss).
* **Generation checks** on ``--num_samples`` prompts of the validation file (the first N, in file
  order, so runs are comparable): the share that stop by the end-of-turn token within
  ``--max_new_tokens``; the length distribution (in :func:`steam_persona.trainer.eval_metrics.text_units`)
  against the reference replies; the verbatim 8-gram copy rate against the training set's
  replies; within-generation repetition (seq-rep-4).
* **Side-by-side samples**: prompt, reference, base, tuned.

The tuned model is ``--model_name_or_path`` + ``--adapter_name_or_path`` (a train run dir; the
base is evaluated with the adapter switched off, so both share one load) or an exported
``--gguf`` file (loaded through transformers, which dequantizes it: the same engine and the same
masking as the base, so the two losses are comparable). The persona prompt and cutoff come from
the run's ``run_config.yaml`` unless given.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steam_persona.trainer import eval_metrics
from steam_persona.common import atomic
from steam_persona.common import config
from steam_persona.common import persona
from steam_persona.common.arguments import (CUTOFF_LEN, DataArguments, GeneratingArguments, ModelArguments,
                                             TrainingArguments)
from steam_persona.common.config import arg
from steam_persona.common.console import PLAIN_EVERY_S, console, plain_progress, progress, summary_table
from steam_persona.common.errors import UserError, said_if_stopped_before_writing, while_loading
from steam_persona.common.run_files import refuse_unfinished
from steam_persona.common.run_record import RunRecord
from steam_persona.trainer.templates import ChatTemplate

#: What eval writes into its output folder.
REPORT_FILES = ("length_hist.png", "eval_report.json", "eval_report.md")
#: Goals of the real-input eval report: loss reduction, end-of-turn stop rate, copy rate.
GOALS = {"loss_reduction": 0.25, "stop_rate": 1.0, "copy_rate": 0.01}


@dataclass
class EvalConfig:
    """Settings of ``steam-train eval`` (= its flags = its YAML keys)."""

    model_name_or_path: str | None = ModelArguments.use("model_name_or_path", None)
    adapter_name_or_path: str | None = ModelArguments.use("adapter_name_or_path")
    gguf: str | None = arg(None, "Exported .gguf to evaluate against the base instead of an adapter.")
    dataset: str = arg("", "Validation data: an alpaca/sharegpt JSON(L) file, or a name registered in "
                       "--dataset_dir/dataset_info.json.")
    dataset_dir: str = DataArguments.use("dataset_dir")
    encoding: str = DataArguments.use("encoding", note="Of --dataset and --train_dataset.")
    train_dataset: str | None = arg(None, "Training data for the 8-gram copy check (file or registered name); "
                                    "default: the run's dataset from run_config.yaml.")
    template: str | None = DataArguments.use("template", None)
    system: str | None = DataArguments.use(
        "system", unset="the export's persona (export_report.json), else the run's (run_config.yaml), else the built-in one")
    cutoff_len: int | None = DataArguments.use("cutoff_len", None)
    max_samples: int | None = DataArguments.use("max_samples")
    num_samples: int = arg(16, "Validation prompts to generate from (the first N).")
    max_new_tokens: int = GeneratingArguments.use("max_new_tokens")
    do_sample: bool = GeneratingArguments.use("do_sample")
    temperature: float = GeneratingArguments.use("temperature")
    top_p: float = GeneratingArguments.use("top_p")
    top_k: int = GeneratingArguments.use("top_k")
    repetition_penalty: float = GeneratingArguments.use("repetition_penalty")
    seed: int = DataArguments.use("seed", note="It seeds sampling.")
    per_device_eval_batch_size: int = TrainingArguments.use("per_device_eval_batch_size")
    output_dir: str | None = arg(None, "Where the report goes; default: <run>/eval, or eval/<gguf name>.")


@dataclass
class EvalResult:
    """What :func:`run` returns: the report dict and where it was written."""

    report: dict[str, Any]
    output_dir: Path


def run(cfg: EvalConfig) -> EvalResult:
    """Evaluate base vs tuned and write the reports (see the module docstring).

    Raises:
        UserError: no --dataset; both or neither of --adapter_name_or_path / --gguf; missing files;
            an empty validation set, or one whose every record is longer than the cutoff. Nothing is
            written then.
    """
    if not cfg.dataset:
        raise UserError("eval: missing --dataset; give the validation file (e.g. data/steam_sft_val.json, written by prepare)")
    if bool(cfg.adapter_name_or_path) == bool(cfg.gguf):
        raise UserError("eval: give exactly one of --adapter_name_or_path RUN_DIR or --gguf FILE to compare with the base")
    out = Path(cfg.output_dir) if cfg.output_dir else (
        Path(cfg.adapter_name_or_path) / "eval" if cfg.adapter_name_or_path else Path("eval") / Path(cfg.gguf).stem)
    phase = [while_loading("the first model's evaluation")]
    with said_if_stopped_before_writing(out, lambda: phase[0]):
        report = _evaluate(cfg, phase)
    out.mkdir(parents=True, exist_ok=True)
    atomic.note_removed([p for name in REPORT_FILES for p in atomic.remove_stale(out / name)])
    plot_lengths(report, out / REPORT_FILES[0])
    atomic.write_json(out / REPORT_FILES[1], report)
    atomic.write_text(out / REPORT_FILES[2], render_markdown(report))
    _summary(report, out)
    return EvalResult(report, out)


def _evaluate(cfg: EvalConfig, phase: list[str]) -> dict[str, Any]:
    """Both models' loss and generations as the report (:func:`build_report`); writes nothing. ``phase[0]`` says
    where it is, for a stop line."""
    from steam_persona.trainer.encode import data_line

    run, gguf_persona = _run_record(cfg)
    system = persona.resolve(cfg.system, run, gguf_persona)
    cutoff_len = cfg.cutoff_len or run.cutoff_len or CUTOFF_LEN
    template = cfg.template or run.template or "auto"

    val = _load(cfg.dataset, cfg.dataset_dir, system, cfg.encoding)
    if not val:
        raise UserError(f"{cfg.dataset}: no records to evaluate; check the file")
    train_ref = cfg.train_dataset or run.dataset
    train_texts = [c[-1]["content"] for c in _load(train_ref, run.dataset_dir or cfg.dataset_dir, "", cfg.encoding)] \
        if train_ref else []
    if not train_texts:
        console.print("[yellow]eval: no --train_dataset (and none in run_config.yaml): copy rate not measured")
    index = eval_metrics.ngram_index(train_texts)
    loss_convs = val[:cfg.max_samples] if cfg.max_samples else val
    gen_convs = val[:cfg.num_samples]

    results: dict[str, dict[str, Any]] = {}
    base = cfg.model_name_or_path or run.model_name_or_path or "smollm2"
    data_lines = set()  # the dataset line once: the same for both models unless their tokenizers differ
    for which, model, tokenizer, ctx in _models(cfg, base):
        chat = ChatTemplate(template, tokenizer)
        enc = _encoded(chat, loss_convs, cutoff_len, cfg.dataset)
        line = data_line(enc, cutoff_len)
        if line not in data_lines:
            data_lines.add(line)
            console.print(line)
        phase[0] = f"in the {which} model's evaluation"
        with ctx():
            console.print(f"[bold]eval[/bold] {which}: loss on {_n(len(enc), 'record')}, "
                          f"{_n(len(gen_convs), 'generation')}")
            loss = encoded_loss(model, chat, enc, cfg.per_device_eval_batch_size, label=f"{which} loss")
            gens = generate(model, chat, gen_convs, cfg, label=f"{which} generate")
        results[which] = {"loss": loss, "generations": gens}
        del model, tokenizer  # free the base before the GGUF model loads (gguf mode)

    return build_report(cfg, results, gen_convs, index, bool(train_texts), system, cutoff_len, base)


def _run_record(cfg: EvalConfig) -> tuple[RunRecord, str | None]:
    """The run the tuned model was trained with and the persona its export embedded: the run dir's
    record (adapter mode), or, for a GGUF inside an export dir, the run named by
    ``export_report.json`` and that report's ``persona``. Empty record / ``None`` when not found.

    Raises:
        UserError: a missing adapter dir or GGUF file, or an unreadable ``run_config.yaml`` or
            ``export_report.json``.
    """
    if cfg.adapter_name_or_path:
        run_dir = Path(cfg.adapter_name_or_path)
        refuse_unfinished(run_dir)
        if not (run_dir / "adapter_config.json").is_file():
            raise UserError(f"{run_dir}: not a train run dir (no adapter_config.json); check --adapter_name_or_path")
        return RunRecord.load(run_dir), None
    g = Path(cfg.gguf)
    if not g.is_file():
        raise UserError(f"{g}: GGUF file not found; check --gguf")
    report_path = g.parent / "export_report.json"
    if not report_path.is_file():
        return RunRecord(), None
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{report_path}: not valid JSON ({e}); re-run `steam-train export`") from None
    return RunRecord.load(report.get("adapter") or None), persona.exported(report)


# ---------------------------------------------------------------------------------------------- data

def _load(dataset: str | list[str], dataset_dir: str, system: str, encoding: str) -> list[list[dict[str, str]]]:
    """Conversations (ending with the reference reply) through the train stage's reader."""
    from steam_persona.trainer import data

    return data.load_conversations(dataset, dataset_dir, system=system, encoding=encoding)


# --------------------------------------------------------------------------------------------- models

def _models(cfg: EvalConfig, base: str):
    """Yield ``(which, model, tokenizer, context)`` for "base" then "tuned"; ``context()`` switches
    the adapter off for the base in adapter mode (one load serves both)."""
    from steam_persona.trainer import model as model_lib

    if cfg.adapter_name_or_path:
        model, tokenizer = model_lib.load_for_inference(base, cfg.adapter_name_or_path)
        yield "base", model, tokenizer, model.disable_adapter
        yield "tuned", model, tokenizer, contextlib.nullcontext
        return
    model, tokenizer = model_lib.load_for_inference(base)
    yield "base", model, tokenizer, contextlib.nullcontext
    del model
    model, tokenizer = model_lib.load_for_inference(cfg.gguf)
    yield "tuned", model, tokenizer, contextlib.nullcontext


# ----------------------------------------------------------------------------------------------- loss

def _encoded(chat: Any, convs: list[list[dict[str, str]]], cutoff_len: int, dataset: str) -> Any:
    """``convs`` encoded for the loss.

    Raises:
        UserError: every record dropped by ``cutoff_len``.
    """
    from steam_persona.trainer.encode import encode_dataset

    enc = encode_dataset(chat, convs, cutoff_len)
    if not len(enc):
        raise UserError(f"{dataset}: all {len(convs)} records are longer than --cutoff_len {cutoff_len} (no reply "
                        "fits with its prompt); raise --cutoff_len")
    return enc


def held_out_loss(model: Any, chat: Any, convs: list[list[dict[str, str]]], cutoff_len: int,
                  batch_size: int, label: str = "loss") -> dict[str, float]:
    """Mean response-token cross-entropy (nats) over ``convs``, pooled over tokens.

    Conversations are encoded by the train stage's encoder (:func:`steam_persona.trainer.encode.encode_dataset`:
    same chat template, persona, reply + end-of-turn labels and truncation as training); the loss
    is ``sum(-log p(label)) / count(labels != -100)`` with the usual one-token shift.

    Returns:
        ``{"loss": float, "perplexity": float, "tokens": int, "records": int}``.
    """
    from steam_persona.trainer.encode import encode_dataset

    return encoded_loss(model, chat, encode_dataset(chat, convs, cutoff_len), batch_size, label)


def encoded_loss(model: Any, chat: Any, enc: Any, batch_size: int, label: str = "loss") -> dict[str, float]:
    """:func:`held_out_loss` of conversations already encoded (:class:`steam_persona.trainer.encode.Encoded`)."""
    import torch

    from steam_persona.trainer.encode import IGNORE_INDEX

    pad = chat.tokenizer.pad_token_id if chat.tokenizer.pad_token_id is not None else chat.tokenizer.eos_token_id
    total_nll, total_tokens = 0.0, 0
    shown_at = time.monotonic()
    with progress() as bar, torch.no_grad():
        task = bar.add_task(label, total=len(enc))
        for i in range(0, len(enc), batch_size):
            ids_b, lab_b = enc.input_ids[i:i + batch_size], enc.labels[i:i + batch_size]
            width = max(len(x) for x in ids_b)
            ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids_b])
            labels = torch.tensor([x + [IGNORE_INDEX] * (width - len(x)) for x in lab_b])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids_b])
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits[:, :-1].float()
            target = labels[:, 1:].to(logits.device)
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                    ignore_index=IGNORE_INDEX, reduction="sum")
            total_nll += float(nll)
            total_tokens += int((target != IGNORE_INDEX).sum())
            bar.advance(task, len(ids_b))
            if time.monotonic() - shown_at >= PLAIN_EVERY_S:  # without a terminal no bar is shown
                shown_at = time.monotonic()
                plain_progress(label, min(i + batch_size, len(enc)), len(enc), {})
    loss = total_nll / total_tokens if total_tokens else math.nan
    return {"loss": round(loss, 4), "perplexity": round(eval_metrics.perplexity(loss), 3),
            "tokens": total_tokens, "records": len(enc)}


# ------------------------------------------------------------------------------------------ generation

def prompt_ids(chat: Any, conv: list[dict[str, str]]) -> list[int]:
    """Token ids of ``conv`` up to its last reply (the assistant header included), tokenized exactly
    as in training (:func:`steam_persona.trainer.encode.encode_conversation`), so generation starts where the
    trained reply starts."""
    from steam_persona.trainer.encode import encode_conversation

    ids, _, spans = encode_conversation(chat, conv)
    return ids[:spans[-1][0]]


def sampled(cfg: EvalConfig) -> bool:
    """Whether generation samples: ``--do_sample`` with a temperature above 0 (0 is greedy, as OpenAI's)."""
    return cfg.do_sample and cfg.temperature > 0


def generate(model: Any, chat: Any, convs: list[list[dict[str, str]]], cfg: EvalConfig,
             label: str = "generate") -> list[dict[str, Any]]:
    """Generate one reply per conversation prompt (batched, left-padded).

    ``stopped`` is :func:`steam_persona.trainer.eval_metrics.stopped` on the new tokens with the end-of-turn ids
    (``generation_config.eos_token_id`` plus the template's end-of-turn token).

    Returns:
        one dict per conversation: ``{"text": str, "new_tokens": int, "stopped": bool,
        "seconds": float}`` (seconds = the batch's wall time / batch size).
    """
    import torch

    tok = chat.tokenizer
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    eos_ids.add(tok.convert_tokens_to_ids(chat.eot_token))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompts = [prompt_ids(chat, c) for c in convs]
    torch.manual_seed(cfg.seed)
    sampling = dict(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k) \
        if sampled(cfg) else dict(do_sample=False)
    out: list[dict[str, Any]] = []
    with progress() as bar, torch.no_grad():
        task = bar.add_task(label, total=len(prompts))
        for i in range(0, len(prompts), cfg.per_device_eval_batch_size):
            batch = prompts[i:i + cfg.per_device_eval_batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=model.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=model.device)
            t0 = time.perf_counter()
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=cfg.max_new_tokens,
                                 eos_token_id=sorted(eos_ids), pad_token_id=pad,
                                 repetition_penalty=cfg.repetition_penalty, **sampling)
            seconds = time.perf_counter() - t0
            for row in gen[:, width:].tolist():
                stop = eval_metrics.stopped(row, eos_ids, cfg.max_new_tokens)
                n = next((k for k, t in enumerate(row) if t in eos_ids), len(row))
                out.append({"text": tok.decode(row[:n], skip_special_tokens=True).strip(),
                            "new_tokens": n + (1 if stop else 0), "stopped": stop,
                            "seconds": round(seconds / len(batch), 3)})
            bar.advance(task, len(batch))
            plain_progress(label, len(out), len(prompts), {"seconds": f"{seconds:.1f}"})
    return out


# --------------------------------------------------------------------------------------------- report

def _gen_stats(gens: list[dict], index: set, measure_copy: bool) -> dict[str, Any]:
    texts = [g["text"] for g in gens]
    secs = sum(g["seconds"] for g in gens)
    toks = sum(g["new_tokens"] for g in gens)
    return {
        "stop_rate": eval_metrics.stop_rate([g["stopped"] for g in gens]),
        "length_units": eval_metrics.length_stats([len(eval_metrics.text_units(t)) for t in texts]),
        "new_tokens": eval_metrics.length_stats([g["new_tokens"] for g in gens]),
        "copy_rate_8gram": eval_metrics.copy_rate(texts, index) if measure_copy else None,
        "repetition_seq_rep_4": eval_metrics.mean_repetition(texts),
        "looping_share": eval_metrics.looping_share(texts),
        "tokens_per_second": round(toks / secs, 1) if secs else None,
    }


def build_report(cfg: EvalConfig, results: dict[str, dict], convs: list[list[dict[str, str]]], index: set,
                 measure_copy: bool, system: str, cutoff_len: int, base_model: str) -> dict[str, Any]:
    """Assemble the JSON report from the per-model results (pure; see ``eval_report.json``)."""
    base, tuned = results["base"], results["tuned"]
    refs = [c[-1]["content"] for c in convs]
    rel = (eval_metrics.relative_change(base["loss"]["loss"], tuned["loss"]["loss"])
           if base["loss"]["loss"] and not math.isnan(base["loss"]["loss"]) else None)
    gen = {"base": _gen_stats(base["generations"], index, measure_copy),
           "tuned": _gen_stats(tuned["generations"], index, measure_copy),
           "reference": {"length_units": eval_metrics.length_stats([len(eval_metrics.text_units(t)) for t in refs]),
                         "copy_rate_8gram": eval_metrics.copy_rate(refs, index) if measure_copy else None}}
    t = gen["tuned"]
    goals = {
        "loss_at_least_25pct_below_base": rel is not None and rel <= -GOALS["loss_reduction"],
        "all_generations_stop": t["stop_rate"] is not None and t["stop_rate"] >= GOALS["stop_rate"],
        "copy_rate_at_most_1pct": t["copy_rate_8gram"] is not None and t["copy_rate_8gram"] <= GOALS["copy_rate"],
    }
    samples = [{"prompt": c[-2]["content"], "reference": c[-1]["content"],
                "base": b["text"], "base_stopped": b["stopped"], "base_tokens": b["new_tokens"],
                "tuned": tu["text"], "tuned_stopped": tu["stopped"], "tuned_tokens": tu["new_tokens"]}
               for c, b, tu in zip(convs, base["generations"], tuned["generations"])]
    return {
        "config": {**config.to_dict(cfg), "do_sample": sampled(cfg)},
        "base_model": base_model,
        "system": system,
        "cutoff_len": cutoff_len,
        "loss": {"base": base["loss"], "tuned": tuned["loss"],
                 "relative_change": None if rel is None else round(rel, 4)},
        "generation": gen,
        "goals": goals,
        "samples": samples,
        "plot": "length_hist.png",
        "definitions": {
            "loss": "held-out loss on the inference weights: mean cross-entropy (nats) per response token, prompt "
                    "masked as in training (train's 'eval loss' is measured on the 4-bit training base instead)",
            "length_units": "CJK characters + words (steam_persona.trainer.eval_metrics.text_units)",
            "copy_rate_8gram": "generated 8-grams found verbatim in the training replies / generated 8-grams "
                               "(reference: the same for the validation replies, the natural overlap)",
            "repetition_seq_rep_4": "mean over generations of 1 - distinct 4-grams / 4-grams (Welleck et al. 2020)",
            "looping_share": "share of generations with seq-rep-4 >= 0.5",
            "stop_rate": "share of generations that emit the end-of-turn token within max_new_tokens",
        },
    }


def _n(count: int, noun: str) -> str:
    """``1 record``, ``2 records``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    if pct:
        return f"{100 * v:.1f} %"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _sampling_words(cfg: dict[str, Any]) -> str:
    """``sampling T=0.7 top_p=0.9 top_k=50``, or ``greedy`` (``--do_sample False`` or temperature 0)."""
    if not cfg["do_sample"] or not cfg["temperature"]:
        return "greedy"
    top_k = f" top_k={cfg['top_k']}" if "top_k" in cfg else ""
    return f"sampling T={cfg['temperature']} top_p={cfg['top_p']}{top_k}"


def render_markdown(report: dict[str, Any]) -> str:
    """The human report (``eval_report.md``): tables of figures, goals, and the side-by-side samples."""
    L, G = report["loss"], report["generation"]
    cfg = report["config"]
    tuned_name = cfg.get("adapter_name_or_path") or cfg.get("gguf")
    lines = [f"# Evaluation: `{tuned_name}` vs base `{report['base_model']}`", "",
             f"Validation set: `{cfg['dataset']}`; {_n(L['base']['records'], 'record')} for the loss, "
             f"{_n(len(report['samples']), 'prompt')} for generation (max_new_tokens {cfg['max_new_tokens']}, "
             f"{_sampling_words(cfg)}"
             f", repetition_penalty {cfg.get('repetition_penalty', 1.0)}).",
             "", "| metric | base | tuned |", "|---|---|---|",
             f"| held-out loss, inference weights (nats/token) | {_fmt(L['base']['loss'])} | {_fmt(L['tuned']['loss'])} "
             f"({_fmt(L['relative_change'], pct=True)}) |",
             f"| perplexity | {_fmt(L['base']['perplexity'])} | {_fmt(L['tuned']['perplexity'])} |"]
    b, t = G["base"], G["tuned"]
    rows = [("stop rate", "stop_rate", True), ("8-gram copy rate", "copy_rate_8gram", True),
            ("repetition (seq-rep-4)", "repetition_seq_rep_4", True), ("looping share", "looping_share", True),
            ("tokens/s", "tokens_per_second", False)]
    lines += [f"| {name} | {_fmt(b[k], p)} | {_fmt(t[k], p)} |" for name, k, p in rows]
    ref = G["reference"]["length_units"]
    lines += ["", "Length in text units (CJK characters + words): median [p10–p90]", "",
              "| reference | base | tuned |", "|---|---|---|",
              "| " + " | ".join(f"{_fmt(s['median'])} [{_fmt(s['p10'])}–{_fmt(s['p90'])}]"
                               for s in (ref, b["length_units"], t["length_units"])) + " |",
              "", f"![length histograms]({report['plot']})", "", "## Goals", ""]
    lines += [f"- {'✅' if ok else '❌'} {name.replace('_', ' ')}" for name, ok in report["goals"].items()]
    lines += ["", "## Samples (base vs tuned)", ""]
    for i, s in enumerate(report["samples"], 1):
        lines += [f"### {i}. {s['prompt'].splitlines()[0]}", "", f"*{s['prompt'].splitlines()[-1]}*" if "\n" in s["prompt"] else "",
                  f"- **reference**: {s['reference']}",
                  f"- **base**{'' if s['base_stopped'] else ' (did not stop)'}: {s['base']}",
                  f"- **tuned**{'' if s['tuned_stopped'] else ' (did not stop)'}: {s['tuned']}", ""]
    lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in report["definitions"].items()]
    return "\n".join(lines) + "\n"


def plot_lengths(report: dict[str, Any], path: Path) -> None:
    """Write :func:`length_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = length_figure(report)
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def length_figure(report: dict[str, Any]) -> Any:
    """Two panels (matplotlib, Agg): reply length in text units (reference, base, tuned) and in
    generated tokens (base, tuned) with the ``max_new_tokens`` cut-off marked. Each series is an
    outline histogram in its own colour and line style, so overlaps stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    limit = report["config"]["max_new_tokens"]
    units = {w: [len(eval_metrics.text_units(s[w])) for s in samples] for w in ("reference", "base", "tuned")}
    tokens = {w: [s.get(f"{w}_tokens") or 0 for s in samples] for w in ("base", "tuned")}
    style = {"reference": ("tab:gray", ":"), "base": ("tab:blue", "--"), "tuned": ("tab:orange", "-")}
    fig, (ax_u, ax_t) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for ax, series, top in ((ax_u, units, None), (ax_t, tokens, limit)):
        top = top or max([1] + [max(v) for v in series.values() if v])
        bins = [top * k / 20 for k in range(21)] + ([top * 1.05] if ax is ax_t else [])
        for name, values in series.items():
            color, ls = style[name]
            ax.hist(values, bins=bins, histtype="step", linewidth=2, color=color, linestyle=ls,
                    label=f"{name} (median {eval_metrics.length_stats(values)['median']})")
        ax.set_ylabel("replies")
    ax_t.axvline(limit, color="red", linewidth=1.5, label=f"max_new_tokens {limit} (cut off)")
    ax_u.set_xlabel("reply length (CJK characters + words)")
    ax_t.set_xlabel("generated tokens (end-of-turn included)")
    ax_u.set_title("Reply length: reference, base, tuned")
    ax_t.set_title("Generated tokens: base, tuned")
    ax_u.legend()
    ax_t.legend()
    fig.tight_layout()
    return fig


def _summary(report: dict[str, Any], out: Path) -> None:
    L, t, b = report["loss"], report["generation"]["tuned"], report["generation"]["base"]
    summary_table("eval", [
        ("held-out loss (inference weights) base → tuned", f"{_fmt(L['base']['loss'])} → {_fmt(L['tuned']['loss'])} "
                                       f"({_fmt(L['relative_change'], pct=True)})"),
        ("stop rate base / tuned", f"{_fmt(b['stop_rate'], True)} / {_fmt(t['stop_rate'], True)}"),
        ("8-gram copy rate (tuned)", _fmt(t["copy_rate_8gram"], True)),
        ("repetition seq-rep-4 base / tuned", f"{_fmt(b['repetition_seq_rep_4'], True)} / "
                                              f"{_fmt(t['repetition_seq_rep_4'], True)}"),
        ("report", out / "eval_report.md"),
    ])


command = config.command(EvalConfig, run, name="eval",
                         help="Held-out loss/perplexity and generation checks (stop rate, length, 8-gram copy "
                              "rate, repetition), tuned vs base; writes eval_report.json/.md + length_hist.png.")
