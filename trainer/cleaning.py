"""Text cleaning rules for Steam reviews: one small function per rule.

``prepare`` runs these in order and counts, per rule, how many records each one changed or removed.
Transformations take and return ``str``; detectors return the matched reason (``str``) or ``None``.

Why our own code: the cleaning rules *are* the data pipeline, our edge. Steam's markup is BBCode
(tag list: https://steamcommunity.com/comment/Recommendation/formattinghelp), which no maintained
Python library parses the way Steam renders it; the spam, PII and duplicate rules are tuned to Steam
review quirks seen in ``../shared/data`` (QQ-group adverts, 17-digit steam ids, ``♥`` masks).
"""

from __future__ import annotations

import html
import re
import unicodedata
from pathlib import Path

import numpy as np

# --- markup -------------------------------------------------------------------------------------

_BB_DROP = re.compile(r"\[img\].*?\[/img\]|\[previewyoutube=[^\]]*\].*?\[/previewyoutube\]"
                      r"|\[hr\](?:\s*\[/hr\])?|\[/hr\]", re.I | re.S)
_BB_URL_BARE = re.compile(r"\[url\](.*?)\[/url\]", re.I | re.S)
_BB_ITEM = re.compile(r"[ \t]*\[\*\][ \t]*")
_BB_BLOCK = re.compile(r"\[/?(?:h[1-6]|list|olist|quote|table|tr|code|noparse)(?:[ =][^\]\n]*)?\]", re.I)
_BB_CELL = re.compile(r"\[/?t[hd]\]", re.I)
_BB_INLINE = re.compile(r"\[/?(?:b|i|u|s|strike|spoiler|url|emoticon)(?:=[^\]\n]*)?\]", re.I)


def strip_bbcode(text: str) -> str:
    """Remove Steam BBCode, keeping the visible text.

    Kept: the text of ``[spoiler]``, ``[quote]``, ``[b]``/``[i]``/``[u]``/``[strike]``, headings,
    ``[code]``, table cells and list items (``[*]`` starts a new line). Dropped: ``[url=…]`` targets
    (the link text stays), ``[img]…[/img]``, ``[previewyoutube]`` and ``[hr]``. Unknown bracketed text
    such as ``[Spoilers]`` or ``[ Audience ]`` is left alone. Whitespace is tidied later by
    :func:`normalize_whitespace`.
    """
    if "[" not in text:
        return text
    text = _BB_DROP.sub("", text)
    text = _BB_URL_BARE.sub(r"\1", text)
    text = _BB_ITEM.sub("\n", text)
    text = _BB_BLOCK.sub("\n", text)
    text = _BB_CELL.sub(" ", text)
    return _BB_INLINE.sub("", text)


_HTML_BR = re.compile(r"<\s*br\s*/?\s*>|<\s*/?\s*p\s*>", re.I)
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")


def strip_html(text: str) -> str:
    """Turn HTML residue into text: ``<br>``/``<p>`` become newlines, other tags go, entities
    (``&amp;``, ``&quot;``, ``&#39;``) are unescaped (``html.unescape``)."""
    if "<" not in text and "&" not in text:
        return text
    text = _HTML_BR.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    return html.unescape(text)


_SPACES = re.compile(r"[ \t\f\v\u00a0\u3000\u200b\ufeff]+")
_SPACE_NL = re.compile(r" *\n *")
_MANY_NL = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """Normalise ``\\r\\n`` and lone ``\\r`` to ``\\n``, collapse runs of spaces (incl. NBSP, the
    ideographic space U+3000 and zero-width space) to one, trim spaces around line breaks, keep at
    most one blank line, and strip the ends. ``"a\\r \\r b"`` → ``"a\\n\\nb"``."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    text = _SPACE_NL.sub("\n", text)
    return _MANY_NL.sub("\n\n", text).strip()


# --- record filters -------------------------------------------------------------------------------

_MASK = re.compile(r"♥{2,}")


def has_profanity_mask(text: str) -> bool:
    """True when the text contains Steam's profanity mask (two or more ``♥``)."""
    return "♥" in text and bool(_MASK.search(text))


_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+")
_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af]")
_CYRILLIC_WORD = re.compile(r"[\u0400-\u04ff]+")
# High-frequency characters that exist only in Traditional Chinese, paired with their Simplified
# forms (Unicode Unihan kSimplifiedVariant). Enough to tell a Traditional review under `schinese`.
_TRAD = ("這們個來說時會對過還現與為麼開關後裡點讓覺當從應經無實體氣發東見單問興幾術戰機"
         "遊戲歡樂畫劇難買賣錢處聽寫讀認識總結電腦頭價級務內")
_SIMP = ("这们个来说时会对过还现与为么开关后里点让觉当从应经无实体气发东见单问兴几术战机"
         "游戏欢乐画剧难买卖钱处听写读认识总结电脑头价级务内")
_TRAD_RE = re.compile(f"[{_TRAD}]")
_SIMP_RE = re.compile(f"[{''.join(s for s, t in zip(_SIMP, _TRAD) if s != t)}]")


def script_mismatch(text: str, language: str) -> str | None:
    """Check that the text is written in the script of a Steam language code.

    Counts script units outside links: each Han, kana or Hangul character is one, each Latin or
    Cyrillic word is one (a Chinese character carries about a word). Returns ``None`` when the text
    fits, else a reason: ``"not Chinese"`` (Han under half the units), ``"Traditional under
    schinese"`` (more Traditional-only than Simplified-only characters, at least 3),
    ``"not Latin script"`` (Latin words under 70 %), ``"no kana"``, ``"no Hangul"``,
    ``"not Cyrillic"`` (Cyrillic words under half). Other languages (``thai`` …) always pass.
    """
    text = _URL.sub(" ", text)
    han = len(_HAN.findall(text))
    kana = len(_KANA.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    cyrillic = len(_CYRILLIC_WORD.findall(text))
    units = han + kana + latin + cyrillic + len(_HANGUL.findall(text))
    if units == 0:
        return None
    if language in ("schinese", "tchinese"):
        if han / units < 0.5:
            return "not Chinese"
        if language == "schinese":
            trad, simp = len(_TRAD_RE.findall(text)), len(_SIMP_RE.findall(text))
            if trad >= 3 and trad > simp:
                return "Traditional under schinese"
        return None
    if language == "japanese":
        return None if kana else "no kana"
    if language == "koreana":
        return None if _HANGUL.search(text) else "no Hangul"
    if language in ("russian", "ukrainian", "bulgarian"):
        return None if cyrillic / units >= 0.5 else "not Cyrillic"
    if language in _LATIN_LANGUAGES:
        return None if latin / units >= 0.7 else "not Latin script"
    return None


_LATIN_LANGUAGES = {"english", "german", "french", "spanish", "latam", "italian", "portuguese", "brazilian",
                    "polish", "dutch", "danish", "norwegian", "swedish", "finnish", "czech", "hungarian",
                    "romanian", "turkish", "vietnamese", "indonesian"}

# Spam / advertisement signals. Each pattern names one reason in the report.
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'，。）)】]+", re.I)
_STEAM_URL = re.compile(r"^(?:https?://)?(?:www\.)?(?:steamcommunity\.com|store\.steampowered\.com|s\.team)/", re.I)
_PROMO_STEAM_URL = re.compile(r"/(?:curator|groups|gid)/", re.I)
SPAM_PATTERNS: dict[str, re.Pattern[str]] = {
    # a group or account *with its number / id*: "Q群000000000", "QQ群：123456", "vx: abc_123",
    # "关注公众号"; a bare "加QQ群问问" (advice) is not an advert
    "qq_wechat_group": re.compile(
        r"(?:[QqＱｑ]{1,2}\s*群|扣扣群|企鹅群|群号|[加进入]群|(?<![A-Za-z])(?:QQ|qq|Q)(?![A-Za-z]))\s*[:：号]?\s*\d{5,}"
        r"|(?:微信群?|微信号|[VvＶ]信|(?<![A-Za-z])(?:vx|wx|VX|WX)(?![A-Za-z]))\s*[:：号]?\s*[A-Za-z0-9_-]{5,}"
        r"|关注(?:我的|我们的)?(?:微信)?公众号"),
    "phone_number": re.compile(r"(?<![\d.])(?:(?:\+|00)86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?![\d.])"
                               r"|(?<![\d.])\+\d{1,3}[- ]\d{2,4}[- ]\d{3,4}[- ]\d{3,4}(?![\d.])"),
    "referral_code": re.compile(
        r"(?:邀请码|推荐码|优惠码|返利|折扣码|接代练|代充|低价出|"
        r"(?<![A-Za-z])(?:referral|invite|promo|discount|coupon)\s+(?:code|link)s?(?![A-Za-z]))", re.I),
}


# one pass over the text for all patterns (named groups say which one matched)
_SPAM_ANY = re.compile("|".join(f"(?P<{name}>{'(?i:' if p.flags & re.I else '(?:'}{p.pattern}))"
                                for name, p in SPAM_PATTERNS.items()))


# Every SPAM_PATTERNS match contains one of these; searching for them first is ~3x cheaper than
# running the full patterns on the ~92 % of reviews that have none.
_SPAM_HINT = re.compile(r"\d{5}|\d[- ]\d|信|[vVwW][xX]|公众号|码|返利|代练|代充|低价|[Rr]eferral|[Ii]nvite|[Pp]romo"
                        r"|[Dd]iscount|[Cc]oupon|REFERRAL|INVITE|PROMO|DISCOUNT|COUPON")


def spam_reason(text: str) -> str | None:
    """Return why a review looks like spam or an advert, or ``None``.

    Reasons: ``qq_wechat_group`` (QQ/WeChat group or account), ``phone_number`` (a mainland
    mobile number or an international ``+CC`` number), ``referral_code`` (invite/promo/redeem codes,
    paid boosting and top-up offers), ``url`` (a link outside Steam, or a Steam curator/group link).
    Links to Steam store pages, guides and profiles are not spam; profile links are scrubbed by
    :func:`scrub_pii` instead.
    """
    if _SPAM_HINT.search(text):
        m = _SPAM_ANY.search(text)
        if m:
            return m.lastgroup
    if "http" not in text and "www." not in text:
        return None
    for m in _URL.finditer(text):
        url = m.group(0)
        if not _STEAM_URL.match(url) or _PROMO_STEAM_URL.search(url):
            return "url"
    return None


def load_blocklist(path: str | Path) -> re.Pattern[str] | None:
    """Compile a word blocklist file (UTF-8, one word or phrase per line, ``#`` comments).

    Latin words match whole words, case-insensitively; CJK entries match as substrings (Chinese has
    no spaces). Returns ``None`` for a file with no entries. Raises ``OSError`` /
    ``UnicodeDecodeError`` for the caller to report.
    """
    words = []
    for line in Path(path).read_text(encoding="utf-8-sig").splitlines():
        w = line.split("#", 1)[0].strip()
        if w:
            words.append(w)
    if not words:
        return None
    parts = []
    for w in sorted(set(words), key=len, reverse=True):
        e = re.escape(w)
        parts.append(rf"(?<![A-Za-z]){e}(?![A-Za-z])" if w.isascii() else e)
    return re.compile("|".join(parts), re.I)


def blocked_word(text: str, blocklist: re.Pattern[str]) -> str | None:
    """The first blocklisted word found in ``text``, or ``None``."""
    m = blocklist.search(text)
    return m.group(0) if m else None


# --- personal data ----------------------------------------------------------------------------------

PII_PATTERNS: dict[str, re.Pattern[str]] = {
    # steamcommunity.com/profiles/<17 digits>/... and /id/<vanity>/...
    "profile_url": re.compile(r"(?:https?://)?(?:www\.)?steamcommunity\.com/(?:profiles|id)/[^\s，。）)】]*", re.I),
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    # SteamID64: 7656119 + 10 digits (Valve Developer Wiki, "SteamID").
    "steam_id": re.compile(r"(?<!\d)7656119\d{10}(?!\d)"),
    "phone_number": SPAM_PATTERNS["phone_number"],
}


def scrub_pii(text: str) -> tuple[str, list[str]]:
    """Remove personal data from kept text: Steam profile URLs, e-mail addresses, SteamID64s and
    phone numbers. Removed, not masked, so the model never learns a placeholder.

    Returns ``(text, kinds)`` where ``kinds`` lists what was removed (empty when nothing was).
    """
    kinds = []
    for kind, pattern in PII_PATTERNS.items():
        if _PII_HINTS[kind](text):  # cheap substring guard before the regex
            text, n = pattern.subn("", text)
            if n:
                kinds.append(kind)
    return text, kinds


_HAS_DIGIT = re.compile(r"\d").search
_PII_HINTS = {
    "profile_url": lambda t: "steamcommunity" in t,
    "email": lambda t: "@" in t,
    "steam_id": lambda t: "7656119" in t,
    "phone_number": _HAS_DIGIT,
}


# --- duplicates ---------------------------------------------------------------------------------------

_NOT_WORD = re.compile(r"[\W_]+")


def dedup_key(text: str) -> str:
    """Normalised text for exact-duplicate detection: NFKC, lower case, no whitespace, punctuation
    or symbols (so ``"好玩！！"`` and ``"好玩!"`` collide)."""
    key = _NOT_WORD.sub("", text)  # punctuation first: what is left is mostly NFKC-normal already
    if not unicodedata.is_normalized("NFKC", key):
        key = _NOT_WORD.sub("", unicodedata.normalize("NFKC", key))
    return key.lower()


class NearDuplicates:
    """MinHash + LSH near-duplicate finder over character shingles.

    Method: Broder (1997), "On the resemblance and containment of documents" (MinHash estimates
    the Jaccard similarity of shingle sets); banding as in Leskovec, Rajaraman & Ullman, *Mining of
    Massive Datasets*, ch. 3.4. ``num_perm`` = ``bands`` × ``rows``; a pair becomes a candidate when
    one band matches, and is a duplicate when the estimated Jaccard is ≥ ``threshold``.

    Why our own and not ``datasketch``: ~60 lines of numpy hash a whole batch of reviews at once
    (every shingle under every permutation in one vectorised op); datasketch updates one shingle
    at a time in Python, which would dominate ``prepare``'s time on 100k reviews.
    """

    def __init__(self, threshold: float = 0.8, shingle: int = 5, bands: int = 16, rows: int = 4,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n = bands * rows
        self.threshold, self.shingle, self.bands, self.rows = threshold, shingle, bands, rows
        # multiply-shift hashing (Dietzfelbinger et al. 1997): h -> (a*h + b mod 2^64) >> 32, a odd
        self._a = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, n, dtype=np.uint64)
        self._buckets: list[dict[bytes, int]] = [{} for _ in range(bands)]
        self._sigs: list[np.ndarray] = []
        self._labels: list[object] = []

    def signature(self, key: str) -> np.ndarray | None:
        """MinHash signature (``uint64[bands*rows]``) of a normalised text, or ``None`` when it is
        shorter than ``shingle + 2`` characters."""
        return self.signatures([key])[0]

    def signatures(self, keys: list[str], batch: int = 512) -> list[np.ndarray | None]:
        """Signatures of many texts, computed ``batch`` texts at a time in a few numpy ops (one
        ``(bands*rows, shingles)`` matrix per batch, minimum per text with ``np.minimum.reduceat``)."""
        out: list[np.ndarray | None] = []
        for s in range(0, len(keys), batch):
            out += self._batch(keys[s:s + batch])
        return out

    def _batch(self, keys: list[str]) -> list[np.ndarray | None]:
        k = self.shingle
        lengths = np.fromiter((len(t) for t in keys), dtype=np.int64, count=len(keys))
        # polynomial rolling hash of every k-character window of the concatenation, mod 2^31 - 1
        cp = np.frombuffer("".join(keys).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = len(cp) - k + 1
        if n <= 0:
            return [None] * len(keys)
        hashes = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            hashes = (hashes * np.uint64(1000003) + cp[j:j + n]) % np.uint64(0x7FFFFFFF)
        # keep the windows that lie inside one text, for texts long enough to shingle
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        ok = lengths >= k + 2
        counts = np.where(ok, lengths - k + 1, 0)
        doc = np.repeat(np.arange(len(keys)), counts)
        pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + starts[doc]
        if not len(pos):
            return [None] * len(keys)
        # one universal hash per (a, b) pair (uint64 arithmetic wraps mod 2^64); min per text
        perm = (np.outer(self._a, hashes[pos]) + self._b[:, None]) >> np.uint64(32)
        mins = np.minimum.reduceat(perm, (np.cumsum(counts) - counts)[ok], axis=1)
        out: list[np.ndarray | None] = [None] * len(keys)
        for col, i in enumerate(np.flatnonzero(ok)):
            out[i] = np.ascontiguousarray(mins[:, col])
        return out

    def add(self, key: str, label: object = None) -> object | None:
        """Index a text under ``label``; return the label of an earlier near-duplicate (the text is
        then not indexed), else ``None``. Texts too short to shingle are never duplicates."""
        return self.add_signature(self.signature(key), label)

    def add_signature(self, sig: np.ndarray | None, label: object = None) -> object | None:
        """:meth:`add` for a signature computed beforehand (see :meth:`signatures`)."""
        if sig is None:
            return None
        bands = [row.tobytes() for row in sig.reshape(self.bands, self.rows)]
        need = self.threshold * len(sig)
        for b, band in enumerate(bands):
            j = self._buckets[b].get(band)
            if j is not None and np.count_nonzero(self._sigs[j] == sig) >= need:
                return self._labels[j]
        idx = len(self._sigs)
        self._sigs.append(sig)
        self._labels.append(label)
        for b, band in enumerate(bands):
            self._buckets[b].setdefault(band, idx)
        return None
