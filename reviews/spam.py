"""Spam and advert detection for Steam reviews (:func:`spam_reason`): QQ/WeChat group adverts and
their obfuscations, phone numbers, referral codes, award and point begging, giveaways, trading, boosting, stream
promotion, and links to shops or to Steam curator and group pages; and the self-promotion footer a review may end
with (:func:`strip_promo_footer`). Detectors return the matched reason (``str``) or ``None``. Why our own code:
the patterns are tuned to the campaigns seen in Steam reviews (point-begging, key and skin sellers), which no
library knows; cheap hint searches run first because most reviews match none.
"""

from __future__ import annotations

import re

from steam_persona.reviews.links import PLATFORM_DOMAINS
from steam_persona.reviews.pii import (CONTACT, DIGITS, PII_HINTS, PII_PATTERNS, PLUS_PHONE, digit_run, game_number,
                                       matching_view)


# Spam / advertisement signals. Each pattern names one reason in the report.
STEAM_URL = re.compile(r"^(?:https?://)?(?:www\.)?(?:steamcommunity\.com|store\.steampowered\.com|s\.team)/", re.I)
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
        # ... not an adverbial before a clause of its own ("Live on Twitch, the devs showed the roadmap") unless the
        # line goes on to invite ("Live on Twitch, the community is nice, come hang out!")
        r"(?!\s*,\s*(?:the|a|an|they|he|she|it|this|that|these|those|its|their|his|her|devs?|developers?)\b"
        r"(?![^\n]*\b(?:come|join|drop by|stop by|say hi|follow|sub(?:scribe)?|check (?:\w+ )?out)\b))"
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
    :func:`~steam_persona.reviews.links.scrub_pii` removes them from the kept text. ``low`` is ``text.lower()`` when the caller
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
            and any(advert_link(m.group(0)) for m in PII_PATTERNS["link"].finditer(view)):
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
    view = matching_view(line)[0]
    links = (m.group(0) for m in PII_PATTERNS["link"].finditer(view)) if PII_HINTS["link"](view.lower()) else ()
    if any(not STEAM_URL.match(u) and advert_link(u) for u in links):
        return False
    reason = spam_reason(line)
    return reason in ("stream_promo", "url") or (reason is None and _FOOTER_ONLY.search(line) is not None)


def _real_length(body: str) -> bool:
    cjk = len(_BODY_CJK.findall(body))
    return cjk >= _FOOTER_BODY_CJK or len(_BODY_WORD.findall(_BODY_CJK.sub(" ", body))) >= _FOOTER_BODY_WORDS


def advert_link(url: str) -> bool:
    """Whether a link (with a scheme, bare or spelled out: "cheapgold dot com") is an advert: a Steam curator or
    group page, or a shop's site (``_SHOP_HOST``, or a name with both ``_SHOP_GOODS`` and ``_SHOP_SELLING``) that
    is no platform's official store."""
    if STEAM_URL.match(url):
        return _PROMO_STEAM_URL.search(url) is not None
    host = _LINK_HOST.match(url).group("host").lower()
    name = re.sub(r"[ \t]*(?:[\[(（{][ \t]*(?:dot|\.)[ \t]*[\])）}]|dot(?=[ \t])|[点點．｡。])[ \t]*", ".", host)
    if name in PLATFORM_DOMAINS or any(name == d or name.endswith("." + d) for d in _OFFICIAL_STORES):
        return False
    return bool(_SHOP_HOST.search(host) or (_SHOP_GOODS.search(host) and _SHOP_SELLING.search(host)))
