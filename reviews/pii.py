"""What personal data looks like in a Steam review: the patterns of Steam profile links, e-mail
addresses (also spelled out), SteamIDs, friend codes, QQ/WeChat contacts, other platforms' player ids, phone
numbers (not a number the game gives), mainland ID numbers and links (:data:`PII_PATTERNS`), their cheap hints
and gates, and the view they search (:func:`matching_view`: full-width forms folded, letter-spaced domains joined).
Removing a match and the words that go with it is :mod:`~steam_persona.reviews.links`'s. Why our own code: these
forms are Steam's and the Chinese review scene's (SteamID forms, 扣扣 / 薇信 obfuscations, domains spelled out to
pass filters), which no PII library knows.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Callable

from steam_persona.reviews.text import URL_CHARS, literal_union


DIGITS = r"(?:[0-9０-９零〇一二三四五六七八九壹贰叁肆伍陆柒捌玖幺两][\s\-.·]?){5,}"
# the first five digits of every DIGITS match, written out (re runs it ~2x faster than a {5} repeat)
_NUMERAL = r"[\d零〇一二三四五六七八九壹贰叁肆伍陆柒捌玖幺两]"  # \d: also the phone numbers' digits
_FIVE_DIGITS = _NUMERAL + (r"[\s\-.·]?" + _NUMERAL) * 4
# a QQ / WeChat account named as one with 是 / is before its number or id (no lone Q: "The FAQ is 1234567 words")
_NAMED_CONTACT = r"(?<![A-Za-z])(?:QQ|qq|Qq|ＱＱ|扣\s*扣|企鹅|微信|薇信|威信|[Ww]e\s*[Cc]hat|[Ww]ei\s*[Xx]in|vx|wx|VX|WX)"
CONTACT = (r"(?:扣\s*扣|企鹅号?|[QqＱｑ]{1,2}|薇信|威信|微信|(?<![A-Za-z])[Ww]ei\s*[Xx]in(?![A-Za-z])|卫星号|[VvＶ]\s*信|[VvＶ]\s*[❤♥]|(?<![A-Za-z])(?:vx|wx|VX|WX|Vx)(?![A-Za-z]))")


_FIVE_DIGITS_RE = re.compile(_FIVE_DIGITS)


@functools.lru_cache(maxsize=4)
def digit_run(low: str) -> bool:
    """Whether ``low`` holds five digits or Chinese numerals in a row (``_FIVE_DIGITS``): a hint of the
    spam, contact, phone, SteamID and friend-code patterns, searched once per text (cached)."""
    return _FIVE_DIGITS_RE.search(low) is not None


PLUS_PHONE = re.compile(r"\+\d[\d \-.()]{7}").search  # the shortest "+CC" phone number has 8 characters after the +
_PHONE_DIGITS = re.compile(r"\d\d\d[- ]?\d\d\d\d")


def _phone_digits(low: str) -> bool:
    return digit_run(low) and _PHONE_DIGITS.search(low) is not None  # "ddd-dddd" is a five-digit run


# a number that a game gives (a seed, score, damage, gold, a count) is not a phone number: "seed 13912345678",
# "damage numbers like 18612345678", "分数 13800138000 分", "打了 400-800-8820 次": a game word earlier in its clause
# or a unit right after it; unless a way to contact someone is named near it, within 40 characters before or 30
# after ("score 13812345678, call me" is a phone number)
_GAME_NUMBER_BEFORE = re.compile(r"(?<![a-z])(?:seeds?|scores?|points?|damage|dmg|hp|gold|coins?|builds?|种子|分数|得分|伤害|血量"
                                 r"|金币|版本)(?![a-z])[^,;.!?，；。！？\n]{0,30}$")
_GAME_NUMBER_AFTER = re.compile(r"\s*(?:points?|pts|dmg|damage|gold|coins?|hp|xp|exp|分|点|次|伤害|金币|经验)")
_CONTACT_WORDS = re.compile(r"(?<![a-z])(?:call|text|phone|tel|mobile|cell|whatsapp|wechat|wx|vx|qq|add me|contact|dm|reach"
                            r"|sms)(?![a-z])|电话(?!亭)|手机|微信|加我|联系|打给|致电|号码|扣扣|v信|薇信|短信|热线")


def game_number(text: str, m: re.Match[str]) -> bool:
    """Whether the number matched by ``m`` is named, earlier in its clause or right after it, as a number the
    game gives, with no contact word (``_CONTACT_WORDS``) near it."""
    a, b = m.span()
    before = text[max(0, a - 40):a].lower()
    if not (_GAME_NUMBER_BEFORE.search(before) or _GAME_NUMBER_AFTER.match(text, b)):
        return False
    return not _CONTACT_WORDS.search(before + " " + text[b:b + 30].lower())


# Top-level domains, four lists. A bare domain may end in these (the ones that are also English words are _WORD_TLD's)
_TLD = (r"com|net|org|cn|io|gg|tv|ru|de|xyz|top|info|cc|ly|uk|jp|kr|fr|biz|site|online|app|link|nz"
        r"|eu|pl|br|es|nl|se|moe|club|vip|fun|shop|store|live|pro|ink|icu|wang|ltd|ai|tk|ml|ga|cf|gq|hk|tw|sg"
        r"|ca|au|ch|ws|su|pw|cz|ua|kz|ir|vn|th|ph")
# none of _TLD, English words too ("fun.it", "game.so"): a link only with a path after them ("youtu.be/x"), so a
# missing space after a full stop is not one
_WORD_TLD = r"me|co|be|to|us|it|in|at|id|my|so|no|is|am|do|go"
# of _TLD, the common ones that end a link spelled out to pass filters ("cheapgold dot com", "x点com")
_SPELLED_TLD = r"com|net|org|cn|ru|io|gg|xyz|top|info|biz|cc|tv|shop|store|site|online|vip|club"
# of _TLD, the ones links typed into Han, kana or Hangul text use ("公式サイトはmygame.jpです"): no file extension or
# word of game talk ("npc.ai", "xbox.live", "save.info", "ui.top", "game.app", "switch.pro", "main.cc", "texture.pl")
CJK_WEB_TLD = re.compile(r"(?:com|net|org|cn|gg|tv|io|xyz|jp|kr|tw|hk|ru|de|fr|uk)\Z").search
_ANY_DOT = r"(?:\.|。|．|｡|\s*[\[(（]\s*dot\s*[\])）]\s*|\s+dot\s+|\s*点\s*)"
_SPELLED_DOT = r"(?:\s*[\[(（]\s*dot\s*[\])）]\s*|\s+dot\s+|\s*点\s*)"
# a mail provider's dot after "at" as a word: spelled, or written with no space after it or spaces on both sides ("at qq
# .com", "at gmail . com"); a full stop with a space after it and none before ends a sentence ("stuck at 163. Top
# players finish it"). After an "@" any spacing ("kirito@163. com")
_MAIL_DOT = rf"(?:\s*[.．。｡](?!\s)|\s+[.．。｡]\s+|{_SPELLED_DOT})"
_MAIL_HOSTS = r"gmail|googlemail|qq|163|126|yeah|sina|sohu|foxmail|outlook|hotmail|live|yahoo|icloud|proton(?:mail)?|yandex|mail|gmx|aol"
# "a@b.com"; "a(at)b.com" / "a艾特b点com" with any dot; "a-at-gmail-dot-com" with a mail provider; "a at b dot com" only with a spelled-out dot
# ("the guide at fextralife.com" is a link, not an address), and only when "a" is a handle or follows a mail
# word (:func:`word_at_site`). A mail provider's domain may have spaces around its dot ("a@gmail . com"); after an "@"
# or a mail provider a word-like domain ends it too ("a at proton dot me"), in lower case and not after a full stop
# with a space ("friend@home.It works", "we saw it at live. me and…" are missing or extra spaces)
_EMAIL = (rf"[A-Za-z0-9._%+-]+(?:(?:@|＠|\s*[\[(（]\s*at\s*[\])）]\s*|\s*艾特\s*)[A-Za-z0-9-]+(?:{_ANY_DOT}[A-Za-z0-9-]+)*{_ANY_DOT}"
          rf"(?:{_TLD}|(?-i:{_WORD_TLD}))"
          rf"|\s+at\s+(?!www{_SPELLED_DOT})[A-Za-z0-9-]+(?:{_SPELLED_DOT}[A-Za-z0-9-]+)*{_SPELLED_DOT}(?:{_TLD})"
          rf"|(?:\s*(?:@|＠|[\[(（]\s*at\s*[\])）]|艾特)\s*|(?P<word_at>\s+at\s+))(?:{_MAIL_HOSTS})"
          rf"(?:(?(word_at){_MAIL_DOT}|\s*{_ANY_DOT}\s*)(?:{_TLD})|\s+dot(?:com|net|org)|(?:[.．。｡]|{_SPELLED_DOT})(?-i:{_WORD_TLD})))"
          rf"|(?<![A-Za-z0-9_-])[A-Za-z0-9._%+]+[-_]at[-_](?:{_MAIL_HOSTS})[-_]dot[-_](?:com|net|org|cn|me)"
          rf"(?![A-Za-z])")
_SPELLED_AT = re.compile(r"\s+at\s+", re.I)
_AT_MAIL_HOST = re.compile(rf"(?:{_MAIL_HOSTS})\s*{_ANY_DOT}", re.I)
_MAIL_WORD_BEFORE = re.compile(r"(?:(?<![a-z])(?:e-?mail|mail(?: me)?|contact|reach|write to)[ \t]*[:：]?|(?<![a-z])me[ \t]*[:：])[ \t]*$", re.I)


def word_at_site(text: str, m: re.Match[str]) -> bool:
    """Whether an e-mail match ``m`` is "word at site dot org" read as an address: "at" written as a word, no mail
    provider after it, a name without a digit or ``_ . % + -`` and no mail word before it ("email me at",
    "add me:"). "Patch notes at example dot org say" names a site: a link, not an address."""
    found = m.group(0)
    at = _SPELLED_AT.search(found)
    if at is None or "@" in found or "＠" in found or re.search(r"[\d_.%+-]", found[:at.start()]):
        return False
    return not _AT_MAIL_HOST.match(found, at.end()) and not _MAIL_WORD_BEFORE.search(text, max(0, m.start() - 16), m.start())


# A link spelled out to pass filters (gold sellers' campaigns): "cheapgold dot com", "cheapgold(dot)com",
# "cheapgold[.]com", "cheapgold点com", "www . site . com", "www dot buygold dot com". Only the common top-level domains, ending the
# word. The word before " dot " must be able to name a site: in "the dot com bubble", "requires dot net", "install dot
# net", "late 90s dot com vibes" or "a red dot on the map" it cannot, and those stay; nor is "dot net framework / 4.8"
# or "dot com era" a link. A 点 after a number of one or two digits is "o'clock" (凌晨 3 点 online, 9点top 路): an hour,
# no site (a site named by digits has more: 163点com, 1234点com).
_LINK_DOT = r"(?:[ \t]*[\[(（{][ \t]*(?:dot|\.)[ \t]*[\])）}][ \t]*|[ \t]+dot[ \t]+|[ \t]*[点點][ \t]*|[．｡。])"
_NOT_A_SITE = (r"the|a|an|this|that|these|those|its|his|her|my|your|our|their|of|on|in|at|to|with|via|by|for|from|into"
               r"|and|or|is|was|use|uses|using|used|need|needs|require|requires|run|runs|made|written|built|like|than|new"
               r"|old|red|green|blue|white|black|yellow|polka|little|tiny|big|small|one|single|each|every|no|any|some"
               r"|very|late|early|install|installs|installed|installing|reinstall|reinstalled|update|updates|updated"
               r"|updating|download|downloads|downloaded|downloading|repair|repaired|missing|get|gets|got|getting"
               r"|[0-9]{2,4}['’]?s")
# what follows .NET or the dot-com era written as words
_DOT_WORD_AFTER = (r"net[ \t]+(?:framework|core|runtime|sdk|desktop|redist|v?[0-9])"
                   r"|com[ \t]+(?:era|bubble|boom|bust|crash|vibes?|days|age|years|compan|startup)")
_CLOCK = r"[0-9]{1,2}[ \t]*[点點]"  # an hour: "3 点", "9点"
# a number of points: a name of digits spells a site only before com/net/org/cn ("163点com"; "999 点 top 伤害" stays)
_COUNT_POINTS = r"[0-9]+[ \t]*[点點][ \t]*(?!(?:com|net|org|cn)(?![A-Za-z0-9]))"
# a link's name starts after no letter, digit, "@", "." or "-"; Han, kana and Hangul text may touch it on either side
# ("攻略都在x.com上面", "공략은example.com에서"): those scripts write no spaces
_WORD_CHAR = r"[^\W\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]"
_NO_WORD_BEFORE = rf"(?<!{_WORD_CHAR})(?<![@.\-])"
_WWW_DOT = rf"(?:{_LINK_DOT}|[ \t]+\.[ \t]*|\.[ \t]+)"  # after www also a full stop with a space
_SPELLED_LINK = (rf"{_NO_WORD_BEFORE}(?:www{_WWW_DOT}[A-Za-z0-9-]+(?:(?:{_WWW_DOT}|\.)[A-Za-z0-9-]+)*(?:{_WWW_DOT}|\.)(?:{_TLD})"
                 rf"|(?!(?:{_NOT_A_SITE})[ \t]+dot[ \t]|[A-Za-z0-9-]+[ \t]+dot[ \t]+(?:{_DOT_WORD_AFTER})|{_CLOCK}|{_COUNT_POINTS})"
                 rf"[A-Za-z0-9-]+(?:{_LINK_DOT}[A-Za-z0-9-]+)*{_LINK_DOT}(?:{_SPELLED_TLD}))"
                 rf"(?![A-Za-z0-9])(?:/{URL_CHARS}*)?")
PII_PATTERNS: dict[str, re.Pattern[str]] = {
    # steamcommunity.com/profiles/<17 digits>/... , /id/<vanity>/... , /user/<code>; s.team/p/<code> invites
    "profile_url": re.compile(r"(?:https?://)?(?:www\.)?steamcommunity\.com/(?:profiles|id|user)/[A-Za-z0-9\-._~:/?#@!$&*+,;=%]*"
                              r"|(?:https?://)?s\.team/p/[\w-]+(?:/[\w-]+)?", re.I),
    # "name@example.com" and spelled out: "name at gmail dot com", "name(at)qq(dot)com", "name艾特qq点com"
    "email": re.compile(_EMAIL, re.I),
    # SteamID64: 7656119 + 10 digits; legacy STEAM_X:Y:Z and SteamID3 [U:1:Z] (Valve Developer Wiki, "SteamID")
    "steam_id": re.compile(r"(?<!\d)7656119\d{10}(?!\d)|STEAM_[0-5]:[01]:\d{1,10}|\[?U:1:\d{1,10}\]?"),
    # a friend code (the 32-bit account id) given as one, also spaced out ("123 456 789")
    "friend_code": re.compile(r"(?:friend\s*code|friend\s*id|好友代码|好友代碼|好友码|好友碼|好友id)\s*(?:[:：是为]|is)?\s*\d(?:[ \-]?\d){4,9}(?!\d)", re.I),
    # QQ / WeChat contacts, obfuscated: 扣扣 一二三四五, 企鹅号 1 2 3 4 5 6, V❤ abc_123
    # (also named with 是 / is: 我的QQ是123456789, 微信是 wxid_abc123, "my QQ is 2847561930")
    "contact": re.compile(rf"{CONTACT}\s*[:：号]?\s*(?:{DIGITS}|(?<=[信❤♥xX])\s*[A-Za-z][A-Za-z0-9_-]{{4,}})"
                          rf"|{_NAMED_CONTACT}\s*(?:号|號)?\s*(?:是|为|為|(?<![A-Za-z])is(?![A-Za-z]))\s*"
                          rf"(?:{DIGITS}|(?=[A-Za-z0-9_-]*[\d_])[A-Za-z][A-Za-z0-9_-]{{4,}})"),
    # other platforms' player ids: a Discord / BattleTag "name#1234", a Nintendo "SW-1234-5678-9012", an id
    # named as one ("PSN ID: kirito_99", "gamertag xXSniperXx"); "Xbox: runs fine" is not one
    # (a handle ends before a full stop: "add me on discord: kirito_99. Great game." keeps its second sentence)
    "gamer_id": re.compile(r"(?:(?<![\w#])[A-Za-z][\w.]{1,31}#\d{4,5}(?!\d)|(?<![\w-])SW(?:-\d{4}){3}(?!\d)"
                           r"|(?:(?:psn|xbox|xbl|switch|epic|discord|battle\.?net|origin|uplay|ubisoft|ea|nintendo)\s*"
                           r"(?:id|name|tag|username|user\s*name)|gamertag|battletag)\s*(?:[:：]|is)?\s*[\w.\-#]{3,32}"
                           # "my psn is kirito_99", "add me on discord: kirito99": a handle with a digit or "_"
                           r"|(?<![\w])(?:my|me on)\s+(?:psn|xbox|xbl|switch|epic|discord|battle\.?net|origin|uplay|ubisoft"
                           r"|nintendo|steam|telegram|line|kakao(?:talk)?|whatsapp|instagram|twitter)(?:\s*(?:id|name|tag|username))?"
                           r"\s*(?:[:：]|is)?\s*(?=[\w.\-#]*[\d_])[A-Za-z][\w.\-#]{2,31}"
                           # an in-game name or account id given as one: "my IGN is x_1", "UID：812345678", 游戏ID是 x99
                           r"|(?:(?<![\w])my\s+ign\s*(?:[:：]|is)?|(?<![\w])ign\s*[:：]|(?:游戏|遊戲)\s*(?:id|名|ID)|账号|帳號|帐号)"
                           r"\s*(?:是|为|[:：])?\s*(?=[\w.\-#]*[\d_])[A-Za-z0-9][\w.\-#]{2,31}"
                           r"|(?<![\w])(?:telegram|tg|whatsapp|kakao(?:talk)?|line\s*id|ig)\s*[:：]\s*@?(?=[\w.\-]*[\d_])[A-Za-z][\w.\-]{2,31}"
                           r"|(?<![\w])uid\s*(?:is|是|[:：])?\s*\d{6,12}(?!\d)|加我?好友\s*[:：]?\s*\d(?:[ \-]?\d){5,11}(?!\d)"
                           # a Discord user id (a 17-20 digit snowflake) named near the word: "Discord: 2847…", "(id 2847…)"
                           r"|(?<![\w])discord(?:\s+(?:user\s+)?id)?\s*(?:[:：]|is|\((?:\s*id)?)?\s*\d{17,20}(?!\d))(?<![.])", re.I),
    "phone_number": re.compile(r"(?<![0-9A-Za-z_.+:/#-])(?:(?:\+|00)86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?![0-9A-Za-z_]|\.[0-9A-Za-z])"
                               r"|(?<![0-9A-Za-z_.+])\+\d{1,3}[- .]?\(?\d{1,4}\)?(?:[- .]\d{2,4}){2,4}(?![0-9A-Za-z_]|\.[0-9A-Za-z])"
                               r"|(?<![0-9A-Za-z_.+])\+\d{1,3}[- .]\(?\d{1,4}\)?[- .]\d{6,10}(?![0-9A-Za-z_]|\.[0-9A-Za-z])"
                               r"|(?<![0-9A-Za-z_.+])\+\d{1,3}[- .]\d{5}[- .]\d{5}(?![0-9A-Za-z_]|\.[0-9A-Za-z])"  # India: +91 98765 43210
                               r"|\(\d{3}\) ?\d{3}-\d{4}(?!\d)|(?<![\d.-])\d{3}-\d{3}-\d{4}(?![\d-])"),
    # a mainland resident ID number (GB 11643: area, birth date, sequence, check digit)
    "id_number": re.compile(r"(?<!\d)[1-9]\d{5}(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx](?![\dA-Za-z])"),
    # other links: with a scheme or www., or bare domains ("pan.baidu.com/s/xyz", "mega.nz/file/x")
    # (a link does not end in the punctuation after it: "see x.com/news, then", "buy at x.net. Cheap")
    "link": re.compile(rf"(?:(?:https?://|www\.){URL_CHARS}+"
                       rf"|{_NO_WORD_BEFORE}(?:[A-Za-z0-9-]+\.)+(?:(?:{_TLD})(?!{_WORD_CHAR}|-|\.(?:{_WORD_CHAR}|-))(?:[/?#]{URL_CHARS}*)?"
                       rf"|(?:{_WORD_TLD})/{URL_CHARS}*)|{_SPELLED_LINK})(?<![.,;:!?])", re.I),
}
_LINK_HINT = re.compile(rf"http|www\.|\.(?:{_TLD})(?![a-z])|\.(?:{_WORD_TLD})/").search
# what every spelled-out link holds (a trie: one search)
_SPELLED_WORDS = ["www ", "www. ", "www(", "www[", "www（", "www．", "www点", "dot ", "dot)", "dot]", "dot）", "dot}",
                  "[.]", "(.)", "（.）", "{.}", "[ .", "( .", "（ .", "{ .",
                  *(f"{d}{sp}{t}" for d in "点點．｡。" for sp in ("", " ") for t in _SPELLED_TLD.split("|"))]
_SPELLED_HINT = re.compile(literal_union(_SPELLED_WORDS)).search
# Every match of a PII pattern contains a match of one of its hints in the lower-cased text: the cheap test first
_STEAM_ID_HINT = re.compile(r"steam_|u:1:").search
_FRIEND_HINT = re.compile(r"friend|好友").search
_CONTACT_ID = re.compile(r"(?:信|❤|♥|vx|wx)\s*[:：号]?\s*[a-z]").search
PII_HINTS: dict[str, Callable[[str], object]] = {
    "profile_url": re.compile(r"steamcommunity|s\.team").search,
    "email": re.compile(r"@|＠|艾特| at |\(at|\[at|（at|[-_]at[-_]").search,
    "steam_id": lambda low: (digit_run(low) and "7656119" in low) or _STEAM_ID_HINT(low),
    "friend_code": lambda low: digit_run(low) and _FRIEND_HINT(low),
    "contact": lambda low: digit_run(low) or _CONTACT_ID(low),
    "gamer_id": re.compile(r"#\d|sw-|gamertag|battletag|psn|xbox|xbl|switch|epic|discord|battle|origin|uplay|ubisoft"
                           r"|nintendo|ea ?id|ea ?name|ea ?tag|ea ?user"
                           r"|(?:my|me on) (?:steam|telegram|line|kakao|whatsapp|instagram|twitter)|my ign"
                           r"|ign\s*[:：]|uid|游戏\s*(?:id|名)|遊戲\s*(?:id|名)|账号|帳號|帐号|好友|telegram|whatsapp|kakao|line\s*id|\b(?:tg|ig)\s*[:：]").search,
    "phone_number": lambda low: _phone_digits(low) or PLUS_PHONE(low) is not None,
    "id_number": digit_run,
    "link": lambda low: _LINK_HINT(low) or _SPELLED_HINT(low),
}
# The literal part of every hint above as one trie (the rest is the five-digit run): a text with
# neither skips all of them in one search instead of one search per kind.
PII_GATE = re.compile(literal_union([
    "steamcommunity", "s.team", "@", "＠", "艾特", " at ", "(at", "[at", "（at", "-at-", "_at_", "steam_", "u:1:", "信", "❤", "♥", "vx", "wx",
    *(f"#{d}" for d in "0123456789"), *(f"+{d}" for d in "0123456789"), "sw-", "gamertag", "battletag", "psn", "xbox",
    "xbl", "switch", "epic", "discord", "battle", "origin", "uplay", "ubisoft", "nintendo",
    *(f"ea{sep}{w}" for sep in ("", " ") for w in ("id", "name", "tag", "user")), "http", "www.",
    *(f".{t}" for t in _TLD.split("|")), *(f".{t}/" for t in _WORD_TLD.split("|")), *_SPELLED_WORDS])).search
# the words of a cloud-drive share code ("提取码: abcd")
SHARE_CODE = r"提取码|提取密码|访问码|分享码|提取碼|訪問碼"
# the named-id forms' literals, a trie of their own (one trie with the above searches ~3x slower)
ID_GATE = re.compile(literal_union([
    "my steam", "me on steam", "my line", "me on line", "my ign", "ign:", "ign：", "uid", "游戏id", "游戏名", "游戏 id", "遊戲",
    "账号", "帳號", "帐号", "好友", "telegram", "whatsapp", "kakao", "instagram", "twitter", "line id", "tg:", "tg：", "ig:", "ig：",
    *SHARE_CODE.split("|")])).search


# Full-width forms (U+FF01–FF5E: "ｃｄｋｅｙｓ．ｃｏｍ", "name＠qq.com") folded to their NFKC form, which is one ASCII
# character each, so offsets in the folded text are offsets in the original
_WIDTH_FOLD = {c: unicodedata.normalize("NFKC", chr(c)) for c in range(0xFF01, 0xFF5F)}
assert all(len(v) == 1 for v in _WIDTH_FOLD.values())
_WIDE_ALNUM = re.compile(r"[０-９＠Ａ-Ｚａ-ｚ]").search  # only a full-width letter, digit or ＠ can make a link or address
# Single letters or digits with spaces, a slash or a spaced dot (also "dot", "(dot)", 点, a full-width or ideographic
# dot: "m y g u i d e 。 c o m") between them, "c d k e y s . c o m",
# "c d k e y s dot c o m" (a TLD written whole may end it: "c d k e y s . com"); joined only when they spell a domain
# (_SPACED_DOMAIN) in one case (_one_case), so "A B C of RPGs", "J. R. R. Tolkien", "10 / 10" and "F E A R . net code"
# stay as they are. A full stop with a space after it and none before ends a sentence or an abbreviation, it is no
# domain's dot: "8 p. m. Top players", "W A S D. Pro tip", "G O T Y. Top 3"
_RUN_DOT = r"(?:[ \t]+\.[ \t]*|\.(?![ \t])|[ \t]+dot[ \t]+|[ \t]*[\[(（]dot[\])）][ \t]*|[ \t]*[点點．｡。][ \t]*)"
_SPACED_RUN = re.compile(rf"(?<![A-Za-z0-9.])[A-Za-z0-9](?:(?:[ \t]+|{_RUN_DOT}|[ \t]*/[ \t]*)[A-Za-z0-9](?![A-Za-z0-9]))+"
                         rf"(?:{_RUN_DOT}(?:{_TLD})(?![A-Za-z0-9]))?", re.I)
_DOT_SPELLINGS = (".", "点", "點", "．", "。", "｡", "dot", "DOT", "Dot")  # one of them is in every run that spells a domain
_RUN_TOKEN = re.compile(r"[A-Za-z0-9]+|[.点點．。｡/]")  # in a run: what is kept of it (a dot spelling becomes ".")
_IS_CLOCK = re.compile(_CLOCK).match
_SPACED_DOMAIN = re.compile(rf"(?:[a-z0-9-]+\.)+(?:{_TLD})(?:/[a-z0-9/]*)?", re.I).fullmatch  # a path may follow


def _one_case(joined: str) -> bool:
    """Whether a joined run's letters are all lower case, or all upper case with a name of three or more characters
    (a dot spelled "DOT" is a "." by then): "W P . G G" and "E Z . G G" are game chat, "C D K E Y S . C O M" a shop."""
    letters = "".join(c for c in joined if c.isalpha())
    return letters.islower() or (letters.isupper() and len(joined.split(".", 1)[0]) >= 3)

# the cheap test first, on " " + the text: a run's second letter has a space before it (led by a character class, re
# skips ahead in C: ~2x faster than a lookbehind first)
_SPACED_PAIR = re.compile(r"[ \t][A-Za-z0-9][ \t]+[A-Za-z0-9](?![A-Za-z0-9])").search


@functools.lru_cache(maxsize=4)
def matching_view(text: str) -> tuple[str, tuple[int, ...] | None]:
    """The text the link and e-mail patterns search, and where its characters come from: full-width forms folded
    (NFKC) and letter-spaced domains joined ("c d k e y s . c o m" and "c d k e y s dot c o m" → "cdkeys.com").
    ``(view, where)``: ``view[i]`` comes from ``text[where[i]]`` (a dot spelled "dot" from its "d"); ``where`` is
    ``None`` when no run was joined (then offsets are the same). The kept text keeps its own characters: spans found
    in the view are cut from ``text`` (:func:`original_span`). Cached: the spam and personal-data rules ask about
    the same text."""
    view = text.translate(_WIDTH_FOLD) if _WIDE_ALNUM(text) else text
    if not any(d in view for d in _DOT_SPELLINGS) or not _SPACED_PAIR(" " + view):
        return view, None
    chars: list[str] = []
    where: list[int] = []
    pos = 0
    for m in _SPACED_RUN.finditer(view):
        tokens = [(t.start(), "." if t.group(0) in "点點．。｡" or t.group(0).lower() == "dot" else t.group(0))
                  for t in _RUN_TOKEN.finditer(view, m.start(), m.end())]
        joined = "".join(t for _, t in tokens)
        if " " not in m.group(0) or not _SPACED_DOMAIN(joined) or not _one_case(joined) or _IS_CLOCK(m.group(0)):
            continue
        chars += view[pos:m.start()]
        where += range(pos, m.start())
        for i, t in tokens:
            chars += t
            where += range(i, i + len(t))
        pos = m.end()
    if not pos:
        return view, None
    return "".join(chars) + view[pos:], tuple(where) + tuple(range(pos, len(view)))


def original_span(where: tuple[int, ...] | None, a: int, b: int) -> tuple[int, int]:
    """The span in the original text of the view's span ``[a, b)`` (``b > a``)."""
    return (a, b) if where is None else (where[a], where[b - 1] + 1)


def cut(text: str, spans: list[tuple[int, int]], repl: str = "") -> str:
    """``text`` with each of ``spans`` (sorted, not overlapping) replaced by ``repl``."""
    out, pos = [], 0
    for a, b in spans:
        out += [text[pos:a], repl]
        pos = b
    return "".join(out) + text[pos:]
