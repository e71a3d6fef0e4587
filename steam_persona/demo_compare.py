"""What the demo's fine-tune changed: base vs tuned on the same prompts, and the demo's goals.

The ``compare`` stage of ``steam-train demo`` loads the base once with the trained LoRA adapter
(:func:`steam_persona.trainer.model.load_for_inference`, unquantized inference weights) and, with the adapter
switched off (base) and on (tuned):

* computes the held-out loss on the demo's eval slice (``persona_val.json``, reviews the train stage
  never saw) with :func:`steam_persona.trainer.evaluate.held_out_loss` — nats per response token, prompt masked
  as in training;
* writes one review per :data:`PROMPTS` entry (games absent from the demo data) with
  :func:`steam_persona.trainer.evaluate.generate`, same seed and sampling settings (:data:`SAMPLING`) for both.

:func:`goals` then checks the demo's goals (:data:`GOALS`) over every tuned generation of the run:
the compared reviews, the served reviews and the served chat turns. :func:`render_report` writes
``demo_run/report.md``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from steam_persona.trainer import eval_metrics

#: Review prompts of the demo, per language: (game, genre tags). None of these games is in
#: ``examples/persona_reviews.json``, so the reviews show what the persona learned, not recall.
PROMPTS = {
    "en": [("Rocket League", "Sports, Racing, Competitive"),
           ("The Elder Scrolls V: Skyrim", "RPG, Open World, Fantasy"),
           ("Subnautica", "Survival, Underwater, Exploration")],
    "zh": [("鬼泣5", "动作, 砍杀, 华丽"), ("糖豆人", "派对, 多人, 休闲"), ("全面战争：三国", "策略, 历史, 战争")],
}
#: The multi-turn chat the demo sends the way the Dify chat plugin does.
CHAT_TURNS = {
    "en": ["I want a game to play with friends this weekend. Any recommendation?",
           "And one to play alone? Tell me why."],
    "zh": ["最近想找个能和朋友一起玩的游戏，有什么推荐？", "那单人玩的话呢？说说理由。"],
}
#: Sampling settings of every demo generation, base and tuned alike (HF ``generate`` names;
#: ``repetition_penalty`` 1.1 is also llama-cpp-python's server default ``repeat_penalty``).
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}
#: The demo's goals: held-out loss change at most -20 %, every generation stops by itself, mean
#: seq-rep-4 below 5 %, every review addresses its game (:func:`steam_persona.trainer.eval_metrics.addresses_game`).
GOALS = {"loss_change": -0.20, "stop_rate": 1.0, "seq_rep_4": 0.05, "addresses_game": 1.0}


def prompt_conversation(system: str, game: str, tags: str, language: str) -> list[dict[str, str]]:
    """The review request for ``game`` in the training format, ending with a placeholder reply
    (:func:`steam_persona.trainer.evaluate.prompt_ids` cuts the conversation where the reply starts)."""
    from steam_persona.common.persona import review_messages

    return [*review_messages(system, game_name=game, tags=tags, language=language),
            {"role": "assistant", "content": "-"}]


def compare(base: str, run_dir: str, val_file: str, language: str, system: str, cutoff_len: int,
            max_new_tokens: int, seed: int) -> dict[str, Any]:
    """Base vs tuned: held-out loss on ``val_file`` and one review per :data:`PROMPTS` entry each.

    Returns:
        ``{"loss": {"base", "tuned"}`` (:func:`steam_persona.trainer.evaluate.held_out_loss` dicts) ``,
        "loss_change"`` (relative, -0.25 = 25 % below base) ``, "samples": [{"game", "tags",
        "base", "tuned"}]`` (each side ``{"text", "new_tokens", "stopped", "seconds"}``) ``,
        "sampling", "max_new_tokens", "seed"}``.
    """
    from steam_persona.trainer import data, evaluate
    from steam_persona.common import config
    from steam_persona.trainer.model import load_for_inference
    from steam_persona.trainer.templates import ChatTemplate

    model, tokenizer = load_for_inference(base, run_dir)
    chat = ChatTemplate("auto", tokenizer)
    val = data.load_conversations(val_file, system=system)
    gen_cfg = config.build(evaluate.EvalConfig, {"dataset": val_file, "max_new_tokens": max_new_tokens,
                                                 "seed": seed, **SAMPLING})
    prompts = PROMPTS[language]
    convs = [prompt_conversation(system, game, tags, language) for game, tags in prompts]
    results: dict[str, dict[str, Any]] = {}
    for which, ctx in (("base", model.disable_adapter), ("tuned", contextlib.nullcontext)):
        with ctx():
            loss = evaluate.held_out_loss(model, chat, val, cutoff_len, 8, label=f"{which}: held-out loss")
            gens = evaluate.generate(model, chat, convs, gen_cfg, label=f"{which}: {len(convs)} reviews")
        results[which] = {"loss": loss, "generations": gens}
    b, t = results["base"]["loss"]["loss"], results["tuned"]["loss"]["loss"]
    return {"loss": {k: v["loss"] for k, v in results.items()},
            "loss_change": round(eval_metrics.relative_change(b, t), 4) if b else None,
            "samples": [{"game": g, "tags": tags, "base": bg, "tuned": tg} for (g, tags), bg, tg
                        in zip(prompts, results["base"]["generations"], results["tuned"]["generations"])],
            "sampling": SAMPLING, "max_new_tokens": max_new_tokens, "seed": seed}


def _tags(tags: str) -> list[str]:
    return [t.strip() for t in tags.split(",") if t.strip()]


def generations(compared: dict[str, Any], served: dict[str, Any], which: str = "tuned") -> list[dict[str, Any]]:
    """Every generation of the demo by one side, as ``{"source", "text", "stopped", "tokens", "game",
    "tags"}`` (``game`` None for chat turns). ``which="base"`` has the compared reviews only (the base
    is not served). A served reply stopped by itself when it used fewer tokens than its limit
    (llama.cpp reports ``finish_reason`` "length" exactly when the limit is reached)."""
    out = [{"source": "compared", "text": s[which]["text"], "stopped": s[which]["stopped"],
            "tokens": s[which]["new_tokens"], "game": s["game"], "tags": _tags(s["tags"])}
           for s in compared["samples"]]
    if which == "base":
        return out
    out += [{"source": "served review", "text": r["review"], "stopped": r["tokens"] < served["max_tokens"],
             "tokens": r["tokens"], "game": r["game"], "tags": _tags(r.get("tags", ""))}
            for r in served["reviews"]]
    out += [{"source": "served chat", "text": t["assistant"], "stopped": t["finish_reason"] == "stop",
             "tokens": t.get("tokens"), "game": None, "tags": []} for t in served["chat"]["turns"]]
    return out


def figures(gens: list[dict[str, Any]]) -> dict[str, Any]:
    """Stop rate, mean seq-rep-4 and the share of reviews that address their game, over ``gens``."""
    reviews = [g for g in gens if g["game"]]
    return {"generations": len(gens),
            "stop_rate": eval_metrics.stop_rate([g["stopped"] for g in gens]),
            "seq_rep_4": eval_metrics.mean_repetition([g["text"] for g in gens]),
            "addresses_game": (sum(eval_metrics.addresses_game(g["text"], g["game"], g["tags"]) for g in reviews)
                               / len(reviews)) if reviews else None}


def goals(compared: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
    """The demo's goals measured on this run: ``{"base": figures, "tuned": figures, "checks":
    [{"goal", "measured", "met"}]}`` (base: its compared reviews; tuned: every tuned generation)."""
    base, tuned = figures(generations(compared, served, "base")), figures(generations(compared, served))
    change = compared["loss_change"]
    checks = [
        ("tuned held-out loss >= 20 % below base", f"{_pct(change)} ({compared['loss']['base']['loss']:.3f} → "
         f"{compared['loss']['tuned']['loss']:.3f})", change is not None and change <= GOALS["loss_change"]),
        (f"100 % of generations stop by themselves within {compared['max_new_tokens']} tokens",
         f"{_pct(tuned['stop_rate'])} of {tuned['generations']}",
         tuned["stop_rate"] is not None and tuned["stop_rate"] >= GOALS["stop_rate"]),
        ("seq-rep-4 < 5 %", _pct(tuned["seq_rep_4"]), tuned["seq_rep_4"] is not None
         and tuned["seq_rep_4"] < GOALS["seq_rep_4"]),
        ("every review addresses its game (names it or a genre tag)", _pct(tuned["addresses_game"]),
         tuned["addresses_game"] is not None and tuned["addresses_game"] >= GOALS["addresses_game"]),
    ]
    return {"base": base, "tuned": tuned,
            "checks": [{"goal": g, "measured": m, "met": bool(ok)} for g, m, ok in checks]}


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "(empty)"


def ending(g: dict[str, Any]) -> str:
    """How a compared generation ended, and its length in tokens."""
    return f"{'stopped by itself' if g['stopped'] else 'cut at the limit'}, {g['new_tokens']} tokens"


def run_time(s: dict[str, Any]) -> str:
    """This run's wall and CPU time with the load it ran under; when stages were reused from an
    earlier run, how many and what they took then (a rerun's own time is only the reuse check)."""
    m = s["machine"]
    text = (f"{s['wall_seconds']} s on {m['cores']} cores, load average {m['load_start']} → {m['load_end']} "
            f"(a loaded machine is slower), training on {m['train_threads']} thread(s); "
            f"CPU time {m['cpu_seconds']} s")
    reused = [v for v in s["stages"].values() if v.get("reused")]
    if reused:
        then = sum(v.get("seconds") or 0 for v in s["stages"].values())
        text += (f"; {len(reused)} of {len(s['stages'])} stages reused from an earlier run, where the stages "
                 f"took {then:.1f} s")
    return text


def trained_on(t: dict) -> str:
    """How many of the prepared training reviews the run trained on (the summary's ``train``): ``40 of 155
    (--max_samples)`` when ``--max_samples`` kept fewer, else the count."""
    n, cap = t.get("train"), t.get("max_samples")
    return f"{cap} of {n} (--max_samples)" if cap and isinstance(n, int) and cap < n else str(n)


def render_report(s: dict[str, Any]) -> str:
    """``demo_run/report.md`` from the demo summary (``demo_summary.json``): the run, the held-out
    loss of both models, the side-by-side reviews, the served texts, the goals, the next steps."""
    c, g, t = s["compare"], s["goals"], s["train"]
    samp = ", ".join(f"{k} {v}" for k, v in c["sampling"].items())
    lines = [f"# steam-persona demo: what fine-tuning did ({s['language']})", "",
             f"Base `{s['base_model']}`; QLoRA {t.get('steps')} steps on {trained_on(t)} reviews "
             f"({t.get('dtype')}), loss {t['loss_start']:.3f} → {t['loss_end']:.3f}. "
             f"Wall time {run_time(s)}.", "",
             f"## Held-out loss ({c['loss']['base']['records']} reviews of the eval slice the train stage never saw)", "",
             "Mean cross-entropy per response token (nats), inference weights, prompt masked as in training.", "",
             "| base | tuned | change |", "|---|---|---|",
             f"| {c['loss']['base']['loss']:.4f} | {c['loss']['tuned']['loss']:.4f} | "
             f"{100 * c['loss_change']:+.1f} % |", "",
             f"## Base vs tuned, same prompts and sampling ({samp}, seed {c['seed']}, "
             f"max_new_tokens {c['max_new_tokens']})", ""]
    served = {r["game"]: r for r in s["reviews"]}
    for i, x in enumerate(c["samples"], 1):
        lines += [f"### {i}. {x['game']} ({x['tags']})", "", "| | answer | ending |", "|---|---|---|",
                  f"| base | {_cell(x['base']['text'])} | {ending(x['base'])} |",
                  f"| tuned | {_cell(x['tuned']['text'])} | {ending(x['tuned'])} |"]
        if x["game"] in served:
            r = served[x["game"]]
            lines.append(f"| tuned, served {s['quantization']} | {_cell(r['review'])} | {r['tokens']} tokens |")
        lines.append("")
    lines += ["## Served chat (as the Dify chat plugin sends it)", ""]
    lines += [f"- **user**: {_cell(u['user'])}\n  **persona**: {_cell(u['assistant'])}" for u in s["chat"]["turns"]]
    lines += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {x['goal']} | {x['measured']} | {'yes' if x['met'] else 'NO'} |" for x in g["checks"]]
    b = g["base"]
    lines += ["", f"Base, same prompts: stop rate {_pct(b['stop_rate'])}, seq-rep-4 {_pct(b['seq_rep_4'])}, "
                  f"addresses its game {_pct(b['addresses_game'])}.", ""]
    if s.get("note"):
        lines += [s["note"], ""]
    lines += ["## Next steps", ""] + [f"- {step}" for step in s["next_steps"]]
    return "\n".join(lines) + "\n"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"
