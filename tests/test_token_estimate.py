"""The Dify plugins' token estimate (``plugin/common/server_client.estimate_tokens``, used when a server
has no tokenize endpoint) against Qwen2.5's tokenizer, the persona's base, on the real Chinese reviews."""

from __future__ import annotations

import json

from steam_persona.plugin.common import server_client


def test_the_estimate_leans_high_by_1_to_1_5x_on_real_chinese_reviews(seed_dataset, qwen_tokenizer_dir):
    from transformers import AutoTokenizer

    qwen = AutoTokenizer.from_pretrained(qwen_tokenizer_dir)
    texts = [r["output"] for r in json.loads(seed_dataset.read_text(encoding="utf-8"))
             if sum("\u4e00" <= ch <= "\u9fff" for ch in r["output"]) > len(r["output"]) / 2]
    counted = [len(ids) for ids in qwen(texts, add_special_tokens=False)["input_ids"]]
    estimated = [server_client.estimate_tokens(t) for t in texts]
    assert len(texts) > 900
    # a chat history is many turns: ten reviews in a row at a time (1.16-1.49x, 2026-12-07)
    ratios = [sum(estimated[i:i + 10]) / sum(counted[i:i + 10]) for i in range(0, len(texts) - 9, 10)]
    assert 1.0 <= min(ratios) and max(ratios) <= 1.5, (min(ratios), max(ratios))
    # one review alone: 0.93-1.97x (slang and rare characters merge less than common words)
    assert min(e / n for e, n in zip(estimated, counted)) >= 0.9
