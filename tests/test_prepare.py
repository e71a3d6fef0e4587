"""`steam-train prepare` on the real data in ../shared/data and on every input format."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from steam_persona.trainer import data
from steam_persona.common import config
from steam_persona.common import persona
from steam_persona.cli import main
from steam_persona.common.errors import UserError
from steam_persona.reviews.prepare import PrepareConfig, run, val_path

INSTR = re.compile(r"^请以资深玩家的身份，点评一下《(.+)》这款游戏。$")
# Names for the archived apps (from their reviews: 伏龙记, 星之梦 planetarian HD); the archive has none.
ARCHIVE_DETAILS = {
    "570980": {"success": True, "data": {"name": "伏龙记", "genres": [{"id": "1", "description": "动作"}]}},
    "623080": {"success": True, "data": {"name": "星之梦™", "genres": [{"id": "23", "description": "视觉小说"}]}},
    "664750": {"success": True, "data": {"name": "Survival Game", "genres": []}},
}


def _run(tmp_path: Path, inputs, **kw) -> dict:
    flags = {"inputs": [str(i) for i in inputs], "out": str(tmp_path / "out/train.json"), **kw}
    return run(config.build(PrepareConfig, flags))


def _load(path) -> list[dict]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def seed_prepared(tmp_path_factory, seed_dataset):
    tmp = tmp_path_factory.mktemp("seed")
    res = _run(tmp, [seed_dataset], val_size=0)
    return res, _load(res["train"]), json.loads(Path(res["report"]).read_text(encoding="utf-8"))


def test_seed_sample_quirks_are_each_handled(seed_prepared, seed_dataset):
    res, recs, report = seed_prepared
    seed = _load(seed_dataset)
    assert res["formats"] == {str(seed_dataset): "alpaca"} and res["counts"]["read"] == 941
    outputs = [r["output"] for r in recs]
    # QQ-group advert copies (records 139, 141-145) removed as spam; the real review at 140 kept
    assert report["rules"]["spam"]["reasons"] == {"qq_wechat_group": 6, "award_begging": 4}
    assert not any("Q群" in o for o in outputs) and seed[140]["output"] in outputs
    # profile URL (record 570) scrubbed from a kept review with the line that pointed at it ("…评测在这里 URL")
    assert report["rules"]["scrub_pii"]["reasons"] == {"profile_url": 1}
    kept570 = next(o for o in outputs if o.startswith("免费的战地-搜打撤"))
    assert kept570.endswith("战地里有吃鸡。") and "steamcommunity" not in kept570 and "7656119" not in kept570
    assert "评测在这里" not in kept570
    # BBCode stripped, its text kept
    assert not any(re.search(r"\[/?(spoiler|b|h1|i|u|list|\*)\]", o) for o in outputs)
    assert any(o.endswith("比如 《烟火》 。") for o in outputs)  # "比如[spoiler] 《烟火》 [/spoiler]。"
    # \r gone, whitespace tidy
    assert not any("\r" in o or "  " in o or o != o.strip() for o in outputs)
    assert report["rules"]["normalize_whitespace"]["changed"] >= 58
    # doubled brackets and ™/® cleaned in names
    names = {INSTR.match(r["instruction"]).group(1) for r in recs}
    assert "暗黑破坏神 IV" in names and "战地风云 禁区冲突" in names
    assert not any(re.search(r"[《》™®]", n) for n in names)
    # the seed format, unchanged where no rule applied
    assert all(list(r) == ["instruction", "input", "output"] and r["input"].startswith("游戏类型标签：") for r in recs)
    assert recs[0] == seed[0]
    # duplicates: 7 copies that differ only in spaces/punctuation (e.g. seed[242] = seed[241]), and an
    # edited repost (record 71 ≈ 62: same text, last clause changed)
    assert report["rules"]["exact_duplicate"]["removed"] == 6  # the 7th copy (record 672) went as spam first
    near = report["rules"]["near_duplicate"]["examples"]
    assert {"where": f"{seed_dataset}: record 72", "text": seed[71]["output"][:100],  # records count from 1
            "reason": f"near copy of {seed_dataset}: record 63"} in near
    # records 39, 42, 672, 675 beg for points ("我缺steam点数了拜托了各位"): a campaign, not reviews
    assert report["rules"]["spam"]["examples"][0] == {"where": f"{seed_dataset}: record 39", "reason": "award_begging",
                                                      "text": seed[38]["output"][:100]}
    assert res["counts"]["kept"] == len(recs) == 941 - sum(res["removed"].values())


def test_store_csv_bom_tag_ids_and_seed_agreement(tmp_path, shared_dir, seed_dataset):
    res = _run(tmp_path, [shared_dir / "data/raw/store_reviews_cn.csv"], val_size=0)
    recs = _load(res["train"])
    assert res["formats"] == {str(shared_dir / "data/raw/store_reviews_cn.csv"): "store-csv"}
    assert res["counts"]["read"] == 1044 and res["counts"]["games"] == 110  # one game has only an English review
    dota = [r for r in recs if r["instruction"] == persona.INSTRUCTION_TEMPLATE.format(name="Dota 2")]
    # tags_raw [113, 1718, 3859, 9, 5055, 5711, 3878] → Steam's names
    assert dota[0]["input"] == "游戏类型标签：免费开玩, 多人在线战术竞技, 多人, 策略, 电子竞技, 团队导向, 竞技"
    report = json.loads(Path(res["report"]).read_text(encoding="utf-8"))
    assert 1100689 not in report["unknown_tag_ids"] and len(report["unknown_tag_ids"]) > 0
    # the seed was built from this CSV: same games, and most kept texts appear in it verbatim
    seed = _load(seed_dataset)
    ws = re.compile(r"\s+")
    seed_out = {ws.sub("", r["output"]) for r in seed}
    seed_names = {persona.clean_game_name(INSTR.match(r["instruction"]).group(1)) for r in seed}
    assert seed_names - {INSTR.match(r["instruction"]).group(1) for r in recs} == {"七日世界"}  # its one review is English
    short = [r for r in recs if len(r["output"]) <= 1000]  # the seed kept at most 1,000 characters
    assert sum(ws.sub("", r["output"]) in seed_out for r in short) / len(short) > 0.9  # measured 880/964
    assert not any("<br" in r["output"] or "\r" in r["output"] for r in recs)
    # no language field: detected from the text; the two Traditional reviews and the English,
    # Russian and Japanese ones are not schinese
    lang = json.loads(Path(res["report"]).read_text(encoding="utf-8"))["rules"]["language"]["reasons"]
    assert lang["detected tchinese"] == 2 and lang["detected latin"] >= 7 and lang["detected russian"] == 1
    # without detection, --script_check finds the two Traditional reviews
    res = _run(tmp_path, [shared_dir / "data/raw/store_reviews_cn.csv"], val_size=0, detect_language=False)
    recs = _load(res["train"])
    checked = _run(tmp_path, [shared_dir / "data/raw/store_reviews_cn.csv"], val_size=0, script_check=True,
                   detect_language=False)
    reasons = json.loads(Path(checked["report"]).read_text(encoding="utf-8"))["rules"]["script"]["reasons"]
    assert reasons["Traditional under schinese"] == 2 and reasons["not Chinese"] >= 8  # English/Russian reviews
    assert not any("喜歡喜歡" in r["output"] for r in _load(checked["train"]))
    assert any("喜歡喜歡" in r["output"] for r in recs)  # kept without the check
    both = _run(tmp_path, [shared_dir / "data/raw/store_reviews_cn.csv"], val_size=0, script_check=True,
                language=["schinese", "english"], detect_language=False)  # no language field: fitting either language is enough
    assert both["removed"]["script"] <= checked["removed"]["script"] - 5
    assert any(r["output"].startswith("Third person mode has a lot of wallhacks") for r in _load(both["train"]))


def test_archives_with_appdetails_language_and_length(tmp_path, shared_dir):
    details = tmp_path / "details.json"
    details.write_text(json.dumps(ARCHIVE_DETAILS, ensure_ascii=False), encoding="utf-8")
    archives = sorted((shared_dir / "data/raw/appreviews").glob("review_*.json"))
    assert len(archives) == 4
    res = _run(tmp_path, [*archives, details], val_size=0)
    report = json.loads(Path(res["report"]).read_text(encoding="utf-8"))
    assert set(res["formats"].values()) == {"api-archive", "appdetails"}
    assert res["counts"]["read"] == 266 + 0 + 664 + 33
    lang = report["rules"]["language"]["reasons"]
    assert lang["tchinese"] == 14 and lang["english"] == 2 + 9 + 26  # only schinese kept by default
    recs = _load(res["train"])
    assert {INSTR.match(r["instruction"]).group(1) for r in recs} == {"伏龙记", "星之梦", "Survival Game"}
    assert all(len(r["output"]) <= 3000 for r in recs) and max(len(r["output"]) for r in recs) > 1000  # CJK as fair as English
    # every language, English prompts with the verdict and playtime fields
    res = _run(tmp_path, [*archives, details], val_size=0, language=["all"], prompt_language="en",
               input_template="{verdict}, played {playtime_hours} h", max_chars=0)
    recs = _load(res["train"])
    long_one = max(recs, key=lambda r: len(r["output"]))
    assert len(long_one["output"]) > 3000  # max_chars 0 = no limit (the 8,000-char review is an ASCII-art wall)
    survival = [r for r in recs if r["instruction"] == 'As a veteran gamer, review the game "Survival Game".']
    assert survival and all(re.fullmatch(r"Recommended, played \d+\.\d h", r["input"]) for r in survival)
    # the only ♥ in the archives is a lone heart, not Steam's ♥♥♥ mask: kept even with --drop_masked
    assert sum("♥" in r["output"] for r in recs) == 1
    masked = _run(tmp_path, [archives[3], details], val_size=0, language=["all"], drop_masked=True, max_chars=0)
    assert masked["removed"]["profanity_mask"] == 0 and sum("♥" in r["output"] for r in _load(masked["train"])) == 1


def test_profanity_masks_kept_unless_dropped(tmp_path):
    src = tmp_path / "m.json"
    recs = [{"instruction": persona.INSTRUCTION_TEMPLATE.format(name="X"), "input": "",
             "output": f"这游戏的服务器真是♥♥♥♥，第{i}次掉线了，优化也很差"} for i in range(3)]
    src.write_text(json.dumps(recs, ensure_ascii=False), encoding="utf-8")
    assert _load(_run(tmp_path, [src], val_size=0, near_dedup=False)["train"]) == recs
    with pytest.raises(UserError, match="rule 'profanity_mask' removed 3"):
        _run(tmp_path, [src], val_size=0, drop_masked=True)


def test_archive_without_names_says_how_to_fix(tmp_path, shared_dir):
    with pytest.raises(UserError, match=r"no records left.*unknown_game.*appdetails"):
        _run(tmp_path, [shared_dir / "data/raw/appreviews/review_570980.json"])
    assert not (tmp_path / "out").exists()


def test_empty_archive_and_details_only_are_errors(tmp_path, shared_dir):
    for inputs in ([shared_dir / "data/raw/appreviews/review_608110.json"], [shared_dir / "data/raw/appdetails"]):
        with pytest.raises(UserError, match="no records left after cleaning; the inputs hold no reviews"):
            _run(tmp_path, inputs)
    assert not (tmp_path / "out").exists()


def test_selection_flags(tmp_path, shared_dir):
    details = tmp_path / "details.json"
    details.write_text(json.dumps(ARCHIVE_DETAILS, ensure_ascii=False), encoding="utf-8")
    arch = shared_dir / "data/raw/appreviews/review_570980.json"
    neg = _run(tmp_path, [arch, details], val_size=0, voted_up="false", instruction_template="{name}|{verdict}")
    assert {r["instruction"] for r in _load(neg["train"])} == {"伏龙记|不推荐"}
    voted = _run(tmp_path, [arch, details], val_size=0, min_votes_up=5, min_playtime_hours=10)
    assert 0 < voted["counts"]["kept"] < 50 and voted["removed"]["min_votes_up"] > 200
    csv = shared_dir / "data/raw/store_reviews_cn.csv"
    capped = _run(tmp_path, [csv], val_size=0, max_per_game=3, seed=1)
    again = _run(tmp_path, [csv], val_size=0, max_per_game=3, seed=1)
    recs = _load(capped["train"])
    assert capped["counts"]["kept"] <= 3 * 111 and max(
        sum(r["instruction"] == x["instruction"] for r in recs) for x in recs) == 3
    assert _load(again["train"]) == recs  # seeded: same sample
    two = _load(_run(tmp_path, [csv], val_size=0, max_tags=2)["train"])
    assert two[0]["input"] == "游戏类型标签：免费开玩, 多人在线战术竞技"
    with pytest.raises(UserError, match="rule 'min_votes_up' removed 1,044"):  # the CSV has no vote counts
        _run(tmp_path, [csv], val_size=0, min_votes_up=1)


def test_rules_can_be_switched_off(tmp_path, seed_dataset):
    res = _run(tmp_path, [seed_dataset], val_size=0, drop_spam=False, scrub_pii=False, strip_bbcode=False,
               normalize_whitespace=False, dedup=False, near_dedup=False, max_chars=0, min_chars=0, min_words=0,
               drop_identity_slurs=False, drop_little_language=False, drop_repetition=False, strip_page_residue=False)
    recs = _load(res["train"])
    assert len(recs) == 941 and sum("Q群" in r["output"] for r in recs) == 6
    assert any("steamcommunity.com/profiles" in r["output"] for r in recs)
    assert any("[spoiler]" in r["output"] for r in recs) and any("\r" in r["output"] for r in recs)


def test_split_register_and_training_loader(tmp_path, seed_dataset):
    reg = tmp_path / "data/dataset_info.json"
    res = run(config.build(PrepareConfig, {"inputs": [str(seed_dataset)], "out": str(tmp_path / "data/steam_sft_train.json"),
                                           "val_size": 0.1, "register": str(reg), "name": "steam_reviews"}))
    train, val = _load(res["train"]), _load(res["val"])
    assert res["val"] == str(tmp_path / "data/steam_sft_val.json") == str(val_path(Path(res["train"])))
    assert len(val) == round(res["counts"]["kept"] * 0.1) and len(train) + len(val) == res["counts"]["kept"]
    assert not {r["output"] for r in train} & {r["output"] for r in val}
    entries = json.loads(reg.read_text(encoding="utf-8"))
    assert entries["steam_reviews"]["file_name"] == "steam_sft_train.json"
    assert entries["steam_reviews_val"]["file_name"] == "steam_sft_val.json"
    # LLaMA-Factory's alpaca converter reads every named column from every record (KeyError when absent)
    for name, recs in (("steam_reviews", train), ("steam_reviews_val", val)):
        named = set(entries[name]["columns"].values())
        assert named == {"instruction", "input", "output"} and all(named <= r.keys() for r in recs)
    convs = data.load_conversations("steam_reviews", tmp_path / "data")  # what `steam-train train` reads
    assert len(convs) == len(train)
    convs_val = data.load_conversations("steam_reviews_val", tmp_path / "data")
    assert len(convs_val) == len(val)


def test_other_formats_detected(tmp_path, shared_dir, seed_dataset):
    arch = json.loads((shared_dir / "data/raw/appreviews/review_570980.json").read_text(encoding="utf-8"))
    revs = list(arch["reviews"].values())
    page = tmp_path / "570980.json"  # a live API page: reviews is a list
    page.write_text(json.dumps({"success": 1, "cursor": "AoJ+/=", "reviews": revs[:50]}, ensure_ascii=False), encoding="utf-8")
    lst = tmp_path / "list_570980.json"
    lst.write_text(json.dumps(revs[50:80], ensure_ascii=False), encoding="utf-8")
    seed = _load(seed_dataset)[:40]
    alpaca_l = tmp_path / "a.jsonl"
    alpaca_l.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in seed[:20]), encoding="utf-8")
    share = tmp_path / "s.json"
    share.write_text(json.dumps([{"conversations": [{"from": "human", "value": persona.user_message(r["instruction"], r["input"])},
                                                    {"from": "gpt", "value": r["output"]}]} for r in seed[20:40]],
                                ensure_ascii=False), encoding="utf-8")
    odd = tmp_path / "odd.json"  # a prompt in another format is kept verbatim
    odd.write_text(json.dumps([{"instruction": "Say hi", "input": "", "output": "Hello there, gamer friend!"}]), encoding="utf-8")
    details = tmp_path / "details.json"
    details.write_text(json.dumps(ARCHIVE_DETAILS, ensure_ascii=False), encoding="utf-8")
    res = _run(tmp_path, [page, lst, alpaca_l, share, odd, details], val_size=0, near_dedup=False)
    assert list(res["formats"].values()) == ["api-page", "review-list", "alpaca", "sharegpt", "alpaca", "appdetails"]
    recs = _load(res["train"])
    assert res["counts"]["read"] == 50 + 30 + 20 + 20 + 1
    assert {"instruction": "Say hi", "input": "", "output": "Hello there, gamer friend!"} in recs
    by_output = {r["output"]: r for r in recs}
    assert seed[21]["instruction"] == "请以资深玩家的身份，点评一下《Apex Legends™》这款游戏。"
    assert by_output[seed[21]["output"]] == dict(seed[21], instruction="请以资深玩家的身份，点评一下《Apex Legends》这款游戏。")
    assert by_output[seed[30]["output"]] == seed[30]  # sharegpt round-trips to the same alpaca record


@pytest.mark.parametrize("setup,message", [
    (lambda p: None, "input not found; check the path"),
    (lambda p: p.write_bytes(b'[{"instruction": "\xff\xfe"}]'), "line 1, byte 19: not valid utf-8"),
    (lambda p: p.write_text("[{\"score\": 1, \"when\": 2}]", encoding="utf-8"),
     "no review-text column among the columns found (score, when); name it, e.g. --columns review=when"),
    (lambda p: p.write_text("[1, 2]", encoding="utf-8"), "record 1: unknown record shape"),
    (lambda p: p.write_text("[{\"instruction\": 1,", encoding="utf-8"), "invalid JSON at line 1"),
])
def test_bad_json_inputs_exit_2_no_output(tmp_path, setup, message):
    src = tmp_path / "in.json"
    setup(src)
    out = tmp_path / "o/train.json"
    r = CliRunner().invoke(main, ["prepare", str(src), "--out", str(out)])
    assert r.exit_code == 2, r.output
    assert message in r.output and str(src) in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_bad_csv_and_flags_exit_2(tmp_path):
    bad = tmp_path / "x.csv"
    bad.write_text("\ufeffname,stars\nA,B\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["prepare", str(bad), "--out", str(tmp_path / "o.json")])
    assert r.exit_code == 2 and "no review-text column among the columns found (name, stars)" in r.output
    assert "--columns author=name,review=stars" in r.output
    good = tmp_path / "a.json"
    good.write_text(json.dumps([{"instruction": persona.INSTRUCTION_TEMPLATE.format(name="X"), "input": "",
                                 "output": "一段足够长的评测文字，测试用"}], ensure_ascii=False), encoding="utf-8")
    r = CliRunner().invoke(main, ["prepare", str(good), "--instruction_template", "{game}", "--out", str(tmp_path / "o.json")])
    assert r.exit_code == 2 and "unknown field {game}" in r.output
    r = CliRunner().invoke(main, ["prepare", str(good), "--blocklist", str(tmp_path / "nope.txt")])
    assert r.exit_code == 2 and "blocklist file not found" in r.output
    assert not (tmp_path / "o.json").exists()


def test_blocklist_and_near_duplicate_campaign(tmp_path, seed_dataset):
    seed = _load(seed_dataset)
    base = seed[3]
    campaign = [dict(base, output=base["output"] + "!" * i + " 真的") for i in range(1, 6)]  # edited copies
    block = tmp_path / "block.txt"
    block.write_text("垃圾游戏\n", encoding="utf-8")
    src = tmp_path / "in.json"
    src.write_text(json.dumps(seed[:100] + campaign, ensure_ascii=False), encoding="utf-8")
    res = _run(tmp_path, [src], val_size=0, blocklist=str(block))
    report = json.loads(Path(res["report"]).read_text(encoding="utf-8"))
    assert report["rules"]["exact_duplicate"]["removed"] + report["rules"]["near_duplicate"]["removed"] >= 5
    assert report["rules"]["blocklist"]["removed"] == sum("垃圾游戏" in r["output"] for r in seed[:100])
    assert not any("垃圾游戏" in r["output"] for r in _load(res["train"]))


def test_output_layout_is_the_seed_files(tmp_path, seed_dataset):
    """With every rule off, prepare reproduces the seed file byte for byte (format, order, layout)."""
    off = dict(strip_bbcode=False, strip_html=False, normalize_whitespace=False, drop_empty=False, drop_spam=False,
               scrub_pii=False, dedup=False, near_dedup=False, min_chars=0, max_chars=0, min_words=0, max_words=0,
               val_size=0, strip_page_residue=False, strip_handles=False, strip_art=False, drop_identity_slurs=False,
               drop_little_language=False, drop_repetition=False)
    seed = _load(seed_dataset)
    plain = [r for r in seed if not re.search(r"[《》]《|》》|[™®]", r["instruction"])]  # names prepare would clean
    src = tmp_path / "plain.json"
    src.write_text(json.dumps(plain, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    res = _run(tmp_path, [src], **off)
    assert Path(res["train"]).read_bytes() == src.read_bytes()
    assert len(plain) > 700


def test_prepared_file_passes_validate(seed_prepared):
    """`steam-train validate` reads it as `train` would (real tokenizer and template): no problems."""
    res, recs, _ = seed_prepared
    r = CliRunner().invoke(main, ["validate", res["train"]])
    assert r.exit_code == 0, r.output
    assert "no problems found" in r.output and f"{len(recs)}" in r.output


def test_embedded_demo_data_round_trips_in_both_languages(tmp_path):
    """examples/persona_reviews.json (what `demo` prepares): zh and en prompts stay in their language.
    Regression: en records were re-rendered with the zh templates."""
    src = Path(__file__).parents[1] / "examples/persona_reviews.json"
    res = _run(tmp_path, [src], val_size=0)
    assert _load(res["train"]) == _load(src) and res["counts"]["kept"] == 244


def test_yaml_config_and_flags(tmp_path, seed_dataset):
    """`--config` takes the flags as YAML keys; flags given on the command line win."""
    cfg = tmp_path / "prepare.yaml"
    cfg.write_text(f"inputs: [{seed_dataset}]\nout: {tmp_path / 'y/train.json'}\nval_size: 0\nmax_per_game: 2\n"
                   "language: [schinese, english]\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["prepare", "--config", str(cfg), "--max_per_game", "1"])
    assert r.exit_code == 0, r.output
    recs = _load(tmp_path / "y/train.json")
    assert len(recs) == len({x["instruction"] for x in recs}) == 111  # one per game
    bad = tmp_path / "bad.yaml"
    bad.write_text("max_per_gam: 2\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["prepare", str(seed_dataset), "--config", str(bad)])
    assert r.exit_code == 2 and "did you mean 'max_per_game'" in r.output


def test_gbk_input_needs_and_accepts_encoding_and_the_table_names_the_kept_count(tmp_path, seed_dataset):
    """Regression: prepare had no --encoding (a GBK file said "re-save the file as UTF-8"), and its
    table printed the kept count in the "removed" column (`│ kept │ 926 │`)."""
    seed = []
    for rec in _load(seed_dataset):
        try:
            json.dumps(rec, ensure_ascii=False).encode("gbk")
        except UnicodeEncodeError:
            continue
        seed.append(rec)
        if len(seed) == 6:
            break
    src = tmp_path / "gbk.json"
    src.write_bytes(json.dumps(seed, ensure_ascii=False).encode("gbk"))
    out = tmp_path / "o/train.json"
    r = CliRunner().invoke(main, ["prepare", str(src), "--out", str(out), "--val_size", "0"])
    assert r.exit_code == 2 and "it looks GBK/GB18030-encoded; re-save it as UTF-8 or pass --encoding gbk" in r.output
    assert not out.exists()
    r = CliRunner().invoke(main, ["prepare", str(src), "--out", str(out), "--val_size", "0", "--encoding", "gbk"])
    assert r.exit_code == 0, r.output
    assert _load(out) == seed
    lines = [ln.replace(" ", "") for ln in r.output.splitlines()]
    assert "┃rule┃removed┃changed┃reviews┃details┃" in lines
    assert "│read│││6││" in lines and "│kept│││6││" in lines
    # utf-8 (the default) still accepts a BOM
    bom = tmp_path / "bom.json"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(seed, ensure_ascii=False).encode("utf-8"))
    assert _run(tmp_path, [bom], val_size=0)["counts"]["kept"] == 6


def test_reasons_text_sums_to_the_total():
    from steam_persona.reviews import report
    reasons = {"gamer_id": 1, "email": 3, "link": 1, "id_number": 1, "steam_id": 1}
    assert report.reasons_text(reasons, 4) == "email 3, gamer_id 1, link 1, id_number 1, steam_id 1"
    assert report.reasons_text({**reasons, "phone_number": 2}, 4) == \
        "email 3, phone_number 2, gamer_id 1, link 1, 2 more reasons: 2"
    apps = {"app 4000": 3, **{f"app {n}": 1 for n in range(100, 152)}, "app 99": 4}
    assert report.reasons_text(apps, 2, "unknown_game") == "app 99 4, app 4000 3, 52 more apps: 52 reviews"
    games = {"Hades": 1500, **{f"game {n}": 1000 for n in range(3)}}
    assert report.reasons_text(games, 1, "max_per_game") == "Hades 1500, 3 more games: 3000 reviews"
    assert report.reasons_text({}, 4) == ""


def _md_table(md: str, title: str) -> list[list[str]]:
    section = md.split(f"## Kept and dropped by {title}\n\n")[1].split("\n\n")[0]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in section.splitlines()[2:]]


def test_report_tables_fold_the_rest_into_a_summed_row():
    """Beyond 50 groups the .md tables end with one "… N more" row holding the folded groups' counts,
    so every column sums to the run's totals; 51 groups are all listed (a "1 more" row says less)."""
    from steam_persona.reviews import report
    games = {f"game {i}": {"kept": 100 - i, "dropped": i % 3} for i in range(62)}
    languages = {f"l{i}": {"kept": 1, "dropped": 1} for i in range(51)}
    kept, dropped = sum(v["kept"] for v in games.values()), sum(v["dropped"] for v in games.values())
    rep = {"counts": {"read": kept + dropped, "kept": kept, "train": kept, "val": 0, "games": 62}, "seconds": 1.0,
           "inputs": [], "rules": {}, "by_language": languages, "by_game": games}
    md = report.markdown(rep, "x.png")
    rows = _md_table(md, "game")
    assert len(rows) == 51 and rows[-1] == ["… 12 more (see the JSON report)", "534", "12"]
    assert rows[49] == ["game 49", "51", "1"]
    assert sum(int(r[1].replace(",", "")) for r in rows) == kept == 4_309
    assert sum(int(r[2]) for r in rows) == dropped == 61
    assert len(_md_table(md, "language")) == 51 and "more" not in md.split("by language")[1].split("by game")[0]


def test_report_examples_mask_the_author_where_the_rule_would_remove_it():
    from steam_persona.reviews.prepare import mask
    assert mask("the game is the best\n— the", "the") == "the game is the best\n▇"
    assert mask("Dark Knight 99 says hi, thanks darkknight99", "Dark_Knight99") == "▇ says hi, thanks ▇"
    assert mask("Cheers, Hunter", "Hunter") == "Cheers, ▇"


@pytest.mark.parametrize("text,handles,want", [
    ("пишите в телеграм @seller_dota или на почту", frozenset(), "пишите в телеграм ▇ или на почту"),
    ("回复@暗夜猎手：说得对", frozenset(), "▇说得对"), ("thanks ＠kirito_99 a lot", frozenset(), "thanks ▇ a lot"),
    ("gg DarkKnight99 carried", frozenset({"darkknight99"}), "gg ▇ carried"),
    ("mail me a@b.com or x@y", frozenset(), "mail me ▇ or x@y"),  # near misses: an address, a lone "@"
    ("推荐。\n——来自小黑盒用户kirito的评价", frozenset(), "推荐。\n▇"), ("来自B站的推荐，确实好玩", frozenset(), "来自B站的推荐，确实好玩"),
    ("meet @ 8 pm, great game", frozenset(), "meet @ 8 pm, great game"), ("no handles here", frozenset(), "no handles here"),
])
def test_report_examples_mask_mentions_and_other_authors_screen_names(text, handles, want):
    from steam_persona.reviews.prepare import mask
    assert mask(text, None, (), handles) == want


def test_report_examples_mask_text_with_invisible_characters():
    from steam_persona.reviews import wordlist
    from steam_persona.reviews.prepare import mask
    slurs = (wordlist.WordList(wordlist.IDENTITY_SLURS),)
    assert mask("you n\u200bigger lol", None, slurs) == "you n***** lol"
    assert mask("mail kirito\u200b99@qq\u00ad.com now") == "mail ▇ now"
    assert mask("great game — Dark_\u200bKnight\u00ad99", "Dark_Knight99") == "great game ▇"
    assert mask("what a f**\u00adgot", None, slurs) == "▇"  # partly masked: the whole example goes
    assert mask("👨\u200d👩\u200d👧 family game, nice sign\u00adal") == "👨\u200d👩\u200d👧 family game, nice signal"
