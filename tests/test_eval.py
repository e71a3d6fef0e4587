"""`steam-train eval`: metric functions on hand-made inputs with known answers, then the command
end to end on the tiny Llama (base vs base + a fresh adapter)."""

from __future__ import annotations

import json
import math

import pytest

from trainer import eval_metrics as m

TRAIN = [
    "打击感扎实，棍子抡下去每一下都有分量。美术和音乐是国产天花板。",
    "An open world that actually rewards curiosity instead of handing you a checklist.",
]


def test_text_units_chinese_characters_english_words():
    assert m.text_units("打击感 Great, isn't it? co-op ♥♥♥♥ GTA5\r\n") == [
        "打", "击", "感", "great", "isn't", "it", "co-op", "gta5"]
    assert m.text_units("，。!? 🎮 ") == []


def test_copy_rate_exactly_one_for_a_copied_text():
    index = m.ngram_index(TRAIN)
    assert m.copy_rate([TRAIN[0]], index) == 1.0
    assert m.copy_rate([TRAIN[1]], index) == 1.0
    # punctuation / spacing / case changes do not hide a copy
    assert m.copy_rate(["AN OPEN WORLD that actually — rewards curiosity instead of handing you a CHECKLIST!"],
                       index) == 1.0


def test_copy_rate_zero_for_a_fresh_text():
    index = m.ngram_index(TRAIN)
    assert m.copy_rate(["画面一般，剧情拖沓，但是配乐意外地好听，值得打折时入手。"], index) == 0.0
    assert m.copy_rate(["The open world is big and the bosses are hard but fair to the end."], index) == 0.0


def test_copy_rate_partial_and_pooled():
    index = m.ngram_index(["一二三四五六七八"])  # exactly one 8-gram
    # "一..八" + "九十": 3 8-grams, the first is copied
    assert m.copy_counts("一二三四五六七八九十", index) == (1, 3)
    # pooled (micro) over texts: 1 copied of 3 + 0 of 1 → 1/4; short texts add nothing
    assert m.copy_rate(["一二三四五六七八九十", "甲乙丙丁戊己庚辛", "短"], index) == pytest.approx(0.25)
    assert m.copy_rate(["短", "two words"], index) is None


def test_repetition_rate_seq_rep_4():
    assert m.repetition_rate("one two three four five six") == 0.0
    # 12 words, 9 4-grams, 4 distinct → 1 - 4/9
    assert m.repetition_rate("a b c d a b c d a b c d") == pytest.approx(1 - 4 / 9)
    # Chinese counts characters: 哈 × 10 → 7 4-grams, 1 distinct
    assert m.repetition_rate("哈" * 10) == pytest.approx(1 - 1 / 7)
    assert m.repetition_rate("太短") is None
    assert m.mean_repetition(["one two three four", "a b c d a b c d a b c d", "短"]) == pytest.approx((1 - 4 / 9) / 2)
    assert m.looping_share(["one two three four", "哈" * 10]) == 0.5


def test_stopped_and_stop_rate_counting():
    eos = [2]
    assert m.stopped([5, 6, 2, 0, 0], eos, max_new_tokens=5) is True
    assert m.stopped([5, 6, 7, 8, 9], eos, max_new_tokens=5) is False
    assert m.stopped([5, 6, 7, 2], eos, max_new_tokens=3) is False  # eos after the budget
    assert m.stopped([5, 9], [2, 9], max_new_tokens=5) is True  # several end-of-turn ids
    assert m.stop_rate([True, False, True, True]) == 0.75
    assert m.stop_rate([]) is None


def test_length_stats_and_loss_helpers():
    s = m.length_stats([10, 1, 4, 3, 2, 9, 8, 7, 6, 5])
    assert s == {"count": 10, "mean": 5.5, "median": 5.5, "p10": 1.0, "p90": 9.0, "min": 1.0, "max": 10.0}
    assert m.length_stats([])["count"] == 0 and m.length_stats([])["mean"] is None
    assert m.perplexity(0.0) == 1.0 and m.perplexity(math.log(20)) == pytest.approx(20)
    assert m.perplexity(1e6) == math.inf
    assert m.relative_change(2.0, 1.5) == pytest.approx(-0.25)
