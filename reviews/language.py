"""Which Steam language a review is written in: Steam's language codes and their aliases
(:func:`steam_language`), a guess from the script (:func:`detect_language`) and a check that a text's script fits
its language (:func:`script_mismatch`). Why our own code: telling scripts apart by Unicode block is cheap and exact
for CJK (Traditional Chinese by characters only it has); Latin-script languages go to lingua-language-detector
when it is installed.
"""

from __future__ import annotations

import functools
import re

from steam_persona.reviews.text import HAN, URL, count_chars, han_count


# character runs of each script (counted with count_chars)
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+")
_KANA = re.compile(r"[\u3040-\u30ff]+")
_HANGUL = re.compile(r"[\uac00-\ud7af]+")
_CYRILLIC_WORD = re.compile(r"[\u0400-\u04ff]+")


# High-frequency characters that exist only in Traditional Chinese, paired with their Simplified
# forms (Unicode Unihan kSimplifiedVariant). Enough to tell a Traditional review under `schinese`.
_TRAD = ("這們個來說時會對過還現與為麼開關後裡點讓覺當從應經無實體氣發東見單問興幾術戰機"
         "遊戲歡樂畫劇難買賣錢處聽寫讀認識總結電腦頭價級務內")
_SIMP = ("这们个来说时会对过还现与为么开关后里点让觉当从应经无实体气发东见单问兴几术战机"
         "游戏欢乐画剧难买卖钱处听写读认识总结电脑头价级务内")
_TRAD_RE = re.compile(f"[{_TRAD}]+")
_SIMP_RE = re.compile(f"[{''.join(s for s, t in zip(_SIMP, _TRAD) if s != t)}]+")


@functools.lru_cache(maxsize=8)
def script_mismatch(text: str, language: str) -> str | None:
    """Check that the text is written in the script of a Steam language code (cached: the language
    guess and the script rule ask about the same text).

    Counts script units outside links: each Han, kana or Hangul character is one, each Latin or
    Cyrillic word is one (a Chinese character carries about a word). Returns ``None`` when the text
    fits, else a reason: ``"not Chinese"`` (Han under half the units), ``"Traditional under
    schinese"`` (more Traditional-only than Simplified-only characters, at least 3),
    ``"not Latin script"`` (Latin words under 70 %), ``"no kana"``, ``"no Hangul"``,
    ``"not Cyrillic"`` (Cyrillic words under half). Other languages (``thai`` …) always pass.
    """
    if language in ("schinese", "tchinese") and han_count(text) * 2 >= len(text) \
            and (language == "tchinese" or not _TRAD_RE.search(text)):
        return None  # mostly Han, no Traditional-only character: fits (the common case, no counting)
    if language in LATIN_LANGUAGES and not _NON_LATIN.search(text):
        return None
    text = URL.sub(" ", text)
    han = count_chars(HAN, text)
    kana = count_chars(_KANA, text)
    latin = len(_LATIN_WORD.findall(text))
    cyrillic = len(_CYRILLIC_WORD.findall(text))
    units = han + kana + latin + cyrillic + count_chars(_HANGUL, text)
    if units == 0:
        return None
    if language in ("schinese", "tchinese"):
        if han / units < 0.5:
            return "not Chinese"
        if language == "schinese":
            trad, simp = count_chars(_TRAD_RE, text), count_chars(_SIMP_RE, text)
            if trad >= 3 and trad > simp:
                return "Traditional under schinese"
        return None
    if language == "japanese":
        return None if kana else "no kana"
    if language == "koreana":
        return None if _HANGUL.search(text) else "no Hangul"
    if language in ("russian", "ukrainian", "bulgarian"):
        return None if cyrillic / units >= 0.5 else "not Cyrillic"
    if language in LATIN_LANGUAGES:
        return None if latin / units >= 0.7 else "not Latin script"
    return None


_NON_LATIN = re.compile(r"[\u0370-\u03ff\u0400-\u04ff\u0590-\u06ff\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf"
                        r"\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
LATIN_LANGUAGES = {"english", "german", "french", "spanish", "latam", "italian", "portuguese", "brazilian",
                    "polish", "dutch", "danish", "norwegian", "swedish", "finnish", "czech", "hungarian",
                    "romanian", "turkish", "vietnamese", "indonesian"}

#: Steam's API language codes (partner.steamgames.com/doc/store/localization/languages).
STEAM_LANGUAGES = ("arabic", "bulgarian", "schinese", "tchinese", "czech", "danish", "dutch", "english", "finnish",
                   "french", "german", "greek", "hungarian", "indonesian", "italian", "japanese", "koreana",
                   "norwegian", "polish", "portuguese", "brazilian", "romanian", "russian", "spanish", "latam",
                   "swedish", "thai", "turkish", "ukrainian", "vietnamese")
#: common names and ISO 639-1 / BCP 47 codes → Steam code
LANGUAGE_ALIASES = {
    "zh": "schinese", "zh-cn": "schinese", "zh-hans": "schinese", "zh-sg": "schinese", "chinese": "schinese",
    "simplified chinese": "schinese", "简体中文": "schinese", "中文": "schinese", "zh-tw": "tchinese",
    "zh-hk": "tchinese", "zh-hant": "tchinese", "traditional chinese": "tchinese", "繁體中文": "tchinese",
    "en": "english", "eng": "english", "ja": "japanese", "jp": "japanese", "ko": "koreana", "korean": "koreana",
    "ru": "russian", "de": "german", "fr": "french", "es": "spanish", "es-es": "spanish", "es-419": "latam",
    "pt": "portuguese", "pt-pt": "portuguese", "pt-br": "brazilian", "it": "italian", "pl": "polish", "nl": "dutch",
    "tr": "turkish", "uk": "ukrainian", "th": "thai", "vi": "vietnamese", "id": "indonesian", "ar": "arabic",
    "bg": "bulgarian", "cs": "czech", "da": "danish", "fi": "finnish", "el": "greek", "hu": "hungarian",
    "no": "norwegian", "nb": "norwegian", "ro": "romanian", "sv": "swedish",
}


def steam_language(name: str) -> str | None:
    """A Steam language code for a code or alias (``"zh"`` → ``"schinese"``), ``None`` if unknown."""
    key = name.strip().lower().replace("_", "-")
    return key if key in STEAM_LANGUAGES else LANGUAGE_ALIASES.get(key)


_THAI = re.compile(r"[\u0e00-\u0e7f]+")
_ARABIC = re.compile(r"[\u0600-\u06ff]+")
_GREEK = re.compile(r"[\u0370-\u03ff]+")


def detect_language(text: str, latin: object = None) -> str | None:
    """Guess the Steam language of a text from its script: ``schinese``/``tchinese`` (Han, the
    Traditional heuristic of :func:`script_mismatch`), ``japanese`` (kana), ``koreana``, ``russian``
    (Cyrillic), ``thai``, ``arabic``, ``greek``; Latin-script text goes to ``latin`` (a lingua
    ``LanguageDetector``) when given, else ``"latin"`` (any Latin-script language). ``None`` for
    text without letters."""
    han, kana = han_count(text), count_chars(_KANA, text)
    if kana and kana * 4 >= han:
        return "japanese"
    if han and han * 2 >= len(text):
        script = "han"  # no other script can outnumber it: not counted
    else:
        units = {"han": han, "kana": kana, "hangul": count_chars(_HANGUL, text),
                 "latin": len(_LATIN_WORD.findall(text)), "cyrillic": len(_CYRILLIC_WORD.findall(text)),
                 "thai": count_chars(_THAI, text) // 3, "arabic": count_chars(_ARABIC, text) // 3,
                 "greek": count_chars(_GREEK, text) // 3}
        script, n = max(units.items(), key=lambda kv: kv[1])
        if n == 0:
            return None
    if script == "han":
        return "tchinese" if script_mismatch(text, "schinese") == "Traditional under schinese" else "schinese"
    if script == "latin":
        return _lingua(text, latin) if latin is not None else "latin"
    return {"kana": "japanese", "hangul": "koreana", "cyrillic": "russian"}.get(script, script)


def _lingua(text: str, detector: object) -> str:
    lang = detector.detect_language_of(text)  # type: ignore[attr-defined]
    if lang is None:
        return "latin"
    name = lang.name.lower()
    return {"portuguese": "portuguese", "bokmal": "norwegian", "nynorsk": "norwegian"}.get(name, name)
