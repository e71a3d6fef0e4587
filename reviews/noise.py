"""What a review page or app adds around a review, and texts that are not reviews at all.

One function per ``prepare`` rule: store-page residue (date headers, "最后编辑于", early-access /
free-product banners, helpfulness counts, "hrs on record"), cross-post signatures and handles,
text art, checklist templates, texts with too little language, looping repetition; plus the
length measure (CJK characters, other scripts' words) and the script-based language guess.

Why our own code: these are the Steam review page's own strings (in the Steam UI languages we
could name) and the Chinese review apps' signatures — review-cleaning knowledge, our edge; no
library knows them. Transformations take and return ``str``; detectors return a reason or ``None``.
"""

from __future__ import annotations

import re
import zlib

from steam_persona.reviews.text import count_chars, han_count, literal_union, lowered, strip_invisible

# --- store-page residue -------------------------------------------------------------------------

# month names and their abbreviations by their first three letters (en de fr es pt it pl tr), any ending
# ("März", "mar.", "março", "stycznia", "Şubat"), and Russian month words
_MONTHS = (r"(?:jan|feb|fév|fev|mär|mar|apr|avr|abr|may|mai|maj|jun|jui|jul|aug|aoû|ago|sep|set|oct|okt|out|ott|nov"
           r"|dec|déc|dez|dic|ene|gen|mag|giu|lug|sty|lut|kwi|cze|lip|sie|wrz|paź|lis|gru|oca|şub|nis|haz|tem|ağu|eyl"
           r"|eki|kas|ara)[^\W\d_]*\.?|[а-я]{3,9}\.?")
_DATE = (rf"(?:\d{{4}}\s*年\s*)?\d{{1,2}}\s*月\s*\d{{1,2}}\s*日(?:\s*(?:上午|下午|晚上|凌晨)?\s*\d{{1,2}}[:：]\d{{2}})?"
         rf"|\d{{1,2}}\.?\s*(?:de\s+)?(?:{_MONTHS})(?:,?\s*(?:de\s+)?\d{{4}})?"
         rf"(?:\s*(?:@|à|um|a las|às|в|alle|o)?\s*\d{{1,2}}[:h]\d{{2}}\s*(?:[ap]m)?)?"
         rf"|(?:{_MONTHS})\s*\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s*\d{{4}})?(?:\s*@?\s*\d{{1,2}}:\d{{2}}\s*(?:[ap]m)?)?"
         rf"|\d{{4}}[-/.]\d{{1,2}}[-/.]\d{{1,2}}(?:\s+\d{{1,2}}:\d{{2}})?|\d{{1,2}}[/.]\d{{1,2}}[/.]\d{{2,4}}"
         rf"|(?:\d{{4}}\s*년\s*)?\d{{1,2}}\s*월\s*\d{{1,2}}\s*일(?:\s*(?:오전|오후)?\s*\d{{1,2}}:\d{{2}})?")
# "Posted:" / "发布于：" / "Last edited" and the Steam UI's other languages (de fr es pt ru it pl tr ja ko zh-TW)
_POSTED = (r"发布于|發佈於|發表於|張貼於|更新于|更新於|最后编辑于|最後編輯於|posted|updated|last edited|verfasst am|aktualisiert"
           r"|zuletzt bearbeitet|publiée? le|publiée?|mise? à jour|dernière modification|publicad[ao]|actualizad[ao]|última edición"
           r"|editad[ao]|atualizad[ao]|última edição|опубликовано|обновлено|последнее изменение|отредактировано"
           r"|pubblicat[ao]|aggiornat[ao]|ultima modifica|opublikowano|zaktualizowano|ostatnio edytowano|yayınlanma"
           r"|güncellendi|son düzenleme|投稿日|最終更新|最終編集|更新日|게시 일시|게시|업데이트|마지막 수정")
# one or more on a line: "Posted 4 March. Last edited 6 March."
_DATE_HEADER = re.compile(rf"^\s*(?:(?:{_POSTED})\s*[:：]?\s*(?:(?:le|el|em|am|on|il)\s+)?(?:{_DATE})[\s.。,，]*)+", re.I | re.M)
# the review's buttons (yes / no / funny [/ award]) and the question before them, in the UI languages above
_BUTTONS = (r"yes\s*no\s*funny(?:\s*award)?|是\s*否\s*(?:欢乐|有趣)(?:\s*(?:奖励|獎勵))?|ja\s*nein\s*lustig(?:\s*auszeichn\w*)?"
            r"|oui\s*non\s*drôle(?:\s*récompens\w*)?|s[ií]\s*no\s*divertid[ao](?:\s*premi\w*)?"
            r"|sim\s*não\s*engraçad[ao](?:\s*premi\w*)?|да\s*нет\s*забавн\w*(?:\s*наград\w*)?|はい\s*いいえ\s*面白い(?:\s*アワード)?"
            r"|예\s*아니요\s*재미있\w*(?:\s*상)?|tak\s*nie\s*zabawn\w*(?:\s*nagr\w*)?|evet\s*hayır\s*komik(?:\s*ödül\w*)?"
            r"|sì\s*no\s*divertente(?:\s*premi\w*)?")
_HELPFUL_ASKED = (r"was this review helpful\?|这篇评测是否有价值？?|這篇評論是否有幫助？?|你觉得这篇评测有价值吗？?"
                  r"|war diese rezension hilfreich\?|cette évaluation vous a-t-elle été utile ?\?|¿te ha sido útil esta reseña\?"
                  r"|esta análise foi útil\?|был ли этот обзор полезен\?|このレビューは参考になりましたか？?"
                  r"|이 평가가 유용한가요\?|czy ta recenzja była pomocna\?|bu inceleme yararlı oldu mu\?"
                  r"|questa recensione ti è stata utile\?")
_HELPFUL_SHORT = r"helpful\?|hilfreich\?|utile ?\?|¿?útil\?|полезно\?|参考になりましたか？|pomocna\?|yararlı mı\?"
# the page's banners above a review: early access, received for free, refunded
_BANNERS = (
    r"抢先体验版本评测|搶先體驗版評論|免费获取的产品|免費取得的產品|已退款的产品|已退款|early access review|product received for free"
    r"|product refunded|früher zugang-rezension|early-access-rezension|produkt kostenlos erhalten|évaluation en accès anticipé"
    r"|produit reçu gratuitement|análisis de acceso anticipado|producto recibido gratis|análise de acesso antecipado"
    r"|produto recebido de graça|обзор продукта в раннем доступе|продукт получен бесплатно|早期アクセスレビュー"
    r"|無料で製品を受け取りました|앞서 해보기 평가|무료로 받은 제품|recenzja z wczesnego dostępu|produkt otrzymany za darmo"
    r"|erken erişim incelemesi|ürün ücretsiz alındı|recensione (?:di un prodotto )?(?:in )?accesso anticipato"
    r"|prodotto ricevuto gratuitamente"
)
# the playtime line: total, at review time, last two weeks
_PLAYTIME = (
    r"(?:总时数|總時數|记录在案|評論時|评测时|评测时数)\s*[\d,.]+\s*(?:小时|小時)(?:\s*[（(]评测时\s*[\d,.]+\s*小时[)）])?"
    r"|[\d,.]+\s*(?:hrs?|hours?)\s*on record(?:\s*\([\d,.]+\s*hrs? at review time\))?|[\d,.]+\s*hrs? last two weeks"
    r"|[\d,.]+\s*(?:std\.|h|ч\.?|時間|시간|godz\.?|ore|saat)\s*(?:insgesamt|en tout|registradas|registrad[ao]s|всего|記録"
    r"|기록|łącznie|in totale|kayıtlı|toplam)"
    r"|(?:記録時間|기록상|kayıtlarda|toplam)\s*[:：]?\s*[\d,.]+\s*(?:時間|시간|saat|hrs?|h)"
)
# the verdict above a review, in Steam's UI languages (columns.voted reads them as True / False too)
VERDICTS_DOWN = (
    r"不推荐|不推薦|not recommended|nicht empfohlen|non recommandé|no recomendado|não recomendado|не рекомендую"
    r"|おすすめしません|비추천|nie polecam|önerilmez|non consigliato"
)
VERDICTS_UP = r"推荐|推薦|recommended|empfohlen|recommandé|recomendado|рекомендую|おすすめ|추천|polecam|önerilir|consigliato"
_VERDICTS = f"{VERDICTS_DOWN}|{VERDICTS_UP}"
# whole lines that only the page puts there
_RESIDUE_LINE = re.compile(
    r"^(?:\s*(?:"
    rf"{_BANNERS}"
    rf"|{_VERDICTS}"
    r"|(?:有\s*)?\d[\d,]*\s*(?:人|位用户|位使用者)觉得这篇评测(?:有价值|很欢乐|有趣)[。.]?|(?:有\s*)?\d[\d,]*\s*人覺得這篇評論(?:有幫助|很有趣)[。.]?"
    r"|\d[\d,]*\s*(?:of\s*\d[\d,]*\s*)?(?:people|person)\s*(?:\(\d+%\)\s*)?found this review (?:helpful|funny)"
    r"|(?:a\s+)?\d[\d,.]*\s*(?:personen|personnes?|personas?|persone|person|pessoas?|человек\w*|osób|osoby|osoba|kişi)\s"
    r"[^\n]{0,50}?(?:hilfreich|lustig|utile|drôle|amusante|útil|divertida|engraçada|полезн\w*|забавн\w*|divertente"
    r"|pomocn\w*|zabawn\w*|yararlı|komik)[^\n]{0,30}"
    r"|\d[\d,]*\s*人がこのレビューが(?:参考になった|面白い)と投票しました|\d[\d,]*\s*명이 이 평가가 (?:유용|재미있)[^\n]{0,12}"
    rf"|(?:{_HELPFUL_ASKED})(?:\s*(?:{_BUTTONS}))?|(?:{_HELPFUL_SHORT})?\s*(?:{_BUTTONS})"
    rf"|{_PLAYTIME}"
    r"|\d[\d,]*\s*(?:products? in account|reviews?|项产品|個產品|篇评测|篇評論)(?:\s*[|｜·]\s*\d[\d,]*\s*(?:reviews?|篇评测))?"
    r"|阅读更多|展开阅读全文|展开全文|收起|read more|show more|\d[\d,]*\s*(?:条留言|条回复|則留言|comments?)"
    r"|回复|回覆|reply|report|举报|檢舉|奖励|獎勵|award"
    r")[\s.。,，|｜·/]*)+$", re.I | re.M)
# the same header flattened onto the review's first line by a scraper: "Recommended 30.7 hrs on record Posted:
# March 4 Great game" / "总时数 30.7 小时 发布于：3 月 4 日 好玩"; two or more parts, or one banner in capitals
_HEADER_PART = (rf"(?:{_BANNERS}|{_PLAYTIME}|(?:{_POSTED})\s*[:：]?\s*(?:(?:le|el|em|am|on|il)\s+)?(?:{_DATE}))"
                r"[\s.。,，|｜·/]*")
_LEADING_HEADER = re.compile(rf"\A\s*(?:(?:{_VERDICTS})\s*(?:{_HEADER_PART})+|(?:{_HEADER_PART}){{2,}})", re.I)
_LEADING_BANNER = re.compile(rf"\A\s*(?:{_BANNERS})\s+(?=\S)", re.I)
# Every date header and residue line contains one of these (in the lower-cased text: a case-sensitive
# search of literals, written as a trie, is several times faster than re.I), or starts a line with a verdict (推荐 and 更新
# are common words inside sentences); most reviews have neither and skip both patterns
_VERDICT_START = re.compile(r"^\s*不?推[荐薦]", re.M)
_RESIDUE_HINT = re.compile(literal_union((
    r"发布于|發佈於|發表於|更新于|更新於|更新日|最后编辑|最後編輯|posted|updated|last edited|verfasst|aktualisiert|publi|mis à jour"
    r"|actualizad|atualizad|опубликовано|обновлено|pubblicat|opublikowano|zaktualizowano|yayınlanma|yayinlanma|投稿日|게시"
    r"|업데이트"
    r"|抢先|搶先|免费获取|免費取得|已退款|early access|produ|zugang|accès anticipé|acceso anticipado|acesso antecipado"
    r"|продукт|早期|無料|앞서|무료|recommend|recommand|empfohlen|recomend|рекоменд|found this review|person"
    r"|pessoas|человек|这篇评测|這篇評論|was this review|总时数|總時數|记录在案|評論時|评测时|on record|insgesamt|en tout"
    r"|registrad|всего|記録|기록|review|项产品|個產品|篇评测|篇評論|阅读更多|展开|收起|read more|show more|条留言|条回复"
    r"|則留言|comment|回复|回覆|reply|report|举报|檢舉|last two weeks|奖励|獎勵|award|張貼|zuletzt|mise à jour|dernière modif|última edi|editad|последнее"
    r"|отредактировано|aggiornat|ultima modifica|ostatnio|güncellen|son düzenleme|最終|마지막 수정|early-access|wczesnego"
    r"|otrzymany|erken erişim|ücretsiz|accesso anticipato|ricevuto|おすすめ|추천|polecam|öneril|consigliato|pessoa|osób"
    r"|osob|kişi|レビュー|평가|godz|saat|kayıt|in totale|toplam|łącznie|funny|欢乐|有趣|lustig|drôle|divertid|engraçad"
    r"|забавн|面白い|재미있|zabawn|komik|divertente").split("|")))


def strip_page_residue(text: str) -> str:
    """Remove what a scraped store/community page adds: a leading date header ("发布于：3 月 4 日",
    "Posted: March 4, 2024", "Verfasst am: 4. März"), "最后编辑于…" / "Last edited…" lines, and lines
    that are only a banner ("抢先体验版本评测", "EARLY ACCESS REVIEW", "免费获取的产品", "Product received
    for free"), a verdict word, a helpfulness count ("12 人觉得这篇评测有价值", "5 people found this
    review helpful"), a playtime ("总时数 30.7 小时", "30.7 hrs on record") or the page's buttons.
    A line with other words on it is kept (only the leading date header is cut from it)."""
    low = lowered(text)
    if not _RESIDUE_HINT.search(low) and not ("推" in low and _VERDICT_START.search(low)):
        return text
    text = _LEADING_HEADER.sub("", text, count=1)
    banner = _LEADING_BANNER.match(text)
    if banner and banner.group(0).isupper():
        text = text[banner.end():]
    text = _DATE_HEADER.sub("", text)
    return _RESIDUE_LINE.sub("", text).strip()


# --- signatures, mentions, the author's name ------------------------------------------------------

# where a cross-post comes from: the review apps and forums by name, or any "… App / 客户端 / 用户 / 社区 / 论坛"
_PLATFORM = (r"小黑盒|黑盒|其乐|keylol|nga|贴吧|百度贴吧|bilibili|b站|微博|豆瓣|taptap|知乎|3dm|游民星空|a9vg|游侠|steam\s*(?:社区|deck)?"
             r"|[^\n]{0,16}?(?:app|客户端|用户|用戶)|[^\n]{1,16}?(?:社区|社區|论坛|論壇)")
_SIGNATURE = re.compile(
    # a signature is a tail without a sentence in it: "来自B站的推荐，确实好玩" and "via Steam Deck it runs great" stay
    rf"(?:^\s*(?:文章|评测|評測|评价|評價|本文|内容|內容)?|[-—–~=_]+\s*|[（(]\s*)(?:来自|來自|发自|發自|转自|轉自|转载自|轉載自)\s*"
    rf"(?:{_PLATFORM})[^\n,.!?;，。！？；]{{0,40}}[)）]?\s*$"
    rf"|(?:^\s*|[-—–~=_]+\s*|[（(]\s*)via\s*(?:{_PLATFORM})[^\n]{{0,12}}$"
    r"|(?:^|[-—–~=_]+\s*)(?:sent from my|sent via|posted from my|posted via|发自我的|發自我的)[^\n,.!?:;，。！？：；]{0,30}$"
    # (a tail with no sentence in it: "B站up主推荐的，确实好玩" is a review)
    r"|(?:^|[-—–~=_]+\s*)(?:小黑盒|黑盒|nga|b站|bilibili|贴吧|taptap|keylol|其乐)\s*(?:用户|用戶|up主)[^\n,!?;，！？；]{0,20}$"
    r"|^\s*(?:本评测|本文|此评测)?(?:同步|转载|轉載|首发)(?:于|自|於)[^\n]{0,40}$"
    # a copied answer's footer (知乎: 作者 / 链接 / 来源 / 著作权归作者所有), the source link, a by-line
    r"|^\s*作者[:：][^\n]{0,30}\n\s*链接[:：][^\n]*\n\s*来源[:：][^\n]{0,20}$|^\s*著作权归作者所有[^\n]*$"
    r"|^\s*(?:原文链接|原文地址|原帖地址|原帖|本文作者|原文作者|文\s*/)\s*[:：]?[^\n]{0,60}$"
    r"|(?:^|[-—–~=_]+\s*)(?:reviewed by|review by|written by)\s+[^\n,.!?:;]{1,30}[.!]?\s*$"
    r"|[-—–~=_]{2,}\s*by\s+(?!far\b|the way\b|default\b|design\b|now\b)[^\n,.!?:;]{1,30}[.!]?\s*$", re.I | re.M)
# a by-line after the last sentence on its line: "Written by" with a screen name (a digit, an underscore or an
# inner capital: "…coming back to it. Written by Dark_Knight99"), "Reviewed by" / "Review (written) by" with
# any name of one or two words; "Written by" a person's name or words stays, a credit or a remark ("Written by
# Tetsuya Takahashi", "Written by committee.") (searched only in texts with these words: a pattern led by a
# lookbehind is tried at every position)
_BY_WORDS = ("reviewed by", "review by", "written by")
_BY_LINE = re.compile(r"(?<=[.!?。！？])[ \t]+(?:(?:reviewed by|review by|review written by)[ \t]+[^\s,.!?:;]+"
                      r"(?:[ \t][^\s,.!?:;]+)?|written by[ \t]+(?=[^\s,.!?:;]*(?:\d|_|(?-i:[a-z][A-Z])))[^\s,.!?:;]+)"
                      r"[.!]?[ \t]*$", re.I | re.M)
# in the lower-cased text
_SIGNATURE_WORDS = ("来自|來自|发自|發自|转自|轉自|转载|轉載|via|sent|posted|同步|首发|用户|用戶|up主|作者：|作者:|本文作者"
                    "|原文作者|原文|原帖|文/|文 /|reviewed by|review by|written by|—by|-by|~by|=by|_by|— by|- by|~ by|= by"
                    "|_ by").split("|")
_SIGNATURE_HINT = re.compile(literal_union(_SIGNATURE_WORDS))
# "@name", with the reply lead-in and colon around it ("回复 @name：", "Reply to @name:", a repost's "//@name:");
# Chinese may touch the "@" ("楼上@name"), a Latin letter or digit before it (also full-width: "１２３＠ｑｑ．ｃｏｍ") makes
# an e-mail address, a lone "/"
# a link ("medium.com/@name"); a Latin name ends where Chinese text starts ("玩家@Mogic的内容")
_REPLY = r"回复|回覆|答复|(?<![A-Za-z])(?:reply|replying) to|(?<![A-Za-z])re"
_MENTION = re.compile(rf"(?:(?:(?:{_REPLY})[ \t]*[:：]?[ \t]*)?(?<![A-Za-z0-9_.@/０-９Ａ-Ｚａ-ｚ＿．＠])|(?<![:/])//)[@＠]"
                      r"(?:[A-Za-z0-9_][A-Za-z0-9_.\-]{1,30}|\w[\w.\-]{1,30})(?:[ \t]*[:：][ \t]*)?", re.I)
# a reply lead-in left at a line's start without its name (the name went as the author's or another user's)
_ORPHAN_REPLY = re.compile(rf"^[ \t]*(?:{_REPLY})[ \t]*[:：][ \t]*", re.I | re.M)
# another user thanked by name: "感谢暗夜猎手大佬", "谢谢B站UP主老番茄的视频" (the name, 2-16 word characters,
# must be followed by an honorific or by "的" and the kind of thing users share; groups, platforms,
# demonstratives and plain words such as 制作组 / 大家 / 朋友 / 这个游戏 are not names)
_THANKED = re.compile(
    r"(?P<pre>(?:感谢|感謝|谢谢|謝謝|鸣谢|鳴謝|致谢|多谢)\s*(?:b站|B站|小黑盒|贴吧|NGA|nga)?\s*(?:用户|用戶|up主|UP主|Up主|主播)?\s*)"
    r"(?![这這那本该該此每各]|制作|开发|開發|官方|汉化|漢化|大家|群友|网友|朋友|室友|楼主|作者|你们|你們|他们|她们|大佬|大神"
    r"|老哥|兄弟|游戏|遊戲|[bB]站|小黑盒|贴吧|NGA|nga)"
    r"[\w\-·]{2,16}?(?=\s*(?:大佬|巨佬|大神|老哥|老师|老師|兄弟|dalao)|\s*的(?:攻略|视频|視頻|教程|帖子|分享|指导|指導|评测|評測"
    r"|汉化|漢化|补丁|補丁|mod|MOD|存档|存檔))")
_THANKS_WORDS = "感谢|感謝|谢谢|謝謝|鸣谢|鳴謝|致谢|多谢".split("|")
_THANKS_HINT = re.compile(literal_union(_THANKS_WORDS))
_HANDLES_HINT = re.compile(literal_union(_SIGNATURE_WORDS + _THANKS_WORDS))  # either, in one search of the lower-cased text


def strip_handles(text: str, author: str | None = None, handles: frozenset[str] = frozenset()) -> tuple[str, list[str]]:
    """Remove cross-post signatures ("——来自小黑盒用户XXX的评价", "转自B站", "Sent from my iPhone"), copy
    footers and by-lines ("原文链接：…", "——by XXX"), ``@name`` mentions, another user thanked by name
    ("感谢暗夜猎手大佬的攻略" → "感谢大佬的攻略"), the record's own author names (``author``: names and
    ids, one per line; case-insensitive, whole words for Latin names, parts joined any way; a
    distinctive name anywhere, a name that is a word only where it signs the review: see
    :func:`name_pattern`; names under 2 characters are ignored) and other authors'
    screen names (``handles``: lower-cased tokens, see :func:`screen_names`).
    Returns ``(text, kinds)`` with kinds from ``signature``, ``mention``, ``author_name``,
    ``screen_name``."""
    kinds = []
    low = lowered(text)
    hinted = _HANDLES_HINT.search(low) is not None
    if hinted and _SIGNATURE_HINT.search(low):
        text, n = _SIGNATURE.subn("", text)
        if any(w in low for w in _BY_WORDS):
            text, m = _BY_LINE.subn("", text)
            n += m
        if n:
            kinds.append("signature")
    if "@" in text or "＠" in text:
        text, n = _MENTION.subn("", text)
        if n:
            kinds.append("mention")
    if hinted and _THANKS_HINT.search(text):
        text, n = _THANKED.subn(r"\g<pre>", text)
        if n:
            kinds.append("screen_name")
    low = text.lower() if kinds else low
    for name in strip_invisible(author).split("\n") if author else ():  # the text has none left either
        pattern = name_pattern(name.strip(), low)
        if pattern:
            # not inside a tag ("cs_pro#0001"): scrub_pii takes the tag with its clause
            text, n = re.subn(pattern + r"(?!#\d)", _kept_sign_off, text, flags=re.I)
            if n:
                kinds.append("author_name")
    if handles:
        found = {t for t in _HANDLE_TOKEN.findall(text) if t.lower() in handles}
        if found:
            text = _HANDLE_TOKEN.sub(lambda m: "" if m.group(0) in found else m.group(0), text)
            kinds += [] if "screen_name" in kinds else ["screen_name"]
    return (_ORPHAN_REPLY.sub("", text) if kinds else text), kinds


_HANDLE_TOKEN = re.compile(r"(?<![A-Za-z0-9_])[A-Za-z0-9_][A-Za-z0-9_.\-]{3,}(?<![.\-])")
# where a name splits into parts: separators, letter↔digit and lower→upper ("Dark_Knight99" → Dark Knight 99)
_NAME_SPLIT = re.compile(r"[\s_.\-]+|(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])|(?<=[a-z])(?=[A-Z])")
_HAN = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
# CJK screen names built from ordinary words ("老玩家", "资深玩家", "游戏爱好者")
_GENERIC_CJK = re.compile(r"玩家|用户|用戶|游戏|遊戲|路人|萌新|新手|老手|大佬|爱好者|愛好者|粉丝|网友|主播|up主|steam", re.I)
_NAME_END = r"[ \t]*[.!。！~]*[ \t]*$"  # the rest of the line: nothing but closing punctuation
_SIGN_OFF = (r"(?P<keep>(?<![^\W\d_])(?:cheers|thanks|thank you|regards|best|peace|glhf|gl hf|enjoy|signed|sincerely|yours"
             r"|says|love|bye)[ \t,:]+)")


def name_pattern(name: str, low: str) -> str | None:
    """A regex for the author's name ``name`` as it may be written in the text, or ``None`` when its
    longest part is not in ``low`` (the lower-cased text; the cheap test first) or it is under 2
    characters. Parts split at spaces, ``_``, ``.``, ``-``, between letters and digits and at an
    inner capital may be joined by any of these or nothing ("Dark_Knight99" → "Dark Knight 99",
    "DarkKnight99", "darkknight99"); a dash or "by" right before it goes too ("—— 暗夜猎手"). Latin
    names match whole words only. A :func:`distinctive_name` matches anywhere; another name (a word
    such as "Hunter", "the", "老玩家") only where it signs the review: alone on a line, at a line's
    end after a dash, as ``@name``, or at the text's end after "by" or a sign-off ("Cheers, Hunter").
    Use it with ``re.I``; a match's ``keep`` group (the sign-off word) is to be put back."""
    if len(name) < 2 or (name.isdigit() and name not in low):
        return None  # the common case: a steam id not in the text
    parts = [p for p in _NAME_SPLIT.split(name.lower()) if p]
    if not parts or (len(parts) == 1 and parts[0] not in low) or max(parts, key=len) not in low:
        return None  # the common case: a name (or steam id) not in the text
    body = r"[\s_.\-]*".join(map(re.escape, parts))
    if name.isascii():
        body = rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])"
    if distinctive_name(name):
        return rf"(?:(?:[-—–~]+\s*|(?<![A-Za-z])by\s+)(?=\S))?{body}"
    dash = r"(?:(?:^|(?<=\s))[-—–~=]+|[-—–~=]{2,})[ \t]*"
    return (rf"(?m:^[ \t]*(?:[-—–~=_]+[ \t]*|by[ \t]+)?{body}{_NAME_END}|{dash}{body}{_NAME_END})|@{body}"
            rf"|(?:(?<![A-Za-z])by[ \t]+|{_SIGN_OFF}){body}[ \t]*[.!。！~]*\s*\Z")


def _kept_sign_off(m: re.Match[str]) -> str:
    return m.groupdict().get("keep") or ""


def distinctive_name(name: str) -> bool:
    """Whether a screen name is unlikely to be an ordinary word, so that it can be removed wherever
    it occurs: digits only (a Steam id), or 4+ characters with a digit, ``_`` or an inner capital
    ("Dark_Knight99", "xXSniperXx"); in CJK, 4+ characters without a generic word ("暗夜猎手", not
    "老玩家" or "资深玩家"). Words of any length ("Hunter", "Steam", "the", "Dark Knight") are not."""
    if name.isdigit():
        return True
    if _HAN.search(name):
        return len(name) >= 4 and not _GENERIC_CJK.search(name)
    return len(name) >= 4 and bool(re.search(r"\d|_", name) or re.search(r"[a-z][A-Z]", name))


def screen_names(authors: list[str]) -> frozenset[str]:
    """Distinctive Latin screen names among the authors (one name per line in each), lower-cased:
    4+ characters with a digit, an underscore or an inner capital ("xXSniperXx", "player_123"), not
    only digits (ids are personal data, removed by the PII rule). Plain words ("Gamer") are left out:
    they are too likely to be ordinary words in other reviews."""
    out = set()
    for names in authors:
        for name in strip_invisible(names).split("\n"):
            name = name.strip()
            if _HANDLE_TOKEN.fullmatch(name) and not name.isdigit() and distinctive_name(name):
                out.add(name.lower())
    return frozenset(out)


# --- art, checklists, too little language, loops -----------------------------------------------------

# braille, box drawing, block elements, geometric shapes, misc symbols/dingbats, emoji
_ART_CHAR = re.compile(r"[\u2800-\u28ff\u2500-\u259f\u25a0-\u25ff\u2600-\u27bf\U0001f000-\U0001faff"
                       r"/\\|_\-=+*#~^<>()\[\]{}`@$%&]")
_TWO_LETTERS = re.compile(r"[^\W\d_][^\n]*?[^\W\d_]")
_ART_UNICODE = re.compile(r"[\u2500-\u28ff\U0001f000-\U0001faff]")
_ART_ASCII = re.compile(r"[^\w\s]{8}")  # two searches: each skips ahead on its class, their alternation cannot


def strip_art(text: str) -> str:
    """Remove lines drawn rather than written: lines of 4+ visible characters that are mostly (≥ 60 %)
    braille, box-drawing/block characters, geometric symbols, emoji or ASCII drawing characters and
    hold under 2 letters (word characters other than digits and ``_``). "⣿⣿⠟⠛⣿", "░░▒▓█", "-------"
    go; "大爱梦美~~~~~~~~~~" and a line with a few emoji among words stay."""
    if not _ART_UNICODE.search(text) and not _ART_ASCII.search(text):
        return text
    out = []
    for line in text.split("\n"):
        if not _TWO_LETTERS.search(line):  # a line with words is kept without counting its characters
            visible = [c for c in line if not c.isspace()]
            if len(visible) >= 4 and sum(1 for c in visible if _ART_CHAR.match(c)) / len(visible) >= 0.6:
                continue
        out.append(line)
    return "\n".join(out).strip() if len(out) != text.count("\n") + 1 else text


_CHECK_LINE = re.compile(r"^\s*[☐☑☒✅❌✓✔✗✘□■▢▣\[\]xX]{1,3}\s*\S", re.M)


def checklist_reason(text: str) -> str | None:
    """``"checklist template"`` when 5+ lines start with a tick box (☐/☑/✅/[x]…): the copied
    "Graphics ☐ Bad ☑ Good" grids; ``None`` otherwise."""
    if "☐" not in text and "☑" not in text and "✅" not in text and "[" not in text and "□" not in text:
        return None
    return "checklist template" if len(_CHECK_LINE.findall(text)) >= 5 else None


def little_language_reason(text: str, min_share: float = 0.4, enough: int = 40) -> str | None:
    """``"few letters"`` when letters and digits (any script) are under ``min_share`` of the visible
    characters other than Steam's ``♥`` mask ("10/10 !!!!! 👍👍👍", "。。。。。"); ``None`` otherwise
    ("中文10/10，音乐9.5/10，剧情9/10" is a review), and ``None`` for a text with ``enough`` letters (a
    Han character counts as 3, about one English word) however much emoji decorates it."""
    han = han_count(text)
    if han >= min_share * len(text) or 3 * han >= enough:
        return None  # Han characters are letters, and visible characters are at most all of them
    visible = len(text) - text.count(" ") - text.count("\n") - text.count("♥")
    if visible == 0:
        return "few letters"
    letters = visible - count_chars(_NOT_LETTER, text)
    return "few letters" if letters < min_share * visible and letters + 2 * han < enough else None


_NOT_LETTER = re.compile(r"(?:[^\s\w♥]|_)+")


def repetition_reason(text: str, min_ratio: float = 0.2, min_bytes: int = 120) -> str | None:
    """``"looping"`` when the text compresses below ``min_ratio`` of its UTF-8 size with zlib (DEFLATE
    finds the repeats: "好玩好玩好玩…", "very good very good …"); texts under ``min_bytes`` pass."""
    if len(text) < min_bytes // 3:
        return None
    varied = min(0.2 * len(text), 119.5)  # more distinct characters than this: varied text does not loop
    if len(set(text[:int(1.5 * varied) + 2])) > varied or len(set(text)) > varied:  # a prefix first: it often tells
        return None
    raw = text.encode("utf-8")
    if len(raw) < min_bytes:
        return None
    return "looping" if len(zlib.compress(raw, 1)) < min_ratio * len(raw) else None


# --- length and script ------------------------------------------------------------------------------

_CJK_CHAR = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+")
_WORD = re.compile(r"[^\W\d_\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]+|\d+")


def length(text: str) -> tuple[int, str]:
    """``(n, "chars")`` for text mostly in CJK (Han, kana, Hangul), else ``(n, "words")``.

    CJK counts characters (CJK characters plus other visible non-space characters, as before);
    other scripts count words (letter or digit runs), so one bound does not cut long English."""
    if text.isascii():
        return len(_WORD.findall(text)), "words"
    if han_count(text) * 2 >= len(text):
        return len(text), "chars"  # CJK characters are at least the Han ones
    cjk = count_chars(_CJK_CHAR, text)
    if cjk * 2 >= len(text):
        return len(text), "chars"
    words = len(_WORD.findall(text))
    if cjk and cjk >= words:
        return len(text), "chars"
    return words, "words"
