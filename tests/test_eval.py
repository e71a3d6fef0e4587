"""`steam-train eval`: metric functions on hand-made inputs with known answers, then the command
end to end on the tiny Llama (base vs base + a fresh adapter)."""

from __future__ import annotations

import json
import math
import os

import pytest

from conftest import DEAD_PID
from steam_persona.trainer import eval_metrics as m

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


# ------------------------------------------------------------------------------------ end to end

def _fake_run_dir(tiny_llama_dir, tmp_path, train_file):
    """A train-run-shaped dir: a LoRA adapter with random (non-zero) B so tuned != base, the
    tokenizer, and run_config.yaml naming the base, persona and training set."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False))
    run = tmp_path / "run"
    model.save_pretrained(run)
    AutoTokenizer.from_pretrained(tiny_llama_dir).save_pretrained(run)
    (run / "run_config.yaml").write_text(yaml.safe_dump(
        {"model_name_or_path": str(tiny_llama_dir), "template": "auto", "system": "你是老G。",
         "cutoff_len": 256, "dataset": str(train_file)}, allow_unicode=True), encoding="utf-8")
    return run


def test_eval_run_adapter_vs_base_writes_reports(tiny_llama_dir, tmp_path):
    from steam_persona.common import config
    from steam_persona.trainer.evaluate import EvalConfig, run

    records = json.loads((__import__("pathlib").Path(__file__).parents[1] / "examples" / "persona_reviews.json")
                         .read_text(encoding="utf-8"))
    train_file, val_file = tmp_path / "train.json", tmp_path / "val.json"
    train_file.write_text(json.dumps(records[:50], ensure_ascii=False), encoding="utf-8")
    # the first val record is a verbatim training reply: the references' copy rate is known
    val_file.write_text(json.dumps([records[0]] + records[50:60], ensure_ascii=False), encoding="utf-8")
    run_dir = _fake_run_dir(tiny_llama_dir, tmp_path, train_file)
    # no --model_name_or_path / --train_dataset: both come from the run's run_config.yaml
    cfg = config.build(EvalConfig, {"adapter_name_or_path": str(run_dir),
                                    "dataset": str(val_file), "num_samples": 3, "max_new_tokens": 6,
                                    "per_device_eval_batch_size": 2, "output_dir": str(tmp_path / "eval")})
    killed = tmp_path / f"eval/.eval_report.json.tmp-{DEAD_PID}"
    killed.parent.mkdir()
    killed.write_text("{", encoding="utf-8")
    res = run(cfg)
    assert not killed.exists()
    rep = res.report
    out = tmp_path / "eval"
    assert {p.name for p in out.iterdir()} >= {"eval_report.json", "eval_report.md", "length_hist.png"}
    assert (out / "length_hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "eval_report.json").read_text(encoding="utf-8")) == rep
    base, tuned = rep["loss"]["base"], rep["loss"]["tuned"]
    # same records, same masking → same token count; a random adapter changes the loss
    assert base["records"] == tuned["records"] == 11 and base["tokens"] == tuned["tokens"] > 0
    assert base["loss"] != tuned["loss"]
    assert rep["loss"]["relative_change"] == pytest.approx((tuned["loss"] - base["loss"]) / base["loss"], abs=1e-3)
    assert base["perplexity"] == pytest.approx(math.exp(base["loss"]), rel=1e-3)
    # a random 2-layer model never emits <|im_end|> within 6 tokens … or rarely: count agrees with flags
    g = rep["generation"]
    assert len(rep["samples"]) == 3 and rep["system"] == "你是老G。" and rep["cutoff_len"] == 256
    assert rep["base_model"] == str(tiny_llama_dir)
    flags = [s["tuned_stopped"] for s in rep["samples"]]
    assert g["tuned"]["stop_rate"] == sum(flags) / 3
    assert g["reference"]["length_units"]["count"] == 3
    copied, total = m.copy_counts(records[0]["output"], m.ngram_index(r["output"] for r in records[:50]))
    fresh = sum(m.copy_counts(r["output"], set())[1] for r in records[50:52])
    assert copied == total and g["reference"]["copy_rate_8gram"] == pytest.approx(total / (total + fresh))
    md = (out / "eval_report.md").read_text(encoding="utf-8")
    assert "| held-out loss, inference weights (nats/token) |" in md and "length_hist.png" in md
    assert "4-bit training base" in rep["definitions"]["loss"]  # told apart from train's eval loss
    assert md.count("held-out loss") >= 2 and rep["samples"][0]["reference"] in md


def test_eval_user_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from steam_persona.cli import main

    r = CliRunner().invoke(main, ["eval", "--dataset", "v.json"])
    assert r.exit_code == 2 and "exactly one of --adapter_name_or_path" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["eval", "--dataset", "v.json", "--adapter_name_or_path", str(tmp_path)])
    assert r.exit_code == 2 and "no adapter_config.json" in r.output
    r = CliRunner().invoke(main, ["eval", "--dataset", "v.json", "--gguf", str(tmp_path / "x.gguf")])
    assert r.exit_code == 2 and "x.gguf: GGUF file not found" in r.output
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    (tmp_path / "export_report.json").write_text("{not json", encoding="utf-8")
    r = CliRunner().invoke(main, ["eval", "--dataset", "v.json", "--gguf", str(tmp_path / "x.gguf")])
    assert r.exit_code == 2 and "export_report.json: not valid JSON" in r.output and "Traceback" not in r.output


def test_length_chart_tells_base_from_tuned_and_marks_the_cut_off():
    import matplotlib.pyplot as plt

    from steam_persona.trainer.evaluate import length_figure

    samples = [{"reference": "a b c", "base": "x " * 40, "base_tokens": 64, "tuned": "y z", "tuned_tokens": 5}] * 3
    fig = length_figure({"samples": samples, "config": {"max_new_tokens": 64}})
    units_ax, tokens_ax = fig.axes
    assert [t.get_text().split(" (")[0] for t in units_ax.get_legend().get_texts()] == ["reference", "base", "tuned"]
    styles = {(p.get_edgecolor(), p.get_linestyle()) for p in units_ax.patches}
    assert len(styles) == 3  # each series its own colour and line style
    assert [list(line.get_xdata()) for line in tokens_ax.lines] == [[64, 64]]
    assert tokens_ax.get_legend().get_texts()[-1].get_text() == "max_new_tokens 64 (cut off)"
    plt.close(fig)


def test_missing_dataset_hint_names_the_file_prepare_writes():
    from pathlib import Path

    from steam_persona.common import config
    from steam_persona.reviews import prepare
    from steam_persona.trainer.evaluate import EvalConfig, run
    from steam_persona.common.errors import UserError

    with pytest.raises(UserError) as e:
        run(config.build(EvalConfig, {"adapter_name_or_path": "x"}))
    written = prepare.val_path(Path(config.build(prepare.PrepareConfig, {}).out)).as_posix()
    assert f"(e.g. {written}, written by prepare)" in e.value.message


def test_addresses_game_by_name_word_cjk_pair_or_tag():
    assert m.addresses_game("Skyrim in winter.", "The Elder Scrolls V: Skyrim")
    assert m.addresses_game("the KNIGHT never rests", "Hollow Knight")
    assert not m.addresses_game("The V is great.", "The Elder Scrolls V: Skyrim")  # numerals and short words don't count
    assert m.addresses_game("悟空的棍子很沉", "黑神话：悟空") and not m.addresses_game("这游戏不错", "黑神话：悟空")
    assert m.addresses_game("a great open-world trip", "X", ["Open World"])
    assert not m.addresses_game("farming all day", "Hollow Knight", ["Metroidvania", "Indie"])


def test_generation_on_a_busy_cpu_takes_one_thread_and_the_kv_cache(tiny_llama_dir, tmp_path, capsys, monkeypatch):
    """Eval's tuned generation ran ~18x slower than the base's on a machine that got busy between the two: torch's
    two threads wait on each other while other jobs hold the cores. Loading for generation (eval, chat) picks one
    thread there as train does, and the adapter leaves the KV cache on."""
    import torch

    from steam_persona.trainer.model import load_for_inference

    run_dir = _fake_run_dir(tiny_llama_dir, tmp_path, tmp_path / "train.json")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "getloadavg", lambda: (3.3, 3.3, 3.3))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        model, _ = load_for_inference(None, str(run_dir), device="cpu")
        assert torch.get_num_threads() == 1
        assert "generating with one thread" in " ".join(capsys.readouterr().err.split())
        assert model.config.use_cache and model.generation_config.use_cache is not False
    finally:
        torch.set_num_threads(threads)


def test_eval_reads_encoding_counts_the_records_its_loss_is_on_and_refuses_all_dropped(tiny_llama_dir, tmp_path):
    """Trial 30 B4: eval's hint said --encoding, which eval lacked. B5: "loss on 6 records" when the cutoff had
    dropped two (silently); every record dropped wrote a NaN report and exited 0."""
    from click.testing import CliRunner

    from steam_persona.cli import main

    rows = [{"instruction": "Caf\u00e9 review?", "input": "", "output": "Fine caf\u00e9."},
            {"instruction": "Long?", "input": "", "output": "word " * 300}]
    val = tmp_path / "val.json"
    val.write_bytes(json.dumps(rows, ensure_ascii=False).encode("cp1252"))
    run_dir = _fake_run_dir(tiny_llama_dir, tmp_path, val)
    argv = ["eval", "--adapter_name_or_path", str(run_dir), "--dataset", str(val), "--num_samples", "1",
            "--max_new_tokens", "2", "--train_dataset", str(val), "--encoding", "cp1252",
            "--temperature", "0"]  # greedy, as OpenAI's 0 (transformers refuses it with do_sample)
    r = CliRunner().invoke(main, [*argv, "--output_dir", str(tmp_path / "e1"), "--cutoff_len", "128"])
    out = " ".join(r.output.split())
    assert r.exit_code == 0, r.output
    assert "dataset: 2 read: 1 dropped (reply longer than --cutoff_len 128), 1 kept" in out
    assert "eval base: loss on 1 record, 1 generation" in out and out.count("dataset: ") == 1
    assert "base generate 1/1 seconds " in out and "tuned generate 1/1 seconds " in out  # plain lines: no terminal
    report = json.loads((tmp_path / "e1/eval_report.json").read_text(encoding="utf-8"))
    assert report["loss"]["base"]["records"] == 1 and report["config"]["do_sample"] is False  # temperature 0
    assert "1 record for the loss, 1 prompt for generation (max_new_tokens 2, greedy, " in \
        (tmp_path / "e1/eval_report.md").read_text(encoding="utf-8")
    r = CliRunner().invoke(main, [*argv, "--output_dir", str(tmp_path / "e2"), "--cutoff_len", "5"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"Error: {val}: all 2 records are longer than --cutoff_len 5" in " ".join(r.output.split())
    assert not (tmp_path / "e2").exists()


@pytest.mark.parametrize("stop", ["loading", "base"])
def test_ctrl_c_in_eval_says_that_nothing_was_written(stop, tiny_llama_dir, tmp_path, ctrl_c_in):
    """Trial 31 N1: eval stopped by Ctrl-C while loading exited 130 without a line."""
    from click.testing import CliRunner

    from steam_persona.cli import main
    from steam_persona.trainer import evaluate

    val = tmp_path / "val.json"
    val.write_text(json.dumps([{"instruction": "Review?", "input": "", "output": "Fine."}]), encoding="utf-8")
    run_dir = _fake_run_dir(tiny_llama_dir, tmp_path, val)
    ctrl_c_in(evaluate, "_run_record" if stop == "loading" else "encoded_loss")
    out = tmp_path / "ev"
    r = CliRunner().invoke(main, ["eval", "--adapter_name_or_path", str(run_dir), "--dataset", str(val),
                                  "--num_samples", "1", "--max_new_tokens", "2", "--output_dir", str(out)])
    when = "while loading, before the first model's evaluation" if stop == "loading" else "in the base model's evaluation"
    assert r.exit_code == 130 and r.output.splitlines()[-1] == \
        f"interrupted {when}: nothing was written to {out}; rerun the same command to start", r.output
    assert not out.exists()
