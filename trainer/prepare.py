"""``steam-train prepare``: raw Steam reviews → a clean alpaca SFT dataset (train + val files).

Pipeline (each rule counted in ``prepare_report.json`` and the console table, each switchable):
read + detect formats (:mod:`trainer.sources`) → language → voted_up / votes / playtime selection →
game name known → BBCode → HTML → whitespace → empty → ``♥`` masks → spam → blocklist → PII scrub →
length bounds → script check → template fields → exact duplicates → near duplicates →
``--max_per_game`` balance → seeded train/val split → atomic writes → optional LLaMA-Factory
registration (:func:`trainer.registry.register`).

Output records are ``{"instruction", "input", "output"}`` built with :mod:`trainer.persona`'s
templates, which reproduces the seed data's format (``../shared/data/steam_sft_sample.json``).
"""

from __future__ import annotations

import functools
import json
import random
import string
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.table import Table

from trainer import cleaning, config, io, persona, registry, sources
from trainer.config import arg
from trainer.console import console, progress
from trainer.errors import UserError
from trainer.sources import Review

TEMPLATE_FIELDS = ("name", "tags", "verdict", "playtime_hours")
_clean_name = functools.lru_cache(maxsize=65536)(persona.clean_game_name)  # a few names, many reviews


@dataclass
class PrepareConfig:
    """Settings of ``steam-train prepare`` (= its flags = its YAML keys)."""

    inputs: list[str] = arg([], "Review files or folders: collect JSONL, appreviews JSON (page or archive), "
                            "appdetails JSON, store-scrape CSV, alpaca/sharegpt JSON(L).", positional=True)
    out: str = arg("data/steam_sft_train.json", "Output alpaca JSON (train split); the val split goes beside it "
                   "(_train → _val, else <stem>_val.json).")
    val_size: float = arg(0.05, "Validation split: a fraction in (0, 1) or a record count (>= 1); 0 = no val file.")
    register: str | None = arg(None, "Add/update this LLaMA-Factory dataset_info.json (train as --name, val as "
                               "<name>_val).")
    name: str = arg("steam_reviews", "Dataset name for --register.")
    report: str | None = arg(None, "Report JSON path; unset = prepare_report.json beside --out.")
    encoding: str = arg("utf-8", "Text encoding of the input files (utf-8 also accepts a BOM; e.g. gbk).")
    language: list[str] = arg(["schinese"], "Keep reviews whose Steam language is one of these (schinese, english, "
                              "…); 'all' keeps every language. Records without a language field are kept.")
    script_check: bool = arg(False, "Also check the text's script fits --language (Han for Chinese, Latin for "
                             "English, …; drops Traditional text under schinese).")
    min_chars: int = arg(10, "Drop reviews shorter than this after cleaning (characters).")
    max_chars: int = arg(1000, "Drop reviews longer than this after cleaning (characters); 0 = no limit.")
    min_votes_up: int = arg(0, "Keep reviews with at least this many helpful votes (0 = off; unknown counts "
                            "are dropped when on).")
    min_playtime_hours: float = arg(0.0, "Keep reviews whose author played at least this long (hours; 0 = off; "
                                    "unknown playtime is dropped when on).")
    voted_up: str = arg("any", "Keep recommending (true), not recommending (false) or any reviews.",
                        choices=("any", "true", "false"))
    max_per_game: int = arg(0, "Keep at most this many reviews per game, sampled with --seed (0 = no cap).")
    seed: int = arg(42, "Random seed for --max_per_game sampling and the train/val split.")
    prompt_language: str = arg("zh", "Language of the default templates, tag names and {verdict} words.",
                               choices=("zh", "en"))
    instruction_template: str = arg("", "Instruction format with {name} {tags} {verdict} {playtime_hours}; "
                                    "empty = the persona's (请以资深玩家的身份，点评一下《{name}》这款游戏。).")
    input_template: str = arg("", "Input format, same fields; empty = the persona's (游戏类型标签：{tags}). The "
                              "input is left empty when it uses {tags} and none are known.")
    max_tags: int = arg(0, "Use at most this many tags per game, the most voted first (0 = all known).")
    strip_bbcode: bool = arg(True, "Strip Steam BBCode, keeping spoiler/quote/list text.")
    strip_html: bool = arg(True, "Turn <br> into newlines, drop other HTML tags, unescape entities.")
    normalize_whitespace: bool = arg(True, "Normalise \\r\\n and lone \\r, collapse space runs, trim.")
    drop_empty: bool = arg(True, "Drop reviews that are empty after cleaning.")
    drop_masked: bool = arg(False, "Drop reviews with Steam's ♥♥♥ profanity mask (kept as is by default).")
    drop_spam: bool = arg(True, "Drop adverts: QQ/WeChat groups, phone numbers, non-Steam URLs, referral codes.")
    blocklist: str | None = arg(None, "Word list file (one per line, # comments): drop reviews containing any.")
    scrub_pii: bool = arg(True, "Remove Steam profile URLs, SteamID64s, phone numbers and e-mails from kept text.")
    dedup: bool = arg(True, "Drop exact duplicates (after normalising case, width, spaces and punctuation).")
    near_dedup: bool = arg(True, "Drop near duplicates (MinHash over 5-character shingles).")
    near_dup_threshold: float = arg(0.8, "Estimated Jaccard similarity at which a review is a near duplicate.")


# Rule names in pipeline order (the report and the table list them in this order).
RULES = ("language", "voted_up", "min_votes_up", "min_playtime_hours", "unknown_game", "strip_bbcode",
         "strip_html", "normalize_whitespace", "empty", "profanity_mask", "spam", "blocklist", "scrub_pii",
         "too_short", "too_long", "script", "template_fields", "exact_duplicate", "near_duplicate", "max_per_game")
_TRANSFORMS = {"strip_bbcode", "strip_html", "normalize_whitespace", "scrub_pii"}


@dataclass
class _Stat:
    removed: int = 0
    changed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)

    def example(self, r: Review, reason: str = "") -> None:
        """Keep up to 3 examples for the report (80 characters, personal data scrubbed)."""
        if len(self.examples) < 3:
            text = cleaning.scrub_pii(r.text[:200])[0][:80]
            self.examples.append({"where": r.where, "text": text, **({"reason": reason} if reason else {})})


class _Rules:
    """Per-record rules with their counters. ``apply`` returns the removing rule's name or ``None``."""

    def __init__(self, cfg: PrepareConfig, blocklist: Any) -> None:
        self.cfg = cfg
        self.stats = {r: _Stat() for r in RULES}
        self.languages = None if "all" in cfg.language else set(cfg.language)
        self.blocklist = blocklist
        self.uses = _template_fields(cfg)
        self.seen: dict[str, str] = {}
        self.key = ""  # dedup key of the last record passed to apply()
        self.near = cleaning.NearDuplicates(threshold=cfg.near_dup_threshold, seed=cfg.seed) if cfg.near_dedup else None

    def _drop(self, rule: str, r: Review, reason: str = "", note: str = "") -> str:
        """Count a removal (``reason`` is tallied; ``note`` only shows in the report's examples)."""
        st = self.stats[rule]
        st.removed += 1
        if reason:
            st.reasons[reason] += 1
        st.example(r, reason or note)
        return rule

    def _transform(self, rule: str, r: Review, fn: Callable[[str], str]) -> None:
        new = fn(r.text)
        if new != r.text:
            self.stats[rule].changed += 1
            r.text = new

    def apply(self, r: Review) -> str | None:  # noqa: C901 - one flat list of rules reads best
        cfg = self.cfg
        if self.languages is not None and r.language is not None and r.language not in self.languages:
            return self._drop("language", r, r.language)
        if cfg.voted_up != "any" and r.voted_up is not (cfg.voted_up == "true"):
            return self._drop("voted_up", r, "unknown" if r.voted_up is None else str(r.voted_up).lower())
        if cfg.min_votes_up > 0 and (r.votes_up is None or r.votes_up < cfg.min_votes_up):
            return self._drop("min_votes_up", r, "unknown" if r.votes_up is None else "")
        if cfg.min_playtime_hours > 0 and (r.playtime_hours is None or r.playtime_hours < cfg.min_playtime_hours):
            return self._drop("min_playtime_hours", r, "unknown" if r.playtime_hours is None else "")
        if r.prompt is None and not (r.game_name and _clean_name(r.game_name)):
            return self._drop("unknown_game", r, f"app {r.appid}" if r.appid else "no app id")
        if cfg.strip_bbcode:
            self._transform("strip_bbcode", r, cleaning.strip_bbcode)
        if cfg.strip_html:
            self._transform("strip_html", r, cleaning.strip_html)
        if cfg.normalize_whitespace:
            self._transform("normalize_whitespace", r, cleaning.normalize_whitespace)
        if cfg.drop_empty and not r.text.strip():
            return self._drop("empty", r)
        if cfg.drop_masked and cleaning.has_profanity_mask(r.text):
            return self._drop("profanity_mask", r)
        if cfg.drop_spam:
            reason = cleaning.spam_reason(r.text)
            if reason:
                return self._drop("spam", r, reason)
        if self.blocklist is not None:
            word = cleaning.blocked_word(r.text, self.blocklist)
            if word:
                return self._drop("blocklist", r, word.lower())
        if cfg.scrub_pii:
            text, kinds = cleaning.scrub_pii(r.text)
            if kinds:
                st = self.stats["scrub_pii"]
                st.changed += 1
                st.reasons.update(kinds)
                st.example(r, ",".join(kinds))
                r.text = cleaning.normalize_whitespace(text) if cfg.normalize_whitespace else text
        n = len(r.text)
        if n < cfg.min_chars:
            return self._drop("too_short", r)
        if cfg.max_chars and n > cfg.max_chars:
            return self._drop("too_long", r)
        if cfg.script_check and self.languages:
            # a record without a language field must fit one of the languages asked for
            whys = [cleaning.script_mismatch(r.text, lang) for lang in ([r.language] if r.language else sorted(self.languages))]
            if all(whys):
                return self._drop("script", r, whys[0])
        if r.prompt is None:
            if "verdict" in self.uses and r.voted_up is None:
                return self._drop("template_fields", r, "verdict unknown")
            if "playtime_hours" in self.uses and r.playtime_hours is None:
                return self._drop("template_fields", r, "playtime unknown")
        self.key = cleaning.dedup_key(r.text) if (cfg.dedup or self.near is not None) else ""
        if cfg.dedup:
            if self.key in self.seen:
                return self._drop("exact_duplicate", r, note=f"copy of {self.seen[self.key]}")
            self.seen[self.key] = r.where
        return None

    def near_duplicates(self, kept: list[Review], keys: list[str]) -> list[Review]:
        """Second pass: drop near duplicates (signatures computed in batches, first copy kept)."""
        if self.near is None:
            return kept
        out = []
        for r, sig in zip(kept, self.near.signatures(keys)):
            like = self.near.add_signature(sig, r.where)
            if like is None:
                out.append(r)
            else:
                self._drop("near_duplicate", r, note=f"near copy of {like}")
        return out


def _template_fields(cfg: PrepareConfig) -> set[str]:
    used = set()
    for lang in ("zh", "en"):
        for t in _templates(cfg, lang):
            used.update(f for _, f, _, _ in string.Formatter().parse(t) if f is not None)
    return used


def _templates(cfg: PrepareConfig, lang: str | None = None) -> tuple[str, str]:
    """(instruction, input) templates: the flags, else the persona's for ``lang`` (a record's own
    prompt language when it came from alpaca/sharegpt) or ``--prompt_language``."""
    lang = lang or cfg.prompt_language
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
        raise UserError(f"--val_size {cfg.val_size}: give a fraction in (0, 1) or a whole record count")
    if cfg.min_chars < 0 or cfg.max_chars < 0 or (cfg.max_chars and cfg.max_chars < cfg.min_chars):
        raise UserError(f"--min_chars {cfg.min_chars} / --max_chars {cfg.max_chars}: need 0 <= min <= max (max 0 = no limit)")
    if not 0 < cfg.near_dup_threshold <= 1:
        raise UserError(f"--near_dup_threshold {cfg.near_dup_threshold}: give a value in (0, 1]")
    if cfg.register and not cfg.name:
        raise UserError("--register needs --name (the dataset name in dataset_info.json)")


def _render(r: Review, cfg: PrepareConfig) -> dict[str, str]:
    """One alpaca record in the persona's prompt format."""
    if r.prompt is not None:
        instruction, input_text = r.prompt
        return {"instruction": instruction, "input": input_text, "output": r.text}
    tags = (r.tags or [])[: cfg.max_tags] if cfg.max_tags > 0 else (r.tags or [])
    lang = r.prompt_language or cfg.prompt_language
    words = persona.VERDICT_WORDS[lang]
    values = {
        "name": _clean_name(r.game_name or ""),
        "tags": persona.TAG_SEPARATOR.join(tags),
        "verdict": words[r.voted_up] if r.voted_up is not None else "",
        "playtime_hours": r.playtime_hours if r.playtime_hours is not None else "",
    }
    instruction_t, input_t = _templates(cfg, r.prompt_language)
    uses_tags = any(f == "tags" for _, f, _, _ in string.Formatter().parse(input_t))
    input_text = "" if (uses_tags and not tags) else input_t.format(**values)
    return {"instruction": instruction_t.format(**values), "input": input_text, "output": r.text}


def _write_records(path: Path, records: list[dict[str, str]]) -> None:
    """Write records atomically as ``json.dumps(records, ensure_ascii=False, indent=2)`` would
    (the seed file's layout), but with the C encoder per value: ``indent`` makes ``json`` fall back
    to its pure-Python encoder, ~5x slower on 100k records."""
    dumps = functools.partial(json.dumps, ensure_ascii=False)
    body = ",\n".join("  {\n" + ",\n".join(f"    {dumps(k)}: {dumps(v)}" for k, v in r.items()) + "\n  }"
                       for r in records)
    io.write_text(path, f"[\n{body}\n]\n" if records else "[]\n")


def val_path(out: Path) -> Path:
    """``data/x_train.json`` → ``data/x_val.json``; ``data/x.json`` → ``data/x_val.json``."""
    stem = out.stem[: -len("_train")] if out.stem.endswith("_train") else out.stem
    return out.with_name(f"{stem}_val{out.suffix or '.json'}")


def _split(n: int, cfg: PrepareConfig) -> set[int]:
    if cfg.val_size <= 0 or n < 2:
        return set()
    k = int(cfg.val_size) if cfg.val_size >= 1 else max(1, round(n * cfg.val_size))
    if k >= n:
        raise UserError(f"--val_size {cfg.val_size}: {k} validation records would leave no training data "
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
            details = ", ".join(f"{k} {v}" for k, v in st.reasons.most_common(4))
            table.add_row(name, f"{st.removed:,}" if st.removed else "", f"{st.changed:,}" if st.changed else "",
                          "", details)
    table.add_row("kept", "", "", f"{kept:,}", "")
    console.print(table)


def run(cfg: PrepareConfig) -> dict[str, Any]:
    """Prepare an alpaca SFT dataset from raw reviews.

    Returns:
        ``{"train": path, "val": path | None, "report": path, "registry": path | None,
        "counts": {"read", "kept", "train", "val"}, "removed": {rule: n}, "changed": {rule: n},
        "formats": {input path: format}}``; paths are strings.

    Raises:
        UserError: a missing or undecodable input, unknown columns / record shapes, a bad flag,
            or nothing left after cleaning. Nothing is written then.
    """
    t0 = time.perf_counter()
    _check_config(cfg)
    blocklist = None
    if cfg.blocklist:
        try:
            blocklist = cleaning.load_blocklist(cfg.blocklist)
        except FileNotFoundError:
            raise UserError(f"{cfg.blocklist}: blocklist file not found; check --blocklist") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{cfg.blocklist}: byte {e.start} is not UTF-8; save the blocklist as UTF-8") from None
        if blocklist is None:
            raise UserError(f"{cfg.blocklist}: blocklist has no words; add one per line or drop --blocklist")

    loaded = []
    for path in sources.expand_inputs(cfg.inputs):
        item = sources.read(path, cfg.prompt_language, cfg.encoding)
        console.print(f"[green]detected[/] {item.describe()}")
        loaded.append(item)
    apps: dict[str, sources.AppInfo] = {}
    for item in loaded:  # metadata from appdetails files and CSV rows fills reviews' names and tags
        for appid, info in item.apps.items():
            have = apps.setdefault(appid, sources.AppInfo())
            have.name = have.name or info.name
            have.tags = have.tags or info.tags
    reviews = [r for item in loaded for r in item.reviews]
    for r in reviews:
        info = apps.get(r.appid) if r.appid else None
        if info is not None and r.prompt is None:
            r.game_name = r.game_name or info.name
            r.tags = r.tags or info.tags
    unknown_tags = sorted(set().union(*(item.unknown_tag_ids for item in loaded)))

    rules = _Rules(cfg, blocklist)
    kept: list[Review] = []
    keys: list[str] = []
    with progress() as bar:
        task = bar.add_task("cleaning", total=len(reviews))
        for i, r in enumerate(reviews):
            if rules.apply(r) is None:
                kept.append(r)
                keys.append(rules.key)
            if i % 2000 == 1999:
                bar.update(task, completed=i + 1)
        bar.update(task, completed=len(reviews))
    kept = rules.near_duplicates(kept, keys)
    kept = _balance(kept, cfg, rules.stats["max_per_game"])
    stats = rules.stats
    _print_table(stats, len(reviews), len(kept))

    if not kept:
        worst = max(RULES, key=lambda n: stats[n].removed)
        hint = (f"rule '{worst}' removed {stats[worst].removed:,}; loosen it or switch it off"
                if reviews and stats[worst].removed else "the inputs hold no reviews")
        if worst == "unknown_game":
            hint += " (add the games' appdetails JSON as an input, e.g. from `steam-train collect --with_details`)"
        raise UserError(f"{', '.join(cfg.inputs)}: no records left after cleaning; {hint}; nothing was written")

    records = [_render(r, cfg) for r in kept]
    val_idx = _split(len(records), cfg)
    train = [rec for i, rec in enumerate(records) if i not in val_idx]
    val = [rec for i, rec in enumerate(records) if i in val_idx]

    out = Path(cfg.out)
    vpath = val_path(out) if val else None
    report_path = Path(cfg.report) if cfg.report else out.parent / "prepare_report.json"
    _write_records(out, train)
    if vpath:
        _write_records(vpath, val)
    if cfg.register:
        registry.register(cfg.register, cfg.name, str(out))
        if vpath:
            registry.register(cfg.register, f"{cfg.name}_val", str(vpath))
    games = Counter(_clean_name(r.game_name) if r.game_name else "(verbatim prompt)" for r in kept)
    result = {
        "train": str(out), "val": str(vpath) if vpath else None, "report": str(report_path),
        "registry": cfg.register,
        "counts": {"read": len(reviews), "kept": len(kept), "train": len(train), "val": len(val), "games": len(games)},
        "removed": {n: stats[n].removed for n in RULES if n not in _TRANSFORMS},
        "changed": {n: stats[n].changed for n in RULES if n in _TRANSFORMS},
        "formats": {str(item.path): item.format for item in loaded},
    }
    report = {
        **result,
        "seconds": round(time.perf_counter() - t0, 3),
        "inputs": [{"path": str(i.path), "format": i.format, "reviews": len(i.reviews), "apps": len(i.apps)}
                   for i in loaded],
        "rules": {n: {"removed": stats[n].removed, "changed": stats[n].changed, "reasons": dict(stats[n].reasons),
                      "examples": stats[n].examples} for n in RULES},
        "unknown_tag_ids": unknown_tags,
        "per_game": dict(games.most_common()),
        "config": config.to_dict(cfg),
    }
    io.write_json(report_path, report)
    console.print(f"[bold]wrote[/] {out} ({len(train):,} train)" + (f", {vpath} ({len(val):,} val)" if vpath else "")
                  + f", {report_path}" + (f"; registered '{cfg.name}' in {cfg.register}" if cfg.register else ""))
    return result


command = config.command(
    PrepareConfig, run, name="prepare", config_option="option",
    help="Clean raw Steam reviews into an alpaca SFT dataset (train + val) in the persona's prompt format.\n\n"
         "INPUTS are files or folders in any supported format (detected and printed). Example:\n\n"
         "steam-train prepare raw/ --out data/steam_sft_train.json --register data/dataset_info.json")
