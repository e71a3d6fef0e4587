"""Text cleaning rules for Steam reviews: one small function per rule.

``prepare`` runs these in order and counts, per rule, how many records each one changed or removed.
Transformations take and return ``str``; detectors return the matched reason (``str``) or ``None``.

Why our own code: the cleaning rules *are* the data pipeline, our edge. Steam's markup is BBCode
(tag list: https://steamcommunity.com/comment/Recommendation/formattinghelp), which no maintained
Python library parses the way Steam renders it; the spam/campaign, PII, slur-list and duplicate
rules are tuned to Steam review quirks (QQ-group adverts and their obfuscations, SteamID forms,
point-begging campaigns, ``♥`` masks). Language detection by script is ours (cheap and exact for
CJK); Latin-script languages go to lingua-language-detector when it is installed.
"""

from __future__ import annotations

import heapq
import html
import re
import unicodedata

import numpy as np
from steam_persona.reviews.pii import (CJK_WEB_TLD, CONTACT, DIGITS, ID_GATE, PII_GATE, PII_HINTS, PII_PATTERNS,
                                       PLUS_PHONE, SHARE_CODE, cut, digit_run, game_number, matching_view,
                                       original_span, word_at_site)
from steam_persona.reviews.text import CJK_CHAR, lowered


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
    :func:`normalize_whitespace`.
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
    """A link tag's target (group 1) left in the text when it is a shop's (`_advert_link`), so the spam rule
    sees what a reader clicking the link would; any other tag unchanged, to be stripped. Steam curator and
    group pages behind link text stay hidden: curators sign their reviews that way (labelled data keeps them)."""
    url = m.group(1)
    return f" {url} " if not _STEAM_URL.match(url) and _advert_link(url) else m.group(0)


_HTML_HREF = re.compile(r"<a\s[^<>]*?href\s*=\s*[\"']?([^\"'\s<>]+)[^<>]*>", re.I)
_HTML_BR = re.compile(r"<\s*br\s*/?\s*>|<\s*/?\s*p\s*>", re.I)
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")


def strip_html(text: str) -> str:
    """Turn HTML residue into text: ``<br>``/``<p>`` become newlines, other tags go (an advert link's target
    stays, `_keep_advert`), entities (``&amp;``, ``&quot;``, ``&#39;``) are unescaped (``html.unescape``)."""
    if "<" not in text and "&" not in text:
        return text
    text = _HTML_BR.sub("\n", text)
    text = _HTML_HREF.sub(_keep_advert, text)
    text = _HTML_TAG.sub("", text)
    return html.unescape(text)
# Spam / advertisement signals. Each pattern names one reason in the report.
_STEAM_URL = re.compile(r"^(?:https?://)?(?:www\.)?(?:steamcommunity\.com|store\.steampowered\.com|s\.team)/", re.I)
_PROMO_STEAM_URL = re.compile(r"/(?:curator|groups|gid)/", re.I)
# A site whose name joins a thing gold/item/key sellers sell to a word of selling sells something (cheapgold,
# buycoins, mmogoldshop, cheap-keys), as does a cd-key site or a known key, skin or second-hand shop. One of the
# two alone is a name like any other: thunderstore.io (mods), isthereanydeal.com (prices), coincrypt.com (a game),
# keyshortcuts.org. "key" only as a whole part of the name (monkeytype.com, hockeyref.com), and no word inside
# small, restore or golden (goldensun.fandom.com)
_SHOP_GOODS = re.compile(r"(?<![a-z])keys?|keys?(?![a-z])|gold(?!en)|coins?|gems|skins", re.I)
_SHOP_SELLING = re.compile(r"cheap|buy|sell|shop|(?<!re)store|(?<!s)mall|(?<!i)deals?", re.I)
_SHOP_HOST = re.compile(r"cdkey|g2a|g2g|kinguin|eneba|instant-gaming|gamivo|driffle|k4g\.|mmoga|playerauctions|eldorado\.gg"
                        r"|z2u\.|lootbar|tradeit\.gg|dmarket|cs\.money|hellcase|csgoempire|csgofast|skinclub|steampy"
                        r"|taobao|tb\.cn|xianyu|goofish|weidian|yangkeduo|5173|c5game|buff\.163|igxe|skinport|csgoroll"
                        r"|gamdom", re.I)
_SHOP_WORD = re.compile("|".join(r.pattern for r in (_SHOP_GOODS, _SHOP_HOST))).search  # in the lower-cased text
# a link's name: what comes before its path, without a scheme or "www"
_LINK_HOST = re.compile(r"(?:https?://)?(?:www(?:[ \t]*[\[(（{][ \t]*(?:dot|\.)[ \t]*[\])）}][ \t]*|[ \t]+dot[ \t]+|[ \t]*\.[ \t]*))?"
                        r"(?P<host>[^/?#]*)", re.I)
# the official stores of platforms and publishers are where a game is sold, not adverts (store.playstation.com)
_OFFICIAL_STORES = ("steampowered.com", "playstation.com", "nintendo.com", "xbox.com", "microsoft.com", "epicgames.com",
                    "gog.com", "ubisoft.com", "ea.com", "humblebundle.com", "apple.com", "google.com")
_COLLECT = r"领取?\S{0,4}(?:礼包|福利|激活码|兑换码|cdk|key)"
# "first N" only right before the collecting (前五十名领取; 通关前3名的关卡奖励 is a ranking), a Q not a key (按Q键)
_CALL = (r"(?:加群|进群|入群|(?<![A-Za-z])[QqＱｑ]{1,2}(?![A-Za-z键])|[QqＱｑ]{1,2}群|加我|私信|私聊|关注|点赞|转发|留言|扫码|扫描二维码"
         r"|二维码|链接|戳我|前\s*\d+\s*[名位个](?=\S{0,3}领)|前[一二三四五六七八九十百]+[名位个](?=\S{0,3}领)|先到先得|名额有限)")
# what a number of points counts in a game, after "还差 N 点" ("还差2点属性就满级了"): no begging for awards
_JA_GOODS = r"(?:(?<![ァ-ヶ])キー(?!ボード|コンフィグ|バインド|配置|操作)|(?:ゲーム|製品)キー|アカウント|スキン)"
_JA_SELLING = r"(?:販売|売ります|売ってます|売りたい|譲ります|買います|買い取り|買取|格安(?!で?(?:買|購入|手に入)))"
# an offer's way to reach or pay the seller: without one, "продаю предметы торговцу" / "スキンが販売されている" is
# trading inside the game, not an advert
_RU_CALL = (r"(?:пиш|(?<![а-яё])лс(?![а-яё])|личк|телег|(?<![a-z])tg(?![a-z])|дискорд|discord|(?<![а-яё])вк(?![а-яё])"
            r"|почт|@|дёшев|дешев|недорог|(?<![а-яё])цен[аыу](?![а-яё])|(?<![а-яё])руб|₽)")
_JA_CALL = r"(?:(?<![a-z])dm(?![a-z])|ｄｍ|詳細|プロフ|連絡|リンク|メッセージ|個別|@)"  # run on lower-cased text
_GAME_STAT = r"属性|经验|血|攻击|攻|防御|防|体力|能量|技能|魔法|生命|怒气|护甲|力量|敏捷|智力|耐力|等级|级|天赋|熟练度|好感"
SPAM_PATTERNS: dict[str, re.Pattern[str]] = {
    # a group or account *with its number / id*: "Q群000000000", "QQ群：123456", "vx: abc_123", "扣扣 一二三四五六",
    # "关注公众号"; a bare "加QQ群问问" (advice) is not an advert
    "qq_wechat_group": re.compile(
        rf"(?:[QqＱｑ]{{1,2}}\s*群|扣\s*扣\s*群|企鹅群|群号|[加进入]群|{CONTACT})\s*[:：号]?\s*{DIGITS}"
        r"|(?<![A-Za-z])[Ww]ei\s*[Xx]in\s*(?:号|[:：])?\s*(?=[A-Za-z0-9_-]*[\d_])[A-Za-z][A-Za-z0-9_-]{4,}"
        r"|(?:微信群?|微信号|薇信|[VvＶ]\s*信|[VvＶ]\s*[❤♥]|(?<![A-Za-z])(?:vx|wx|VX|WX)(?![A-Za-z]))\s*[:：号]?\s*[A-Za-z][A-Za-z0-9_-]{4,}"
        r"|关注(?:我的|我们的)?(?:微信)?公众号"),
    "phone_number": PII_PATTERNS["phone_number"],
    "referral_code": re.compile(
        r"(?:邀请码|推荐码|优惠码|返利|折扣码|用我的码|输入我的码|"
        r"(?<![A-Za-z])(?:referral|invite|promo|discount|coupon|creator)\s+(?:code|link)s?(?![A-Za-z])"
        r"|(?<![A-Za-z])use (?:my )?code\s+\w+|support-a-creator)", re.I),
    "award_begging": re.compile(
        r"请(?:给我|帮我|各位)?(?:奖励|点赞|点个赞)|求(?:个|各位|大家)?(?:奖励|点赞|打赏)|(?:奖励|点赞)(?:一下)?这(?:条|篇)"
        rf"|还差\s*\d+\s*(?:点(?!{_GAME_STAT})|分(?!钟|{_GAME_STAT})|个赞|个奖励)"
        r"|差\s*\d+\s*个(?:赞|奖励)|给个奖励|帮忙点(?:个)?赞|点(?:个)?赞再走|帮我冲|冲一下点赞|缺\S{0,8}点数|求点数|点数.{0,8}拜托"
        r"|(?<![A-Za-z])(?:give|send) (?:me )?(?:an? |some )?awards?(?![A-Za-z])|award (?:me|this|pls|please)"
        r"|(?:upvote|thumbs[- ]up|rate up) (?:this|if|pls|please)|like this (?:review|comment) if|need \d+ (?:more )?points", re.I),
    "giveaway": re.compile(
        # "giveaway" as a campaign: a headline, run by the writer, or with its entry terms; "the devs did a
        # giveaway" in a review is not one
        r"(?:^|\n)\s*(?:free\s+)?giveaways?(?![A-Za-z])|(?<![A-Za-z])(?<!a )(?<!the )giveaways?\s*[:!]"
        r"|(?<![A-Za-z])(?:my|our|hosting|running|enter|join|win)(?: (?:a|an|the|this|my|our|free|weekly|daily|key))* giveaways?(?![A-Za-z])"
        r"|(?<![A-Za-z])giveaways?(?![A-Za-z])[^.!?\n]{0,40}?(?<![A-Za-z])(?:\d+ (?:free )?(?:steam )?(?:keys?|cop(?:y|ies)|codes?)|winners?|enter|comment|follow"
        r"|sub(?:scribe)?|soon|link|dm|like|upvote)(?![A-Za-z])|give away (?:a |\d+ )(?:keys?|cop(?:y|ies)|codes?)"
        r"|free (?:steam )?keys(?![A-Za-z])|free steam key(?![A-Za-z])"
        r"|抽奖|送\s*\d*\s*[个份]?\s*(?:key|激活码|cdk)|免费送|白送|福利群|[加进入]群\S{0,2}领"
        # a reward to collect is a campaign only with a call to the readers in its sentence (join, message,
        # follow, like, scan, a link, "first N people"): 每天登录都能领取福利 is the game's own reward
        # within one clause: a call in the next clause (领取福利，剧情也值得关注) is about something else
        rf"|{_CALL}[^。！？!?\n，,；;]{{0,20}}?{_COLLECT}|{_COLLECT}[^。！？!?\n，,；;]{{0,20}}?{_CALL}", re.I),
    "trading": re.compile(
        r"收号|出号|卖号|代售|回收(?:账号|帐号|饰品|库存)|出售\S{0,6}(?:账号|帐号|饰品|key|激活码)|低价出"
        r"|(?:出售|收购|低价|代售)[^。！？\n]{0,20}(?:私聊|私信|有意(?!思|义)|联系我|加我)"
        r"|(?<![a-z])(?:wts|wtb)(?![a-z])|(?:激活码|cdk)[^。！？\n]{0,10}(?:便宜|低价|私聊|私信)"
        r"|(?<![a-z])(?:cheap|selling|sell|buy) (?:[a-z0-9]+ ){0,3}?(?:coins?|gold|items?|keys?|skins?|accounts?|gems?|currency)"
        r"(?![a-z])[^\n]{0,30}(?<![a-z])(?:pm|dm|msg|message) me(?![a-z])"
        r"|(?<![A-Za-z])(?:buying|selling|sell(?:ing)? my) (?:cheap )?(?:skins?|accounts?|keys?|items?)(?![A-Za-z])"
        r"|trade ?offers?|trade ?link|(?<!the )(?<!these )(?<!those )(?<!such )cheap (?:[a-z0-9]+ )?(?:keys?|skins?)"
        # Russian: a first-person offer to sell or buy (продаю, продам, куплю, скупаю) with the goods within three
        # words and a way to reach or pay the seller; "купил игру на распродаже" (bought) and "ключевой момент"
        # (no offer) stay
        r"|(?<![а-яё])(?:прода[юм]|продаём|куплю|скупаю|обменяю)\s+(?:[\w@-]+\s+){0,3}?(?:ключ|аккаунт|акк(?![а-яё])|скин"
        rf"|предмет|инвентар|голд|вещи)[^\n]{{0,80}}?{_RU_CALL}"
        # Japanese: keys or accounts beside a word of selling or buying in one sentence (キー, not スキー or
        # キーボード; 格安で買えた is a purchase), then a way to reach the seller; "セールで買いました" and
        # "アカウント連携" stay
        rf"|(?:{_JA_GOODS}[^。！？!?\n]{{0,12}}?{_JA_SELLING}|{_JA_SELLING}[^。！？!?\n]{{0,12}}?{_JA_GOODS})[^\n]{{0,40}}?{_JA_CALL}", re.I),
    "boosting": re.compile(
        r"接代练|代练|代打|代肝|代刷|代充|代上分|带上分|有偿\S{0,4}(?:带|代|陪)"
        r"|boosting service|(?:elo|rank|mmr) ?boost(?:ing)?(?![A-Za-z])|carry service|power ?level(?:l)?ing service", re.I),
    "stream_promo": re.compile(
        r"(?:follow|sub(?:scribe)?) (?:me )?(?:on|to) (?:my )?(?:twitch|youtube|yt|tiktok|channel|stream)"
        r"|twitch\.tv/\w+|youtube\.com/(?:c/|@|channel)|check out my (?:channel|stream|video)"
        # the writer's own stream: "Live on Twitch every night", "I'm streaming it on YouTube"; not "shown live on Twitch"
        r"|(?:^|[.!?\n]\s*)(?:i'?m |i am |we'?re )?(?:live|streaming(?: (?:it|this))?) on (?:twitch|youtube|kick)"
        r"|(?<![a-z])(?:i|we) (?:stream|am streaming|'m streaming|are streaming) (?:it |this )?[^.!?\n]{0,20}on (?:twitch|youtube|kick)"
        r"|关注我的?(?:b站|哔哩哔哩|直播间?|抖音|快手|频道|主页)|直播间\s*[:：号]?\s*\d+|(?:斗鱼|虎牙)(?:房间)?\s*[:：号]?\s*\d{3,}"
        r"|抖音号|快手号|求关注|点个关注|关注(?:我的|我们的|本)?鉴赏家|follow (?:my|our) curator", re.I),
}


# each pattern as searched in the lower-cased text: a case-sensitive search is ~10x faster than re.I
_SPAM_LOW = {name: re.compile(p.pattern) for name, p in SPAM_PATTERNS.items()}


# Every SPAM_PATTERNS match contains a match of one of these (in the lower-cased text); searching for
# them first is several times cheaper than running the full patterns on the ~90 % of reviews that
# have none. Kept as separate patterns led by a literal or one character class: re skips ahead on
# their first characters, which it cannot do for an alternation that mixes the two. Each hint is a
# callable on the lower-cased text.
_SPAM_ZH = re.compile(r"微信|薇信|威信|wei\s*xin|卫星|v\s*[信❤♥]|ｖ\s*[信❤♥]|vx|wx|公众号|q\s*群|ｑ\s*群|扣|企鹅|群号|加群|进群|入群|邀请码"
                      r"|推荐码|优惠码|折扣码|我的码|返利|代练|代打|代肝|代刷|代充|代上|代售|带上分|有偿|奖励|点赞|点个赞|个赞|帮我冲|打赏|还差|点数"
                      r"|抽奖|免费送|白送|送[\s\d个份]*(?:key|激活码|cdk)|激活码|cdk|福利|礼包|兑换码|领\S{0,5}key|收号|出号|卖号|出售|收购|回收|低价|直播|斗鱼"
                      r"|虎牙|抖音|快手|关注|鉴赏家").search
_SPAM_EN = re.compile(r"referral|invite|promo|discount|coupon|creator|code|award|upvote|thumbs|rate up|like this|points"
                      r"|give ?away|free|buying|selling|sell my|trade|cheap|wts|wtb|pm me|dm me|msg me|message me|boost|carry|power ?level|follow|subscribe"
                      r"|sub (?:me )?(?:on|to)|twitch|youtube|on kick|check out|support-a").search


_TRADE_RU_JA = r"прода[юмё]|куплю|скупаю|обменяю|販売|売り|売って|譲ります|買います|買い取り|買取|格安"
_SPAM_RU_JA = re.compile(_TRADE_RU_JA).search


def _spam_hint(low: str) -> bool:
    """Whether any spam pattern can match (hints tried cheapest first)."""
    return bool(digit_run(low) or PLUS_PHONE(low) or _SPAM_ZH(low) or _SPAM_EN(low) or _SPAM_RU_JA(low))


# what every match of each pattern contains (a text that passed _spam_hint runs only the patterns
# whose hint it has; one search per pattern is ~6x cheaper than the patterns' joint alternation)
_PATTERN_HINTS = {
    "qq_wechat_group": re.compile(r"扣|企鹅|薇信|威信|微信|xin|卫星|群号|加群|进群|入群|公众号|q|ｑ|v|ｖ|wx").search,
    "phone_number": PII_HINTS["phone_number"],
    "referral_code": re.compile(r"邀请码|推荐码|优惠码|返利|折扣码|我的码|referral|invite|promo|discount|coupon|creator|code").search,
    "award_begging": re.compile(r"奖励|点赞|点个赞|个赞|帮我冲|打赏|还差|点数|award|upvote|thumbs|rate up|like this|points").search,
    "giveaway": re.compile(r"giveaway|give away|free|抽奖|送[\s\d个份]*(?:key|激活码|cdk)|免费送|白送|福利|礼包|激活码|兑换码"
                           r"|cdk|领\S{0,5}key|加群|进群|入群").search,
    "trading": re.compile(r"收号|出号|卖号|代售|回收|出售|收购|低价|激活码|cdk|buying|selling|sell|trade|cheap|wts|wtb|pm me|dm me|msg me"
                          r"|message me|" + _TRADE_RU_JA).search,
    "boosting": re.compile(r"代练|代打|代肝|代刷|代充|代上分|带上分|有偿|boost|carry service|power").search,
    "stream_promo": re.compile(r"follow|sub|twitch|youtube|kick|check out|关注|直播|斗鱼|虎牙|抖音|快手").search,
}
assert list(_PATTERN_HINTS) == list(SPAM_PATTERNS)


def _first_spam(low: str) -> str | None:
    """The pattern whose match starts first in ``low`` (the earlier pattern on a tie), or ``None``."""
    best: tuple[int, str] | None = None
    for name, hint in _PATTERN_HINTS.items():
        if hint(low):
            if name == "phone_number":
                m = next((m for m in _SPAM_LOW[name].finditer(low) if not game_number(low, m)), None)
            else:
                m = _SPAM_LOW[name].search(low)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), name)
    return best[1] if best else None


def spam_reason(text: str, low: str | None = None) -> str | None:
    """Return why a review looks like spam or an advert, or ``None``.

    Reasons: ``qq_wechat_group`` (a QQ/WeChat group or account with its number or id, also written
    扣扣 / 企鹅 / 薇信 / V信 / V❤ or in Chinese numerals), ``phone_number`` (mainland mobile or
    international ``+CC``), ``referral_code`` (invite/promo/creator codes), ``award_begging``
    (asking for awards, upvotes, points), ``giveaway``, ``trading`` (selling accounts, skins, keys),
    ``boosting`` (代练/代充, rank boosting), ``stream_promo`` (follow my channel/stream), ``url``
    (a Steam curator/group link, or a link to a shop or key seller, also spelled out: "cheapkeys dot com").
    Other links are not adverts:
    :func:`scrub_pii` removes them from the kept text. ``low`` is ``text.lower()`` when the caller
    has it (one lower-casing for several rules).
    """
    low = text.lower() if low is None else low
    if _spam_hint(low):
        reason = _first_spam(low)
        if reason:
            return reason
    view, _ = matching_view(text)  # full-width and letter-spaced links too
    low = view.lower() if view is not text else low
    if PII_HINTS["link"](low) and (_SHOP_WORD(low) or _PROMO_STEAM_URL.search(low)) \
            and any(_advert_link(m.group(0)) for m in PII_PATTERNS["link"].finditer(view)):
        return "url"  # every advert link holds a shop word or a Steam group path: the cheap tests first
    return None


# A self-promotion footer: trailing lines after the review, each a stream_promo match, the writer's own Steam
# curator or group link, or a pointer to their other reviews, with separator lines (---, ===, ~~~) between.
# It goes and the review stays when what is left above it has real length (_FOOTER_BODY_WORDS words or
# _FOOTER_BODY_CJK CJK characters): a signature is ours to judge, not a library's.
_FOOTER_SEPARATOR = re.compile(r"[\s\-_=~*•·|]*")
_FOOTER_ONLY = re.compile(r"(?:check out|read|see|follow) my other reviews|more (?:of my )?reviews (?:on|at) my", re.I)
_FOOTER_BODY_WORDS, _FOOTER_BODY_CJK = 8, 15
_BODY_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_BODY_WORD = re.compile(r"[^\W_]+")


def strip_promo_footer(text: str) -> str:
    """``text`` without a self-promotion footer (its last lines: follow my curator / twitch / channel, a Steam
    curator or group link, "check out my other reviews"), or ``text`` unchanged when it has none or when the
    review above it is too short to stand alone (then the spam rule judges the whole text: promotion that is
    the body goes). A shop's link is an advert, never a footer."""
    lines = text.rstrip().split("\n")
    cut, promo = len(lines), False
    while cut > 1:
        line = lines[cut - 1]
        if _FOOTER_SEPARATOR.fullmatch(line):
            cut -= 1
        elif _self_promo(line):
            cut, promo = cut - 1, True
        else:
            break
    body = "\n".join(lines[:cut]).rstrip()
    if not promo or not _real_length(body):
        return text
    return body


def _self_promo(line: str) -> bool:
    """Whether one line promotes the writer: a ``stream_promo`` match, their other reviews, or Steam
    curator/group links only (``url`` for a shop's link is an advert)."""
    links = (m.group(0) for m in PII_PATTERNS["link"].finditer(matching_view(line)[0]))
    if any(not _STEAM_URL.match(u) and _advert_link(u) for u in links):
        return False
    reason = spam_reason(line)
    return reason in ("stream_promo", "url") or (reason is None and _FOOTER_ONLY.search(line) is not None)


def _real_length(body: str) -> bool:
    cjk = len(_BODY_CJK.findall(body))
    return cjk >= _FOOTER_BODY_CJK or len(_BODY_WORD.findall(_BODY_CJK.sub(" ", body))) >= _FOOTER_BODY_WORDS


def _advert_link(url: str) -> bool:
    """Whether a link (with a scheme, bare or spelled out: "cheapgold dot com") is an advert: a Steam curator or
    group page, or a shop's site (``_SHOP_HOST``, or a name with both ``_SHOP_GOODS`` and ``_SHOP_SELLING``) that
    is no platform's official store."""
    if _STEAM_URL.match(url):
        return _PROMO_STEAM_URL.search(url) is not None
    host = _LINK_HOST.match(url).group("host").lower()
    name = re.sub(r"[ \t]*(?:[\[(（{][ \t]*(?:dot|\.)[ \t]*[\])）}]|dot(?=[ \t])|[点點．｡。])[ \t]*", ".", host)
    if name in PLATFORM_DOMAINS or any(name == d or name.endswith("." + d) for d in _OFFICIAL_STORES):
        return False
    return bool(_SHOP_HOST.search(host) or (_SHOP_GOODS.search(host) and _SHOP_SELLING.search(host)))


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
    :func:`matching_view`, the cut is made in ``text``). Removed, not masked, so the model never learns a placeholder.
    A hex address (``0x14000000000``) or a build number is not a phone number.

    Every kind but ``link`` is a contact: the comma clause that holds it goes, or its whole sentence
    when every clause holds one (:func:`_drop_contacts`; "Add me: a at b dot com or X#1234." has no
    review value). A link goes with its lead-in ("Patch notes at x.com/news say" → "Patch notes say"), or with its
    clause when the clause says nothing without it ("It's on x.com, works fine." → "Works fine."; "mods are at x.com
    and they rock" → "they rock"; :func:`_scrub_links`). Platforms' and games' names written as domains stay
    ("Battle.net", "Hole.io", :func:`_kept_as_text`).

    Returns ``(text, kinds)`` where ``kinds`` lists what was removed, in :data:`PII_PATTERNS` order
    (empty when nothing was). ``low`` is ``text.lower()`` when the caller has it.
    """
    view, where = matching_view(text)
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
    return (_tidy(text) if kinds else text), kinds


def _scrub_links(text: str, view: str, where: tuple[int, ...] | None) -> str:
    """``text`` without its links and the words that only pointed at them (:func:`_links_with_leads`, found in its
    :func:`matching_view` ``view``); a link that is its clause's predicate, or all of its sentence, takes that clause
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


# a bracketed aside, with the spaces before it; brackets inside it one deep ("(mods at x(dot)com)")
_BRACKET = re.compile(r"[ \t]*(?:\((?:[^()\n]|\([^()\n]*\))*\)|（(?:[^（）\n]|（[^（）\n]*）)*）|\[[^\[\]\n]*\]|【[^【】\n]*】)")


def _bracketed_links(view: str) -> list[tuple[int, int]]:
    """The spans (sorted, in ``view``) of the bracketed asides that hold a link (:func:`_kept_as_text` ones aside), each
    with its brackets and the spaces before it: the aside goes whole and the text outside it stays ("Loved it (x.com
    has builds)." → "Loved it."; 好玩（攻略在x.com）。 → 好玩。). A cut inside it would leave a fragment in brackets."""
    links = [m.span() for m in PII_PATTERNS["link"].finditer(view) if not _kept_as_text(m)]
    return [br.span() for br in _BRACKET.finditer(view)
            if any(br.start() < a and b < br.end() and view[br.start():a].strip(" \t") for a, b in links)]


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
                out.append(_sentence_span(text, max(done, lead.start()), end))
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


def _sentence_span(text: str, a: int, b: int) -> tuple[int, int, int, bool]:
    """A cut of the whole sentence holding ``text[a:b]`` (to its terminator; :func:`_drop_contacts` drops it)."""
    starts = [m.end() for m in _SENTENCE_END.finditer(text, 0, a)]
    after = _SENTENCE_END.search(text, b)
    begin = starts[-1] if starts else 0
    return begin, begin, after.start() if after else len(text), True


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
_LEFTOVER = re.compile(r"[ \t]*[,;:，；：]?[ \t]*")


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
            r"|(?P<see>see|check(?:[ \t]+it)?[ \t]+out|visit)")
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
_FOR_DETAILS = re.compile(rf"(?:[ \t]+for(?:[ \t]+(?!(?:{_CONJUNCTIONS})(?![^\W\d_]))[^\s,;.!?，；。！？)）\]]+)+)?", re.I)
# a conjunction after a "see x.com for …": a coordinating one goes with it, a subordinating one (group "sub") makes the
# clause a fragment
_SEE_CONJUNCTION = re.compile(r"[ \t]+(?:(?:and|but|or|so|because|cause|cuz)(?:[ \t]+then)?[ \t]+"
                              r"|(?P<sub>if|when|while|unless|since|until|though|although|once|then)(?![^\W\d_]))", re.I)
_CLAUSE_START_BEFORE = re.compile(r"(?:^|[,;:.!?，；：。！？…\n(（\-])[ \t]*\Z")
# a share code whose link is gone (or was never a link): its words name nothing else
_LONE_SHARE_CODE = re.compile(rf"(?:{SHARE_CODE})[ \t]*[:：=]?[ \t]*[A-Za-z0-9]{{4,8}}(?![A-Za-z0-9])")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|[。！？…]+|\n")
_CLAUSE_END = re.compile(r"[,;，；]")
_TERMINATOR = re.compile(r"[\s.!?。！？…]*$")


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


# what removing a match can leave: space before punctuation, brackets with nothing but punctuation in them ("(Check out
# x.com.)" → "(.)"), a comma before other punctuation, a list item with nothing left ("- Check out x.com" → "-")
_TIDY = ((re.compile(r"\([\s.,;:!?]*\)|（[\s。，；：！？]*）|\[\s*\]"), ""), (re.compile(r"^[ \t]*[-*•][ \t]*(?:\n|\Z)", re.M), ""),
         (re.compile(r"[ \t]+(?=[,.;:!?，。；：！？])"), ""),
         (re.compile(r"[,;:，；：]+(?=\s*[,.;:!?，。；：！？])"), ""), (re.compile(r"^[ \t]*[,;:，；：][ \t]*", re.M), ""))


def _tidy(text: str) -> str:
    for pattern, repl in _TIDY:
        text = pattern.sub(repl, text)
    return text


#: store, platform and program names that are written as domains ("needs a Battle.net account", "made in Paint.net"):
#: kept when bare
PLATFORM_DOMAINS = {"battle.net", "itch.io", "gog.com", "ea.com", "origin.com", "ubisoft.com", "xbox.com",
                    "epicgames.com", "humblebundle.com", "steam.com", "twitch.tv", "youtube.com", "bilibili.com",
                    "reddit.com", "github.com", "discord.gg", "discord.com", "nexusmods.com", "steamdb.info", "amazon.com",
                    "paint.net"}


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
    an acronym and a sentence end), or with a top-level domain links there do not use (:data:`CJK_WEB_TLD`:
    "游戏里的npc.ai很蠢"). One with a scheme, "www", a path or a query is a link all the same (:data:`_FULL_LINK`). Shops'
    links are adverts all the same (:func:`spam_reason`)."""
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


_NOT_WORD = re.compile(r"[\W_]+")


def dedup_key(text: str) -> str:
    """Normalised text for exact-duplicate detection: NFKC, lower case, no whitespace, punctuation
    or symbols (so ``"好玩！！"`` and ``"好玩!"`` collide). Lower-cased first (the rules before have
    the lower-cased text cached)."""
    key = _NOT_WORD.sub("", lowered(text))  # punctuation first: what is left is mostly NFKC-normal already
    if not unicodedata.is_normalized("NFKC", key):
        key = _NOT_WORD.sub("", unicodedata.normalize("NFKC", key)).lower()
    return key


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

    def signature(self, key: str) -> np.ndarray | None:
        """MinHash signature (``uint64[bands*rows]``) of a normalised text, or ``None`` when it is
        shorter than ``shingle + 2`` characters."""
        sigs, _ = self.signatures([key])
        return sigs[0] if len(sigs) else None

    def signatures(self, keys: list[str], batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Signatures of many texts: ``(uint64[m, bands*rows], int64[m])``, the second holding the
        indexes in ``keys`` of the ``m`` texts long enough to shingle. Computed ``batch`` texts at a
        time in a few numpy ops (one ``(bands*rows, shingles)`` matrix per batch, the minimum per
        text by ``np.minimum.reduceat``); 128 texts keep that matrix in the CPU cache (~9 MB)."""
        parts = [self._batch(keys[s:s + batch]) for s in range(0, len(keys), batch)]
        sigs = [p for p, _ in parts if len(p)]
        rows = [idx + s for (p, idx), s in zip(parts, range(0, len(keys), batch)) if len(p)]
        if not sigs:
            return np.zeros((0, self.bands * self.rows), np.uint64), np.zeros(0, np.int64)
        return np.concatenate(sigs), np.concatenate(rows)

    def _batch(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        k = self.shingle
        lengths = np.fromiter((len(t) for t in keys), dtype=np.int64, count=len(keys))
        ok = lengths >= k + 2
        if not ok.any():
            return np.zeros((0, self.bands * self.rows), np.uint64), np.zeros(0, np.int64)
        # polynomial rolling hash of every k-character window of the concatenation, mod 2^31 - 1
        cp = np.frombuffer("".join(keys).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = len(cp) - k + 1
        hashes = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            hashes = (hashes * np.uint64(1000003) + cp[j:j + n]) % np.uint64(0x7FFFFFFF)
        # keep the windows that lie inside one text, for texts long enough to shingle
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        counts = np.where(ok, lengths - k + 1, 0)
        doc = np.repeat(np.arange(len(keys)), counts)
        pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + starts[doc]
        # one universal hash per (a, b) pair (uint64 arithmetic wraps mod 2^64); min per text, then
        # the shift (it keeps order, so the shifted minimum is the minimum of the shifted hashes)
        perm = np.multiply.outer(self._a, hashes[pos])
        perm += self._b[:, None]
        mins = np.minimum.reduceat(perm, (np.cumsum(counts) - counts)[ok], axis=1)
        mins >>= np.uint64(32)
        return np.ascontiguousarray(mins.T), np.flatnonzero(ok)

    def first_copies(self, keys: list[str]) -> list[int | None]:
        """For each text, the index of an earlier text it nearly duplicates, else ``None``.

        Texts are taken in order; a text is compared with the first *kept* (not itself a duplicate)
        earlier text sharing each of its bands, band by band, and is a duplicate of the first whose
        estimated Jaccard is ≥ ``threshold``. Texts too short to shingle are never duplicates.
        Vectorised: each text is compared with the *first* earlier text of each of its bands in one
        numpy pass; that first text is the one to compare with unless it was itself a duplicate, so
        only the texts that matched one, and the later texts sharing a band first seen in a
        duplicate, go through the text-by-text loop (:meth:`_resolve`; ~3 % of the texts).
        """
        sigs, rows = self.signatures(keys)
        out: list[int | None] = [None] * len(keys)
        if not len(sigs):
            return out
        ids, new = self._band_ids(sigs)
        first = np.where(new, -1, 0)  # per band: the first text with the same band row (-1: this text)
        for b in range(self.bands):
            where = np.full(int(ids[:, b].max()) + 1, -1, np.int64)
            where[ids[new[:, b], b]] = np.flatnonzero(new[:, b])
            first[:, b] = np.where(new[:, b], -1, where[ids[:, b]])
        for i, like in self._resolve(sigs, ids, first).items():
            out[int(rows[i])] = int(rows[like])
        return out

    def _similar(self, sigs: np.ndarray, first: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """``bool[m, bands]``: whether each text's estimated Jaccard with ``first`` (its bands' first
        texts) reaches the threshold; ``chunk`` pairs at a time (a ``chunk x bands*rows`` compare)."""
        need = self.threshold * sigs.shape[1]
        like = np.zeros(first.shape, bool)
        ti, tb = np.nonzero(first >= 0)
        for s in range(0, len(ti), chunk):
            i, b = ti[s:s + chunk], tb[s:s + chunk]
            like[i, b] = np.count_nonzero(sigs[i] == sigs[first[i, b]], axis=1) >= need
        return like

    def _resolve(self, sigs: np.ndarray, ids: np.ndarray, first: np.ndarray) -> dict[int, int]:
        """``{duplicate: the kept text it copies}`` by the text-by-text rule, visiting only the texts
        whose answer can differ from "kept": those similar to a band's first text, and those sharing a
        band row first seen in a text that turned out a duplicate (that row's owner is then the first
        kept text with it, recorded in ``owner``). Visited in text order (a heap)."""
        need = self.threshold * sigs.shape[1]
        like = self._similar(sigs, first)
        dup: dict[int, int] = {}
        owner: dict[tuple[int, int], int] = {}  # (band, row id) first seen in a duplicate -> first kept text
        by_row: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # band -> (sorted row ids, their texts)
        heap = np.flatnonzero(like.any(axis=1)).tolist()
        visited = set()
        while heap:
            i = heapq.heappop(heap)
            if i in visited:
                continue
            visited.add(i)
            for b, f in enumerate(first[i].tolist()):
                j = owner.get((b, int(ids[i, b])), -1) if f in dup else f
                if j >= 0 and (like[i, b] if j == f else np.count_nonzero(sigs[i] == sigs[j]) >= need):
                    dup[i] = j
                    break
            if i not in dup:
                for b, f in enumerate(first[i].tolist()):
                    if f in dup:
                        owner.setdefault((b, int(ids[i, b])), i)
                continue
            for b in np.flatnonzero(first[i] < 0).tolist():  # rows first seen here: their later texts
                if b not in by_row:
                    order = np.argsort(ids[:, b], kind="stable")
                    by_row[b] = ids[order, b], order
                row, order = by_row[b]
                lo, hi = np.searchsorted(row, ids[i, b], "left"), np.searchsorted(row, ids[i, b], "right")
                for t in order[lo:hi].tolist():
                    if t > i:
                        heapq.heappush(heap, t)
        return dup

    def _band_ids(self, sigs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(int64[m, bands], bool[m, bands])``: ids equal where two texts' band rows are equal, and
        whether a text is its band's first. Bands are sorted by a 64-bit mix of their rows (~3x faster
        than sorting the rows as bytes); a collision, checked for, falls back to the bytes."""
        m = len(sigs)
        ids = np.empty((m, self.bands), np.int64)
        new = np.empty((m, self.bands), bool)
        for b in range(self.bands):
            band = sigs[:, b * self.rows:(b + 1) * self.rows]
            _, first, inv = np.unique((band * self._a[:self.rows]).sum(axis=1), return_index=True, return_inverse=True)
            if not np.array_equal(band, band[first[inv.ravel()]]):
                _, first, inv = np.unique(np.ascontiguousarray(band).view(f"V{8 * self.rows}").ravel(),
                                          return_index=True, return_inverse=True)
            ids[:, b] = inv.ravel()
            new[:, b] = first[ids[:, b]] == np.arange(m)
        return ids, new
