"""Word lists for the identity-slur and ``--blocklist`` rules (:class:`WordList`): the list format
(``[category]`` sections, ``!phrase`` allowed phrases) and a search that also finds a listed word spelled out,
written with look-alike characters, masked with ``*`` or stretched. Why our own code: the folding of game-chat
spellings (``n1gg3r``, ``n i g g e r``, ``niiiigger``) is what a list lookup needs here and no maintained library
covers it; the search itself is one ``re`` search of a trie (:func:`~steam_persona.reviews.text.literal_union`).
"""

from __future__ import annotations

import re
from pathlib import Path

from steam_persona.resources import shipped
from steam_persona.reviews.text import literal_union


def load_blocklist(path: str | Path) -> WordList | None:
    """Load a word blocklist file (UTF-8, one word or phrase per line, ``#`` comments; the
    :class:`WordList` format). Latin words match whole words, any case; CJK entries match as
    substrings (Chinese has no spaces). Returns ``None`` for a file with no entries. Raises
    ``OSError`` / ``UnicodeDecodeError`` for the caller to report.
    """
    words = WordList(path)
    return words if len(words) else None


def blocked_word(text: str, blocklist: WordList, low: str | None = None) -> str | None:
    """The first blocklisted entry found in ``text`` (lower case; ``low`` = ``text.lower()`` if known), or ``None``."""
    hit = blocklist.find(text, low)
    return hit[1] if hit else None


IDENTITY_SLURS = shipped("reviews/lists/identity_slurs.txt")
# three or more single letters, each followed by one space, dot, dash or underscore: "n i g g e r"
_SPACED_LETTERS = re.compile(r"(?<![^\W\d_])(?:[^\W\d_][ ._-]){2,}[^\W\d_](?![^\W\d_])")
# the cheap test before it (a regex led by a character class skips ahead in C; ~5x faster)
_SPACED_HINT = re.compile(r"[ ._-][^\W\d_][ ._-][^\W\d_](?![^\W\d_])")
# a word with letters masked by "*": "n*gger", "f**got"
_MASKED_WORD = re.compile(r"[\w*]*\*[\w*]*")


def _join_letters(m: re.Match[str]) -> str:
    return re.sub(r"[ ._-]", "", m.group(0))


_CJK_ENTRY = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")

# Look-alike spellings of listed words, folded back to letters: digits and symbols for letters ("n1gg3r",
# "tr@nny", "ni99er", "N!GGER"), full-width letters and Cyrillic look-alikes mixed into a Latin word ("nіgger"
# with a Cyrillic і). Ours: a list lookup needs the folding, and no maintained folding covers game-chat leet.
# Only words that mix letters with such characters are folded: numbers, "$5" and Russian words are left as they are.
_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_LOOKALIKE = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "9": "g", "@": "a", "$": "s",
                            "!": "i", "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i",
                            "ј": "j", "ѕ": "s", "к": "k", "м": "m", "т": "t", "н": "h", "в": "b"})
_MIXED = re.compile(r"[a-z][\d@$!\u0400-\u04ff]|[\d@$\u0400-\u04ff][a-z]")
_FULLWIDTH_WORD = re.compile(r"[\uff01-\uff5e]*[\uff10-\uff19\uff21-\uff3a\uff41-\uff5a][\uff01-\uff5e]*")
# the cheap test first: look-alikes between two Latin letters ("n1gg3r", "nі-", "n!gger"; not "great!", "rtx3070",
# "1440p"), or a full-width Latin letter (not the full-width punctuation of Chinese text); a regex led by a
# character class skips ahead in C
_LOOKALIKE_HINT = re.compile(r"[a-z][\d@$!\u0400-\u04ff]+[a-z]|[\uff21-\uff3a\uff41-\uff5a]")
_WORDISH = re.compile(r"[\w@$!]+")


def fold_lookalikes(low: str) -> str:
    """The words of ``low`` (lower-cased) that mix Latin letters with look-alikes (``_LOOKALIKE``), folded
    to letters and joined by spaces (trailing ``!`` kept as is); ``""`` when there are none."""
    if not _LOOKALIKE_HINT.search(low):
        return ""
    wide = [w.translate(_FULLWIDTH) for w in _FULLWIDTH_WORD.findall(low)]
    mixed = [w for w in _WORDISH.findall(low.translate(_FULLWIDTH)) if _MIXED.search(w)]
    out = []
    for word in mixed + wide:
        core = word.rstrip("!")
        out.append(core.translate(_LOOKALIKE) + word[len(core):])
    return " ".join(out)


_last_spellings: list = [None, ("", "")]


def _other_spellings(low: str) -> tuple[str, str]:
    """``low`` with spaced-out letters joined (``""`` when it has none) and :func:`fold_lookalikes` of it,
    remembered for the last text: prepare asks the slur list and the blocklist about the same one."""
    if _last_spellings[0] is not low:
        spaced = _SPACED_LETTERS.sub(_join_letters, low) if _SPACED_HINT.search(low) else ""
        _last_spellings[:] = [low, (spaced, fold_lookalikes(low))]
    return _last_spellings[1]


# a letter written three or more times in a row ("niiiigger") in the lower-cased text; the words that hold
# one. Only the Latin and Cyrillic letters of the list (a class of them is ~2x faster to search than any letter)
_LETTER = r"[a-z\u00df-\u024f\u0430-\u045f]"
_STRETCHED = re.compile(rf"({_LETTER})\1\1")
_STRETCHED_WORD = re.compile(rf"{_LETTER}*({_LETTER})\1\1{_LETTER}*")


def _runs(word: str) -> list[tuple[str, int]]:
    """The runs of repeated characters in ``word``: ``"faggot"`` → ``[("f", 1), ("a", 1), ("g", 2), ("o", 1), ("t", 1)]``."""
    return [(m.group(0)[0], len(m.group(0))) for m in _RUN.finditer(word)]


_RUN = re.compile(r"(.)\1*", re.S)


class WordList:
    """A categorised word list (the format of :data:`IDENTITY_SLURS` and ``--blocklist``): ``[category]`` sections, one
    entry per line, ``#`` comments, ``!phrase`` allowed phrases.

    Han/kana/Hangul entries match as substrings; other entries match whole words (no letter or digit
    on either side), any case. One literal alternation (:func:`~steam_persona.reviews.text.literal_union`) is
    searched in the lower-cased text (re skips ahead on the entries' first characters; ~20x faster than ``re.I``
    with look-arounds) and each candidate's word boundaries are checked in Python. Raises ``OSError`` /
    ``UnicodeDecodeError`` for the caller to report.
    """

    def __init__(self, path: str | Path) -> None:
        self.categories: dict[str, str] = {}
        self.cjk: set[str] = set()
        allowed: list[str] = []
        category = "listed"
        for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
            entry = line.split("#", 1)[0].strip().lower()
            if entry.startswith("[") and entry.endswith("]"):
                category = entry[1:-1].strip()
            elif entry.startswith("!"):
                allowed.append(entry[1:].strip())
            elif entry:
                self.categories[entry] = category
                if _CJK_ENTRY.search(entry):
                    self.cjk.add(entry)
        self._regex = re.compile(literal_union(self.categories)) if self.categories else None
        self._allowed = re.compile("|".join(map(re.escape, allowed))) if allowed else None
        self._squeezed: dict[str, list[str]] = {}  # the words of the entries by their letters without repeats
        for word in sorted({w for e in self.categories if e not in self.cjk for w in re.split(r"[\s-]+", e) if w.isalpha()}):
            self._squeezed.setdefault("".join(c for c, _ in _runs(word)), []).append(word)

    def __len__(self) -> int:
        return len(self.categories)

    def find(self, text: str, low: str | None = None) -> tuple[str, str] | None:
        """``(category, entry)`` of the first entry found in ``text`` (``low`` = ``text.lower()`` if known), or ``None``.

        Also found when written spaced out (``n i g g e r``, ``n.i.g.g.e.r``), with look-alike characters
        (``n1gg3r``, ``tr@nny``, full-width or Cyrillic letters: :func:`fold_lookalikes`), with letters masked by
        ``*`` (``n*gger``: each ``*`` stands for one letter, at least three letters shown and at most a
        third masked, so ``s**t`` is not read as a listed word) or stretched (``niiiigger``, ``faaaggot``:
        :meth:`_unstretch`)."""
        text = text.lower() if low is None else low
        hit = self._find_allowed(text)
        if hit is None:
            spaced, folded = _other_spellings(text)
            hit = self._find_allowed(spaced) if spaced else None
            if hit is None and "*" in text:
                hit = self._find_masked(text)
            if hit is None and folded:
                hit = self._find_allowed(folded)
            for spelling in (text, spaced, folded):
                if hit is None and spelling and _STRETCHED.search(spelling):
                    hit = self._find_allowed(self._unstretch(spelling))
        return (self.categories[hit], hit) if hit else None

    def _unstretch(self, text: str) -> str:
        """``text`` with each stretched word (a letter three or more times in a row) written as the listed
        word it stretches, when there is one: a run of three or more letters stands for one or two of them,
        every other run must be as listed. ``niiiigger`` → ``nigger``, ``faaaggot`` → ``faggot``; ``niiiger``
        and ``sooo`` stay, and words with doubled letters (``snigger``, ``Niger``) are never changed."""
        def listed(m: re.Match[str]) -> str:
            word = m.group(0)
            runs = _runs(word)
            for entry in self._squeezed.get("".join(c for c, _ in runs), ()):
                want = _runs(entry)
                if all(n == k or (n >= 3 and k <= 2) for (_, n), (_, k) in zip(runs, want)):
                    return entry
            return word
        return _STRETCHED_WORD.sub(listed, text)

    def mask(self, text: str) -> str:
        """``text`` with every listed word shown as its first letter and ``*`` (``n*****``, ``智*``), for
        reports; a text that still holds one in a form that cannot be masked in place (spaced out,
        partly masked) is replaced by ``▇`` whole."""
        low = text.lower()
        if self._regex is not None and len(low) == len(text):
            for m in self._regex.finditer(low):
                a, b = m.span()
                if m.group(0) in self.cjk or ((a == 0 or not low[a - 1].isalnum()) and (b == len(low) or not low[b].isalnum())):
                    text = text[:a] + text[a] + "*" * (b - a - 1) + text[b:]
        return "▇" if self.find(text) else text

    def _find_allowed(self, text: str) -> str | None:
        hit = self._find(text)
        if hit and self._allowed is not None and self._allowed.search(text):
            hit = self._find(self._allowed.sub(" ", text))
        return hit

    def _find_masked(self, text: str) -> str | None:
        for m in _MASKED_WORD.finditer(text):
            word = m.group(0)
            shown = len(word) - word.count("*")
            if shown < 3 or 3 * (len(word) - shown) > len(word):
                continue
            pattern = re.compile(re.escape(word).replace(r"\*", "[^\\W\\d_]"))
            hit = next((e for e in self.categories if len(e) == len(word) and pattern.fullmatch(e)), None)
            if hit is not None:
                return hit
        return None

    def _find(self, text: str) -> str | None:
        if self._regex is None:
            return None
        for m in self._regex.finditer(text):
            word = m.group(0)
            if word in self.cjk:
                return word
            a, b = m.start(), m.end()
            if (a == 0 or not text[a - 1].isalnum()) and (b == len(text) or not text[b].isalnum()):
                return word
        return None
