"""Where the messages' contents sit in a chat template's rendering, so that they are tokenized as text and the
template's own text with its special tokens parsed: a ``<|im_end|>`` typed in a message (or held by a review)
is the characters, never the end-of-turn token. ``serve`` (the GGUF's template), ``chat`` (base + adapter) and
``train`` (the records) split a rendering with these functions.

The template renders the messages twice: as they are, and with each content replaced by a marker naming its
message (:func:`marked`); the markers' places in the second rendering (the *frame*) say where the contents
sit in the first (:func:`content_parts`).
"""

from __future__ import annotations

import re
from typing import Any

Part = tuple[str, bool]  # (text, is a message's content)

#: Stands for message i's content in the frame (private-use code points: no template or tokenizer treats
#: them specially, and messages do not hold them).
_MARK = "\U000f0000{}\U000f0001"
_MARKS = re.compile("\U000f0000(\\d+)\U000f0001")
#: Why messages are refused when :func:`content_parts` cannot locate their contents and one holds special-token
#: text (tokenizing the rendering whole would read it as control tokens).
SPECIAL_TEXT_REFUSED = ("A message contains special-token text that this chat template would read as control tokens; "
                        "remove it")


def marked(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with each non-empty text content replaced by a marker naming its message (an empty or
    missing content stays, so a template that tests for one renders the same frame around it)."""
    return [{**m, "content": _MARK.format(i)} if _text(m) else m for i, m in enumerate(messages)]


def content_parts(text: str, frame: str, messages: list[dict[str, Any]]) -> list[Part] | None:
    """``text`` (the template's rendering of ``messages``) as the template's own text (``(piece, False)``) and
    the contents as the template wrote them (``(content, True)``: as given, or trimmed, as Llama 3's
    ``| trim`` writes them), given ``frame``, its rendering of :func:`marked` ``(messages)``.

    Returns:
        The parts, which join to ``text``; ``None`` when they would not (the template writes a content some
        other way, or something else around it than around a marker, so the contents cannot be located).
    """
    pieces = _MARKS.split(frame)  # frame, index, frame, index, ..., frame
    parts: list[Part] = []
    at = 0
    for i, piece in enumerate(pieces):
        if i % 2:
            piece = _as_written(_text(messages[int(piece)]), text, at, pieces[i + 1])
        if piece is None or not text.startswith(piece, at):
            return None
        parts.append((piece, bool(i % 2)))
        at += len(piece)
    return [p for p in parts if p[0]] if at == len(text) else None


def _as_written(content: str, text: str, at: int, after: str) -> str | None:
    """``content`` as ``text`` holds it at ``at``, followed by ``after``: unchanged or with its whitespace trimmed
    (Jinja's ``trim``, at both ends or one); ``None`` when neither is there."""
    for form in (content, content.strip(), content.lstrip(), content.rstrip()):
        if text.startswith(form + after, at):
            return form
    return None


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""
