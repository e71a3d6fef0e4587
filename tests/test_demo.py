"""`steam-train demo`: a fast run of the whole pipeline (tiny Llama, a few steps, q8_0), its rerun
reusing every stage, the stage bookkeeping, and the embedded example data set."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from conftest import DEAD_PID
from steam_persona.common import config
from steam_persona.demo import EXAMPLES, DemoConfig, _Stages, examples, run
from steam_persona.demo_compare import GOALS, PROMPTS, goals, render_report, trained_on
from steam_persona.common.errors import UserError


def test_examples_are_persona_format_alpaca():
    from steam_persona.common.persona import INPUT_TEMPLATE, INPUT_TEMPLATE_EN, INSTRUCTION_TEMPLATE, INSTRUCTION_TEMPLATE_EN

    records = json.loads(EXAMPLES.read_text(encoding="utf-8"))
    assert len(records) == 244
    zh = [r for r in records if r["instruction"].startswith(INSTRUCTION_TEMPLATE.split("《")[0])]
    en = [r for r in records if r["instruction"].startswith(INSTRUCTION_TEMPLATE_EN.split("\"")[0])]
    assert len(zh) == 72 and len(en) == 172
    assert examples("en") == en and examples("zh") == zh
    # every review opens with its verdict, as a Steam review does; both verdicts in both languages
    assert all(r["output"].startswith(("Recommended. ", "Not recommended")) for r in en)
    assert all(r["output"].startswith(("推荐。", "不推荐")) for r in zh)
    assert sum(r["output"].startswith("Not recommended") for r in en) >= 8
    assert sum(r["output"].startswith("不推荐") for r in zh) >= 4
    # an English review names its game: what the demo's goal "each review addresses its game" checks
    from steam_persona.trainer.eval_metrics import addresses_game

    assert all(addresses_game(r["output"], r["instruction"].split("\"")[1], []) for r in en)
    for r in records:
        assert set(r) == {"instruction", "input", "output"} and r["output"].strip()
    for r in zh:
        name = r["instruction"].split("《")[1].split("》")[0]
        assert r["instruction"] == INSTRUCTION_TEMPLATE.format(name=name)
        assert r["input"] == INPUT_TEMPLATE.format(tags=r["input"].split("：", 1)[1])
    for r in en:
        name = r["instruction"].split("\"")[1]
        assert r["instruction"] == INSTRUCTION_TEMPLATE_EN.format(name=name)
        assert r["input"] == INPUT_TEMPLATE_EN.format(tags=r["input"].split(": ", 1)[1])
    assert len({r["instruction"] for r in records}) == len(records)  # one review per game
    # the demo's prompts ask about games absent from the data: its reviews show what was learned, not recall
    names = {r["instruction"].split("《")[1].split("》")[0] for r in zh} | {r["instruction"].split("\"")[1] for r in en}
    assert not names & {game for prompts in PROMPTS.values() for game, _ in prompts}


def test_stages_reuse_redo_and_chain(tmp_path):
    calls = []

    def stage(name, value):
        return lambda: calls.append(name) or {"value": value}

    def pipeline(force=False, a=1, b=2):
        s = _Stages(tmp_path, force)
        s.run("prepare", {"a": a}, lambda r: True, stage("prepare", a))
        s.run("train", {"b": b}, lambda r: True, stage("train", b))
        s.log.close()
        return s

    pipeline()
    assert calls == ["prepare", "train"]
    s = pipeline()
    assert calls == ["prepare", "train"] and all(r["reused"] for r in s.records.values())
    pipeline(b=3)  # a changed setting redoes that stage only
    assert calls[2:] == ["train"]
    pipeline(a=5, b=3)  # an upstream change redoes everything after it
    assert calls[3:] == ["prepare", "train"]
    pipeline(force=True, a=5, b=3)
    assert calls[5:] == ["prepare", "train"]
    state = json.loads((tmp_path / "demo_state.json").read_text(encoding="utf-8"))
    assert state["train"]["status"] == "done" and state["train"]["result"] == {"value": 3}


def test_failed_stage_is_recorded_and_rerun(tmp_path):
    s = _Stages(tmp_path, False)

    def boom():
        raise UserError("x.json: record 3: broken; fix it")

    with pytest.raises(UserError):
        s.run("prepare", {}, lambda r: True, boom)
    state = json.loads((tmp_path / "demo_state.json").read_text(encoding="utf-8"))
    assert state["prepare"]["status"] == "failed" and "record 3" in state["prepare"]["error"]
    assert s.run("prepare", {}, lambda r: True, lambda: {"ok": 1}) == {"ok": 1}
    s.log.close()


def test_missing_data_is_a_one_line_user_error(tmp_path):
    from steam_persona.cli import main

    result = CliRunner().invoke(main, ["demo", "--data", str(tmp_path / "nope.json"),
                                       "--output_dir", str(tmp_path / "d")])
    assert result.exit_code == 2
    assert "nope.json: --data not found" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(main, ["demo", "--quantization_bit", "3", "--output_dir", str(tmp_path / "d")])
    assert result.exit_code == 2 and "--quantization_bit 3" in result.output


def test_max_new_tokens_above_the_review_tools_limit_is_refused_before_any_work(tmp_path):
    from steam_persona.cli import main

    result = CliRunner().invoke(main, ["demo", "--max_new_tokens", "5000", "--output_dir", str(tmp_path / "d")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--max_new_tokens 5000: the review tool takes at most 4096 tokens; use 4096 or less" in result.output
    assert not (tmp_path / "d").exists()
    result = CliRunner().invoke(main, ["demo", "--quantization", "q9_x", "--output_dir", str(tmp_path / "d")])
    assert result.exit_code == 2 and "--quantization: unknown type 'q9_x'; use one or more of q4_k_m" in result.output
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_fast_demo_every_stage_and_artefact_then_rerun_reuses(tiny_llama_dir, tmp_path):
    out = tmp_path / "demo_run"
    cfg = config.build(DemoConfig, {"model_name_or_path": str(tiny_llama_dir), "output_dir": str(out),
                                    "max_steps": 3, "per_device_train_batch_size": 2, "cutoff_len": 256,
                                    "quantization": "q8_0", "max_new_tokens": 12})
    res = run(cfg)
    assert list(res.stages) == ["prepare", "train", "compare", "export", "serve"]
    assert all(r["status"] == "done" and not r["reused"] for r in res.stages.values())
    for rel in ["data/persona_train.json", "data/persona_val.json", "data/dataset_info.json",
                "data/prepare_report.json", "run/adapter_model.safetensors", "run/adapter_config.json",
                "run/run_config.yaml", "run/trainer_log.jsonl", "run/training_loss.png", "run/all_results.json",
                "export/steam-persona-q8_0.gguf", "export/export_report.json", "export/Modelfile",
                "serve.log", "reviews.json", "compare.json", "report.md", "demo_summary.json", "demo_state.json",
                "demo_log.jsonl", "data/persona_reviews_en.json"]:
        assert (out / rel).is_file(), rel
    s = res.summary
    assert s["train"]["train"] == 155 and s["train"]["val"] == 17  # 172 English examples, val_size 0.1
    assert s["train"]["steps"] == 3 and s["train"]["loss_start"] > 0 and s["train"]["loss_end"] > 0
    from steam_persona.demo import _bf16_supported

    assert s["train"]["dtype"] == ("bfloat16" if _bf16_supported() else "float32")  # bf16 where the CPU has it
    assert (out / "run" / "training_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert s["export"]["verified"] == {"q8_0": True}
    assert s["export"]["files"]["q8_0"]["bytes"] == (out / "export/steam-persona-q8_0.gguf").stat().st_size
    games = [g for g, _ in PROMPTS["en"]]
    assert [r["game"] for r in s["reviews"]] == games
    assert all(r["review"] and 0 < r["tokens"] <= 12 for r in s["reviews"])
    _assert_compare(s, out, games)
    assert len(s["chat"]["turns"]) == 2 and all(t["assistant"] and t["stream_chunks"] > 0 for t in s["chat"]["turns"])
    assert s["tokens_per_second"] > 0
    serve, dify, gpu = s["next_steps"]
    assert serve.startswith(f"serve it: steam-train serve {out / 'export'} --port 8000 --n_ctx 2048")
    assert "Endpoint URL http://host.docker.internal:8000/v1" in dify and "Context size 2048" in dify
    assert "docs/real-run.md" in gpu
    # the server was stopped: its port no longer answers
    import httpx

    with pytest.raises(httpx.TransportError):
        httpx.get(json.loads((out / "reviews.json").read_text(encoding="utf-8"))["endpoint"][:-3] + "/health", timeout=2)

    killed = out / f".demo_summary.json.tmp-{DEAD_PID}"
    killed.write_text("{", encoding="utf-8")
    again = run(cfg)
    assert not killed.exists()
    assert all(r["reused"] for r in again.stages.values())
    assert again.summary["reviews"] == s["reviews"] and again.summary["wall_seconds"] < 10
    # the rerun says its stages were reused and what they took when they ran, not only its own second
    then = sum(v["seconds"] for v in s["stages"].values())
    assert again.summary["stages"] == {k: {**v, "reused": True} for k, v in s["stages"].items()}
    assert f"5 of 5 stages reused from an earlier run, where the stages took {then:.1f} s" in \
        (out / "report.md").read_text(encoding="utf-8")


def _assert_compare(s, out, games):
    """The side-by-side figures are values of this run, consistent with each other and with report.md."""
    c = s["compare"]
    base, tuned = c["loss"]["base"], c["loss"]["tuned"]
    assert base["records"] == tuned["records"] == 17 and base["tokens"] == tuned["tokens"] > 17
    assert 0 < tuned["loss"] < 20 and 0 < base["loss"] < 20 and base["loss"] != tuned["loss"]  # the adapter acts
    assert c["loss_change"] == round((tuned["loss"] - base["loss"]) / base["loss"], 4)
    assert [x["game"] for x in c["samples"]] == games and c["max_new_tokens"] == 12
    for x in c["samples"]:
        for side in (x["base"], x["tuned"]):
            assert 0 < side["new_tokens"] <= 12 and (side["stopped"] or side["new_tokens"] == 12)
    g = s["goals"]
    assert g["tuned"]["generations"] == 3 + 3 + 2 and g["base"]["generations"] == 3
    assert [x["met"] for x in g["checks"]][0] == (c["loss_change"] <= GOALS["loss_change"])
    report = (out / "report.md").read_text(encoding="utf-8")
    assert report.startswith("# steam-persona demo: what fine-tuning did (en)")
    assert f"| {base['loss']:.4f} | {tuned['loss']:.4f} | {100 * c['loss_change']:+.1f} % |" in report
    for i, x in enumerate(c["samples"], 1):
        section = report.split(f"### {i}. {x['game']}")[1].split("###")[0]
        assert section.count("\n| base | ") == 1 and section.count("\n| tuned | ") == 1
        assert f"{x['tuned']['new_tokens']} tokens |" in section
    assert report.count("| yes |") + report.count("| NO |") == 4 and "## Next steps" in report


def _compared_and_served():
    def gen(text, n, stopped):
        return {"text": text, "new_tokens": n, "stopped": stopped, "seconds": 0.1}

    compared = {"loss": {"base": {"loss": 3.0, "records": 5}, "tuned": {"loss": 2.25, "records": 5}},
                "loss_change": -0.25, "max_new_tokens": 256, "seed": 1, "sampling": {"temperature": 0.7},
                "samples": [{"game": "Rocket League", "tags": "Sports, Racing",
                             "base": gen("cars cars cars cars cars cars cars", 256, False),
                             "tuned": gen("Rocket League is football with rockets.", 9, True)},
                            {"game": "Subnautica", "tags": "Survival, Underwater",
                             "base": gen("I like it.", 4, True), "tuned": gen("Deep water and deeper fear.", 7, True)}]}
    served = {"max_tokens": 256,
              "reviews": [{"game": "Subnautica", "tags": "Survival, Underwater", "review": "Great underwater game.",
                           "tokens": 6}, {"game": "Rocket League", "tags": "Sports", "review": "x " * 256,
                                          "tokens": 256}],
              "chat": {"turns": [{"user": "hi", "assistant": "Play Portal 2.", "finish_reason": "stop", "tokens": 5}]}}
    return compared, served


def test_goals_count_every_tuned_generation_and_judge_the_thresholds():
    compared, served = _compared_and_served()
    g = goals(compared, served)
    assert g["tuned"]["generations"] == 5 and g["tuned"]["stop_rate"] == 0.8  # the served review hit its limit
    assert g["tuned"]["addresses_game"] == 0.5  # "Deep water…" and "x x x" name neither game nor tag
    assert g["base"] == {"generations": 2, "stop_rate": 0.5, "seq_rep_4": 0.75, "addresses_game": 0.0}
    assert [c["met"] for c in g["checks"]] == [True, False, False, False]
    assert g["checks"][0]["measured"] == "-25.0 % (3.000 → 2.250)"
    assert g["checks"][1]["measured"] == "80.0 % of 5"


def test_a_dead_server_is_a_one_line_user_error_naming_its_log(tmp_path, monkeypatch):
    """The served model going away mid-run (e.g. llama.cpp aborting) ends the stage with a UserError
    that names serve.log, not a traceback from the plugin client."""
    from steam_persona import demo

    class DeadServer:  # a real closed port: nothing listens there
        def __init__(self, export_dir, log, timeout=180.0):
            self.base_url, self.log_path = f"http://127.0.0.1:{demo._free_port()}", log

        def stop(self):
            return 0

    monkeypatch.setattr(demo, "_Server", DeadServer)
    cfg = config.build(DemoConfig, {"output_dir": str(tmp_path)})
    with pytest.raises(UserError) as e:
        demo._serve_and_use(cfg, tmp_path, str(tmp_path))
    msg = str(e.value.message)
    assert msg.startswith(f"{tmp_path / 'serve.log'}: the served model failed") and "\n" not in msg


def test_interrupted_train_stage_restarts_or_resumes_by_itself(tiny_llama_dir, tmp_path, monkeypatch):
    """Regression: after Ctrl-C during training before the first checkpoint, rerunning the demo failed with
    "output dir exists and holds no resumable checkpoint; pass --overwrite_output_dir" (a flag demo lacks),
    and the Ctrl-C hint named that flag too."""
    import io as _io

    from steam_persona import demo
    from steam_persona.common import console as console_mod
    from steam_persona.trainer import train

    buf = _io.StringIO()
    monkeypatch.setattr(console_mod.console, "_file", buf)

    real_train = train.run
    seen: list[list[int]] = []

    def train_run(tcfg, callbacks=(), **kw):
        seen.append([])

        def record(step, row):
            seen[-1].append(step)
            if step == stop_at:
                raise KeyboardInterrupt

        return real_train(tcfg, callbacks=(*callbacks, record), **kw)

    class AfterTrain(Exception):
        pass

    def no_compare(*args):
        raise AfterTrain

    monkeypatch.setattr(train, "run", train_run)
    monkeypatch.setattr(demo, "_compare", no_compare)
    out = tmp_path / "demo_run"
    settings = {"model_name_or_path": str(tiny_llama_dir), "output_dir": str(out), "max_steps": 12,
                "per_device_train_batch_size": 2, "cutoff_len": 128}  # the demo saves checkpoint-10

    def demo_run(**kw):
        with pytest.raises((KeyboardInterrupt, AfterTrain)) as e:
            run(config.build(DemoConfig, {**settings, **kw}))
        return e.type

    def said():
        text = " ".join(buf.getvalue().split())
        buf.truncate(0)
        buf.seek(0)
        return text

    stop_at = 3  # interrupted before the first checkpoint
    assert demo_run() is KeyboardInterrupt and not (out / "run" / "checkpoint-10").exists()
    text = said()
    assert ("demo interrupted in the train stage: rerun steam-train demo with the same flags to go on: the finished "
            "stages are reused and training starts over (no checkpoint yet; one is saved every 10 steps); changed "
            "flags redo the stages they affect, --force redoes every stage") in text
    assert "overwrite_output_dir" not in text and "interrupted after step" not in text  # train's own hint
    stop_at = 11  # the rerun starts over by itself, then is interrupted after checkpoint-10
    assert demo_run() is KeyboardInterrupt and seen[1] == list(range(1, 12))
    assert (f"training resumes from {out / 'run' / 'checkpoint-10'} (step 10); changed flags" in said())
    stop_at = None  # the next rerun continues from checkpoint-10
    assert demo_run() is AfterTrain and seen[2] == [11, 12]
    state = json.loads((out / "demo_state.json").read_text(encoding="utf-8"))
    assert state["train"]["status"] == "done" and state["train"]["result"]["steps"] == 12
    rows = [json.loads(x) for x in (out / "run" / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["current_steps"] for r in rows if "loss" in r] == [1, 5, 10, 12]
    # a settings change does not continue the other settings' checkpoint: the run starts over
    stop_at = 2
    assert demo_run(learning_rate=1e-4) is KeyboardInterrupt and seen[3] == [1, 2]
    assert sorted(p.name for p in out.iterdir()) == ["data", "demo_config.json", "demo_log.jsonl", "demo_state.json",
                                                      "run"]  # and no empty run.new/ beside the run


def test_a_busy_machine_trains_with_one_thread(capsys, monkeypatch):
    """A load average above half the cores (another job running) gives torch one thread, and says so; the demo
    and train share the one heuristic (steam_persona.trainer.threads.threads_for_load)."""
    import torch

    from steam_persona.trainer.threads import threads_for_load

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert threads_for_load(0.5) == 2
        assert capsys.readouterr().err == "" and torch.get_num_threads() == 2
        assert threads_for_load(1.5) == 1
        assert "training with one thread" in " ".join(capsys.readouterr().err.split())
        assert torch.get_num_threads() == 1
        assert threads_for_load(1.5) == 1 and capsys.readouterr().err == ""  # said once (demo, then its train)
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        threads_for_load(99.0)
        assert capsys.readouterr().err == "" and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_summary_prints_model_text_literally(capsys):
    """Model output is text, not rich markup: a review with "[/bold]" prints as is instead of crashing."""
    from steam_persona import demo

    compared, served = _compared_and_served()
    compared["samples"][0]["tuned"]["text"] = "Rocket League [/bold] is [red]fun[/red]."
    served["reviews"][0]["review"] = "Subnautica [/] deep."
    s = {"compare": compared, "goals": goals(compared, served), "reviews": served["reviews"], "chat": served["chat"],
         "train": {"train": 10, "val": 2, "loss_start": 4.0, "loss_end": 3.0, "steps": 5, "dtype": "bfloat16"},
         "export": {"files": {}, "verified": {}}, "stages": {}, "language": "en", "base_model": "smollm2",
         "quantization": "q4_k_m", "tokens_per_second": 1.0, "wall_seconds": 1.0, "output_dir": "demo_run",
         "machine": {"cores": 2, "load_start": 0.5, "load_end": 0.6, "cpu_seconds": 2.0, "train_threads": 2}, "note": None,
         "next_steps": ["serve it"]}
    demo._print_summary(s)
    err = " ".join(capsys.readouterr().err.split())
    assert "Rocket League [/bold] is [red]fun[/red]." in err and "Subnautica [/] deep." in err
    assert "held-out loss base → tuned │ 3.000 → 2.250 (-25.0 %)" in err
    assert "goal: tuned held-out loss >= 20 % below base │ -25.0 % (3.000 → 2.250) — met" in err
    assert "goal: every review addresses its game (names it or a genre tag) │ 50.0 % — NOT met" in err
    report = render_report(s)
    assert "| tuned | Rocket League [/bold] is [red]fun[/red]. | stopped by itself, 9 tokens |" in report
    assert "load average 0.5 → 0.6 (a loaded machine is slower), training on 2 thread(s); CPU time 2.0 s" in report


def test_a_missed_goal_gets_the_note_that_says_what_it_measures():
    from steam_persona import demo

    en, zh = DemoConfig(), DemoConfig(language="zh")
    assert demo._note(en, goals_met=True) is None
    assert demo._note(en, goals_met=False) == demo.MISSED_NOTE
    assert demo._note(zh, goals_met=False) == f"{demo.ZH_NOTE} {demo.MISSED_NOTE}"
    assert demo._note(DemoConfig(language="zh", data="x.json"), goals_met=True) is None


@pytest.mark.parametrize("where", ["before_the_stages", "prepare"])
def test_ctrl_c_in_the_demo_is_one_line(where, tmp_path, monkeypatch):
    """Trial 31 N1 (demo): Ctrl-C before the first stage exited 130 without a line; in the prepare stage it
    printed prepare's line and the demo's. A library that turns the interrupt into another error (numpy's import,
    interrupted: "module 'numpy' has no attribute 'multiply'") printed a traceback and exited 1."""
    import io as _io
    import signal

    from steam_persona import demo
    from steam_persona.common import console as console_mod
    from steam_persona.reviews import prepare

    buf = _io.StringIO()
    monkeypatch.setattr(console_mod.console, "_file", buf)

    def ctrl_c_then_a_library_error(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:  # lost inside the library, which then fails its own way
            pass
        raise AttributeError("module 'numpy' has no attribute 'multiply'")

    if where == "prepare":
        monkeypatch.setattr(prepare, "_prepare", ctrl_c_then_a_library_error)
    else:
        monkeypatch.setattr("steam_persona.trainer.threads.threads_for_load", ctrl_c_then_a_library_error)
    with pytest.raises(KeyboardInterrupt):
        run(config.build(DemoConfig, {"output_dir": str(tmp_path / "d")}))
    lines = [x for x in buf.getvalue().splitlines() if "interrupted" in x]
    assert len(lines) == 1 and lines[0].startswith(
        "demo interrupted outside a stage" if where != "prepare" else "demo interrupted in the prepare stage"), lines


@pytest.mark.parametrize("counts, shown", [({"train": 155, "max_samples": 40}, "40 of 155 (--max_samples)"),
                                           ({"train": 155, "max_samples": None}, "155"),
                                           ({"train": 30, "max_samples": 40}, "30")])
def test_summary_says_how_many_reviews_trained_under_max_samples(counts, shown):
    """`demo --max_samples 40` trained on 40 reviews and the summary said "155 train"."""
    assert trained_on(counts) == shown
