"""Steam BBCode and HTML residue turned into the text a reader sees (:func:`strip_bbcode`,
:func:`strip_html`; they take and return ``str``). Why our own code: Steam's markup is BBCode (tag list:
https://steamcommunity.com/comment/Recommendation/formattinghelp), which no maintained Python library parses the
way Steam renders it, and a shop link's target must stay in the text for the spam rule
(:func:`~steam_persona.reviews.spam.advert_link`); HTML entities go to ``html.unescape``.
"""

from __future__ import annotations

import html
import re

from steam_persona.reviews.spam import STEAM_URL, advert_link
from steam_persona.reviews.text import CJK_CHAR


_BB_DROP = re.compile(r"\[img\].*?\[/img\]|\[previewyoutube=[^\]]*\].*?\[/previewyoutube\]"
                      r"|\[hr\](?:\s*\[/hr\])?|\[/hr\]", re.I | re.S)
_BB_URL_BARE = re.compile(r"\[url\](.*?)\[/url\]", re.I | re.S)
_BB_URL_TARGET = re.compile(r"\[url=([^\]\s]+)\]", re.I)
_BB_ITEM = re.compile(r"[ \t]*\[\*\][ \t]*")
_BB_BLOCK = re.compile(r"\[/?(?:h[1-6]|list|olist|quote|table|tr|code|noparse)(?:[ =][^\]\n]*)?\]", re.I)
_BB_CELL = re.compile(r"\[/?t[hd]\]", re.I)
_BB_INLINES = re.compile(r"(?:\[/?(?:b|i|u|s|strike|spoiler|url|emoticon)(?:=[^\]\n]*)?\])+", re.I)
_GAP_BEFORE = set(".!?,;:)]\"'’”…")


def strip_bbcode(text: str) -> str:
    """Remove Steam BBCode, keeping the visible text.

    Kept: the text of ``[spoiler]``, ``[quote]``, ``[b]``/``[i]``/``[u]``/``[strike]``, headings,
    ``[code]``, table cells and list items (``[*]`` starts a new line). Dropped: ``[url=…]`` targets
    (the link text stays; an advert's target stays beside it, `_keep_advert`), ``[img]…[/img]``,
    ``[previewyoutube]`` and ``[hr]``. Unknown bracketed text
    such as ``[Spoilers]`` or ``[ Audience ]`` is left alone. Whitespace is tidied later by
    :func:`~steam_persona.reviews.text.normalize_whitespace`.
    """
    if "[" not in text:
        return text
    text = _BB_DROP.sub(_tag_gap, text)
    text = _BB_URL_TARGET.sub(_keep_advert, text)
    text = _BB_URL_BARE.sub(r"\1", text)
    text = _BB_ITEM.sub("\n", text)
    text = _BB_BLOCK.sub("\n", text)
    text = _BB_CELL.sub(" ", text)
    return _BB_INLINES.sub(_tag_gap, text)


def _tag_gap(m: re.Match) -> str:
    """What a removed tag (or run of tags) leaves: a space where it stood between a sentence's end (or a comma,
    colon, closing bracket or quote) and a word, as ``fair.[url=…]my guide[/url]`` shows (``fair. my guide``);
    nothing inside a word (``un[b]believ[/b]able``) or a number (``9.[b]5[/b]``), or in scripts written without
    spaces (``好玩。[b]推荐[/b]``)."""
    start, end = m.start(), m.end()
    before, after = m.string[start - 1:start], m.string[end:end + 1]
    if not (before and after and before in _GAP_BEFORE and after.isalnum()) or CJK_CHAR(after):
        return ""
    return "" if before in ".," and after.isdigit() and m.string[start - 2:start - 1].isdigit() else " "


def _keep_advert(m: re.Match) -> str:
    """A link tag's target (group 1) left in the text when it is a shop's
    (:func:`~steam_persona.reviews.spam.advert_link`), so the spam rule sees what a reader clicking the link would;
    any other tag unchanged, to be stripped. Steam curator and group pages behind link text stay hidden: curators
    sign their reviews that way (labelled data keeps them)."""
    url = m.group(1)
    return f" {url} " if not STEAM_URL.match(url) and advert_link(url) else m.group(0)


_HTML_HREF = re.compile(r"<a\s[^<>]*?href\s*=\s*[\"']?([^\"'\s<>]+)[^<>]*>", re.I)
#: tags a browser shows as a line break or a new block: their text would run into the next block's without one
_HTML_BR = re.compile(r"<\s*br\s*/?\s*>|<\s*/?\s*(?:p|div|li|ul|ol|dl|dt|dd|h[1-6]|tr|table|blockquote|pre"
                      r"|section|article|header|footer|hr)(?:\s[^<>]*)?/?>", re.I)
_HTML_CELL = re.compile(r"<\s*/\s*t[dh]\s*>", re.I)
#: elements whose content is no text a reader sees (a scraped page's code and styles)
_HTML_HIDDEN = re.compile(r"<(script|style|noscript|template|head)\b[^<>]*>.*?</\1\s*>", re.I | re.S)
#: markup escaped once more, as scraped JSON often holds it: ``&lt;br&gt;``, ``&lt;/div&gt;``
_HTML_ESCAPED_TAG = re.compile(r"&lt;(/?\s*(?:br|p|div|li|ul|ol|h[1-6]|b|i|u|em|strong|span|a|img|hr|blockquote)"
                               r"\b[^<>&]*(?:&quot;[^<>&]*)*?/?)&gt;", re.I)
#: escaped text is taken for markup only when it holds a line break or a closing tag: ``the &lt;p&gt; tag`` stays
_HTML_ESCAPED_MARKUP = re.compile(r"&lt;(?:\s*br\s*/?\s*|/\s*[a-z][a-z0-9]*\s*)&gt;", re.I)
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")


def strip_html(text: str) -> str:
    """Turn HTML residue into text: ``<br>``, ``<p>`` and block tags (``<div>``, ``<li>``, ``<h2>``, ``<tr>`` …)
    become newlines and closing table cells a space, so blocks do not run into each other; ``<script>`` /
    ``<style>`` go with their content; other tags go (an advert link's target stays, `_keep_advert`); markup
    escaped once more (``&lt;br&gt;``, ``&lt;b&gt;x&lt;/b&gt;``: a line break or a closing tag shows it) is read as
    markup, while ``the &lt;p&gt; tag`` stays text; a removed inline tag leaves a space as a BBCode tag does
    (:func:`_tag_gap`); entities (``&amp;``, ``&quot;``, ``&#39;``) are
    unescaped (``html.unescape``), so ``I &lt;3 it`` reads ``I <3 it``."""
    if "<" not in text and "&" not in text:
        return text
    if _HTML_ESCAPED_MARKUP.search(text):
        text = _HTML_ESCAPED_TAG.sub(lambda m: "<" + m.group(1).replace("&quot;", '"') + ">", text)
    text = _HTML_HIDDEN.sub("", text)
    text = _HTML_BR.sub("\n", text)
    text = _HTML_CELL.sub(" ", text)
    text = _HTML_HREF.sub(_keep_advert, text)
    text = _HTML_TAG.sub(_tag_gap, text)
    return html.unescape(text)
