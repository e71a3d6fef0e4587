"""Pure functions behind ``steam-train eval``: stop rate, length statistics, verbatim n-gram copy
rate against the training set, and repetition within a generation.

No model, no I/O: every function takes plain Python values and is unit-tested on hand-made inputs.

Tokenisation for the text metrics (:func:`text_units`) — one definition for Chinese, English and
mixed text, so that lengths, copy rates and repetition mean the same thing in every language:

* every CJK character (Han ideographs, kana, hangul) is one unit — Chinese has no spaces, and
  character n-grams are the usual unit for Chinese overlap metrics (sacreBLEU's ``zh`` tokenizer
  splits each Chinese character off, ``sacrebleu/tokenizers/tokenizer_zh.py``);
* every run of letters / digits (with inner ``'`` or ``-``, e.g. ``don't``, ``co-op``) is one unit,
  lower-cased — English words, as in sacreBLEU's ``13a``/``intl`` tokenizers;
* punctuation, emoji, symbols and whitespace are dropped, so reformatting a copied sentence (full-
  vs half-width commas, extra spaces, ``\\r``) does not hide a copy.

Units are not model tokens on purpose: the copy rate must not depend on which tokenizer a base
model happens to use, and "8 Chinese characters in a row" is the plain-language meaning of a copy.
"""

from __future__ import annotations

import math
import re
import statistics
from typing import Iterable, Sequence

#: CJK ideographs (basic + extension A + compatibility), kana, hangul, and letters/digits words.
_UNIT_RE = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"
    r"|[^\W_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+"
    r"(?:['’\-][^\W_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]+)*"
)

#: n of the verbatim copy check (8-grams: 8 Chinese characters or 8 English words in a row).
COPY_N = 8
#: n of the repetition check (seq-rep-4, Welleck et al. 2020).
REPETITION_N = 4


def text_units(text: str) -> list[str]:
    """Split ``text`` into metric units: one per CJK character, one per (lower-cased) word.

    Example: ``text_units("打击感 great, isn't it?")`` → ``["打", "击", "感", "great", "isn't", "it"]``.
    """
    return [m.group(0).lower().replace("’", "'") for m in _UNIT_RE.finditer(text or "")]


def ngrams(units: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """All contiguous n-grams of ``units`` in order (``len(units) - n + 1`` of them, or none).

    Raises:
        ValueError: ``n < 1``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    return [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]


def ngram_index(texts: Iterable[str], n: int = COPY_N) -> set[tuple[str, ...]]:
    """The set of every n-gram (in :func:`text_units`) found in ``texts`` (the training outputs)."""
    index: set[tuple[str, ...]] = set()
    for t in texts:
        index.update(ngrams(text_units(t), n))
    return index


def copy_counts(text: str, index: set[tuple[str, ...]], n: int = COPY_N) -> tuple[int, int]:
    """``(copied, total)``: how many of ``text``'s n-grams occur verbatim in ``index``, of how many.

    A text shorter than ``n`` units has ``total == 0``.
    """
    grams = ngrams(text_units(text), n)
    return sum(g in index for g in grams), len(grams)


def copy_rate(texts: Sequence[str], index: set[tuple[str, ...]], n: int = COPY_N) -> float | None:
    """Verbatim n-gram copy rate of generations against a training-set index, in [0, 1].

    Definition: (number of generated n-grams that occur anywhere in the training outputs) /
    (number of generated n-grams), pooled over all ``texts`` (micro average, so long texts weigh
    more). A text copied verbatim from the training set gives exactly 1.0; a text sharing no
    8-unit run with it gives 0.0. This is the extraction measure of Carlini et al., "Quantifying
    Memorization Across Neural Language Models" (2022), reduced to n-gram overlap as in the
    "novelty" checks of McCoy et al., "How much do language models copy from their training
    data?" (RAVEN, 2021).

    Returns:
        The rate, or ``None`` when no text has ``n`` units (nothing to measure).
    """
    copied = total = 0
    for t in texts:
        c, k = copy_counts(t, index, n)
        copied += c
        total += k
    return copied / total if total else None


def repetition_rate(text: str, n: int = REPETITION_N) -> float | None:
    """Within-generation repetition: ``1 - distinct n-grams / n-grams`` (seq-rep-n), in [0, 1).

    Source: Welleck et al., "Neural Text Generation with Unlikelihood Training" (ICLR 2020), §5
    "seq-rep-n"; it is ``1 - distinct-n`` of Li et al. (NAACL 2016) computed inside one text.
    0.0 means no n-gram occurs twice; a text looping one phrase approaches 1.0.

    Returns:
        The rate, or ``None`` when the text has fewer than ``n`` units.
    """
    grams = ngrams(text_units(text), n)
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


def mean_repetition(texts: Sequence[str], n: int = REPETITION_N) -> float | None:
    """Mean of :func:`repetition_rate` over the texts long enough to have an n-gram (``None`` if none)."""
    rates = [r for r in (repetition_rate(t, n) for t in texts) if r is not None]
    return sum(rates) / len(rates) if rates else None


def looping_share(texts: Sequence[str], n: int = REPETITION_N, threshold: float = 0.5) -> float | None:
    """Share of texts whose :func:`repetition_rate` is at least ``threshold`` (degenerate loops)."""
    rates = [r for r in (repetition_rate(t, n) for t in texts) if r is not None]
    return sum(r >= threshold for r in rates) / len(rates) if rates else None


def stopped(token_ids: Sequence[int], eos_ids: Iterable[int], max_new_tokens: int) -> bool:
    """Whether a generation ended by an end-of-turn token within its first ``max_new_tokens`` tokens.

    Args:
        token_ids: the generated ids only (no prompt), e.g. ``output[0, prompt_len:]``; padding
            after the end is allowed.
        eos_ids: the ids that end a turn (``generation_config.eos_token_id``; ChatML ``<|im_end|>``).
        max_new_tokens: the generation budget in tokens.
    """
    eos = set(eos_ids)
    return any(t in eos for t in list(token_ids)[:max_new_tokens])


def stop_rate(flags: Sequence[bool]) -> float | None:
    """Share of generations that stopped by end-of-turn (``None`` for no generations)."""
    return sum(bool(f) for f in flags) / len(flags) if flags else None


def length_stats(lengths: Sequence[float]) -> dict[str, float | int | None]:
    """Summary of a length distribution: count, mean, median, p10, p90, min, max (in the input's unit).

    Percentiles are nearest-rank on the sorted values (p = ceil(q·N)-th value). Empty input gives
    ``count == 0`` and ``None`` elsewhere.
    """
    xs = sorted(float(x) for x in lengths)
    if not xs:
        return {"count": 0, "mean": None, "median": None, "p10": None, "p90": None, "min": None, "max": None}

    def pct(q: float) -> float:
        return xs[max(0, math.ceil(q * len(xs)) - 1)]

    return {"count": len(xs), "mean": round(sum(xs) / len(xs), 2), "median": statistics.median(xs),
            "p10": pct(0.10), "p90": pct(0.90), "min": xs[0], "max": xs[-1]}


def perplexity(loss: float) -> float:
    """Perplexity ``exp(loss)`` of a mean per-token cross-entropy in nats (``inf`` on overflow)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def relative_change(base: float, tuned: float) -> float:
    """``(tuned - base) / base``: -0.25 means tuned is 25 % below base.

    Raises:
        ValueError: ``base == 0``.
    """
    if base == 0:
        raise ValueError("base must be non-zero")
    return (tuned - base) / base


def addresses_game(text: str, name: str, tags: Iterable[str] = ()) -> bool:
    """Whether a review is about its game: it names the game or one of its genre tags.

    Matching is on :func:`text_units` split at hyphens (case, punctuation, spacing and ``-`` ignored,
    so "open-world" matches the tag "Open World"): the game's name (all
    of its units in a row, or, for a Latin-script name, any one of its words of 4+ letters that is not
    a roman numeral or a digit string, e.g. ``"Stardew"``; for a CJK name, any two of its characters
    in a row, e.g. ``"悟空"``), or any tag's units in a row (``"open world"``, ``"魂类"``). A review of
    "Hollow Knight" that says "the knight" passes; one that talks about farming only does not.
    """
    def split(s: str) -> list[str]:
        return [p for u in text_units(s) for p in u.split("-") if p]

    joined = " " + " ".join(split(text)) + " "

    def has(phrase_units: Sequence[str]) -> bool:
        return bool(phrase_units) and f" {' '.join(phrase_units)} " in joined

    name_units = split(name)
    words = [u for u in name_units if len(u) >= 4 and not u.isdigit() and not re.fullmatch(r"[ivxlc]+", u)]
    cjk = [u for u in name_units if len(u) == 1 and not u.isascii()]
    pairs = [cjk[i:i + 2] for i in range(len(cjk) - 1)]
    return (has(name_units) or any(has([w]) for w in words) or any(has(p) for p in pairs)
            or any(has(split(t)) for t in tags))
