"""Plain-text rules and helpers for Steam reviews: invisible and control characters
(:func:`strip_invisible`), whitespace (:func:`normalize_whitespace`), Steam's ``♥`` profanity mask, chat-template
control strings (:func:`control_token`), and what the
other rule modules share: character runs of a script counted (:func:`count_chars`, :func:`han_count`), a cached
lower-casing (:func:`lowered`), word lists as regex tries (:func:`literal_union`) and the link-character pattern.
Transformations take and return ``str``. Why our own code: which characters split a word for the later rules, and
what a broken export leaves in a review, are review-cleaning knowledge, our edge; ``re`` does the matching.
"""

from __future__ import annotations

import functools
import re
from typing import Iterable


_SPACES = re.compile(r"[ \t\f\v\u00a0\u3000]+")
_SPACE_NL = re.compile(r" *\n *")
_MANY_NL = re.compile(r"\n{3,}")
# what the three substitutions would change (else only the ends need stripping): an odd space, or a
# space or line break that is doubled or borders the other. Led by one character class (re skips
# ahead to those characters; an alternation mixing a class and literals is tried at every position),
# the rest told by looking behind.
_UNNORMAL = re.compile(r"[\r\t\f\v\u00a0\u3000 \n]"
                       r"(?:(?<=[\r\t\f\v\u00a0\u3000])|(?<= )[ \n]|(?<=\n)(?: |\n\n))")
# Invisible characters that split a word for every rule while it reads the same ("nig\u200bger", an
# e-mail or link with a soft hyphen in it): zero-width space, word joiner, invisible operators, BOM /
# zero-width no-break space, soft hyphen, combining grapheme joiner, Mongolian vowel separator, the
# direction marks and embeddings (U+200E/F, U+202A-202E, U+2066-2069: they change how text is shown, not
# what it says), the Hangul fillers (blank "names"), and zero-width (non-)joiners except between two
# characters they join: emoji (a ZWJ sequence such as 👨‍👩‍👧 or 🏳️‍🌈 is one picture) and the Arabic and
# Indic scripts (where they choose letter forms). Also the C0 control characters but tab, line feed, carriage return,
# vertical tab and form feed (the last four are spaces here), DEL, the C1 controls (U+0080-009F) and terminal escape
# sequences whole ("\x1b[31m": ECMA-48 CSI, parameter, intermediate and final bytes): a NUL or an escape in a review is
# debris of a broken export and no tokenizer should see it; so is a lone surrogate (U+D800-DFFF: half of an emoji
# that a scraper cut, which JSON text can hold but no UTF-8 encoder or tokenizer takes).
_JOINED = r"[\u0600-\u06ff\u0900-\u0dff\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\ufe0f\U0001f000-\U0001faff]"
_IGNORABLE = r"\ud800-\udfff\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u034f\u115f\u1160\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\u3164\ufeff\uffa0"
_INVISIBLE = re.compile(rf"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]|[{_IGNORABLE}]|(?<!{_JOINED})[\u200c\u200d]|[\u200c\u200d](?!{_JOINED})")
_INVISIBLE_HINT = re.compile(rf"[{_IGNORABLE}\u200c\u200d]")


# Text saved as Windows-1252 and read back as Latin-1 turns its curly quotes, ellipsis and dashes into the C1
# controls U+0085, U+0091-0094 and U+0096-0097 (code page table: unicode.org Public/MAPPINGS/VENDORS/MICSFT/WINDOWS/
# CP1252.TXT). Those mean what cp1252 meant, so they become it before the other C1 controls are removed.
_CP1252_PUNCT = str.maketrans({"\x85": "…", "\x91": "‘", "\x92": "’", "\x93": "“", "\x94": "”",
                               "\x96": "–", "\x97": "—"})


def strip_invisible(text: str) -> str:
    """``text`` without the invisible and control characters of ``_INVISIBLE``: ``"n\\u200bigger"`` → ``"nigger"``,
    ``"Great\\x00 game"`` → ``"Great game"``,
    ``"a\\u00adb@x.com"`` → ``"ab@x.com"``, ``"\\x1b[31mred\\x1b[0m"`` → ``"red"``; emoji ZWJ sequences
    (``"👩\\u200d💻"``) stay whole. The cp1252 punctuation of ``_CP1252_PUNCT`` is read as cp1252 first:
    ``"Alyx\\x92s"`` → ``"Alyx’s"``."""
    if not _INVISIBLE_HINT.search(text):
        return text
    return _INVISIBLE.sub("", text.translate(_CP1252_PUNCT))


def normalize_whitespace(text: str) -> str:
    """Remove invisible characters (:func:`strip_invisible`), normalise ``\\r\\n`` and lone ``\\r`` to
    ``\\n``, collapse runs of spaces (incl. NBSP and the ideographic space U+3000) to one, trim spaces
    around line breaks, keep at most one blank line, and strip the ends.
    ``"a\\r \\r b"`` → ``"a\\n\\nb"``."""
    text = strip_invisible(text)
    if not _UNNORMAL.search(text):
        return text.strip()
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = _SPACE_NL.sub("\n", text)
    return _MANY_NL.sub("\n\n", text).strip()


_MASK = re.compile(r"♥{2,}")


def has_profanity_mask(text: str) -> bool:
    """True when the text contains Steam's profanity mask (two or more ``♥``)."""
    return "♥" in text and bool(_MASK.search(text))


#: Chat templates' control strings: ChatML / Qwen / SmolLM2 / Llama 3 / Phi (``<|im_end|>``, ``<|eot_id|>``,
#: ``<|start_header_id|>``, ``<|endoftext|>``), Llama 2 / Mistral (``</s>``, ``[INST]``, ``<<SYS>>``) and Gemma
#: (``<start_of_turn>``, ``<bos>``).
_CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>|<(?:bos|eos|pad)>")


def control_token(text: str) -> str | None:
    """The first chat-template control string in ``text`` (a tokenizer that parses special tokens reads it as
    a turn marker, ``<|im_end|>`` as end-of-turn), or ``None``."""
    m = _CONTROL_TOKEN.search(text)
    return m.group() if m else None


def literal_union(words: Iterable[str]) -> str:
    """A regex source matching any of ``words`` (literal strings), longest first at each position,
    written as a trie: ``["ab", "abc", "ad"]`` → ``a(?:b(?:c)?|d)``. Python's ``re`` tries the
    branches of a flat alternation one by one at every candidate position (it only factors a prefix
    common to all of them); the trie tries one branch per distinct next character, which makes a
    list of a few hundred words ~2x faster to search and a union of hint words several times faster."""
    trie: dict[str, dict] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}
    return _trie_source(trie)


def _trie_source(node: dict[str, dict]) -> str:
    alts = [re.escape(ch) + _trie_source(child) for ch, child in sorted(node.items()) if ch]
    if not alts:
        return ""
    body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
    return f"(?:{body})?" if "" in node else body


def count_chars(runs: re.Pattern[str], text: str) -> int:
    """How many characters of ``text`` the run pattern ``runs`` (a character class with ``+``)
    matches: the sum of its runs' lengths, ~4x faster than counting one-character matches
    (no string object per character)."""
    return sum(map(len, runs.findall(text)))
# Han character runs (counted with count_chars and han_count)
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")


@functools.lru_cache(maxsize=8)
def lowered(text: str) -> str:
    """``text.lower()``, cached (a few recent texts): the residue, handles, spam, slur, blocklist and
    personal-data rules all search the lower-cased text, which most rules leave unchanged."""
    return text.lower()


@functools.lru_cache(maxsize=8)
def han_count(text: str) -> int:
    """Han characters in ``text``. Cached (a few recent texts): the language, little-language,
    length and script rules each ask about the same text, and counting scans all of it."""
    return count_chars(HAN, text)


# URL characters (RFC 3986 unreserved + reserved, no brackets or quotes): a link ends at the first
# other character, so Chinese text written right after a link stays
URL_CHARS = r"[A-Za-z0-9\-._~:/?#@!$&*+,;=%]"
URL = re.compile(rf"(?:https?://|www\.){URL_CHARS}+", re.I)


CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]").match
