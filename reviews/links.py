"""Personal data and links removed from kept text (:func:`scrub_pii`; :func:`mask_pii` hides them in
examples shown to people), and what a removed link or contact takes with it: its lead-in ("at", "see … for",
在 … 上面), its comma clause or sentence when that says nothing without it, a bracketed aside, a stub left
behind; platforms' and games' names written as domains stay (:func:`_kept_as_text`). The patterns searched are
:mod:`~steam_persona.reviews.pii`'s. Why our own code: where a review can be cut so that what is left still reads
is a rule about review text, our edge; no library decides it.
"""

from __future__ import annotations

import re

from steam_persona.reviews.pii import (CJK_WEB_TLD, ID_GATE, PII_GATE, PII_HINTS, PII_PATTERNS, SHARE_CODE, cut,
                                       digit_run, game_number, matching_view, original_span, word_at_site)
from steam_persona.reviews.text import CJK_CHAR


def mask_pii(text: str) -> str:
    """``text`` with every :func:`scrub_pii` match replaced by ``▇`` (for examples shown to people); overlapping
    matches of several kinds become one ``▇``."""
    view, where = matching_view(text)
    low = view.lower()
    spans: list[tuple[int, int]] = []
    for kind, hint in PII_HINTS.items():
        if hint(low):
            spans += [original_span(where, *m.span()) for m in PII_PATTERNS[kind].finditer(view)
                      if not (kind == "link" and _kept_as_text(m)) and not (kind == "email" and word_at_site(view, m))]
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return cut(text, merged, "▇")


def scrub_pii(text: str, low: str | None = None) -> tuple[str, list[str]]:
    """Remove personal data and links from kept text: Steam profile/invite URLs, e-mail addresses
    (also spelled out), SteamIDs (64-bit, ``STEAM_0:1:123``, ``[U:1:123]``), friend codes, QQ/WeChat
    contacts (also in Chinese numerals or spaced digits), other platforms' player ids (Discord /
    BattleTag ``name#1234``, Nintendo ``SW-…``, "PSN ID: …"), phone numbers (mainland and ``+CC``),
    mainland ID numbers, and other links or bare domains (also spelled out: ``cheapgold dot com``, ``www . site . com``,
    ``x(dot)net``, ``x点com``, full-width ``ｘ．ｃｏｍ``, letter-spaced ``x y z . c o m``: the patterns search the
    :func:`~steam_persona.reviews.pii.matching_view`, the cut is made in ``text``). Removed, not masked, so the model never learns a placeholder.
    A hex address (``0x14000000000``) or a build number is not a phone number.

    Every kind but ``link`` is a contact: the comma clause that holds it goes, or its whole sentence
    when every clause holds one (:func:`_drop_contacts`; "Add me: a at b dot com or X#1234." has no
    review value). A link goes with its lead-in ("Patch notes at x.com/news say" → "Patch notes say"), or with its
    clause when the clause says nothing without it ("It's on x.com, works fine." → "Works fine."; "mods are at x.com
    and they rock" → "they rock"; :func:`_scrub_links`). Platforms' and games' names written as domains stay
    ("Battle.net", "Hole.io", :func:`_kept_as_text`).

    Returns ``(text, kinds)`` where ``kinds`` lists what was removed, in :data:`~steam_persona.reviews.pii.PII_PATTERNS` order
    (empty when nothing was). ``low`` is ``text.lower()`` when the caller has it.
    """
    original, (view, where) = text, matching_view(text)
    low = view.lower() if view is not text else text.lower() if low is None else low
    kinds: list[str] = []
    if not digit_run(low) and not PII_GATE(low) and not ID_GATE(low):
        return text, kinds
    spans: list[tuple[int, int]] = []
    for kind in _CONTACT_KINDS:
        if PII_HINTS[kind](low):
            found = [m.span() for m in PII_PATTERNS[kind].finditer(view)
                     if not any(a < m.end() and m.start() < b for a, b in spans)  # inside an earlier kind's match
                     and not (kind == "phone_number" and game_number(view, m))
                     and not (kind == "email" and word_at_site(view, m))]
            if found:
                spans += found
                kinds.append(kind)
    if spans:
        text = _drop_contacts(text, [original_span(where, a, b) for a, b in spans])
        view, where = matching_view(text)
        low = view.lower()
    if PII_HINTS["link"](low):
        new = _scrub_links(text, view, where)
        if new != text:
            text = new
            kinds.append("link")
    if ("码" in text or "碼" in text) and _LONE_SHARE_CODE.search(text):
        text = _LONE_SHARE_CODE.sub("", text)
        kinds += [] if "link" in kinds else ["link"]
    return (_tidy(text, _seams(original, text)) if kinds else text), kinds


def _scrub_links(text: str, view: str, where: tuple[int, ...] | None) -> str:
    """``text`` without its links and the words that only pointed at them (:func:`_links_with_leads`, found in its
    :func:`~steam_persona.reviews.pii.matching_view` ``view``); a link that is its clause's predicate, or all of its sentence, takes that clause
    or sentence with it (:func:`_drop_contacts`). A lead-in that began a sentence takes the comma after the link with
    it and passes its capital on ("Check out x.com, it is great." → "It is great.")."""
    brackets = _bracketed_links(view)
    if brackets:
        text = cut(text, [original_span(where, a, b) for a, b in brackets])
        view, where = matching_view(text)
    found = _links_with_leads(view)
    clauses = [original_span(where, a, b) for a, _, b, pred in found if pred or _whole_sentence(view, a, b)]
    if clauses:
        text = _drop_contacts(text, clauses)
        view, where = matching_view(text)
        found = _links_with_leads(view)
    cuts = []  # each cut's distance from the end: the cuts before it leave it valid
    for _, a, b, _ in reversed(found):  # from the end: the spans before stay valid
        a, b = original_span(where, a, b)
        tail = text[b:]
        if _SENTENCE_START.search(text, 0, a):
            b += _LEFTOVER.match(tail).end()
            tail = text[b:]
            if text[a].isupper():
                tail = _capitalised(tail)
        gone = _took_its_clause(text, a, b)
        limit = 3 if _FROM_LEAD(text, a) else 4
        text = text[:a] + tail
        cuts += [] if gone else [(len(text) - a, limit)]
    return _drop_stubs(text, [(len(text) - d, limit) for d, limit in cuts])


# an emoticon: no punctuation, no sentence end ("Check x.com :) great" keeps its ":)")
_EMOTICON = r"[:;=]['-]?(?:[()\[\]/\\|*3]|[DPpOo](?![^\W\d_]))"
# a bracketed aside, with the spaces before it; brackets inside it one deep ("(mods at x(dot)com)")
_BRACKET = re.compile(rf"[ \t]*(?:\((?:{_EMOTICON}|[^()\n]|\((?:{_EMOTICON}|[^()\n])*\))*\)|（(?:[^（）\n]|（[^（）\n]*）)*）"
                      r"|\[[^\[\]\n]*\]|【[^【】\n]*】)")


def _bracketed_links(view: str) -> list[tuple[int, int]]:
    """The spans (sorted, in ``view``) of the bracketed asides that hold a link (:func:`_kept_as_text` ones aside), each
    with its brackets and the spaces before it: the aside goes whole and the text outside it stays ("Loved it (x.com
    has builds)." → "Loved it."; 好玩（攻略在x.com）。 → 好玩。), the innermost one where brackets nest. A cut inside it
    would leave a fragment in brackets."""
    links = [m.span() for m in PII_PATTERNS["link"].finditer(view) if not _kept_as_text(m)]
    return [span for br in _BRACKET.finditer(view) for span in _innermost(view, br, links)]


def _innermost(view: str, br: re.Match[str], links: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The spans of the innermost brackets in ``br`` (one level of nesting) that hold one of ``links``: the brackets
    inside it that do ("(the music (see x.com) is great)" loses "(see x.com)" only), else ``br`` itself if it does."""
    def holds(a: int, b: int, start: int, end: int) -> bool:
        return start < a and b < end and bool(view[start:a].strip(" \t"))

    opening = br.end() - len(br.group(0).lstrip(" \t"))  # where its bracket opens, after the spaces before it
    inner = [m.span() for m in _BRACKET.finditer(view, opening + 1, br.end() - 1)
             if any(holds(a, b, *m.span()) for a, b in links)]
    if inner:
        return inner
    return [br.span()] if any(holds(a, b, *br.span()) for a, b in links) else []


def _took_its_clause(text: str, a: int, b: int) -> bool:
    """Whether the cut ``text[a:b]`` took all of its clause, so no stub of it is left: it starts where its comma
    clause starts and ends with the clause's comma or a conjunction ("Check out x.com, it is great.", "Mods are at
    x.com and they rock"), or it emptied a bracket ("Fun (see x.com), great.")."""
    if text[:a].rstrip(" \t")[-1:] in ("(", "[", "（", "【"):
        return True
    return _clause_start(text, a) == a and _JOIN_END.search(text, a, b) is not None


_FROM_LEAD = re.compile(r"from[ \t]", re.I).match  # a cut that starts "from <link>": the link named a source


_JOIN_END = re.compile(r"(?:[,;:，；：]|(?<![^\W\d_])(?:and|but|so|or))[ \t]*\Z", re.I)


def _drop_stubs(text: str, cuts: list[tuple[int, int]]) -> str:
    """``text`` without the comma clauses that a link cut left as a stub (``cuts``: ``(offset, word limit)`` each): a
    clause in CJK script of at most 5 characters ("去下载", "汉化补丁"), or one in a spaced script whose sentence has at
    most ``limit`` words ("Download it free", "More of my reviews", "Get it now"); :func:`_drop_contacts` drops it
    with its punctuation. The limit is 4, and 3 after a cut of "from <link>": that names a source of what the
    sentence already names, so four words left are an instruction ("Install dot net first"), not a stub.
    Spaced scripts count the sentence, not the clause: a comma clause as short as "Track your stats" is often a real
    one ("Track your stats, it is free."), and Chinese runs its sentences on with commas. The counts are ours (no
    library measures "says something"): chosen so that every stub seen after a cut goes while a sentence of 5 words
    or more stays. "Thanks for the guide, great game." has 6."""
    spans = []
    for p, limit in cuts:
        starts = [m.end() for m in _SENTENCE_END.finditer(text, 0, p)]
        s0 = starts[-1] if starts else 0
        after = _SENTENCE_END.search(text, p)
        s1 = after.start() if after else len(text)
        c0 = max([m.end() for m in _CLAUSE_END.finditer(text, s0, p)], default=s0)
        c1 = next((m.start() for m in _CLAUSE_END.finditer(text, p, s1)), s1)
        clause = _STUB_UNIT.findall(text, c0, c1)
        cjk = any(CJK_CHAR(u) for u in clause)
        count = len(clause) if cjk else len(_STUB_UNIT.findall(text, s0, s1))
        if clause and count <= (5 if cjk else limit):
            spans.append((c0, c1))
    return _drop_contacts(text, spans) if spans else text


# what a stub is counted in: each CJK character, or a run of other letters and digits (a word)
_STUB_UNIT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]"
                        r"|(?:(?![\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af])[^\W_])+")


def _links_with_leads(text: str) -> list[tuple[int, int, int, bool]]:
    """The links in ``text`` but platforms' bare domains and names written as domains (:func:`_kept_as_text`), each
    with the words that only pointed at it: ``(start, cut start, end, predicate)`` — the lead-in (:data:`_LINK_LEAD`,
    searched in the 40 characters before the link) starts at ``start`` and the cut at ``cut start`` ("can be found
    here: x" cuts from "here"); the end takes a share code, a 在 frame's closing word (上面 / 里面 also without 在) and a
    "see"'s "for …" (what the link offers). ``predicate``: the clause says nothing without the link, and its comma
    clause goes (:func:`_says_nothing_without`). A link after a copula with more of its clause after it is cut lighter
    (:func:`_predicate_cut`)."""
    out: list[tuple[int, int, int, bool]] = []
    for m in PII_PATTERNS["link"].finditer(text):
        if _kept_as_text(m):
            continue
        done = out[-1][2] if out else 0  # where the last cut ended (a share code or frame may run into this link)
        lead = _LINK_LEAD.search(text, max(done, m.start() - 40), m.start()) if done <= m.start() else None
        end = _SHARE_CODE_AFTER.match(text, m.end()).end()
        also = _ZH_AND_AFTER.match(text, end) if lead and lead.group("zai") else None
        if also:  # "在x.com和贴吧上都有" → "在贴吧上都有": the frame holds the other place
            out.append((m.start(), m.start(), also.end(), False))
            continue
        see = None
        if lead and lead.group("see"):
            end, see = _see_end(text, lead.start(), end)
            if see == "sentence":
                out.append(_sentence_span(text, max(done, lead.start()), end, _CLAUSE_BREAK))
                continue
        else:
            end = (_FRAME_END if lead and lead.group("zai") else _ZH_PLACE_AFTER).match(text, end).end()
        modifier = _SITE_NOUN_AFTER.match(text, end) is not None  # "runs on x.com servers": only the link goes
        lead = None if modifier else lead
        start = max(done, lead.start() if lead else m.start())
        cut = lead.end("kept") if lead and lead.group("kept") else start
        if lead and lead.group("thanks") and _FOR_AFTER.match(text, end):
            cut = lead.end("thanks")  # "Thanks to x.com for the guide" → "Thanks for the guide"
        conj = _CONJUNCTION_BEFORE.search(text, done, start) if cut == start else None
        after = _CONJUNCTION_AFTER.match(text, end)
        list_item = conj and (after or _CLAUSE_END_AFTER.match(text, end))
        if conj and (not list_item or (after and _SUBJECT.match(text, after.end()))):
            # "on Steam and on x.com and it was cheaper there", "on a.com/x and b.com/x for news": a cut flips the
            # meaning or leaves a fragment
            out.append(_sentence_span(text, max(done, start), end))
            continue
        if list_item:
            start = cut = conj.start()  # "here and over at x.com, this one" → "here, this one"; "on Steam and x.com and GOG"
        if end <= start:
            continue
        if lead and lead.group("pred"):
            preps = [lead.start(g) for g in ("prep", "other_prep") if lead.group(g)]
            prep = preps[0] if preps else None  # None: a bare copula
            out.append(_predicate_cut(text, done, start, prep, end))
        elif _DANGLING_AFTER.match(text, m.end()) or (lead is None and not modifier
                                                        and _DANGLING_BEFORE.search(text, done, m.start())):
            out.append(_sentence_span(text, start, end))  # "Thanks to x.com's guides", "I found x.com and it helped"
        else:
            says_nothing = see == "clause" or _says_nothing_without(text, lead, start, m.end(), end)
            out.append((start, cut, end, not modifier and says_nothing))
    return out


def _says_nothing_without(text: str, lead: re.Match[str] | None, start: int, link_end: int, end: int) -> bool:
    """Whether the clause of a link (its cut ``text[start:end]``, the link ending at ``link_end``) says nothing
    without it: the link is in a 在 frame or after a colon and ends the clause (攻略都在 x点com 上面。, "My site: x.com";
    在 x点com 上面买的 only says where), after a Chinese word that only points at it (详细攻略见 x.com, 请关注 x.com), before a 的 it owns (感谢 x.com
    的攻略) or a Japanese or Korean particle that makes it the predicate or its object (攻略は x.com にあります, 공략은
    x.com 에서, 攻略は x.com を見ました), or
    the subject, starting a sentence with an English word after it ("x.com has the best builds")."""
    if lead and (lead.group("zai") or lead.group(0).strip() in (":", "：")):  # "My website: x.com" names nothing
        return _CLAUSE_END_AFTER.match(text, end) is not None
    if lead and lead.group("zh_point") or _CJK_PARTICLE_AFTER.match(text, link_end):
        return True
    return lead is None and bool(_SENTENCE_START.search(text, 0, start) and _LOWER_WORD_AFTER.match(text, end))


def _predicate_cut(text: str, done: int, start: int, prep: int | None, end: int) -> tuple[int, int, int, bool]:
    """The cut for a link after a copula (``text[start:end]``, its preposition at ``prep``, ``None`` after a bare
    copula: "The site is x.com"; nothing before ``done`` is cut again): its whole comma clause when the clause ends
    with it ("The best one is on x.com."); from the clause's
    start through a conjunction right after it when a new subject follows ("Mods are at x.com and they rock" → "They
    rock"); only the preposition and the link before an -ing word, the copula serving it ("I was at x.com reading the
    lore" → "I was reading the lore"); through a relative clause and the ", but" / ";" after it ("is x.com
    which is annoying, but the game is great" → "The game is great"). Else, and when a relative clause ends the
    sentence ("are at x.com, which fans run"), the whole sentence: a cut would leave a fragment ("It is and, as always", "are which") or turn a second place into the
    first ("are at x.com or the official forum", "is at x.com, or in the game files")."""
    conj = _CONJUNCTION_AFTER.match(text, end)
    if conj and conj.group(0).strip(" \t,，").lower() != "or" and not _SECOND_PLACE.match(text, conj.end()):
        begin = max(done, _clause_start(text, start))
        return begin, begin, conj.end(), False
    if _PREDICATE_END.match(text, end) and not _JOINED_AFTER.match(text, end):
        return start, start, end, True
    if prep is not None and _ING_AFTER.match(text, end):
        return start, prep, end, False
    rest = _RELATIVE_THEN_CLAUSE.match(text, end)
    if rest:  # "is x.com which is annoying, but the game is great" → "The game is great"
        begin = max(done, _clause_start(text, start))
        return begin, begin, rest.end(), False
    return _sentence_span(text, max(done, start), end)


def _sentence_span(text: str, a: int, b: int, stop: re.Pattern[str] | None = None) -> tuple[int, int, int, bool]:
    """A cut of the whole sentence holding ``text[a:b]`` (to its terminator; :func:`_drop_contacts` drops it), or, when
    ``stop`` matches between ``b`` and the terminator, of the sentence up to the end of that match (a second clause of
    its own stays: "I check x.com daily for builds, and honestly the game is great" → "Honestly the game is great")."""
    starts = [m.end() for m in _SENTENCE_END.finditer(text, 0, a)]
    after = _SENTENCE_END.search(text, b)
    begin, end = starts[-1] if starts else 0, after.start() if after else len(text)
    brk = stop.search(text, b, end) if stop else None
    if brk:
        begin += len(text[begin:a]) - len(text[begin:a].lstrip())
        return begin, begin, brk.end(), False
    return begin, begin, end, True


def _see_end(text: str, lead: int, end: int) -> tuple[int, str | None]:
    """Where the cut of a link after "see" / "check out" / "visit" (at ``lead``; the link and its share code end at
    ``end``) ends, and what goes with it: "for …" (what the link offers) up to a comma or conjunction, and a
    coordinating conjunction after it when the lead-in begins its clause ("See x.com for builds and the game gets
    easier" → "The game gets easier"). ``"sentence"``: the whole sentence goes, words come before the lead-in ("You
    can see x.com for free", "I see x.com for what it is"); ``"clause"``: its comma clause goes, a subordinate clause
    follows ("… for builds if you are stuck"); a cut would leave a fragment."""
    end = _FOR_DETAILS.match(text, end).end()
    if not _CLAUSE_START_BEFORE.search(text, 0, lead):
        return end, "sentence"
    conj = _SEE_CONJUNCTION.match(text, end)
    if conj is None:
        return end, None
    return (end, "clause") if conj.group("sub") else (conj.end(), None)


def _clause_start(text: str, pos: int) -> int:
    """Where the comma clause holding ``pos`` starts: after the last clause or sentence end before it (within 300
    characters), its spaces skipped."""
    lo = max(0, pos - 300)
    ends = [m.end() for m in _CLAUSE_BOUNDARY.finditer(text, lo, pos)]
    return ends[-1] if ends else lo


# what a site has, right after its link: the link is a modifier ("the x.com servers", "thanks to x.com mods")
_SITE_NOUN_AFTER = re.compile(r"[ \t]+(?:servers?|mods?|forums?|wiki|pages?|site|community|guides?|version|store|builds?"
                              r"|maps?|users?|players?|discord|accounts?|launcher|team|staff|posts?|threads?)(?![^\W\d_])")
# a link that owns what follows it, or the object of a word before it: a cut leaves a fragment, the sentence goes
_DANGLING_AFTER = re.compile(r"['’]s(?![^\W\d_])|[ \t]+being(?![^\W\d_])", re.I)
_DANGLING_BEFORE = re.compile(r"(?<![^\W\d_])(?:to|of|found|use|used|using|try|tried|visit|visited|follow|followed)"
                              r"[ \t]+\Z", re.I)
_CONJUNCTION_BEFORE = re.compile(r"[ \t]+(?:and|or)[ \t]+\Z", re.I)
_FOR_AFTER = re.compile(r"[ \t]+for(?![^\W\d_])", re.I)
_ADVERB = r"(?:[ \t]+(?:now|too|also|already|today|anyway|as well))?"  # what may end a clause after the link
_PREDICATE_END = re.compile(rf"{_ADVERB}[ \t]*(?:[,;.!?，；。！？…\n]|$)", re.I)
_CONJUNCTION_AFTER = re.compile(rf"{_ADVERB}[ \t]*[,，]?[ \t]+(?:and|but|so|or)[ \t]+", re.I)
# what follows a link after a copula: a relative clause or a second place ("and in the Discord", "and nexus and"), an
# -ing word
_JOINED_AFTER = re.compile(r"[ \t]*[,，]?[ \t]*(?:which|who|where|that|whose|or|and)(?![^\W\d_])", re.I)
# a relative clause about the link, then a turn to something else after ", but" / ", yet" / ";": the cut ends there
# (after ", and" the next clause often still speaks of the link: "…, and they are great")
_RELATIVE_THEN_CLAUSE = re.compile(r"[ \t]*[,，]?[ \t]*(?:which|who|where|that|whose)(?![^\W\d_])[^.!?;\n]*?"
                                   r"(?:[,，][ \t]*(?:but|yet)[ \t]+|;[ \t]*)", re.I)
_SECOND_PLACE = re.compile(r"(?:in|on|at|over|via|from|inside|under|into)(?![^\W\d_])"
                           r"|[^\W\d_]+[ \t]*(?:,|(?:and|or)(?![^\W\d_]))", re.I)
_SUBJECT = re.compile(r"(?:i|you|he|she|it|we|they|this|there)(?![^\W\d_])", re.I)
_ING_AFTER = re.compile(r"[ \t]+[^\W\d_]+ing(?![^\W\d_])", re.I)
_CLAUSE_BOUNDARY = re.compile(r"(?:[,;，；。！？…\n]|[.!?]+(?=[ \t]))[ \t]*")
_CLAUSE_END_AFTER = re.compile(r"[ \t]*(?:[,;.!?，；。！？…\n]|$)")
# 上面 / 里面 after a link, or 上 / 里 before a verb of reading, getting or having: "但是 x.com 上面有补丁" → "但是有补丁",
# "正在 x.com 上看攻略" → "正在看攻略" (上线 / 上传 stay)
_ZH_PLACE_AFTER = re.compile(r"(?:[ \t]*(?:上面|里面|[上里](?=[看找买下搜查玩有]))的?)?")
_CJK_PARTICLE_AFTER = re.compile(r"[ \t]*(?:的|に|で|を|から|まで|へ|에서|에|으로|로|을|를)")
_LOWER_WORD_AFTER = re.compile(r"[ \t]+[a-z]")
# nothing but a sentence's end and spaces before a position (searched in text[:a]); what a sentence's first words
# leave after them when they go
_SENTENCE_START = re.compile(r"(?:^|[.!?。！？…\n])[ \t]*\Z")
_LEFTOVER = re.compile(rf"[ \t]*(?:(?!{_EMOTICON})[,;:，；：])?[ \t]*")
# where a second clause of its own begins: ", and" / ", but" / ", so" or ";"
_CLAUSE_BREAK = re.compile(r"[ \t]*(?:[,，][ \t]*(?:and|but|so)(?![^\W\d_])|[;；])[ \t]*", re.I)


def _whole_sentence(text: str, a: int, b: int) -> bool:
    """Whether ``text[a:b]`` is all of its sentence but the terminator ("See x.com for details."): the terminator goes
    too."""
    before, after = text[:a].rstrip(" \t"), text[b:].lstrip(" \t")
    return (not before or before[-1] in ".!?。！？…\n") and (not after or after[0] in ".!?。！？…\n")


_CONTACT_KINDS = tuple(k for k in PII_PATTERNS if k != "link")
# what is offered for download right before a link, with nothing between them but a space or a colon (破解版下载,
# 汉化补丁下载, 资源, 网盘): with the link gone it points at nothing
_ZH_LINK_LEAD = (r"(?:(?:破解版?|学习版|绿色版|免安装版?|汉化(?:版|补丁)?|中文版|安装包|补丁|资源|游戏|mod)[ \t]*(?:下载|下載)"
                 r"|下载|下載|(?:百度)?(?:网盘|網盤)|资源|資源)")
# English words that only point at the link after them: a preposition (also "over at", "up on"), "sponsored by",
# "see" / "check out" /
# "visit" (with "for …" after the link), a participle with "here" ("found here:"; after a copula only "here":
# "can be found here: x" keeps "can be found", group "kept"), "to" after a verb of moving or pointing ("moved to x" →
# "moved") and "according to"
_TO_VERBS = ("move", "moved", "moves", "migrated", "go", "goes", "went", "head", "heads", "headed", "over", "redirects",
             "redirected", "switched", "points", "pointed", "link", "links", "linked", "uploaded", "posted", "come", "came",
             "back", "welcome")
_TO_AFTER = "|".join(rf"(?<=\b{v} to)" for v in _TO_VERBS)  # tried after "to": one cheap test where "to" stands
_PARTICIPLE = r"(?:found|available|posted|linked|listed|uploaded)"
# Chinese words that only point at the link after them: "see", "follow", "visit", "upload to" (详细攻略见 x.com, 请关注 x.com,
# 传到 x.com)
_ZH_POINT = r"(?:详|請|请)?见|参见|參見|(?:请|請)?(?:看|关注|關注|访问|訪問)(?:一下)?|传到|傳到|发到|發到|放到"
# prepositions of other languages right before a link: "гайды на x.com", "findest du auf x.com", "están en x.com"
_OTHER_LEAD = r"на|в|во|по|auf|bei|unter|en|sur|dans|chez|em|no|na|su|op|w|z"
_EN_LEAD = (rf"(?:(?:over|up)[ \t]+)?(?:at|on|in)|via|from|with|(?:{_PARTICIPLE}[ \t]+)?here"
            rf"|to(?:{_TO_AFTER})|(?:according|(?P<thanks>thanks)|due)[ \t]+to|(?:sponsored|powered|hosted)[ \t]+by"
            r"|(?P<see>see|check(?:(?:[ \t]+it)?[ \t]+out)?|visit)")
# a copula right before the lead-in, or right before the link (group "bare": "the site is x.com and…"), makes the link
# the clause's predicate ("it's on x.", "mods are at x and they rock"):
# with the link gone the clause says nothing, so it goes as far as the link holds it (:func:`_predicate_cut`)
# other languages' copulas before their prepositions ("las guías están en x.com y son…", "les guides sont sur x.com")
_OTHER_COPULA = r"está|están|estan|es|son|estão|estao|é|são|sao|est|sont|ist|sind|war|waren|è|sono|jest|są|zijn|находятся|есть"
_COPULA = r"(?:(?<![^\W\d_])(?:is|are|was|were|be|been)|(?<=[^\W\d_])['’](?:s|re))[ \t]+(?:(?:now|still|also|all|right)[ \t]+)?"
# the words that only point at a link right after them (the English ones above, 链接 / 网盘链接 / 下载地址, what is offered
# for download, a colon, or the frame 在 … 上面 / 里 / 中, with a 的 after it: "在 x点com 上面的攻略" → "攻略"); searched
# before each link (the link first: one pattern with the lead-ins before the link tried them at every position, ~2x
# slower)
_LINK_LEAD = re.compile(rf"(?:(?P<pred>{_COPULA}(?P<prep>(?:(?:over|up)[ \t]+)?(?:at|on|in|here))"
                        rf"|(?<![^\W\d_])(?:{_OTHER_COPULA})[ \t]+(?P<other_prep>{_OTHER_LEAD})|(?P<bare>{_COPULA}))"
                        rf"|(?P<kept>{_COPULA}{_PARTICIPLE}[ \t]+)here"
                        rf"|(?<![^\W\d_])(?:{_EN_LEAD})"
                        rf"|(?:{_ZH_LINK_LEAD}[ \t]*[:：]?[ \t]*)?(?:(?:百度)?网盘|下载|下載|分享)?(?:链接|連結|地址|网址|網址)"
                        rf"|{_ZH_LINK_LEAD}|(?P<zai>(?<![现正存实所自好])在)|(?P<zh_point>{_ZH_POINT})"
                        rf"|(?<![^\W\d_])(?:{_OTHER_LEAD})|(?=[:：]))[ \t]*[:：]?[ \t]*\Z", re.I)
# what goes after a link: a cloud-drive share code ("提取码: abcd", "密码 1234", "pwd: x7k2"); a 在 frame's closing
# word; "for …" after "see x"
_SHARE_CODE_AFTER = re.compile(rf"(?:[ \t]*[,，(（]?[ \t]*(?:{SHARE_CODE}|密码|密碼|pwd|password|code)[ \t]*[:：=]?[ \t]*"
                               r"[A-Za-z0-9]{4,8}(?![A-Za-z0-9])[)）]?)?", re.I)
# (a 上 that begins a verb stays: 在x.com上线了 → 上线了; 上架, 上市, 上新, 上传, 上映)
_FRAME_END = re.compile(r"(?:[ \t]*(?:上面|里面|上(?![线線架市新传傳映演升涨漲瘾癮])|里|中|内)的?)?[ \t]*")
# another place joined to a link in a 在 frame: the link goes with the joining word
_ZH_AND_AFTER = re.compile(r"[ \t]*(?:和|与|與|或者|或|跟|以及|及)[ \t]*(?=[^\W\d_])")
# what the link offers ("see x.com for the mod list", "check out x.com for mods"), to the clause's end: without the link
# it points at nothing
# (an "and" / "or" before one or two words that end the clause joins the offer: "for builds and tips, the game")
_CONJUNCTIONS = (r"(?:and|or)(?![ \t]+[^\s,;.!?]+(?:[ \t]+[^\s,;.!?]+)?[ \t]*(?:[,;.!?]|$))|but|so|because|then|if|when"
                 r"|(?<!\ba )while|unless|since|until|though|although|once|cause|cuz")
_FOR_DETAILS = re.compile(rf"(?:[ \t]+for(?:[ \t]+(?!(?:{_CONJUNCTIONS})(?![^\W\d_])|{_EMOTICON}(?!\S))"
                          r"[^\s,;.!?，；。！？)）\]]+)+)?", re.I)
# a conjunction after a "see x.com for …": a coordinating one goes with it, a subordinating one (group "sub") makes the
# clause a fragment
_SEE_CONJUNCTION = re.compile(r"[ \t]+(?:(?:and|but|or|so|because|cause|cuz)(?:[ \t]+then)?[ \t]+"
                              r"|(?P<sub>if|when|while|unless|since|until|though|although|once|then)(?![^\W\d_]))", re.I)
_CLAUSE_START_BEFORE = re.compile(r"(?:^|[,;:.!?，；：。！？…\n(（\-])[ \t]*\Z")
# a share code whose link is gone (or was never a link): its words name nothing else
_LONE_SHARE_CODE = re.compile(rf"(?:{SHARE_CODE})[ \t]*[:：=]?[ \t]*[A-Za-z0-9]{{4,8}}(?![A-Za-z0-9])")
# a sentence ends at its terminator, or at an emoticon standing as a word ("Great zone :) Write to x@y.ru ;) The
# anomalies…": three sentences); a clause at a comma or semicolon that begins no emoticon
_SENTENCE_END = re.compile(rf"[.!?]+(?=\s|$)|[。！？…]+|\n|(?<!\S){_EMOTICON}(?=\s|$)")
_CLAUSE_END = re.compile(rf"(?!{_EMOTICON})[,;，；]")
_TERMINATOR = re.compile(rf"(?:[\s.!?。！？…]|(?<!\S){_EMOTICON})*$")


def _drop_contacts(text: str, spans: list[tuple[int, int]]) -> str:
    """``text`` without the comma clauses that overlap ``spans`` (character offsets), or without the
    whole sentence (ended by ``. ! ? 。 ！ ？ …`` or a line break) when all its clauses do."""
    out, start = [], 0
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if not any(a < m.start() < b for a, b in spans)]
    for end in ends + [len(text)]:  # a full stop inside a match ("a@gmail . com") ends no sentence
        if end <= start:
            continue
        hits = [(a - start, b - start) for a, b in spans if a < end and b > start]
        seg = text[start:end]
        out.append(_drop_clauses(seg, hits) if hits else seg)
        start = end
    return "".join(out)


def _drop_clauses(sentence: str, hits: list[tuple[int, int]]) -> str:
    """One sentence without its comma clauses that overlap ``hits`` (offsets in it); its terminator
    stays unless every clause goes, and it keeps an initial capital (one that began with a hit gets one: a link or
    a name says nothing of how the writer capitalises)."""
    body_end = _TERMINATOR.search(sentence).start()
    kept, start = [], 0
    for end in [m.end() for m in _CLAUSE_END.finditer(sentence, 0, body_end)] + [body_end]:
        if not any(a < end and b > start for a, b in hits):
            kept.append(sentence[start:end])
        start = end
    if not kept:
        return "\n" if sentence.endswith("\n") else ""
    lead = sentence[:len(sentence) - len(sentence.lstrip())]
    body = "".join(kept).strip().rstrip(",;，；")
    first = len(sentence) - len(sentence.lstrip())
    if sentence[first:first + 1].isupper() or any(a <= first < b for a, b in hits):
        body = _capitalised(body)
    return lead + body + sentence[body_end:]


def _capitalised(text: str) -> str:
    """``text`` with a lower-case first letter made upper case, unless an upper-case letter follows it (a brand's own
    spelling: "iOS", "eBay", "iPhone" stay)."""
    return text[:1].upper() + text[1:] if text[:1].islower() and not text[1:2].isupper() else text


# what removing a match can leave at the place it was: space before punctuation, brackets with nothing but punctuation
# in them ("(Check out x.com.)" → "(.)"), a comma before other punctuation, a list item with nothing left ("- Check out
# x.com" → "-"); an emoticon is no punctuation ("check x.com :) great" keeps its space and comma)
_TIDY = (re.compile(r"\([\s.,;:!?]*\)|（[\s。，；：！？]*）|\[\s*\]"), re.compile(r"^[ \t]*[-*•][ \t]*(?:\n|\Z)", re.M),
         re.compile(rf"[ \t]+(?=[,.;:!?，。；：！？])(?!{_EMOTICON})"),
         re.compile(rf"[,;:，；：]+(?=\s*[,.;:!?，。；：！？])(?!\s*{_EMOTICON})"), re.compile(rf"^[ \t]*(?!{_EMOTICON})[,;:，；：][ \t]*", re.M))


def _tidy(text: str, seams: list[int] | None) -> str:
    """``text`` without what a removal left at ``seams`` (:data:`_TIDY`; the text elsewhere is the writer's own: "Super
    jeu !" keeps its space), or wherever it is when ``seams`` is None."""
    for pattern in _TIDY:
        spans = [(a, b) for a, b in (m.span() for m in pattern.finditer(text))
                 if seams is None or any(a <= p <= b for p in seams)]
        if seams is not None:
            seams = [p - sum(min(p, b) - a for a, b in spans if a < p) for p in seams]
        text = cut(text, spans)
    return text


def _seams(before: str, after: str) -> list[int] | None:
    """The places in ``after`` where characters of ``before`` were removed (``after`` is ``before`` with spans cut out
    and letters' case changed), or None when ``after`` is not such a text. Matched greedily from the start: a cut is
    found where the first character after it differs from the first one cut (or, when they are equal, a little
    later, at no cost to what :func:`_tidy` finds there)."""
    seams, i = [], 0
    for j, ch in enumerate(after):
        start = i
        while i < len(before) and before[i] != ch and before[i].lower() != ch.lower():
            i += 1
        if i == len(before):
            return None
        seams += [j] if i > start else []
        i += 1
    return seams + ([len(after)] if i < len(before) else [])


#: store, platform and program names that are written as domains ("needs a Battle.net account", "made in Paint.net"):
#: kept when bare
PLATFORM_DOMAINS = {"battle.net", "itch.io", "gog.com", "ea.com", "origin.com", "ubisoft.com", "xbox.com",
                    "epicgames.com", "humblebundle.com", "steam.com", "twitch.tv", "youtube.com", "bilibili.com",
                    "reddit.com", "github.com", "discord.gg", "discord.com", "nexusmods.com", "steamdb.info", "amazon.com",
                    "paint.net", "microsoft.net", "asp.net", "vb.net", "ado.net"}


#: games and review sites named by their domain: in a review these are names, not destinations ("Hole.io is on Steam
#: now", "I played Agar.io and Slither.io", "Metacritic.com says 60"); kept when bare and nothing points at them
NAME_DOMAINS = {"hole.io", "agar.io", "slither.io", "krunker.io", "diep.io", "paper.io", "surviv.io", "zombs.io",
                "wormate.io", "mope.io", "skribbl.io", "shellshock.io", "venge.io", "bonk.io", "moomoo.io", "starve.io",
                "deeeep.io", "gartic.io", "metacritic.com", "opencritic.com", "ign.com", "gamespot.com", "polygon.com",
                "kotaku.com", "pcgamer.com", "eurogamer.net", "howlongtobeat.com", "protondb.com", "4399.com", "7k7k.com"}
_SPELLED_NAME_DOT = re.compile(r"[ \t]*[点點][ \t]*")  # "4399点com" is the name 4399.com
# a scheme, "www", a path, a query or a fragment: a link whatever its case and whatever touches it
_FULL_LINK = re.compile(r"^(?:https?://|www)|[/?#]", re.I).search


def _kept_as_text(m: re.Match[str]) -> bool:
    """Whether a link match is a platform's bare domain (:data:`PLATFORM_DOMAINS`), a game or review site's name
    (:data:`NAME_DOMAINS`, with no lead-in before it: "visit agar.io" is a link), or words touching Han, kana or Hangul
    text that a link there would not be: one with an upper-case letter ("还是PVP。Online模式", "ＢＧＭ．ＳＥ都很棒", "打出了GG。GG":
    an acronym and a sentence end), or with a top-level domain links there do not use (:data:`~steam_persona.reviews.pii.CJK_WEB_TLD`:
    "游戏里的npc.ai很蠢"). One with a scheme, "www", a path or a query is a link all the same (:data:`_FULL_LINK`). Shops'
    links are adverts all the same (:func:`~steam_persona.reviews.spam.spam_reason`)."""
    found = m.group(0)
    low = found.lower()
    text, a, b = m.string, m.start(), m.end()
    if low in PLATFORM_DOMAINS or (_SPELLED_NAME_DOT.sub(".", low) in NAME_DOMAINS and not _points_at(text, a)):
        return True
    touches = (a and CJK_CHAR(text[a - 1])) or (b < len(text) and CJK_CHAR(text[b]))
    if not touches or _FULL_LINK(found):
        return False
    return found != low or not CJK_WEB_TLD(low)


def _points_at(text: str, a: int) -> bool:
    """Whether a lead-in other than a bare copula stands right before ``text[a]`` ("visit agar.io"; "My favourite is
    Agar.io" names a game)."""
    lead = _LINK_LEAD.search(text, max(0, a - 40), a)
    return lead is not None and lead.start("bare") < 0
