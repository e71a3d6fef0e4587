"""``steam-train validate DATASET[,DATASET...]``: record counts, token-length statistics and every problem found.

Reads the dataset exactly as ``train`` does (same readers, template, masking and truncation), so a
dataset that validates cleanly trains. Exit code 2 when any record is unusable. The files are read and
checked before transformers is imported (a spinner shows while it loads), so a bad file is rejected
at once.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from rich.text import Text

from steam_persona.common import config
from steam_persona.common.arguments import DataArguments, ModelArguments
from steam_persona.common.config import arg
from steam_persona.common.console import console, progress, status, summary_table
from steam_persona.common.errors import UserError
from steam_persona.common.persona import DEFAULT_SYSTEM


@dataclass
class ValidateConfig:
    dataset: str = arg(None, "Dataset: a .json/.jsonl path or a name in DATASET_DIR/dataset_info.json; several "
                             "comma-separated (as train's --dataset) are each checked.", positional=True)
    dataset_dir: str = DataArguments.use("dataset_dir")
    encoding: str = DataArguments.use("encoding")
    model_name_or_path: str = ModelArguments.use("model_name_or_path")
    template: str = DataArguments.use("template")
    system: str = DataArguments.use("system", DEFAULT_SYSTEM, note="Added to records that have none.")
    cutoff_len: int = DataArguments.use("cutoff_len")


def _pct(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def run(cfg: ValidateConfig) -> list[dict[str, Any]]:
    """Check each dataset of ``cfg.dataset`` (one, or several comma-separated as ``train --dataset`` takes
    them) and print a report for each.

    Returns:
        one report per dataset: ``{"dataset", "records", "usable", "problems": [...], "special_tokens": [...]
        (lines naming usable records whose text holds a special token), "tokens": {min, mean,
        median, p95, max}, "label_tokens_mean", "truncated", "dropped"}`` (token figures over usable records,
        with the template and ``cutoff_len`` applied before truncation).

    Raises:
        UserError: a file-level problem (before any report), or (after the reports) any unusable record.
    """
    from steam_persona.trainer import data
    from steam_persona.common.hub import resolve_model
    from steam_persona.trainer.templates import ChatTemplate

    names = [n.strip() for n in (cfg.dataset or "").split(",") if n.strip()]
    if not names:
        raise UserError("validate: give a dataset (a .json/.jsonl path or a registered name)")
    read = [data.read_dataset(data.resolve(n, cfg.dataset_dir, arg="DATASET"), system=cfg.system or None,
                              encoding=cfg.encoding) for n in names]
    resolve_model(cfg.model_name_or_path)  # a missing model path fails here, before the heavy imports
    for res in read:
        console.print(f"{res.spec.path}: {len(res.conversations)} records read, {len(res.problems)} with problems")
    with status(f"loading the {cfg.model_name_or_path} tokenizer (first import of transformers: ~10–30 s)"):
        from steam_persona.trainer.model import load_tokenizer

        template = ChatTemplate(cfg.template, load_tokenizer(cfg.model_name_or_path))
    reports = [_report(cfg, res, template) for res in read]
    bad = [(res.spec.path, len(res.problems)) for res in read if res.problems]
    if bad:
        raise UserError("; ".join(f"{path}: {n} unusable record(s)" for path, n in bad) + " listed above; fix or "
                        "drop them")
    special = sum(len(r["special_tokens"]) for r in reports)
    console.print(f"[yellow]no unusable records; {special} hold special-token text (listed above)[/yellow]" if special
                  else "[green]no problems found[/green]")
    return reports


def _special_token_lines(res: Any, template: Any) -> list[str]:
    """One line per usable record of ``res`` whose messages hold one of the tokenizer's special tokens
    (``template.special``), naming the first; ``train`` reads them as text (unless the chat template rewrites
    contents), other tools as control tokens."""
    from steam_persona.trainer import data

    if template.special is None:
        return []
    out = []
    for i, conv in enumerate(res.conversations, start=1):
        hits = [(m["role"], hit.group()) for m in conv or () if (hit := template.special.search(m["content"]))]
        if hits:
            role, token = hits[0]
            train = "reads it as text" if _contents_located(template, conv) else \
                "reads it as a control token too, since this chat template rewrites contents"
            out.append(f"{data.record_where(res.spec, i)}: the {role} message holds the special token '{token}'; train "
                       f"{train}; a tool that parses special tokens (LLaMA-Factory, llama.cpp) reads it as a "
                       "control token (remove it; prepare's control_tokens rule drops such reviews)")
    return out


def _contents_located(template: Any, conv: list[dict[str, str]]) -> bool:
    """Whether ``template`` lets ``train`` find ``conv``'s contents in its rendering, to read them as text."""
    return any(content for _, parts in template.parts(conv) for _, content in parts)


def _report(cfg: ValidateConfig, res: Any, template: Any) -> dict[str, Any]:
    """Measure one read dataset's usable records and print its table and problems."""
    from steam_persona.trainer.encode import encode_conversation, fit

    usable = res.usable
    lengths, learned, ends = [], [], []
    with progress(transient=True) as bar:
        task = bar.add_task("measuring tokens", total=len(usable))
        for conv in usable:
            ids, labels, _ = encode_conversation(template, conv)
            lengths.append(len(ids))
            learned.append(sum(1 for t in labels if t != -100))
            ends.append(fit(template, conv, cfg.cutoff_len)[2])
            bar.advance(task)
    report: dict[str, Any] = {"dataset": str(res.spec.path), "records": len(res.conversations), "usable": len(usable),
                              "problems": res.problems, "special_tokens": _special_token_lines(res, template),
                              "truncated": ends.count("truncated"),
                              "dropped": ends.count("dropped")}
    if lengths:
        report["tokens"] = {"min": min(lengths), "mean": round(statistics.mean(lengths), 1),
                            "median": int(statistics.median(lengths)), "p95": _pct(lengths, 0.95), "max": max(lengths)}
        report["label_tokens_mean"] = round(statistics.mean(learned), 1)
    t = report.get("tokens", {})
    summary_table(f"{res.spec.path}", [
        ("records", f"{report['records']} ({report['usable']} usable, {len(res.problems)} with problems)"),
        ("tokens / sample", f"min {t.get('min')}, mean {t.get('mean')}, median {t.get('median')}, p95 {t.get('p95')}, "
                            f"max {t.get('max')} ({cfg.model_name_or_path}, template {cfg.template})"),
        ("learned tokens / sample", report.get("label_tokens_mean")),
        (f"cutoff_len {cfg.cutoff_len}", f"{report['truncated']} truncated, {report['dropped']} dropped"),
    ])
    for p in res.problems:
        console.print(Text("problem ", style="red") + Text(p), soft_wrap=True)
    for line in report["special_tokens"]:
        console.print(Text("warning ", style="yellow") + Text(line), soft_wrap=True)
    return report


command = config.command(ValidateConfig, run, name="validate",
                         help="Check one dataset or several (comma-separated, as train's --dataset): record "
                              "counts, token lengths and every problem (exit 2 if any).",
                         config_option="option")
