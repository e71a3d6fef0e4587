"""Conversations → token ids and labels for SFT, with LLaMA-Factory-style masking and our truncation.

Labels (shapes: ``input_ids`` and ``labels`` are equal-length ``list[int]``):

* prompt tokens (system, user turns, assistant headers) are ``-100`` (ignored by the loss);
* every assistant reply's tokens **and its end-of-turn token** (``<|im_end|>`` for ChatML) carry
  their own ids, so the model learns to stop; what a template writes after the end-of-turn token
  (ChatML's ``\\n``) is ``-100``;
* labels come from the segments, never from comparing ids with ``pad_token_id``, so a tokenizer
  whose pad is its eos (SmolLM2) still learns the end-of-turn token.

Each segment is tokenized on its own (``add_special_tokens=False``), as LLaMA-Factory does: the
prompt then ends exactly where generation starts at inference time.

Truncation to ``cutoff_len`` (ours; LLaMA-Factory instead cuts replies proportionally): the text
after the last end-of-turn token goes first, then the prompt is cut from its end while keeping the
assistant header right before the last reply; the last reply is never cut. Earlier replies that lose
tokens are un-learned (labels ``-100``), so no kept reply loses its end-of-turn token. A sample whose
last reply plus header plus one prompt token exceeds ``cutoff_len`` is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainer.templates import ChatTemplate

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

    @property
    def label_tokens(self) -> int:
        return sum(sum(1 for t in lab if t != IGNORE_INDEX) for lab in self.labels)


def encode_conversation(template: ChatTemplate, messages: list[dict[str, str]]) -> tuple[list[int], list[int], list[tuple[int, int]], int]:
    """Tokenize one conversation.

    Returns:
        ``(input_ids, labels, reply_spans, header_len)``: ``reply_spans`` are ``[start, end)`` token
        ranges of each learned reply (end-of-turn token included); ``header_len`` is the number of
        tokens of the assistant header just before the last reply.
    """
    tok = template.tokenizer
    header = template.generation_header()
    ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    header_len = 0
    start = 0
    for kind, text in template.segments(messages):
        if kind == "prompt" and header and text.endswith(header):
            body = tok.encode(text[: len(text) - len(header)], add_special_tokens=False) if len(text) > len(header) else []
            head = tok.encode(header, add_special_tokens=False)
            piece = body + head
            header_len = len(head)
        else:
            piece = tok.encode(text, add_special_tokens=False) if text else []
            if kind == "prompt":
                header_len = 0
        if kind == "reply":
            start = len(ids)
        ids += piece
        labels += piece if kind in ("reply", "eot") else [IGNORE_INDEX] * len(piece)
        if kind == "eot":
            spans.append((start, len(ids)))
    return ids, labels, spans, header_len


def truncate(ids: list[int], labels: list[int], spans: list[tuple[int, int]], header_len: int,
             cutoff_len: int) -> tuple[list[int], list[int], str]:
    """Fit one sample into ``cutoff_len`` tokens (see the module docstring).

    Returns:
        ``(ids, labels, status)`` with status ``"ok"``, ``"truncated"`` or ``"dropped"`` (then the
        lists are empty).
    """
    if len(ids) <= cutoff_len:
        return ids, labels, "ok"
    last_start, last_end = spans[-1]
    ids, labels = ids[:last_end], labels[:last_end]
    if last_end <= cutoff_len:  # only the unlearned trailer was cut
        return ids, labels, "ok"
    reply = last_end - last_start
    if reply + header_len + 1 > cutoff_len:
        return [], [], "dropped"
    keep_head = cutoff_len - reply - header_len  # prompt tokens kept from the start (system, first turns)
    head_ids, head_labels = ids[:keep_head], list(labels[:keep_head])
    for s, e in spans[:-1]:  # an earlier reply cut short is no longer learned
        if s < keep_head < e:
            head_labels[s:keep_head] = [IGNORE_INDEX] * (keep_head - s)
    cut_from = last_start - header_len
    return head_ids + ids[cut_from:], head_labels + labels[cut_from:], "truncated"


def encode_dataset(template: ChatTemplate, conversations: list[list[dict[str, str]]], cutoff_len: int,
                   progress: Any | None = None) -> Encoded:
    """Tokenize, label and truncate conversations.

    Args:
        template: prompt format bound to the tokenizer.
        conversations: from :mod:`trainer.data` (each ends with an assistant turn).
        cutoff_len: max tokens per sample (prompt + reply), as LLaMA-Factory's ``--cutoff_len``.
        progress: optional callable ``(n_done)`` called every 64 conversations.
    """
    out = Encoded()
    for i, conv in enumerate(conversations):
        ids, labels, spans, header_len = encode_conversation(template, conv)
        ids, labels, status = truncate(ids, labels, spans, header_len, cutoff_len)
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
