"""``prepare_report.json`` + ``prepare_report.md`` + ``prepare_lengths.png``: what ``prepare`` did.

The Markdown report is for people auditing a run: input formats and column mappings, every rule
that fired with its count, flag and two masked examples, kept/dropped by language and by game,
the warnings, and a histogram of kept lengths (CJK characters / words).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steam_persona.common import atomic


def write(report: dict[str, Any], lengths: list[tuple[int, str]], json_path: Path, md_path: Path) -> None:
    """Write the JSON report, the length histogram PNG beside it and the Markdown report (atomically)."""
    png = png_path(md_path)
    _histogram(lengths, png)
    report["lengths_png"] = str(png)
    atomic.write_json(json_path, report)
    atomic.write_text(md_path, markdown(report, png.name))


def png_path(md_path: Path) -> Path:
    """``prepare_report.md`` → ``prepare_lengths.png`` beside it."""
    return md_path.with_name(md_path.stem.replace("_report", "") + "_lengths.png")


#: what a rule's reasons are and what their counts count, for the "N more …" tail of :func:`reasons_text`
_REST = {"unknown_game": ("apps", " reviews"), "max_per_game": ("games", " reviews")}


def reasons_text(reasons: dict[str, int], top: int, rule: str = "") -> str:
    """``"email 3, link 2, 2 more reasons: 2"`` (``rule`` unknown_game: ``"app 4000 3, 52 more apps: 56 reviews"``):
    the ``top`` most frequent reasons (all of them when only one more) and what the rest add up to, so that
    the counts shown always sum to the reasons' total."""
    ranked = sorted(reasons.items(), key=lambda kv: -kv[1])
    if len(ranked) == top + 1:
        top += 1  # "1 more 1" says less than the reason itself
    shown = [f"{k} {v}" for k, v in ranked[:top]]
    rest = ranked[top:]
    what, unit = _REST.get(rule, ("reasons", ""))
    return ", ".join(shown + ([f"{len(rest)} more {what}: {sum(v for _, v in rest)}{unit}"] if rest else []))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def markdown(report: dict[str, Any], png_name: str) -> str:
    """The Markdown report for a ``prepare_report.json`` dict."""
    c = report["counts"]
    out = [f"# prepare report\n\n{c['read']:,} reviews read → {c['kept']:,} kept ({c['train']:,} train, "
           f"{c['val']:,} val) for {c['games']:,} game{'' if c['games'] == 1 else 's'} in {report['seconds']} s.\n"]
    if report.get("warnings"):
        out.append("## Warnings\n\n" + "".join(f"* {w}\n" for w in report["warnings"]))
    out.append("## Inputs\n\n| file | format | reviews | column mapping |\n|---|---|---|---|")
    for i in report["inputs"]:
        fmt = i["format"] + (f" ({i['container']})" if i.get("container") else "") + (f", {i['compressed']}" if i.get("compressed") else "")
        cols = ", ".join(f"{k}={v}" for k, v in (i.get("columns") or {}).items()) or "—"
        out.append(f"| {_cell(i['path'])} | {fmt} | {i['reviews']:,} | {_cell(cols)} |")
    cfg = report.get("config", {})
    if cfg.get("columns"):
        out.append(f"\n`--columns {cfg['columns']}`")
    out.append("\n## Rules that fired\n\nExamples are the first two records each rule touched, cut to 100 characters, "
               "personal data and author names shown as ▇.\n\n| rule | removed | changed | reasons | flag | examples |\n"
               "|---|---|---|---|---|---|")
    for name, st in report["rules"].items():
        if not (st["removed"] or st["changed"]):
            continue
        reasons = reasons_text(st["reasons"], 6, name)
        examples = "<br>".join(f"{_cell(e['text'])}" + (f" *({_cell(e['reason'])})*" if e.get("reason") else "")
                               for e in st["examples"][:2])
        out.append(f"| {name} | {st['removed'] or ''} | {st['changed'] or ''} | {_cell(reasons)} | `{st['flag']}` | {examples} |")
    for title, key in (("language", "by_language"), ("game", "by_game")):
        out.append(f"\n## Kept and dropped by {title}\n\n| {title} | kept | dropped |\n|---|---|---|")
        out += [f"| {_cell(k)} | {v['kept']:,} | {v['dropped']:,} |" for k, v in _folded(report[key], 50)]
    out.append(f"\n## Lengths of kept reviews\n\n![lengths]({png_name})\n")
    return "\n".join(out) + "\n"


def _folded(groups: dict[str, dict[str, int]], top: int) -> list[tuple[str, dict[str, int]]]:
    """The ``top`` largest groups (kept + dropped) and one row ``… N more`` with the summed counts of the rest,
    so that each column of the table sums to the run's totals."""
    rows = sorted(groups.items(), key=lambda kv: -(kv[1]["kept"] + kv[1]["dropped"]))
    if len(rows) <= top + 1:
        return rows
    rest = rows[top:]
    summed = {col: sum(v[col] for _, v in rest) for col in ("kept", "dropped")}
    return rows[:top] + [(f"… {len(rest)} more (see the JSON report)", summed)]


def _histogram(lengths: list[tuple[int, str]], target: Path) -> None:
    """Histogram of kept lengths: CJK reviews in characters, others in words, one panel (4.5 × 3.5
    inches at 100 dpi) per kind of review that was kept; no empty panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    units = [u for u in ("chars", "words") if any(unit == u for _, unit in lengths)] or ["chars"]
    fig, axes = plt.subplots(1, len(units), figsize=(4.5 * len(units), 3.5), dpi=100, squeeze=False)
    for ax, unit in zip(axes[0], units):
        values = np.array([n for n, u in lengths if u == unit], dtype=np.int64)
        ax.hist(values, bins=40, color="#4c72b0")
        ax.set_title(f"{'CJK reviews' if unit == 'chars' else 'other scripts'} ({len(values):,})")
        ax.set_xlabel("characters" if unit == "chars" else "words")
        ax.set_ylabel("reviews")
    fig.tight_layout()
    with atomic.atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
