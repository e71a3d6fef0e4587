"""``steam-train prepare``: raw Steam reviews → a clean alpaca SFT dataset (train + val files).

Pipeline (each rule counted in ``prepare_report.json``, ``prepare_report.md`` and the console
table, each switchable; :data:`RULES` is the order): read + detect formats and columns
(:mod:`steam_persona.reviews.sources`, :mod:`steam_persona.reviews.columns`) → language (field or detected) → voted_up / votes /
playtime selection → game name known → BBCode → HTML → whitespace → page residue → signatures and
handles → text art → Traditional→Simplified → empty → ``♥`` masks → spam and campaigns → identity
slurs → blocklist → PII scrub → checklists → too little language → looping → length bounds →
script check → template fields → exact duplicates → near duplicates → copypastas →
``--max_per_game`` balance → seeded train/val split → the splits, reports and optional LLaMA-Factory
registration (:func:`steam_persona.common.registry.update`) written under temp names and renamed together
(:func:`steam_persona.common.atomic.replaced_together`), the registry last.

Output records are ``{"instruction", "input", "output"}`` built with :mod:`steam_persona.common.persona`'s
templates, which reproduces the seed data's format (``../shared/data/steam_sft_sample.json``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import json
import multiprocessing
import os
import random
import re
import signal
import string
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from rich.markup import escape
from rich.table import Table

from steam_persona.common import atomic
from steam_persona.reviews import dedup
from steam_persona.reviews import language as language_mod
from steam_persona.reviews import links
from steam_persona.reviews import markup
from steam_persona.reviews import spam
from steam_persona.reviews import text as text_mod
from steam_persona.reviews import wordlist
from steam_persona.common import config
from steam_persona.reviews import noise
from steam_persona.common import persona
from steam_persona.reviews import report as prepare_report
from steam_persona.common import registry
from steam_persona.reviews import sources
from steam_persona.reviews import columns as columns_mod
from steam_persona.common.arguments import DataArguments, as_typed, not_negative_finite
from steam_persona.common.config import arg
from steam_persona.common.console import PLAIN_EVERY_S, byte_size, console, plain_progress, progress, status
from steam_persona.common.errors import STOP_SIGNALS, UserError, stop_signals_interrupt
from steam_persona.resources import packaged_copy_hint
from steam_persona.reviews.sources import Review

TEMPLATE_FIELDS = ("name", "tags", "verdict", "playtime_hours")
_STEAM_LANGUAGES = frozenset(language_mod.STEAM_LANGUAGES)


@functools.lru_cache(maxsize=65536)  # a few names, many reviews
def _clean_name(name: str) -> str:
    """A game name as the prompt shows it: no control, escape or invisible characters
    (:func:`~steam_persona.reviews.text.strip_invisible`), then :func:`~steam_persona.common.persona.clean_game_name`."""
    return persona.clean_game_name(text_mod.strip_invisible(name))


def _control_token(r: Review) -> str | None:
    """The first chat-template control string in the review or its verbatim prompt
    (:func:`~steam_persona.reviews.text.control_token`), or ``None``."""
    return next(filter(None, map(text_mod.control_token, (r.text, *(r.prompt or ())))), None)


@dataclass
class PrepareConfig:
    """Settings of ``steam-train prepare`` (= its flags = its YAML keys)."""

    inputs: list[str] = arg([], "Review files or folders: CSV/TSV, JSON, JSON Lines or Parquet (gzip allowed): "
                            "Steam API reviews, store-page scrapes, survey exports, collect JSONL, appdetails, "
                            "alpaca/sharegpt.", positional=True)
    columns: str = arg("", "Map your columns to ours: FIELD=COLUMN,… with fields review, voted_up, playtime_hours, "
                       "playtime_minutes, language, appid, app_name, tags, votes_up, review_id, author, author_id, "
                       "timestamp_updated, timestamp_created "
                       "(e.g. review=评论,voted_up=推荐,playtime_hours=游戏时长,author=用户名; in YAML also a "
                       "mapping, {review: 评论}).", pairs=True)
    appid: str | None = arg(None, "App id for records that have none (a file of one game's reviews).")
    app_name: list[str] = arg([], "Game name: NAME for every record without one (one game), or APPID=NAME "
                              "(repeatable).")
    app_names: str | None = arg(None, "CSV (appid,name[,tags]) or JSON ({appid: name} or appdetails) naming games.")
    tags: str = arg("", "Tags for records without any, comma-separated (e.g. \"动作, 狩猎\").")
    drop_unknown_game: bool = arg(True, "Drop reviews whose game has no name; False keeps them with a prompt "
                                  "that names no game.")
    out: str = arg("data/steam_sft_train.json", "Output alpaca JSON array (train split), a .json file; the val "
                   "split goes beside it (_train → _val, else <stem>_val.json).")
    val_size: float = DataArguments.use("val_size", 0.05)
    register: str | None = arg(None, "Add/update this LLaMA-Factory dataset_info.json (train as --name, val as "
                               "<name>_val).")
    name: str = arg("steam_reviews", "Dataset name for --register (train's --dataset; no commas, path separators "
                    "or surrounding spaces).")
    report: str | None = arg(None, "Report JSON path; unset = prepare_report.json beside --out.")
    encoding: str = DataArguments.use("encoding")
    language: list[str] = arg(["schinese"], "Keep reviews in these languages: Steam codes (schinese, english, …) "
                              "or aliases (zh, chinese, en, ja, ru, …); 'all' keeps every language.")
    detect_language: bool = arg(True, "Records without a language field: detect it from the text (script; "
                                "lingua-language-detector for Latin-script languages when installed).")
    to_simplified: bool = arg(False, "Convert Traditional Chinese to Simplified (opencc) before the language check.")
    script_check: bool = arg(False, "Also check the text's script fits --language (Han for Chinese, Latin for "
                             "English, …; drops Traditional text under schinese).")
    min_chars: int = arg(10, "Drop CJK reviews shorter than this after cleaning (characters).")
    max_chars: int = arg(3000, "Drop CJK reviews longer than this after cleaning (characters; the default is about "
                         "the tokens of --max_words 1500, see docs/data.md); 0 = no limit. A text far over the bounds as read "
                         "(10x; 1,000,000 characters when either is 0) is dropped before cleaning.")
    min_words: int = arg(3, "Drop reviews in other scripts shorter than this after cleaning (words).")
    max_words: int = arg(1500, "Drop reviews in other scripts longer than this after cleaning (words); 0 = no limit.")
    min_votes_up: int = arg(0, "Keep reviews with at least this many helpful votes (0 = off; unknown counts "
                            "are dropped when on).",
                            check=not_negative_finite)
    min_playtime_hours: float = arg(0.0, "Keep reviews whose author played at least this long (hours; 0 = off; "
                                    "unknown playtime is dropped when on).",
                                    check=not_negative_finite)
    voted_up: str = arg("any", "Keep recommending (true), not recommending (false) or any reviews.",
                        choices=("any", "true", "false"))
    max_per_game: int = arg(0, "Keep at most this many reviews per game, sampled with --seed (0 = no cap).",
                            check=not_negative_finite)
    preprocessing_num_workers: int = arg(1, "Processes for the per-record rules; 0 = one per CPU (at most 8). "
                                         "Inputs under 20,000 reviews use one.")
    seed: int = DataArguments.use("seed", note="It seeds the validation split.")
    prompt_language: str = arg("auto", "Language of the default templates, tag names and {verdict} words; "
                               "auto = each review's own (zh for Chinese, en for the others), and for tag names "
                               "and reviews of unknown language en when no --language is Chinese, else zh.",
                               choices=("auto", "zh", "en"))
    instruction_template: str = arg("", "Instruction format with {name} {tags} {verdict} {playtime_hours}; "
                                    "empty = the persona's (请以资深玩家的身份，点评一下《{name}》这款游戏。).")
    input_template: str = arg("", "Input format, same fields; empty = the persona's (游戏类型标签：{tags}). The "
                              "input is left empty when it uses {tags} and none are known.")
    max_tags: int = arg(0, "Use at most this many tags per game, the most voted first (0 = all known).",
                        check=not_negative_finite)
    strip_bbcode: bool = arg(True, "Strip Steam BBCode, keeping spoiler/quote/list text.")
    strip_html: bool = arg(True, "Turn <br> and block tags into newlines, drop <script>/<style> and other HTML "
                                 "tags, unescape entities.")
    normalize_whitespace: bool = arg(True, "Remove zero-width characters, soft hyphens (emoji ZWJ sequences "
                                      "stay), control characters (NUL…) and lone surrogates (half an emoji), normalise \\r\\n and lone \\r, collapse space runs, trim.")
    strip_page_residue: bool = arg(True, "Remove store-page residue: date headers (发布于 / Posted), 最后编辑于, "
                                   "early-access / free-product banners, helpfulness counts, hrs on record.")
    strip_handles: bool = arg(True, "Remove cross-post signatures (——来自小黑盒用户…的评价), @mentions and the "
                              "author's own name.")
    strip_art: bool = arg(True, "Remove lines of braille / box-drawing / emoji / ASCII art.")
    drop_empty: bool = arg(True, "Drop reviews that are empty after cleaning.")
    drop_control_tokens: bool = arg(True, "Drop reviews holding a chat template's control string (<|im_end|>, "
                                    "<|eot_id|>, </s>, [INST] …), which a model could learn as a turn marker.")
    drop_masked: bool = arg(False, "Drop reviews with Steam's ♥♥♥ profanity mask (kept as is by default).")
    drop_spam: bool = arg(True, "Drop adverts and campaigns: QQ/WeChat contacts, phone numbers, referral codes, "
                          "award begging, giveaways, trading, boosting (代练/代充), stream promotion, shop links. "
                          "Wording rules read Chinese and English; trading also Russian and Japanese. A self-promotion "
                          "footer (follow my curator / twitch) under a real review is cut and the review kept.")
    drop_identity_slurs: bool = arg(True, "Drop reviews with a slur about people's ethnicity, nationality, sexual "
                                    "orientation, gender identity or disability (reviews/lists/identity_slurs.txt).")
    blocklist: str | None = arg(None, "Your own word list file (one per line, # comments): drop reviews containing any.")
    scrub_pii: bool = arg(True, "Remove personal data and links from kept text: Steam profile/invite links, SteamIDs, "
                          "friend codes, e-mails, QQ/WeChat contacts, other platforms' player ids, phone and ID numbers, "
                          "other links and domains.")
    drop_checklists: bool = arg(False, "Drop ☐/☑ checklist templates (\"Graphics ☐ Bad ☑ Good\" grids).")
    drop_little_language: bool = arg(True, "Drop texts that are mostly symbols, digits or emoji (letters < 40 %).")
    drop_repetition: bool = arg(True, "Drop looping texts (\"好玩好玩好玩…\"; zlib ratio < 0.2).")
    dedup: bool = arg(True, "Drop exact duplicates (after normalising case, width, spaces and punctuation). Older "
                            "versions of a review read again edited or reposted go whatever this is.")
    near_dedup: bool = arg(True, "Drop near duplicates (MinHash over 5-character shingles).")
    near_dup_threshold: float = arg(0.8, "Estimated Jaccard similarity at which a review is a near duplicate.")
    copypasta_games: int = arg(3, "Drop every copy of a text (exact or near) found under this many games or more: "
                               "copypastas; 0 = off.")


# Rule names in pipeline order (the report and the table list them in this order).
RULES = ("language", "voted_up", "min_votes_up", "min_playtime_hours", "unknown_game", "strip_bbcode",
         "strip_html", "normalize_whitespace", "page_residue", "handles", "art", "to_simplified", "empty",
         "control_tokens", "profanity_mask", "promo_footer", "spam", "identity_slur", "blocklist", "scrub_pii", "checklist", "little_language",
         "repetition", "too_short", "too_long", "script", "template_fields", "exact_duplicate", "near_duplicate",
         "copypasta", "max_per_game")
_TRANSFORMS = {"strip_bbcode", "strip_html", "normalize_whitespace", "page_residue", "handles", "art",
               "to_simplified", "promo_footer", "scrub_pii"}
#: the flag that changes each rule (for the console warning, the report and error hints)
FLAGS = {
    "language": "--language set to your reviews' language (e.g. english; all keeps every language)", "strip_bbcode": "--strip_bbcode False",
    "strip_html": "--strip_html False", "normalize_whitespace": "--normalize_whitespace False",
    "page_residue": "--strip_page_residue False", "handles": "--strip_handles False", "art": "--strip_art False",
    "to_simplified": "--to_simplified False", "scrub_pii": "--scrub_pii False", "voted_up": "--voted_up any",
    "min_votes_up": "--min_votes_up 0", "min_playtime_hours": "--min_playtime_hours 0",
    "unknown_game": "--app_name NAME / --app_name APPID=NAME / --app_names FILE / an appdetails input (steam-train "
                    "collect --appid ID --details_only True fetches it when Steam still lists the app), "
                    "or --drop_unknown_game False",
    "empty": "--drop_empty False", "control_tokens": "--drop_control_tokens False", "profanity_mask": "--drop_masked False", "promo_footer": "--drop_spam False", "spam": "--drop_spam False",
    "identity_slur": "--drop_identity_slurs False", "blocklist": "a shorter --blocklist",
    "checklist": "--drop_checklists False", "little_language": "--drop_little_language False",
    "repetition": "--drop_repetition False", "too_short": "--min_chars / --min_words",
    "too_long": "--max_chars 0 / --max_words 0", "script": "--script_check False",
    "template_fields": "--instruction_template / --input_template", "exact_duplicate": "--dedup False",
    "near_duplicate": "--near_dedup False or a higher --near_dup_threshold", "copypasta": "--copypasta_games 0",
    "max_per_game": "--max_per_game 0",
}


#: how much of a text the report's examples mask before they show its first 100 characters: masking costs time
#: and memory in proportion to the text, and the masks shorten it (a 200-character link becomes ``▇``)
_EXAMPLE_MASKED = 10_000


@dataclass
class _Stat:
    removed: int = 0
    changed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)

    def example(self, r: Review, reason: str = "", text: str | None = None, lists: tuple[Any, ...] = (),
                handles: frozenset[str] = frozenset()) -> None:
        """Keep 2 examples for the report (100 characters; personal data, handles, the author and the words of
        ``lists`` masked, :func:`mask`)."""
        if len(self.examples) < 2:
            shown = mask((text if text is not None else r.text)[:_EXAMPLE_MASKED], r.author, lists, handles)
            self.examples.append({"where": r.where, "text": shown[:100],
                                  **({"reason": reason} if reason else {})})


def mask(text: str, author: str | None = None, lists: tuple[Any, ...] = (), handles: frozenset[str] = frozenset()) -> str:
    """``text`` with personal data, links, ``@name`` mentions, cross-post signatures, other authors' screen names (``handles``, lower-cased:
    :func:`~steam_persona.reviews.noise.screen_names`) and the author's name replaced by ``▇`` and the words of
    ``lists`` (:class:`~steam_persona.reviews.wordlist.WordList`: slurs, blocklist) shown as ``n*****``
    (report examples). Invisible characters go first (:func:`~steam_persona.reviews.text.strip_invisible`), so
    ``n\u200bigger`` or a name split by a soft hyphen is masked in the examples of the rules that see it
    before ``normalize_whitespace`` removes them."""
    text = links.mask_pii(text_mod.strip_invisible(text))
    if "@" in text or "＠" in text:
        text = noise._MENTION.sub("▇", text)
    text = noise._SIGNATURE.sub("▇", text)
    if handles:
        text = noise._HANDLE_TOKEN.sub(lambda m: "▇" if m.group(0).lower() in handles else m.group(0), text)
    for name in (author or "").split("\n"):
        pattern = noise.name_pattern(name.strip(), text.lower())
        if pattern:
            text = re.sub(pattern, lambda m: (m.groupdict().get("keep") or "") + "▇", text, flags=re.I)
    for words in lists:
        text = words.mask(text)
    return text


def _mask_word(word: str) -> str:
    return word[0] + "*" * (len(word) - 1) if len(word) > 1 else "*"


#: the most characters a text may have as read when --max_chars or --max_words is 0 (no limit after cleaning)
RAW_CHARS_CAP = 1_000_000
#: how many times the length bounds a text may have as read: markup and links that cleaning removes, and
#: :data:`_CHARS_PER_WORD` characters a word
_RAW_FACTOR = 10
_CHARS_PER_WORD = 8


def raw_limit(cfg: PrepareConfig) -> int:
    """The most characters a review may have as read, before cleaning: :data:`_RAW_FACTOR` times the larger length
    bound (``--max_chars``, ``--max_words`` at :data:`_CHARS_PER_WORD` characters a word), or
    :data:`RAW_CHARS_CAP` when either bound is 0."""
    if _capped(cfg):
        return RAW_CHARS_CAP
    return _RAW_FACTOR * max(cfg.max_chars, _CHARS_PER_WORD * cfg.max_words)


def _capped(cfg: PrepareConfig) -> bool:
    """Whether a text as read is bounded by :data:`RAW_CHARS_CAP` alone (``--max_chars`` or ``--max_words`` is 0)."""
    return not (cfg.max_chars and cfg.max_words)


def _cap_reason() -> str:
    """The ``too_long`` reason of a text over :data:`RAW_CHARS_CAP`, which no flag changes."""
    return f"over the fixed {RAW_CHARS_CAP:,}-character cap as read"


def _field_reason() -> str:
    """The ``too_long`` reason of a CSV record with a field over :data:`sources.CSV_FIELD_LIMIT` (not read), which no
    flag changes."""
    return f"over the {sources.CSV_FIELD_LIMIT:,}-character CSV field limit"


def _raw_input(r: Review) -> tuple[Any, ...]:
    """What the per-record rules read of a record: two records with equal ones get the same cleaned text, language and
    length and are removed by the same rule for the same reason (``where`` only labels the report's examples; ``tags``,
    ``review_id`` and ``updated`` are read after those rules). The numbers' types are part of it, as ``True == 1``."""
    return (r.text, r.appid, r.game_name, r.language, r.author, r.prompt, r.prompt_language, r.voted_up, r.votes_up,
            r.playtime_hours, type(r.voted_up), type(r.votes_up), type(r.playtime_hours))


#: a count :meth:`_Rules._count` made: (rule, removed, reasons, note, the example's text or "" when none was taken)
_Event = tuple[str, bool, tuple[str, ...], str, str]
#: what :meth:`_Rules.per_record` made of a record: (result, cleaned text or None when unchanged, language, length,
#: counts)
_Outcome = tuple[tuple[str | None, str], str | None, str | None, tuple[int, str] | None, tuple[_Event, ...]]


class _Rules:
    """Per-record rules with their counters. ``apply`` returns the removing rule's name or ``None``."""

    def __init__(self, cfg: PrepareConfig, blocklist: Any, slurs: Any, languages: set[str] | None,
                 latin_detector: Any = None, simplify: Callable[[str], str] | None = None) -> None:
        self.cfg = cfg
        self.stats = {r: _Stat() for r in RULES}
        self.languages = languages
        self.blocklist = blocklist
        self.slurs = slurs
        self.word_lists = tuple(w for w in (slurs, blocklist) if w is not None)  # masked in report examples
        self.latin = latin_detector
        self.simplify = simplify
        self.uses = _template_fields(cfg)
        self.seen: dict[str, Review] = {}  # dedup key → its first record
        self.files: dict[str, set[str]] = {}  # dedup key of a text with copies → the input files it came in
        self.games: dict[str, set[str]] = {}  # dedup key of a copied text → games its copies were written for
        self.older: dict[int, tuple[str, str]] = {}  # id() of a record another version of one review supersedes → why, kept
        self.review_of: dict[int, int] = {}  # id() of a record of a review read more than once → that review's number
        self.notes: list[str] = []  # warnings about records kept apart (:meth:`find_older_versions`)
        self.warned: set[str] = set()  # rules already reported as removing > 1/5
        self.handles: frozenset[str] = frozenset()  # every author's distinctive screen name
        self.arrived: str | None = None  # the text of the record per_record is on, as it arrived (report examples)
        self.near = dedup.NearDuplicates(threshold=cfg.near_dup_threshold, seed=cfg.seed) if cfg.near_dedup else None
        self.copies: dict[int, int] = {}  # id() of a record whose raw input another has too → id() of its first
        self.memo: dict[int, _Outcome] = {}  # id() of such a first record → what the per-record rules made of it
        self.events: list[_Event] | None = None  # the counts of the record being memoized, as made

    def _count(self, rule: str, r: Review, removed: bool, reasons: tuple[str, ...], note: str, text: str) -> None:
        """Count a removal or a change of ``r`` by ``rule``: its ``reasons`` tallied, ``note`` and ``text`` shown in the
        report's examples while the rule has fewer than 2; noted in :attr:`events` while a record is memoized."""
        st = self.stats[rule]
        if removed:
            st.removed += 1
        else:
            st.changed += 1
        st.reasons.update(reasons)
        shown = len(st.examples) < 2
        if shown:
            st.example(r, note, text, lists=self.word_lists, handles=self.handles)
        if self.events is not None:
            self.events.append((rule, removed, reasons, note, text if shown else ""))

    def _drop(self, rule: str, r: Review, reason: str = "", note: str = "") -> str:
        """Count a removal (``reason`` is tallied; ``note``, else ``reason``, shows in the report's examples)."""
        arrived = r.text if self.arrived is None else self.arrived
        self._count(rule, r, True, (reason,) if reason else (), note or reason, arrived)
        return rule

    def _transform(self, rule: str, r: Review, fn: Callable[[str], str]) -> None:
        new = fn(r.text)
        if new != r.text:
            self._count(rule, r, False, (), "", r.text)
            r.text = new

    def _scrubbed(self, rule: str, r: Review, text: str, kinds: list[str]) -> None:
        """Count a scrubbing rule that removed ``kinds`` of things from ``r`` and keep its ``text``."""
        if kinds:
            self._count(rule, r, False, tuple(kinds), ",".join(kinds), r.text)
            r.text = text_mod.normalize_whitespace(text) if self.cfg.normalize_whitespace else text

    def find_copies(self, reviews: list[Review]) -> None:
        """Note the records whose raw input (:func:`_raw_input`) an earlier record has too, and those first records:
        :meth:`per_record` runs the rules once for each such input (re-fetched pages of a scraper's dump)."""
        first: dict[tuple[Any, ...], int] = {}
        self.copies = {}
        for r in reviews:
            i = first.setdefault(_raw_input(r), id(r))
            if i != id(r):
                self.copies[id(r)] = self.copies[i] = i

    def fresh_stats(self) -> None:
        """New counters (a worker's chunk), and a new memo: a memoized record keeps the text of a report example only
        where it took one, which is all its copies need as long as the counters it was counted in are kept (a rule
        that had its 2 examples then has them still)."""
        self.stats = {n: _Stat() for n in RULES}
        self.memo = {}

    def per_record(self, r: Review) -> tuple[str | None, str]:
        """The rules that look at one record alone (safe to run in worker processes), text cleaned
        in place: ``(the removing rule's name or None, the dedup key of a kept record or "")``. A copy of an earlier
        record's raw input (:meth:`find_copies`) takes that record's outcome and counts, its own ``where`` in the
        report's examples: these rules read nothing but the record, the settings and the authors' screen names.
        The rules that depend on the records around one (exact and near duplicates, copypastas, ``--max_per_game``)
        run for every copy; of the counts here only the report's examples depend on order (the first two),
        and a copy takes one exactly where its own run would have (:meth:`fresh_stats`)."""
        first = self.copies.get(id(r))
        if first is None:
            return self._rules(r)
        done = self.memo.get(first)
        if done is not None:
            return self._replay(r, done)
        arrived, self.events = r.text, []
        try:
            result = self._rules(r)
            self.memo[first] = (result, None if r.text is arrived else r.text, r.language, r.length, tuple(self.events))
        finally:
            self.events = None
        return result

    def _replay(self, r: Review, done: _Outcome) -> tuple[str | None, str]:
        """``r`` as the rules left its first copy, counted as that one was (:meth:`per_record`)."""
        result, text, r.language, r.length, events = done
        if text is not None:
            r.text = text
        for rule, removed, reasons, note, shown in events:
            self._count(rule, r, removed, reasons, note, shown)
        return result

    def _rules(self, r: Review) -> tuple[str | None, str]:
        self.arrived = r.text  # a dropped record's example shows what the cuts left nothing of
        try:
            rule = self._oversize(r) or self._select(r) or self._clean(r) or self._filter(r) or self._measure(r)
        finally:
            self.arrived = None
        return rule, dedup.dedup_key(r.text) if rule is None and (self.cfg.dedup or self.near is not None) else ""

    def _oversize(self, r: Review) -> str | None:
        """``too_long`` before any rule reads the text, for a text far longer than the length bounds let through
        (:func:`raw_limit`): every rule costs time and memory in proportion to a text's length. A CSV record with a
        field over the CSV field limit (``over_limit``, not read) is dropped for it."""
        if r.over_limit:
            return self._drop("too_long", r, _field_reason())
        limit = raw_limit(self.cfg)
        if len(r.text) > limit:
            return self._drop("too_long", r, _cap_reason() if _capped(self.cfg) else f"over {limit:,} characters as read")
        return None

    def _select(self, r: Review) -> str | None:
        cfg = self.cfg
        if r.language is not None and r.language not in _STEAM_LANGUAGES:
            r.language = language_mod.steam_language(r.language) or r.language  # "en", "English" in exports
        if self.languages is not None and r.language is not None and r.language not in self.languages:
            return self._drop("language", r, r.language)
        if cfg.voted_up != "any" and r.voted_up is not (cfg.voted_up == "true"):
            return self._drop("voted_up", r, "unknown" if r.voted_up is None else str(r.voted_up).lower())
        if cfg.min_votes_up > 0 and (r.votes_up is None or r.votes_up < cfg.min_votes_up):
            return self._drop("min_votes_up", r, "unknown" if r.votes_up is None else "")
        if cfg.min_playtime_hours > 0 and (r.playtime_hours is None or r.playtime_hours < cfg.min_playtime_hours):
            return self._drop("min_playtime_hours", r, "unknown" if r.playtime_hours is None else "")
        if cfg.drop_unknown_game and r.prompt is None and not (r.game_name and _clean_name(r.game_name)):
            return self._drop("unknown_game", r, f"app {r.appid}" if r.appid else NO_APPID)
        return None

    def _clean(self, r: Review) -> str | None:
        cfg = self.cfg
        if cfg.strip_bbcode:
            self._transform("strip_bbcode", r, markup.strip_bbcode)
        if cfg.strip_html:
            self._transform("strip_html", r, markup.strip_html)
        if cfg.normalize_whitespace:
            self._transform("normalize_whitespace", r, text_mod.normalize_whitespace)
        if cfg.strip_page_residue:
            self._transform("page_residue", r, noise.strip_page_residue)
        if cfg.strip_handles:
            self._scrubbed("handles", r, *noise.strip_handles(r.text, r.author, self.handles))
        if cfg.strip_art:
            self._transform("art", r, noise.strip_art)
        if self.simplify is not None:
            self._transform("to_simplified", r, self.simplify)
        if cfg.drop_empty and not r.text.strip():
            return self._drop("empty", r)
        if self.languages is not None and r.language is None and cfg.detect_language and r.prompt is None \
                and r.prompt_language is None:  # alpaca/sharegpt sets are re-cleaned, not re-selected
            r.language = language_mod.detect_language(r.text, self.latin)
            if not _fits(r.language, self.languages):
                return self._drop("language", r, f"detected {r.language}")
        return None

    def _filter(self, r: Review) -> str | None:
        cfg = self.cfg
        low = text_mod.lowered(r.text)  # one lower-casing for the spam, slur, blocklist and PII rules
        token = cfg.drop_control_tokens and _control_token(r)
        if token:
            return self._drop("control_tokens", r, token)
        if cfg.drop_masked and text_mod.has_profanity_mask(r.text):
            return self._drop("profanity_mask", r)
        if cfg.drop_spam:
            self._transform("promo_footer", r, spam.strip_promo_footer)
            low = text_mod.lowered(r.text)
            reason = spam.spam_reason(r.text, low)
            if reason:
                return self._drop("spam", r, reason)
        if self.slurs is not None:
            hit = self.slurs.find(r.text, low)
            if hit:
                return self._drop("identity_slur", r, f"{hit[0]}: {_mask_word(hit[1])}")
        if self.blocklist is not None:
            word = wordlist.blocked_word(r.text, self.blocklist, low)
            if word:
                return self._drop("blocklist", r, word.lower())
        if cfg.scrub_pii:
            self._scrubbed("scrub_pii", r, *links.scrub_pii(r.text, low))
        if cfg.drop_checklists and noise.checklist_reason(r.text):
            return self._drop("checklist", r)
        if cfg.drop_little_language and r.text and noise.little_language_reason(r.text):
            return self._drop("little_language", r)
        if cfg.drop_repetition and noise.repetition_reason(r.text):
            return self._drop("repetition", r)
        return None

    def _measure(self, r: Review) -> str | None:
        """Length bounds, script check and template fields."""
        cfg = self.cfg
        n, unit = r.length = noise.length(r.text)
        low, high = (cfg.min_chars, cfg.max_chars) if unit == "chars" else (cfg.min_words, cfg.max_words)
        if n < low:
            return self._drop("too_short", r, unit)
        if high and n > high:
            return self._drop("too_long", r, unit)
        if cfg.script_check and self.languages:
            # a record without a language field must fit one of the languages asked for
            whys = [language_mod.script_mismatch(r.text, lang) for lang in ([r.language] if r.language else sorted(self.languages))]
            if all(whys):
                return self._drop("script", r, whys[0])
        if r.prompt is None:
            if "verdict" in self.uses and r.voted_up is None:
                return self._drop("template_fields", r, "verdict unknown")
            if "playtime_hours" in self.uses and r.playtime_hours is None:
                return self._drop("template_fields", r, "playtime unknown")
        return None

    def find_older_versions(self, reviews: list[Review]) -> None:
        """Note the reviews read twice (the same app and review id, e.g. two collects of an app with an edit between
        them, or the same app and author: :func:`_one_review_groups`) and their texts as read, for
        :meth:`choose_versions` once the per-record rules have run."""
        self.older = {}
        self.groups, clashes = _one_review_groups(reviews)
        self.notes = _clash_warning(reviews, clashes)
        for line in self.notes:
            console.print("[bold yellow]warning[/] " + escape(line))
        for n, group in enumerate(self.groups):
            self.review_of.update((id(reviews[i]), n) for i in group)
        self.raw_texts = {i: reviews[i].text for group in self.groups for i in group}

    def choose_versions(self, reviews: list[Review], passed: list[bool]) -> None:
        """Which copy of each review read more than once is kept, among the copies that ``passed`` the per-record
        rules (an edit down to "." or into another language loses no review that an earlier version of it gives),
        else among all: the latest by :attr:`Review.updated` of those that have a timestamp (a tie: the last read),
        else the last read (an append-only dump's newest). Each other copy with another text (as read) gets the
        reason that says which (:data:`OLDER_VERSION`, :data:`REPOSTED`, :data:`UNDATED`, and where the kept copy
        is), for :meth:`exact_duplicate` to drop it; copies with the kept one's text are left to the text key."""
        for group in self.groups:
            pool = [i for i in group if passed[i]] or group
            dated = [i for i in pool if reviews[i].updated is not None]
            k = max(dated, key=lambda i: (reviews[i].updated, i)) if dated else pool[-1]
            keep = reviews[k]
            for i in group:
                if self.raw_texts[i] != self.raw_texts[k]:
                    self.older[id(reviews[i])] = UNDATED if reviews[i].updated is None else OLDER_VERSION \
                        if reviews[i].review_id and reviews[i].review_id == keep.review_id else REPOSTED, keep.where
        self.raw_texts = {}

    def exact_duplicate(self, r: Review, key: str) -> str | None:
        """The rule that needs the records before this one (in input order): exact duplicates by
        their dedup ``key``, tallied as :data:`OTHER_FILE` when the text had not yet come in this record's file, and
        older versions of a review read again with other text (:meth:`find_older_versions`; whatever ``--dedup``)."""
        if id(r) in self.older:
            why, kept = self.older[id(r)]
            return self._drop("exact_duplicate", r, why, note=f"{_SUPERSEDED[why]}; kept: {kept}")
        if self.cfg.dedup:
            first = self.seen.get(key)
            if first is None:
                self.seen[key] = r
                return None
            self.games.setdefault(key, {_game(first)}).add(_game(r))
            files = self.files.setdefault(key, {_file(first)})
            where = OTHER_FILE if _file(r) not in files else READ_AGAIN if self._one_review(first, r) else "same file"
            files.add(_file(r))
            return self._drop("exact_duplicate", r, where, note=f"copy of {first.where}")
        return None

    def _one_review(self, a: Review, b: Review) -> bool:
        """Whether two records are copies of one review (:func:`_one_review_groups`)."""
        return self.review_of.get(id(a), -1) == self.review_of.get(id(b), -2)

    def near_duplicates(self, kept: list[Review], keys: list[str]) -> list[Review]:
        """Second pass: drop near duplicates (signatures computed in batches, first copy kept), then
        copypastas: texts whose copies (exact or near) appear under ``--copypasta_games`` games or more,
        every copy dropped. Game sets are kept only for texts with copies (most have none)."""
        games: dict[int, set[str]] = {}  # kept index → games of the text, its exact copies and its near copies
        out = []
        if self.near is not None:
            for i, (r, like) in enumerate(zip(kept, self.near.first_copies(keys))):
                if like is None:
                    out.append(i)
                else:
                    have = games.get(like) or games.setdefault(like, set(self.games.get(keys[like], ())) | {_game(kept[like])})
                    have.add(_game(r))
                    self._drop("near_duplicate", r, note=f"near copy of {kept[like].where}")
        else:
            out = list(range(len(kept)))
        n = self.cfg.copypasta_games
        result = []
        for i in out:
            count = len(games.get(i) or self.games.get(keys[i]) or ()) or 1
            if n and count >= n:
                self._drop("copypasta", kept[i], f"{min(count, 10)}{'+' if count >= 10 else ''} games")
            else:
                result.append(kept[i])
        return result


@functools.lru_cache(maxsize=16)
def _fields(template: str) -> frozenset[str]:
    """The ``{field}`` names of a format string (cached: one template, many records)."""
    return frozenset(f for _, f, _, _ in string.Formatter().parse(template) if f is not None)


def _template_fields(cfg: PrepareConfig) -> set[str]:
    used = set()
    for lang in ("zh", "en"):
        for t in _templates(cfg, lang):
            used.update(f for _, f, _, _ in string.Formatter().parse(t) if f is not None)
    return used


#: instructions for reviews of an unknown game (``--drop_unknown_game False``)
NAMELESS_INSTRUCTION = {"zh": "请以资深玩家的身份，点评一下这款游戏。", "en": "As a veteran gamer, review this game."}


def prompt_language(cfg: PrepareConfig) -> str:
    """``--prompt_language``, with ``auto`` = ``en`` when no ``--language`` is Chinese (or 'all'), else ``zh``."""
    if cfg.prompt_language != "auto":
        return cfg.prompt_language
    langs = {language_mod.steam_language(x) or x for x in cfg.language}
    return "zh" if langs & {"schinese", "tchinese", "all"} or not langs else "en"


def _review_prompt_language(r: Review, cfg: PrepareConfig) -> str | None:
    """With ``--prompt_language auto``, a review's own language picks its prompt's: ``zh`` for
    Chinese, ``en`` for any other language (the persona has prompts in these two); a review without
    a language (none given, ``--language all``) is told by its script; ``None`` for text without letters
    (then :func:`prompt_language`)."""
    if cfg.prompt_language != "auto":
        return None
    language = r.language or language_mod.detect_language(r.text)
    if language is None:
        return None
    return "zh" if language in ("schinese", "tchinese") else "en"


def _templates(cfg: PrepareConfig, lang: str | None = None) -> tuple[str, str]:
    """(instruction, input) templates: the flags, else the persona's for ``lang`` (a record's own
    prompt language when it came from alpaca/sharegpt) or :func:`prompt_language`."""
    lang = lang or prompt_language(cfg)
    return (cfg.instruction_template or (persona.INSTRUCTION_TEMPLATE if lang == "zh" else persona.INSTRUCTION_TEMPLATE_EN),
            cfg.input_template or (persona.INPUT_TEMPLATE if lang == "zh" else persona.INPUT_TEMPLATE_EN))


def _check_config(cfg: PrepareConfig) -> None:
    for flag, t in zip(("--instruction_template", "--input_template"), _templates(cfg)):
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError as e:
            raise UserError(f"{flag}: bad format string ({e}); write fields as {{name}}") from None
        bad = [f for f in fields if f not in TEMPLATE_FIELDS]
        if bad:
            raise UserError(f"{flag}: unknown field {{{bad[0]}}}; use {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}")
    if cfg.val_size < 0 or (cfg.val_size >= 1 and cfg.val_size != int(cfg.val_size)):
        raise UserError(f"--val_size {as_typed(cfg.val_size)}: give a fraction in (0, 1) or a whole record count")
    if cfg.min_chars < 0 or cfg.max_chars < 0 or (cfg.max_chars and cfg.max_chars < cfg.min_chars):
        raise UserError(f"--min_chars {cfg.min_chars} / --max_chars {cfg.max_chars}: need 0 <= min <= max (max 0 = no limit)")
    if cfg.min_words < 0 or cfg.max_words < 0 or (cfg.max_words and cfg.max_words < cfg.min_words):
        raise UserError(f"--min_words {cfg.min_words} / --max_words {cfg.max_words}: need 0 <= min <= max (max 0 = no limit)")
    if cfg.copypasta_games < 0 or cfg.copypasta_games == 1:
        raise UserError(f"--copypasta_games {cfg.copypasta_games}: must be 0 (off) or 2 or more")
    if cfg.preprocessing_num_workers < 0:
        raise UserError(f"--preprocessing_num_workers {cfg.preprocessing_num_workers}: must be 0 (one per CPU) or more")
    if not 0 < cfg.near_dup_threshold <= 1:
        raise UserError(f"--near_dup_threshold {cfg.near_dup_threshold}: give a value in (0, 1]")
    if cfg.register:
        _check_name(cfg.name)
    for item in cfg.app_name:
        appid, sep, name = item.partition("=")
        if sep and not (appid.strip() and name.strip()) or not item.strip():
            raise UserError(f"--app_name {item!r}: write NAME (one game) or APPID=NAME, e.g. --app_name 570=Dota 2")


def _check_name(name: str) -> None:
    """``--name`` is usable as ``--dataset NAME`` later: not empty, no surrounding spaces, no comma (train's
    ``--dataset`` splits on commas), no path separator."""
    if not name:
        raise UserError("--register needs --name (the dataset name in dataset_info.json)")
    bad = "surrounding spaces" if name != name.strip() else \
        "a comma (train's --dataset splits names on commas)" if "," in name else \
        "a path separator" if "/" in name or "\\" in name else None
    if bad:
        fix = re.sub(r"[,/\\\s]+", "_", name.strip()).strip("_") or "steam_reviews"
        raise UserError(f"--name {name!r}: a dataset name may not have {bad}; give e.g. --name {fix}")


def _render(r: Review, cfg: PrepareConfig, default_lang: str) -> dict[str, str]:
    """One alpaca record in the persona's prompt format. Every field that came from an input file loses its control,
    escape and invisible characters, as the review did (:func:`~steam_persona.reviews.text.strip_invisible`)."""
    if r.prompt is not None:
        instruction, input_text = (text_mod.strip_invisible(p) for p in r.prompt)
        return {"instruction": instruction, "input": input_text, "output": r.text}
    tags = [t for t in (text_mod.strip_invisible(t).strip() for t in r.tags or []) if t]
    tags = tags[: cfg.max_tags] if cfg.max_tags > 0 else tags
    lang = r.prompt_language or _review_prompt_language(r, cfg) or default_lang
    words = persona.VERDICT_WORDS[lang]
    values = {
        "name": _clean_name(r.game_name or ""),
        "tags": persona.TAG_SEPARATOR.join(tags),
        "verdict": words[r.voted_up] if r.voted_up is not None else "",
        "playtime_hours": r.playtime_hours if r.playtime_hours is not None else "",
    }
    instruction_t, input_t = _templates(cfg, lang)
    if not values["name"] and not cfg.instruction_template:
        instruction_t = NAMELESS_INSTRUCTION[lang]
    input_text = "" if (not tags and "tags" in _fields(input_t)) else input_t.format(**values)
    return {"instruction": instruction_t.format(**values), "input": input_text, "output": r.text}


def _write_records(path: Path, records: list[dict[str, str]]) -> None:
    """Write records atomically as ``json.dumps(records, ensure_ascii=False, indent=2)`` would
    (the seed file's layout), one record at a time, quoting each string with the C encoder that ``json.dumps``
    uses for a lone ``str`` (``indent`` makes ``json`` fall back to its pure-Python encoder, ~5x slower on 100k
    records, and a ``json.dumps`` call per value builds an encoder each time)."""
    quote = json.encoder.encode_basestring  # type: ignore[attr-defined]
    items = ("  {\n" + ",\n".join(f"    {quote(k)}: {quote(v)}" for k, v in r.items()) + "\n  }" for r in records)
    atomic.write_chunks(path, itertools.chain(["[\n"], _separated(items, ",\n"), ["\n]\n"]) if records else ["[]\n"])


def _separated(items: Iterable[str], sep: str) -> Iterator[str]:
    """``sep.join(items)`` in pieces."""
    for i, item in enumerate(items):
        yield sep + item if i else item


def val_path(out: Path) -> Path:
    """``data/x_train.json`` → ``data/x_val.json``; ``data/x.json`` → ``data/x_val.json``."""
    stem = out.stem[: -len("_train")] if out.stem.endswith("_train") else out.stem
    return out.with_name(f"{stem}_val{out.suffix or '.json'}")


def _split(n: int, cfg: PrepareConfig) -> set[int]:
    if cfg.val_size <= 0 or n < 2:
        return set()
    k = int(cfg.val_size) if cfg.val_size >= 1 else max(1, round(n * cfg.val_size))
    if k >= n:
        raise UserError(f"--val_size {as_typed(cfg.val_size)}: {k} validation records would leave no training data "
                        f"({n} records kept); lower it")
    return set(random.Random(cfg.seed).sample(range(n), k))


def _balance(kept: list[Review], cfg: PrepareConfig, stat: _Stat) -> list[Review]:
    if cfg.max_per_game <= 0:
        return kept
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(kept):
        key = r.appid or _clean_name(r.game_name or "") or (r.prompt[0] if r.prompt else "")
        groups.setdefault(key, []).append(i)
    rng = random.Random(cfg.seed)
    keep: set[int] = set()
    for key, idx in groups.items():
        chosen = idx if len(idx) <= cfg.max_per_game else rng.sample(idx, cfg.max_per_game)
        keep.update(chosen)
        if len(idx) > cfg.max_per_game:
            stat.reasons[key] += len(idx) - cfg.max_per_game
    stat.removed = len(kept) - len(keep)
    return [r for i, r in enumerate(kept) if i in keep]


def _print_table(stats: dict[str, _Stat], read: int, kept: int) -> None:
    table = Table(title="prepare: what each rule did", title_justify="left")
    table.add_column("rule", style="bold")
    table.add_column("removed", justify="right")
    table.add_column("changed", justify="right")
    table.add_column("reviews", justify="right")
    table.add_column("details")
    table.add_row("read", "", "", f"{read:,}", "")
    for name in RULES:
        st = stats[name]
        if st.removed or st.changed:
            details = prepare_report.reasons_text(st.reasons, 4, name)
            table.add_row(name, f"{st.removed:,}" if st.removed else "", f"{st.changed:,}" if st.changed else "",
                          "", details)
    table.add_row("kept", "", "", f"{kept:,}", "")
    console.print(table)


def _languages(cfg: PrepareConfig) -> set[str] | None:
    """``--language`` as Steam codes (aliases resolved); ``None`` for ``all``.

    Raises:
        UserError: a name that is neither a Steam code nor an alias (the message lists the codes).
    """
    if any(x.strip().lower() == "all" for x in cfg.language):
        return None
    out = set()
    for name in cfg.language:
        code = language_mod.steam_language(name)
        if code is None:
            raise UserError(f"--language {name}: not a Steam language; use all or one of {', '.join(language_mod.STEAM_LANGUAGES)} "
                            "(aliases such as zh, chinese, en, ja, ru also work)")
        out.add(code)
    return out


def _load_lists(cfg: PrepareConfig) -> tuple[Any, Any]:
    """(``--blocklist`` regex or ``None``, identity-slur list or ``None``)."""
    blocklist = None
    if cfg.blocklist:
        try:
            blocklist = wordlist.load_blocklist(cfg.blocklist)
        except FileNotFoundError:
            raise UserError(f"{cfg.blocklist}: blocklist file not found; check --blocklist"
                            f"{packaged_copy_hint(cfg.blocklist)}") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{cfg.blocklist}: byte {e.start} is not UTF-8; save the blocklist as UTF-8") from None
        if blocklist is None:
            raise UserError(f"{cfg.blocklist}: blocklist has no words; add one per line or drop --blocklist")
    return blocklist, wordlist.WordList(wordlist.IDENTITY_SLURS) if cfg.drop_identity_slurs else None


def _flag_apps(cfg: PrepareConfig, tag_language: str) -> tuple[dict[str, sources.AppInfo], str | None]:
    """Names from ``--app_name APPID=NAME`` and ``--app_names FILE``; and the one ``--app_name NAME``."""
    apps: dict[str, sources.AppInfo] = {}
    single = None
    if cfg.app_names:
        apps.update(sources.read_app_names(Path(cfg.app_names), tag_language, cfg.encoding))
    for item in cfg.app_name:
        appid, sep, name = item.partition("=")
        if sep and columns_mod.steam_appid(appid):
            apps[columns_mod.steam_appid(appid)] = sources.AppInfo(name=name.strip())
        elif single is not None:
            raise UserError(f"--app_name {item}: a second name without an app id; write APPID=NAME for each game")
        else:
            single = item.strip()
    if cfg.appid and single:
        apps.setdefault(_flag_appid(cfg), sources.AppInfo(name=single))
    return apps, single


def _outputs(cfg: PrepareConfig) -> tuple[Path, Path, Path]:
    """The train, val and report JSON paths of this run (the val path whether or not a split is asked for)."""
    out = Path(cfg.out)
    return out, val_path(out), Path(cfg.report) if cfg.report else out.parent / "prepare_report.json"


#: an input this large says it is being read (a spinner, or one plain line without a terminal): 100 MB take minutes
BIG_INPUT_BYTES = 20 * 2**20


def _flag_appid(cfg: PrepareConfig) -> str | None:
    """``--appid`` as :func:`~steam_persona.reviews.columns.steam_appid` reads it (``５７０``, a store URL), else as
    given (another catalogue's id)."""
    return columns_mod.steam_appid(cfg.appid) or cfg.appid if cfg.appid else None


def _reading(path: Path) -> contextlib.AbstractContextManager[Any]:
    """``reading FILE (SIZE) …`` while an input of :data:`BIG_INPUT_BYTES` or more is read; a gzip file's size
    decompressed (:func:`~steam_persona.reviews.sources.gzip_size`, a lower bound) is said and counted too."""
    size, unpacked = path.stat().st_size, sources.gzip_size(path)
    if max(size, unpacked or 0) < BIG_INPUT_BYTES:
        return contextlib.nullcontext()
    return status(f"reading {path} ({byte_size(size)}"
                  + (f", at least {byte_size(unpacked)} decompressed)" if unpacked is not None else ")"))


def _unread_times(reviews: list[Review]) -> list[str]:
    """The warning, once per file, about timestamps that could not be read (those records count as undated)."""
    bad = [r for r in reviews if r.unread_time is not None]
    if not bad:
        return []
    return [f"{bad[0].where}: timestamp {bad[0].unread_time!r} is not a Unix time, ISO-8601 or RFC 2822 date; "
            f"{_were(len(bad), 'record', 'records')} of this file count as undated (the latest dated copy of a "
            "review is kept, else the last read)"]


def _load(cfg: PrepareConfig) -> tuple[list[sources.Loaded], list[Review], list[str]]:
    """Read every input and fill game names/tags from appdetails inputs, CSV rows and the flags; also the notes on
    the files skipped (for the report's warnings)."""
    columns = columns_mod.parse_columns(cfg.columns) if cfg.columns else None
    tag_language = prompt_language(cfg)
    loaded = []
    skipped: list[str] = []
    for path in sources.expand_inputs(cfg.inputs, _earlier_outputs(cfg), skipped):
        with _reading(path):
            item = sources.read(path, tag_language, cfg.encoding, columns)
        console.print(f"[green]detected[/] {item.describe()}")
        item.warnings += _unread_times(item.reviews)
        for line in item.warnings:
            console.print("[bold yellow]warning[/] " + escape(line))
        loaded.append(item)
    apps: dict[str, sources.AppInfo] = {}
    for item in loaded:  # metadata from appdetails files and CSV rows fills reviews' names and tags
        for appid, info in item.apps.items():
            have = apps.setdefault(appid, sources.AppInfo())
            have.name = have.name or info.name
            have.tags = have.tags or info.tags
    flagged, single = _flag_apps(cfg, tag_language)
    for appid, info in flagged.items():  # the flags win over the files
        have = apps.setdefault(appid, sources.AppInfo())
        have.name, have.tags = info.name or have.name, info.tags or have.tags
    tags = [t.strip() for t in cfg.tags.replace("，", ",").split(",") if t.strip()] or None
    reviews = [r for item in loaded for r in item.reviews]
    for r in reviews:
        if r.prompt is not None:
            continue
        r.appid = r.appid or _flag_appid(cfg)
        info = apps.get(r.appid) if r.appid else None
        if info is not None:
            r.game_name = r.game_name or info.name
            r.tags = r.tags or info.tags
        r.game_name = r.game_name or single
        r.tags = r.tags or tags
    return loaded, reviews, skipped


def _simplifier(cfg: PrepareConfig) -> Callable[[str], str] | None:
    if not cfg.to_simplified:
        return None
    try:
        import opencc
    except ImportError:
        raise UserError("--to_simplified needs opencc; pip install opencc-python-reimplemented") from None
    return opencc.OpenCC("t2s").convert


#: Steam's Latin-script languages as lingua names (``brazilian``/``latam`` share Portuguese/Spanish)
_LINGUA = {"english": "ENGLISH", "german": "GERMAN", "french": "FRENCH", "spanish": "SPANISH", "latam": "SPANISH",
           "portuguese": "PORTUGUESE", "brazilian": "PORTUGUESE", "italian": "ITALIAN", "polish": "POLISH",
           "dutch": "DUTCH", "danish": "DANISH", "norwegian": "BOKMAL", "swedish": "SWEDISH", "finnish": "FINNISH",
           "czech": "CZECH", "hungarian": "HUNGARIAN", "romanian": "ROMANIAN", "turkish": "TURKISH",
           "vietnamese": "VIETNAMESE", "indonesian": "INDONESIAN"}


def _latin_detector(languages: set[str] | None) -> Any:
    """A lingua detector over Steam's Latin-script languages (low-accuracy mode: measured 0.5 ms a
    review, see docs/data.md) when lingua is installed and a Latin-script language is asked for."""
    if not (languages or set()) & language_mod.LATIN_LANGUAGES:
        return None
    try:
        from lingua import Language, LanguageDetectorBuilder
    except ImportError:
        return None
    langs = sorted({getattr(Language, name) for name in _LINGUA.values()}, key=lambda lang: lang.name)
    return LanguageDetectorBuilder.from_languages(*langs).with_low_accuracy_mode().build()


def _fits(detected: str | None, wanted: set[str]) -> bool:
    """Whether a detected language is one asked for (``latin`` = any Latin-script one; lingua's
    Portuguese/Spanish/Norwegian stand for Steam's brazilian/latam variants too)."""
    if detected is None or detected in wanted:
        return True
    if detected == "latin":
        return bool(wanted & language_mod.LATIN_LANGUAGES)
    return any(_LINGUA.get(w, "").lower() == detected or (w == "norwegian" and detected == "bokmal") for w in wanted)


#: below this many reviews one process is faster than starting workers
PARALLEL_MIN_REVIEWS = 20_000
_CHUNK = 4_000
_WORKER: tuple[_Rules, list[Review]] | None = None  # the forked workers' copy of the rules and reviews


_Result = tuple[str | None, str]  # (removing rule or None, dedup key)


def _per_record_chunk(start: int) -> tuple[list[tuple[_Result, str | None, str | None, Any]], dict[str, _Stat]]:
    """Worker: the per-record rules on the reviews from ``start`` (read from the forked parent's list,
    so nothing is pickled on the way in); (result, the cleaned text or None when unchanged, language,
    length) each, and the counts."""
    assert _WORKER is not None
    rules, reviews = _WORKER
    rules.fresh_stats()
    out = []
    for r in reviews[start:start + _CHUNK]:
        text = r.text
        out.append((rules.per_record(r), None if r.text is text else r.text, r.language, r.length))
    return out, rules.stats


def _merge_stats(into: dict[str, _Stat], part: dict[str, _Stat]) -> None:
    for name, st in part.items():
        have = into[name]
        have.removed += st.removed
        have.changed += st.changed
        have.reasons.update(st.reasons)
        have.examples.extend(st.examples[: max(0, 2 - len(have.examples))])


def worker_pool(workers: int) -> Any:
    """A pool of ``workers`` forked processes (they read the parent's rules and reviews: :data:`_WORKER`)."""
    return multiprocessing.get_context("fork").Pool(workers)


def _per_record_results(reviews: list[Review], rules: _Rules, workers: int) -> Iterator[tuple[int, list[_Result]]]:
    """``(start, per-record results of reviews[start:start+n])`` chunk by chunk, in input order; with
    ``workers`` > 1 (and enough reviews) in forked worker processes, the changed texts copied back."""
    chunks = range(0, len(reviews), _CHUNK)
    if workers <= 1 or len(reviews) < PARALLEL_MIN_REVIEWS:
        for start in chunks:
            yield start, [rules.per_record(r) for r in reviews[start:start + _CHUNK]]
        return
    global _WORKER
    _WORKER = rules, reviews
    try:
        with worker_pool(workers) as pool:
            for start, (out, stats) in zip(chunks, pool.imap(_per_record_chunk, chunks)):
                _merge_stats(rules.stats, stats)
                for r, (_, text, language, length) in zip(reviews[start:start + _CHUNK], out):
                    r.text, r.language, r.length = r.text if text is None else text, language, length
                yield start, [result for result, _, _, _ in out]
            # the workers end by themselves: the pool's exit (``terminate``) would send them SIGTERM, whose
            # inherited Python handler raises ``KeyboardInterrupt``, which Python drops in a finalizer: a worker
            # then waited on its task queue for ever and the run hung
            pool.close()
            pool.join()
    finally:
        _WORKER = None


#: the plain progress line's count: records through the per-record rules (the duplicate rules come after).
_PASSED = "passed the per-record rules"


def _clean_all(reviews: list[Review], rules: _Rules, workers: int = 1) -> tuple[list[Review], list[str]]:
    """Run the rules with a progress bar; (kept, their dedup keys).
    The per-record rules run in ``workers`` processes; then which version of a review read more than once is kept
    (:meth:`_Rules.choose_versions`, which needs every version's outcome) and the exact duplicates are found in this
    one, in input order. A rule that has removed more than a fifth of the reviews seen is reported at once."""
    results: list[_Result] = []
    shown_at, passed = time.monotonic(), 0
    with progress() as bar:
        task = bar.add_task("cleaning", total=len(reviews))
        for start, chunk in _per_record_results(reviews, rules, workers):
            results += chunk
            passed += sum(rule is None for rule, _ in chunk)
            bar.update(task, completed=len(results))
            if time.monotonic() - shown_at >= PLAIN_EVERY_S:  # without a terminal no bar is shown
                shown_at = time.monotonic()
                plain_progress("cleaning", len(results), len(reviews), {_PASSED: f"{passed:,}"})
            if len(results) < len(reviews):
                _warn_big_rules(rules.stats, len(results), rules.warned, so_far=True)
    rules.choose_versions(reviews, [rule is None for rule, _ in results])
    kept = [(r, key) for r, (rule, key) in zip(reviews, results) if (rule or rules.exact_duplicate(r, key)) is None]
    return [r for r, _ in kept], [key for _, key in kept]


#: the ``exact_duplicate`` reason of an older version of a review whose edited text came in too (same app and id)
OLDER_VERSION = "older version of a review"
#: the ``exact_duplicate`` reason of a version of a review that could not be ordered by time (it has no timestamp)
UNDATED = "version of a review without a timestamp to order it"
#: the ``exact_duplicate`` reason of a review that its author's later review of the same app replaced (a new id)
REPOSTED = "earlier review by the same author of the game"
#: what the report says of a record dropped as each kind of older version
_SUPERSEDED = {OLDER_VERSION: "a later edit of this review (same app and review id) came in too",
               REPOSTED: "a later review of this app by the same author (steam id) came in too; Steam keeps one "
                         "review per account and app",
               UNDATED: "another version of this review (same app and review id or author id) came in too and this "
                        "copy has no timestamp; the latest dated copy is kept, else the last read"}
#: the ``exact_duplicate`` reason of a copy of a review that its file holds again (a re-fetch, or a repost of the text)
READ_AGAIN = "copy of a review read again (same app and review id or author)"
#: the ``exact_duplicate`` reason of a copy of a review read from another input file
OTHER_FILE = "in another input file"
#: the reason of an ``unknown_game`` removal without an app id
NO_APPID = "no app id"


def _one_review_groups(reviews: list[Review]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """The indexes, in input order, of each review read more than once: records of the same app and review id, or of
    the same app and known author id (Steam keeps one review per account and app: a review deleted and written
    again gets a new id), and those linked through either; and the pairs of records of one app and review id left
    apart because they name different known authors (:func:`_other_authors`)."""
    root: dict[int, int] = {}  # index → an index of its group (a union-find forest)

    def top(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    first: dict[tuple[str, str, str], int] = {}
    clashes: list[tuple[int, int]] = []
    for i, r in enumerate(reviews):
        if not r.appid or r.prompt is not None:
            continue
        for key in ((r.appid, "id", r.review_id), (r.appid, "author", r.author_id)):
            if key[2]:
                root.setdefault(i, i)
                k = first.setdefault(key, i)
                if _other_authors(reviews[k], r):
                    clashes.append((k, i))
                    continue
                j = top(k)
                root[max(j, top(i))] = min(j, top(i))
    groups: dict[int, list[int]] = {}
    for i in root:
        groups.setdefault(top(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1], clashes


def _other_authors(a: Review, b: Review) -> bool:
    """Whether two records name two different known authors (never one review, whatever their review ids say)."""
    return bool(a.author_id and b.author_id and a.author_id != b.author_id)


def _clash_warning(reviews: list[Review], clashes: list[tuple[int, int]]) -> list[str]:
    """The warning, once, about records of one app and review id by different authors (kept apart)."""
    if not clashes:
        return []
    a, b = (reviews[i] for i in clashes[0])
    more = f" ({len(clashes) - 1:,} more such pair(s))" if len(clashes) > 1 else ""
    return [f"{a.where} and {b.where} have the same app and review id {b.review_id} but different author steam ids: "
            f"both are kept as reviews of their own{more}"]


def _file(r: Review) -> str:
    """The input file a review came from: its ``where`` up to the first ``": "``."""
    return r.where.split(": ", 1)[0]


def _game(r: Review) -> str:
    return _clean_name(r.game_name) if r.game_name else "(verbatim prompt)" if r.prompt else "(unknown game)"


def _warn_big_rules(stats: dict[str, _Stat], read: int, warned: set[str], so_far: bool = False) -> list[str]:
    """Warnings for rules that removed more than a fifth of ``read`` reviews (also in the report);
    printed unless already printed for that rule."""
    lines = []
    for name in RULES:
        n = stats[name].removed
        if read and n > read / 5:
            seen = f"the first {read:,}" if so_far else f"{read:,}"
            lines.append(f"rule '{name}' removed {n:,} of {seen} reviews ({n / read:.0%}); "
                         + _big_rule_fix(name, stats[name]))
            if name not in warned:
                warned.add(name)
                console.print(f"[bold yellow]warning[/] {lines[-1]}")
    return lines


def _big_rule_fix(name: str, st: _Stat) -> str:
    """What to do about a rule that removed many: its flag; for the ``exact_duplicate`` removals that leave each
    review once (:data:`_KEPT_ONCE`: copies in other input files, older versions of edited reviews), which copy was
    kept, and the flag only for the other copies."""
    if name == "unknown_game" and st.reasons[NO_APPID] == st.removed:
        return ("they have no app id (none in the records or the file name), so --app_name APPID=NAME cannot "
                "name them: pass --app_name NAME (one game), or --appid ID with it, put the id in the file name "
                "(review_440.json), or --drop_unknown_game False")
    if name == "too_long" and (st.reasons[_cap_reason()] or st.reasons[_field_reason()]):
        return _cap_fix(st)
    said = [_KEPT_ONCE[reason](n) for reason, n in st.reasons.items() if reason in _KEPT_ONCE and n] \
        if name == "exact_duplicate" else []
    if not said:
        return f"change it with {FLAGS.get(name, 'its flag')}"
    same = st.removed - sum(n for reason, n in st.reasons.items() if reason in _KEPT_ONCE)
    return "; ".join(said) + (f"; for the {same:,} copies within a file, change it with {FLAGS[name]}" if same else "")


def _were(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


#: the ``exact_duplicate`` reasons that leave one copy of each review (no flag to advise; older versions go whatever
#: ``--dedup``, copies of one text only under ``--dedup True``):
#: what the warning says of ``n`` of them
_KEPT_ONCE = {
    OTHER_FILE: lambda n: _were(n, "was a copy of a review", "were copies of reviews")
    + " in another input file (each is kept once)",
    OLDER_VERSION: lambda n: _were(n, "was an older version of a review", "were older versions of reviews")
    + " whose edit came in too (same app and review id; the latest by timestamp_updated, else timestamp_created, "
      "that passes the other rules is kept)",
    REPOSTED: lambda n: _were(n, "was an earlier review", "were earlier reviews")
    + " by an author who reviewed the same game again (same app and author steam id, another review id or none; "
      "Steam keeps one review per account and app: the latest by timestamp_updated, else timestamp_created, that "
      "passes the other rules is kept)",
    READ_AGAIN: lambda n: _were(n, "was a copy of a review", "were copies of reviews")
    + " read again in the same file (same app and review id, or author steam id: fetched again or reposted; each is "
      "kept once, no flag needed)",
    UNDATED: lambda n: _were(n, "was a version of a review", "were versions of reviews")
    + " read again with other text that could not be ordered by time, having no timestamp "
      "(same app and review id or author steam id; of the copies that pass the other rules the latest dated one is "
      "kept, else the last read)",
}


def _cap_fix(st: _Stat) -> str:
    """What to do about ``too_long`` removals over :data:`RAW_CHARS_CAP` or the CSV field limit: split the text; the
    flags for the others."""
    fixed = [(st.reasons[r], r) for r in (_cap_reason(), _field_reason()) if st.reasons[r]]
    said = "; ".join(f"{'it is' if n == 1 else f'{n:,} are'} {r}" for n, r in fixed)
    said += ", which no flag changes: split the text"
    rest = st.removed - sum(n for n, _ in fixed)
    return said + (f"; for the other {rest:,}, change it with {FLAGS['too_long']}" if rest else "")


def _nothing_left(cfg: PrepareConfig, stats: dict[str, _Stat], read: int) -> None:
    """Raise the "no records left" error naming the rule that removed most and its flag."""
    worst = max(RULES, key=lambda n: stats[n].removed)
    hint = (f"rule '{worst}' removed {stats[worst].removed:,}; {_big_rule_fix(worst, stats[worst])}"
            if read and stats[worst].removed else "the inputs hold no reviews")
    raise UserError(f"{', '.join(cfg.inputs)}: no records left after cleaning; {hint}; nothing was written")


def _language(r: Review) -> str:
    return r.language or "unknown"


def _kept_dropped(read: list[Review], kept: list[Review], group: Callable[[Review], str]) -> dict[str, dict[str, int]]:
    """Kept and dropped counts per ``group`` of the reviews; dropped is every removal, whichever rule made it."""
    have, total = Counter(map(group, kept)), Counter(map(group, read))
    return {k: {"kept": have[k], "dropped": total[k] - have[k]} for k in sorted(total)}


def _report_details(cfg: PrepareConfig, stats: dict[str, _Stat], loaded: list[sources.Loaded], read: list[Review],
                    kept: list[Review]) -> dict[str, Any]:
    """The report's inputs, rules, per-language and per-game counts and config."""
    games = Counter(_game(r) for r in kept)
    return {
        "inputs": [{"path": str(i.path), "format": i.format, "container": i.container, "compressed": i.compressed,
                    "encoding": i.encoding,
                    "columns": i.columns, "reviews": len(i.reviews), "apps": len(i.apps)} for i in loaded],
        "rules": {n: {"removed": stats[n].removed, "changed": stats[n].changed, "reasons": dict(stats[n].reasons),
                      "examples": stats[n].examples, "flag": FLAGS.get(n, f"--{n}")} for n in RULES},
        "unknown_tag_ids": sorted(set().union(*(item.unknown_tag_ids for item in loaded))),
        "per_game": dict(games.most_common()),
        "by_language": _kept_dropped(read, kept, _language),
        "by_game": _kept_dropped(read, kept, _game),
        "config": config.to_dict(cfg),
    }


def _write_splits(cfg: PrepareConfig, train: list[dict], val: list[dict]) -> tuple[Path, Path | None]:
    """Write the train records to ``--out`` and the val records (if any) beside it (:func:`val_path`).
    Returns ``(train path, val path or None)``."""
    out = Path(cfg.out)
    vpath = val_path(out) if val else None
    _write_records(out, train)
    if vpath:
        _write_records(vpath, val)
    return out, vpath


def _registered(cfg: PrepareConfig, out: Path, vpath: Path | None) -> dict[str, str]:
    """The ``--register`` entries of this run: name → split file."""
    return {cfg.name: str(out), **({f"{cfg.name}_val": str(vpath)} if vpath else {})} if cfg.register else {}


def _register(cfg: PrepareConfig, out: Path, vpath: Path | None) -> list[str]:
    """Register both splits with ``--register`` in one write (an earlier run's val entry goes when this run
    has no split). Returns the names removed."""
    if not cfg.register:
        return []
    return registry.update(cfg.register, _registered(cfg, out, vpath), {} if vpath else {f"{cfg.name}_val": val_path(out)})


def _replaced_notes(cfg: PrepareConfig, out: Path, vpath: Path | None) -> list[str]:
    """One note per ``--register`` entry of the same name that pointed at another file."""
    if not cfg.register:
        return []
    return [f"replaced '{name}' in {cfg.register} (it named {old})"
            for name, old in registry.replaced(cfg.register, _registered(cfg, out, vpath)).items()]


def _remove_old_val(cfg: PrepareConfig, unregistered: list[str]) -> None:
    """Delete an earlier run's val split when this run has none (its records may now be in train)."""
    vpath = val_path(Path(cfg.out))
    if unregistered:
        console.print(f"[yellow]note[/] removed '{cfg.name}_val' from {escape(cfg.register)} (no val split now)")
    if vpath.is_file():
        vpath.unlink()
        console.print(f"[yellow]note[/] removed {escape(str(vpath))}: an earlier run's val split (its records "
                      "may be in this train split; this run has none)")


def _labelled_outputs(cfg: PrepareConfig) -> list[sources.Output]:
    """Every file a run may write, in the order it replaces them (the registry, which names the splits, last),
    with the flag that names it."""
    out, vpath, report_path = _outputs(cfg)
    md_path = report_path.with_suffix(".md")
    report = f"--report {report_path}"
    return [sources.Output(out, f"--out {out}", "--out"),
            sources.Output(vpath, f"the val split {vpath} of --out {out}", "--out"),
            sources.Output(prepare_report.png_path(md_path), f"the chart beside {report}", "--report"),
            sources.Output(report_path, report, "--report"),
            sources.Output(md_path, f"the Markdown report beside {report}", "--report"),
            *([sources.Output(Path(cfg.register), f"--register {cfg.register}", "--register")] if cfg.register else [])]


def _earlier_outputs(cfg: PrepareConfig) -> list[sources.Output]:
    """:func:`_labelled_outputs`, each marked ``earlier`` when the report at this run's report path names it as an
    output of the run that wrote it (by file name: that run may have had another working folder)."""
    outputs = _labelled_outputs(cfg)
    try:
        report = json.loads(_outputs(cfg)[2].read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return outputs
    keys = ("train", "val", "report", "report_md", "lengths_png", "registry")
    names = {Path(report[k]).name for k in keys if isinstance(report.get(k), str)} if isinstance(report, dict) else set()
    return [replace(o, earlier=o.path.name in names) for o in outputs]


def _output_paths(cfg: PrepareConfig) -> list[Path]:
    """Every file a run may write, in the order it replaces them."""
    return [o.path for o in _labelled_outputs(cfg)]


def _check_out_suffix(cfg: PrepareConfig) -> None:
    """``--out`` names a ``.json`` file: prepare writes one JSON array, which LLaMA-Factory and validate read by
    that suffix."""
    out = Path(cfg.out)
    if out.suffix.lower() != ".json":
        fix = out.with_suffix("") if out.stem.lower().endswith(".json") else out.with_suffix(".json")
        raise UserError(f"--out {cfg.out}: prepare writes an alpaca JSON array (not JSON lines or a table): name "
                        f"--out …json, e.g. --out {fix}")


def _check_outputs(cfg: PrepareConfig) -> None:
    _check_out_suffix(cfg)
    paths = _output_paths(cfg)
    twice = [p for p in paths if sum(q.resolve() == p.resolve() for q in paths) > 1]
    if twice:
        raise UserError(f"--out {cfg.out} / --report {cfg.report or '(default)'} / --register {cfg.register or '(unset)'}: "
                        f"two outputs would be the same file {twice[0]}; give each its own path")
    folder = next((p for p in paths if p.is_dir()), None)
    if folder is not None:
        raise UserError(f"{folder}: is a folder, where prepare writes a file; move it or pick other --out / --report "
                        "/ --register paths")
    atomic.note_removed([p for target in paths for p in atomic.remove_stale(target)])


def run(cfg: PrepareConfig, resume_hint: bool = True) -> dict[str, Any]:
    """Prepare an alpaca SFT dataset from raw reviews. On Ctrl-C, print that a rerun starts over unless
    ``resume_hint`` is False (a caller that prints its own line: the demo).

    Returns:
        ``{"train": path, "val": path | None, "report": path, "report_md": path, "registry": path | None,
        "counts": {"read", "kept", "train", "val", "games"}, "removed": {rule: n}, "changed": {rule: n},
        "formats": {input path: format}}``; paths are strings.

    Raises:
        UserError: a missing or undecodable input, unknown columns / record shapes, a bad flag,
            or nothing left after cleaning. Nothing is written then.
    """
    try:
        # SIGTERM / SIGHUP end it as Ctrl-C does; an error after Ctrl-C (an interrupted import) is the Ctrl-C
        with _cycle_collector_paused(), stop_signals_interrupt(STOP_SIGNALS + (signal.SIGINT,)):
            return _prepare(cfg)
    except KeyboardInterrupt:  # Ctrl-C or a stop signal (the CLI exits 128 + its number): say so, as collect, train and export do
        if resume_hint:
            console.print("[yellow]interrupted; prepare starts over when rerun (its outputs are replaced together "
                          "or not at all)")
        raise


@contextlib.contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector (restored on exit): prepare's records are many,
    long-lived and acyclic, so each full collection would walk them all for nothing; they are freed
    by reference counting as usual. Forked rule workers inherit the pause, as Python's ``gc`` docs
    advise for forking with large shared data."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """:func:`run`'s work, with the cyclic garbage collector paused."""
    t0 = time.perf_counter()
    _check_config(cfg)
    _check_outputs(cfg)
    languages = _languages(cfg)
    blocklist, slurs = _load_lists(cfg)
    loaded, reviews, skipped = _load(cfg)
    rules = _Rules(cfg, blocklist, slurs, languages, _latin_detector(languages) if cfg.detect_language else None,
                   _simplifier(cfg))
    rules.handles = noise.screen_names([r.author for r in reviews if r.author])
    workers = cfg.preprocessing_num_workers or min(os.cpu_count() or 1, 8)
    rules.find_older_versions(reviews)
    rules.find_copies(reviews)
    kept, keys = _clean_all(reviews, rules, workers)
    kept = rules.near_duplicates(kept, keys)
    kept = _balance(kept, cfg, rules.stats["max_per_game"])
    stats = rules.stats
    warnings = skipped + [w for item in loaded for w in item.warnings] + rules.notes \
        + _warn_big_rules(stats, len(reviews), rules.warned)
    _print_table(stats, len(reviews), len(kept))

    if not kept:
        _nothing_left(cfg, stats, len(reviews))

    default_lang = prompt_language(cfg)
    records = [_render(r, cfg, default_lang) for r in kept]
    val_idx = _split(len(records), cfg)
    train = [rec for i, rec in enumerate(records) if i not in val_idx]
    val = [rec for i, rec in enumerate(records) if i in val_idx]

    out, vpath, report_path = _outputs(cfg)
    vpath = vpath if val else None
    md_path = report_path.with_suffix(".md")
    games = Counter(_game(r) for r in kept)
    result = {
        "train": str(out), "val": str(vpath) if vpath else None, "report": str(report_path), "report_md": str(md_path),
        "registry": cfg.register,
        "counts": {"read": len(reviews), "kept": len(kept), "train": len(train), "val": len(val), "games": len(games)},
        "removed": {n: stats[n].removed for n in RULES if n not in _TRANSFORMS},
        "changed": {n: stats[n].changed for n in RULES if n in _TRANSFORMS},
        "formats": {str(item.path): item.format for item in loaded},
    }
    report = {**result, "seconds": round(time.perf_counter() - t0, 3), "warnings": warnings,
              **_report_details(cfg, stats, loaded, reviews, kept)}
    replaced = _replaced_notes(cfg, out, vpath)
    # a crash or rerun never leaves outputs of two runs side by side, nor an empty folder of its own
    with atomic.new_folders_removed_on_error(_output_paths(cfg)), atomic.replaced_together():
        _write_splits(cfg, train, val)
        prepare_report.write(report, [r.length or noise.length(r.text) for r in kept], report_path, md_path)
        unregistered = _register(cfg, out, vpath)
    if not vpath:
        _remove_old_val(cfg, unregistered)
    for line in replaced:
        console.print(f"[yellow]note[/] {escape(line)}")
    console.print(f"[bold]wrote[/] {out} ({len(train):,} train)" + (f", {vpath} ({len(val):,} val)" if vpath else "")
                  + f", {report_path}, {md_path}, {report['lengths_png']}"
                  + (f"; registered '{cfg.name}' in {cfg.register}" if cfg.register else ""))
    return result


command = config.command(
    PrepareConfig, run, name="prepare", config_option="option",
    help="Clean raw Steam reviews into an alpaca SFT dataset (train + val) in the persona's prompt format.\n\n"
         "INPUTS are files or folders: CSV/TSV, JSON, JSON Lines or Parquet, gzipped or not (formats and column "
         "mappings are detected and printed; --columns names them). Each rule is counted in the table, "
         "prepare_report.json and prepare_report.md. Examples:\n\n"
         "steam-train prepare raw/ --out data/steam_sft_train.json --register data/dataset_info.json\n\n"
         "steam-train prepare reviews.csv --appid 2246340 --app_name \"Monster Hunter Wilds\" --language english\n\n"
         "steam-train prepare survey.csv --columns review=评论,voted_up=推荐,playtime_hours=游戏时长,author=用户名 "
         "--app_names games.csv")
