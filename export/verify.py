"""Step 5: check each GGUF against the merged HF model and check that chat stops.

* Logits: for 3 fixed conversations (rendered with the exported chat template, so the persona
  system prompt is part of them) the next-token logits at every position are compared with the
  merged HF model's (:func:`reference_logits`, saved at merge time). 16-bit files must pick the
  same top-1 token at every position where the reference is not a near-tie and stay within a small
  max-abs difference; quantized files report their top-1 agreement rate (pass: ≥ 50 %).
* Stop: one greedy chat completion through llama-cpp-python with the GGUF's own chat template.
  ``natural_stop`` says the model ended its turn by itself within the token budget. Because a
  random or barely trained model may never emit the end-of-turn token, a second completion forces
  it (``logit_bias`` +100 on that token) and checks that generation ends there and the token is not
  printed: ``eot_ends_generation`` — that is what a wrong eos breaks, and what must pass.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from steam_persona.common import persona
from steam_persona.export.interrupt import held_interrupt
from steam_persona.export.quantize import FLOAT_TYPES

#: The 3 fixed conversations (no system message: the template's default persona applies).
PROMPTS: list[list[dict[str, str]]] = [
    persona.review_messages(system=None, game_name="Hollow Knight", tags=["类银河战士恶魔城", "独立", "高难度"]),
    [{"role": "user", "content": "最近有什么值得玩的独立游戏？推荐一款。"}],
    [{"role": "user", "content": "Is Elden Ring too hard for a new player?"}],
]

#: 16-bit pass rule: max |logit diff| ≤ ABS_TOL + REL_TOL × max |reference logit| (f16 rounding of
#: weights and activations; measured ≤ 0.2 % of the logit range on SmolLM2 and tiny models).
ABS_TOL = 0.05
REL_TOL = 0.02
#: Quantized pass rule: top-1 agreement rate at least this.
MIN_QUANT_AGREEMENT = 0.5


def reference_logits(model, tokenizer, prompts: list[list[dict[str, str]]]) -> dict[str, np.ndarray]:
    """Next-token logits of the HF ``model`` on each rendered prompt.

    Returns:
        ``{"ids_i": int32 (T,), "logits_i": float32 (T, vocab_rows)}`` for each prompt ``i``; the
        logits keep every embedding row (Qwen: more rows than tokens), like llama.cpp's.
    """
    import torch

    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for i, msgs in enumerate(prompts):
            ids = render_ids(tokenizer, msgs)
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
            out[f"ids_{i}"] = np.asarray(ids, dtype=np.int32)
            out[f"logits_{i}"] = logits.astype(np.float32)
    return out


def render_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template plus the assistant prompt."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def compare_logits(ref: dict[str, np.ndarray], llm, *, is_float: bool) -> dict[str, Any]:
    """Compare a loaded llama-cpp-python model (``logits_all=True``) with the reference.

    Returns:
        ``positions``, ``top1_agreement`` (rate over all positions), ``top1_agreement_decisive``
        (over positions whose reference top-1/top-2 margin exceeds the tolerance), ``max_abs_diff``,
        ``tolerance`` and ``passed``.
    """
    agree = total = agree_d = total_d = 0
    max_diff = max_ref = 0.0
    rows = []  # per prompt: (reference top-1/top-2 margin, same top-1?) for every position
    n = len([k for k in ref if k.startswith("ids_")])
    for i in range(n):
        ids = ref[f"ids_{i}"].tolist()
        want = ref[f"logits_{i}"]
        with held_interrupt():
            llm.reset()
            llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)], dtype=np.float32)[:, : want.shape[1]]
        max_diff = max(max_diff, float(np.abs(got - want).max()))
        max_ref = max(max_ref, float(np.abs(want).max()))
        same = want.argmax(1) == got.argmax(1)
        top2 = np.partition(want, -2, axis=1)[:, -2:]
        rows.append((top2[:, 1] - top2[:, 0], same))
        agree += int(same.sum())
        total += len(ids)
    tol = ABS_TOL + REL_TOL * max_ref
    for margin, same in rows:
        decisive = margin > 2 * min(max_diff, tol)  # near-ties may flip under f16 rounding
        agree_d += int(same[decisive].sum())
        total_d += int(decisive.sum())
    rate = agree / total if total else 0.0
    rate_d = agree_d / total_d if total_d else 1.0
    passed = (rate_d == 1.0 and max_diff <= tol) if is_float else rate >= MIN_QUANT_AGREEMENT
    return {"positions": total, "top1_agreement": round(rate, 4), "top1_agreement_decisive": round(rate_d, 4),
            "decisive_positions": total_d, "max_abs_diff": round(max_diff, 5), "tolerance": round(tol, 5),
            "passed": bool(passed)}


def describe(result: dict[str, Any], *, is_float: bool) -> str:
    """One line for the summary table: the figures a GGUF is judged on, with their pass thresholds,
    then the other (raw) figures. ``result`` is one :func:`verify_gguf` result (``export_report.json``
    ``verify.<quant>``); PASSED/FAILED is its ``passed`` and is not part of the text.

    E.g. a q4_k_m file: ``top-1 agreement 75% (pass ≥ 50%), end-of-turn stop ok; raw: top-1 where the
    merged model is decisive 99%, max|Δ| 10.7``. Percentages are rounded down, so a figure shown at
    a threshold meets it.
    """
    judged, raw = _logit_figures(result["logits"], is_float=is_float)
    stop = "end-of-turn stop " + ("ok" if result["stop"]["passed"] else "FAILED")
    return f"{judged}, {stop}; raw: {raw}"


def failures(verify: dict[str, Any] | None) -> dict[str, str]:
    """``{quant: the checks it failed, with their figures and thresholds}`` for each GGUF that failed
    verification; ``verify`` is ``export_report.json``'s ``verify`` (``None``: skipped, nothing failed).
    E.g. ``{"q4_k_m": "top-1 agreement 31.2% (pass ≥ 50%)"}``."""
    out = {}
    for q, v in (verify or {}).items():
        if not v["passed"]:
            checks = [_logit_figures(v["logits"], is_float=q in FLOAT_TYPES)[0]] if not v["logits"]["passed"] else []
            if not v["stop"]["passed"]:
                checks.append("end-of-turn stop FAILED (a forced end-of-turn token did not end the reply)")
            out[q] = ", ".join(checks)
    return out


def _logit_figures(lg: dict[str, Any], *, is_float: bool) -> tuple[str, str]:
    """(the logit figures a GGUF is judged on with their pass thresholds, the other figures)."""
    decisive = f"top-1 where the merged model is decisive {percent(lg['top1_agreement_decisive'])}"
    if is_float:
        return (f"{decisive} (pass = 100%), max|Δ| {lg['max_abs_diff']:.3g} (pass ≤ {lg['tolerance']:.3g})",
                f"top-1 agreement {percent(lg['top1_agreement'])}")
    return (f"top-1 agreement {percent(lg['top1_agreement'])} (pass ≥ {percent(MIN_QUANT_AGREEMENT)})",
            f"{decisive}, max|Δ| {lg['max_abs_diff']:.3g}")


def percent(rate: float) -> str:
    """``0.9996`` → ``"99.9%"``: rounded down to 0.1 %, so 100 % means every position (the summary,
    the report and the export's README all print rates this way)."""
    return f"{math.floor(rate * 1000 + 1e-9) / 10:g}%"


def check_stop(llm, eot: str, max_tokens: int = 48) -> dict[str, Any]:
    """Greedy chat completions with the GGUF's chat template: natural and forced end of turn.

    Returns:
        ``natural_stop`` (bool), ``natural_text`` (the reply), ``natural_tokens``,
        ``eot_ends_generation`` (bool: a forced end-of-turn token ends the reply, unprinted),
        ``passed`` (= ``eot_ends_generation``).
    """
    msgs = PROMPTS[1]
    llm.reset()
    r = llm.create_chat_completion(messages=msgs, max_tokens=max_tokens, temperature=0.0, seed=0)
    ch = r["choices"][0]
    text = ch["message"]["content"] or ""
    natural = ch["finish_reason"] == "stop" and eot not in text
    eot_id = llm.tokenize(eot.encode(), add_bos=False, special=True)
    llm.reset()
    forced = llm.create_chat_completion(messages=msgs, max_tokens=8, temperature=0.0, seed=0,
                                        logit_bias={str(eot_id[0]): 100.0})
    fch = forced["choices"][0]
    ends = (len(eot_id) == 1 and fch["finish_reason"] == "stop"
            and forced["usage"]["completion_tokens"] <= 1 and eot not in (fch["message"]["content"] or ""))
    return {"natural_stop": bool(natural), "natural_tokens": r["usage"]["completion_tokens"],
            "natural_text": text[:400], "eot_token": eot, "eot_ends_generation": bool(ends), "passed": bool(ends)}


def verify_gguf(path: Path, ref: dict[str, np.ndarray], eot: str, *, is_float: bool, n_threads: int) -> dict[str, Any]:
    """Load ``path`` with llama-cpp-python and run :func:`compare_logits` and :func:`check_stop`.

    Every llama.cpp call runs under :func:`~steam_persona.export.interrupt.held_interrupt`, so Ctrl-C
    at any moment raises ``KeyboardInterrupt`` here once the running call returns.

    Returns:
        ``{"logits": {...}, "stop": {...}, "chat_template": the GGUF's template text, "passed": bool}``.
    """
    from llama_cpp import Llama

    longest = max(len(v) for k, v in ref.items() if k.startswith("ids_"))
    with held_interrupt():  # llama.cpp logs through a Python callback while it loads and frees
        llm = Llama(model_path=str(path), n_ctx=max(512, longest + 128), logits_all=True, n_threads=n_threads,
                    n_batch=512, verbose=False, seed=0)
    try:
        logits = compare_logits(ref, llm, is_float=is_float)
        with held_interrupt():
            stop = check_stop(llm, eot)
        template = llm.metadata.get("tokenizer.chat_template", "")
    finally:
        with held_interrupt():
            llm.close()
    return {"logits": logits, "stop": stop, "chat_template": template,
            "passed": bool(logits["passed"] and stop["passed"])}
