"""Conversations → token ids and labels for SFT, with LLaMA-Factory-style masking and our truncation.

Labels (shapes: ``input_ids`` and ``labels`` are equal-length ``list[int]``):

* prompt tokens (system, user turns, assistant headers) are ``-100`` (ignored by the loss);
* every assistant reply's tokens **and its end-of-turn token** (``<|im_end|>`` for ChatML) carry
  their own ids, so the model learns to stop; what a template writes after the end-of-turn token
  (ChatML's ``\\n``) is ``-100``: generation stops at the end-of-turn token, so that text is never
  generated (LLaMA-Factory's ``qwen`` template learns it; see docs/training.md);
* labels come from the segments, never from comparing ids with ``pad_token_id``, so a tokenizer
  whose pad is its eos (SmolLM2) still learns the end-of-turn token.

Each segment is tokenized on its own (``add_special_tokens=False``), as LLaMA-Factory does: the
prompt then ends exactly where generation starts at inference time. Message contents are tokenized
as text (``split_special_tokens``): a ``<|im_end|>`` typed in a review is learned as the characters,
never as the end-of-turn token (as serve reads them at inference).

Truncation to ``cutoff_len`` (ours; LLaMA-Factory instead cuts each turn's prompt and reply in
proportion, keeping the earliest turns) works on messages and re-renders, so a truncated row is
always what the chat template renders for the messages it keeps:

1. the text after the last end-of-turn token goes first (not learned);
2. then the oldest user/assistant turns, whole, after the system prompt;
3. then the end of the system prompt's text, down to none;
4. then the end of the last user turn's text, down to one character.

Cut turns keep their end-of-turn tokens and the assistant header. The last reply is never cut; a
sample that cannot fit with it is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steam_persona.trainer.templates import ChatTemplate, Part

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """Tokenized samples plus how many were cut or dropped (and which)."""

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    truncated: int = 0
    dropped: list[int] = field(default_factory=list)  # indices (0-based) of dropped conversations
    kept: list[int] = field(default_factory=list)  # indices (0-based) of kept conversations

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


def encode_conversation(template: ChatTemplate, messages: list[dict[str, str]]) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Tokenize one conversation, untruncated.

    Returns:
        ``(input_ids, labels, reply_spans)``: ``reply_spans`` are ``[start, end)`` token ranges of
        each learned reply (end-of-turn token included).
    """
    tok = template.tokenizer
    header = template.generation_header()
    ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    start = 0
    for kind, parts in template.parts(messages):
        if kind == "prompt" and header and parts and not parts[-1][1] and parts[-1][0].endswith(header):
            # the header alone, as at inference
            last = parts[-1][0]
            piece = (encode_parts(tok, [*parts[:-1], (last[: len(last) - len(header)], False)])
                     + encode_parts(tok, [(header, False)]))
        else:
            piece = encode_parts(tok, parts)
        if kind == "reply":
            start = len(ids)
        ids += piece
        labels += piece if kind in ("reply", "eot") else [IGNORE_INDEX] * len(piece)
        if kind == "eot":
            spans.append((start, len(ids)))
    return ids, labels, spans


def encode_parts(tok: Any, parts: list[Part]) -> list[int]:
    """Token ids of a segment's parts: the template's text with special tokens read as such, message contents
    as plain text (``<|im_end|>`` in a review is text, never the end-of-turn token)."""
    ids: list[int] = []
    for text, content in parts:
        if text:
            ids += tok.encode(text, add_special_tokens=False, split_special_tokens=content)
    return ids


def _fitted(template: ChatTemplate, messages: list[dict[str, str]], cutoff_len: int) -> tuple[list[int], list[int]] | None:
    """``messages`` encoded without the text after the last end-of-turn token when needed, or
    ``None`` when even that exceeds ``cutoff_len``."""
    ids, labels, spans = encode_conversation(template, messages)
    if len(ids) <= cutoff_len:
        return ids, labels
    end = spans[-1][1]
    return (ids[:end], labels[:end]) if end <= cutoff_len else None


def _cut_text(template: ChatTemplate, messages: list[dict[str, str]], at: int, shortest: int,
              cutoff_len: int) -> tuple[list[int], list[int]] | None:
    """Keep the longest prefix (``shortest`` characters or more) of ``messages[at]``'s text that fits
    (binary search over characters, re-rendering each try), or ``None``."""
    text = messages[at]["content"]
    best = None
    lo, hi = shortest, len(text) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        got = _fitted(template, _with_text(messages, at, text[:mid]), cutoff_len)
        if got is None:
            hi = mid - 1
        else:
            best, lo = got, mid + 1
    return best


def _with_text(messages: list[dict[str, str]], at: int, text: str) -> list[dict[str, str]]:
    return [*messages[:at], {**messages[at], "content": text}, *messages[at + 1:]]


def fit(template: ChatTemplate, messages: list[dict[str, str]], cutoff_len: int) -> tuple[list[int], list[int], str]:
    """Encode one conversation (ending with an assistant turn) into at most ``cutoff_len`` tokens,
    truncating as the module docstring says.

    Returns:
        ``(input_ids, labels, status)``: status ``"ok"`` (at most the unlearned text after the last
        end-of-turn token was cut), ``"truncated"`` or ``"dropped"`` (then the lists are empty).
    """
    got = _fitted(template, messages, cutoff_len)
    if got is not None:
        return *got, "ok"
    first = 1 if messages and messages[0]["role"] == "system" else 0
    turns = [i for i in range(first, len(messages)) if messages[i]["role"] == "user"]
    if not turns:
        return [], [], "dropped"
    for start in turns[1:]:  # drop the oldest turns, whole, after the system prompt
        got = _fitted(template, messages[:first] + messages[start:], cutoff_len)
        if got is not None:
            return *got, "truncated"
    last = messages[:first] + messages[turns[-1]:]
    if first:
        got = _cut_text(template, last, 0, 0, cutoff_len)
        if got is not None:
            return *got, "truncated"
        last = _with_text(last, 0, "")
    got = _cut_text(template, last, first, 1, cutoff_len)
    return ([], [], "dropped") if got is None else (*got, "truncated")


def encode_dataset(template: ChatTemplate, conversations: list[list[dict[str, str]]], cutoff_len: int,
                   progress: Any | None = None) -> Encoded:
    """Tokenize, label and truncate conversations.

    Args:
        template: prompt format bound to the tokenizer.
        conversations: from :mod:`steam_persona.trainer.data` (each ends with an assistant turn).
        cutoff_len: max tokens per sample (prompt + reply), as LLaMA-Factory's ``--cutoff_len``.
        progress: optional callable ``(n_done)`` called every 64 conversations.
    """
    out = Encoded()
    for i, conv in enumerate(conversations):
        ids, labels, status = fit(template, conv, cutoff_len)
        if status == "dropped":
            out.dropped.append(i)
            continue
        out.truncated += status == "truncated"
        out.input_ids.append(ids)
        out.labels.append(labels)
        out.kept.append(i)
        if progress is not None and i % 64 == 63:
            progress(i + 1)
    return out


def counts_line(read: int, dropped: int, truncated: int, cutoff_len: int) -> str:
    """``"244 read: 15 dropped (…), 229 kept, all 229 truncated (…)"``: which count is part of which."""
    kept = read - dropped
    cut = "none" if not truncated else f"all {kept}" if truncated == kept else f"{truncated} of them"
    return (f"{read} read: {dropped} dropped (reply longer than --cutoff_len {cutoff_len}), {kept} kept, {cut} "
            "truncated (prompt cut to fit)")


def data_line(enc: Any, cutoff_len: int, label: str = "dataset") -> str:
    """A dataset's line printed before the first step (``--dataset``'s, ``--eval_dataset``'s as ``label``
    ``"eval dataset"``): samples read, dropped, kept and (of those) truncated."""
    line = f"{label}: " + counts_line(len(enc) + len(enc.dropped), len(enc.dropped), enc.truncated, cutoff_len)
    return f"[yellow]{line}[/yellow]" if enc.truncated or enc.dropped else line
