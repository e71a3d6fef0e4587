"""Resuming a run: settings that must match the checkpoint's, whole-run results, LLaMA-Factory's no-op keys,
and Ctrl-C's exit status (a tiny random Llama; a few steps)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from steam_persona.cli import main
from steam_persona.common import config
from steam_persona.common.errors import UserError
from steam_persona.trainer import train as train_mod
from steam_persona.trainer.train import TrainConfig, TrainRecipe, check_resume_settings, run


def _flags(model_dir, data_path, out, **kw) -> dict:
    return {"model_name_or_path": str(model_dir), "dataset": [str(data_path)], "output_dir": str(out),
            "per_device_train_batch_size": 4, "learning_rate": 5e-3, "max_steps": 4, "logging_steps": 1,
            "save_steps": 2, "lora_rank": 8, "cutoff_len": 256, **kw}


def _argv(flags: dict) -> list[str]:
    return ["train"] + [x for k, v in flags.items() for x in (f"--{k}", ",".join(v) if isinstance(v, list) else str(v))]


def _crash_at_3(step, row):
    if step == 3:
        raise RuntimeError("simulated crash")


def test_resume_with_changed_settings_is_exit_2_listing_them_and_keeps_run_config(tiny_llama_dir, eight, tmp_path,
                                                                                  monkeypatch):
    """Regression: a resume with another --learning_rate / batch size went on silently (the old schedule, a batch
    size changed mid-run, run_config.yaml rewritten with the unused values); another --lora_rank ended in a
    462-line state_dict traceback."""
    out = tmp_path / "run"
    flags = _flags(tiny_llama_dir, eight, out)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config.build(TrainConfig, flags), callbacks=(_crash_at_3,))
    recorded = (out / "run_config.yaml").read_bytes()
    assert (out / "checkpoint-2" / "run_config.yaml").read_bytes() == recorded
    loaded = []
    monkeypatch.setattr(train_mod.TrainRecipe, "setup", lambda self, resume: loaded.append(resume))
    changed = CliRunner().invoke(main, _argv({**flags, "learning_rate": 1e-3, "per_device_train_batch_size": 2,
                                              "lora_rank": 16}))
    msg = changed.output.strip()
    assert changed.exit_code == 2 and len(msg.splitlines()) == 1 and "Traceback" not in msg, msg
    assert (f"{out / 'checkpoint-2'}: resuming with settings that differ from the checkpoint's: "
            "--per_device_train_batch_size 2 (checkpoint: 4), --learning_rate 0.001 (checkpoint: 0.005), "
            "--lora_rank 16 (checkpoint: 8); rerun with the checkpoint's values "
            f"(recorded in {out / 'checkpoint-2' / 'run_config.yaml'}) or pass --overwrite_output_dir to start "
            "over") in msg
    assert loaded == [] and (out / "run_config.yaml").read_bytes() == recorded  # nothing loaded, nothing rewritten
    # logging / saving cadence and the LLaMA-Factory no-op keys may change: the run resumes and records them
    monkeypatch.undo()
    same = CliRunner().invoke(main, _argv({**flags, "logging_steps": 2, "save_steps": 3, "ddp_timeout": 180000000}))
    assert same.exit_code == 0 and f"resuming from {out / 'checkpoint-2'}" in " ".join(same.output.split()), same.output
    rc = yaml.safe_load((out / "run_config.yaml").read_text(encoding="utf-8"))
    assert (rc["logging_steps"], rc["ddp_timeout"], rc["learning_rate"]) == (2, 180000000, 5e-3)


def test_resume_check_without_a_recorded_config_in_the_checkpoint(tmp_path):
    """A checkpoint saved before checkpoints carried run_config.yaml is compared with its run dir's; an explicit
    --resume_from_checkpoint is told to drop that flag to start over."""
    ckpt = tmp_path / "run" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text('{"global_step": 2, "world_size": 2}', encoding="utf-8")
    base = _flags("m", "d.json", tmp_path / "run")
    (tmp_path / "run" / "run_config.yaml").write_text(
        train_mod._run_config_yaml(config.build(TrainConfig, base)), encoding="utf-8")
    check_resume_settings(config.build(TrainConfig, {**base, "max_steps": 40, "eval_steps": 5}), ckpt)
    with pytest.raises(UserError) as e:
        check_resume_settings(config.build(TrainConfig, {**base, "seed": 7, "system": "", "output_dir": str(tmp_path / "b"),
                                                         "resume_from_checkpoint": str(ckpt)}), ckpt)
    assert "--system '' (checkpoint: '你是“老G”" in e.value.message and "--seed 7 (checkpoint: 42)" in e.value.message
    assert e.value.message.endswith("drop --resume_from_checkpoint and pass --overwrite_output_dir to start over")
    # saved by 2 processes: on 1 the accumulation is derived from the checkpoint, so its flag may differ
    check_resume_settings(config.build(TrainConfig, {**base, "gradient_accumulation_steps": 2}), ckpt)
    with pytest.raises(UserError, match="--gradient_accumulation_steps 2 \\(checkpoint: 1\\)"):
        check_resume_settings(config.build(TrainConfig, {**base, "gradient_accumulation_steps": 2,
                                                         "nproc_per_node": 2}), ckpt)
    # values are shown whole (a list of long paths), a long text from just before where it differs; an unset
    # --lora_alpha follows the rank and is named as derived (it was cut to 'ds2.j…' and shown as a flag not passed)
    long = [str(tmp_path / "a-rather-long-folder-name" / "steam_sft_train.json"), str(tmp_path / "ds2.json")]
    persona = "You are a veteran gamer. " * 5
    record = {**yaml.safe_load((tmp_path / "run" / "run_config.yaml").read_text(encoding="utf-8")),
              "lora_alpha": 64, "system": persona + "Be blunt."}
    (tmp_path / "run" / "run_config.yaml").write_text(yaml.safe_dump(record), encoding="utf-8")
    with pytest.raises(UserError) as e:
        check_resume_settings(config.build(TrainConfig, {**base, "dataset": long, "system": persona + "Be kind."}),
                              ckpt)
    assert (f"--dataset {','.join(long)} (checkpoint: d.json), --system …{persona[-17:]}Be kind.' (checkpoint: "
            f"…{persona[-17:]}Be blunt.'), lora_alpha 16 (2 × --lora_rank) (checkpoint: 64);") in e.value.message
    elsewhere = tmp_path / "elsewhere" / "checkpoint-1"  # no record at all: nothing to compare
    elsewhere.mkdir(parents=True)
    (elsewhere / "trainer_state.json").write_text('{"global_step": 1}', encoding="utf-8")
    check_resume_settings(config.build(TrainConfig, {**base, "seed": 7}), elsewhere)


def test_results_after_a_resume_cover_the_whole_run(tiny_llama_dir, eight, tmp_path, monkeypatch):
    """Regression: after a resume train_loss was the mean of the resumed steps only and train_runtime and the
    speeds this session's, beside a loss_first from the first session."""
    full = run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, tmp_path / "full")))
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, out)), callbacks=(_crash_at_3,))
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text(encoding="utf-8"))
    shown = {}
    monkeypatch.setattr(train_mod, "summary_table", lambda title, rows: shown.update(rows))
    resumed = run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, out)))
    assert (full["resumed_from_step"], resumed["resumed_from_step"]) == (0, 2)
    assert shown["runtime"].endswith(" (all sessions; this one resumed at step 2)"), shown
    assert abs(resumed["train_loss"] - full["train_loss"]) < 1e-3, (resumed, full)
    rows = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert abs(resumed["train_loss"] - sum(r["loss"] for r in rows) / 4) < 1e-4
    assert resumed["train_runtime"] > state["elapsed"]
    # 4 steps of 4 samples (runtime is rounded to 0.01 s)
    assert resumed["train_samples_per_second"] * resumed["train_runtime"] == pytest.approx(16, rel=0.05)
    assert resumed["train_steps_per_second"] * resumed["train_runtime"] == pytest.approx(4, rel=0.05)
    # a checkpoint without loss_sum: rebuilt from the log rows (each the mean of the steps since the last)
    recipe = TrainRecipe(config.build(TrainConfig, _flags(tiny_llama_dir, eight, out)))
    recipe.start, recipe.rows = 4, [{"current_steps": 1, "loss": 3.0}, {"current_steps": 2, "eval_loss": 9.0},
                                    {"current_steps": 3, "loss": 2.0}, {"current_steps": 5, "loss": 1.0}]
    assert recipe._loss_sum_before() == 3.0 + 2 * 2.0


def test_llamafactory_no_op_keys_are_accepted_and_unknown_keys_listed_at_once(tmp_path):
    """Regression: LLaMA-Factory's own example keys were refused one per run (5 runs for one config)."""
    lf = {"quantization_method": "bnb", "overwrite_cache": True, "preprocessing_num_workers": 16,
          "dataloader_num_workers": 4, "ddp_timeout": 180000000, "include_num_input_tokens_seen": True,
          "plot_loss": True, "report_to": "none", "save_only_model": False}
    cfg = config.build(TrainConfig, {"dataset": ["d.json"], **lf})
    assert cfg.quantization_method == "bitsandbytes" and cfg.ddp_timeout == 180000000
    with pytest.raises(UserError, match=r"config: --quantization_method gptq: only bitsandbytes \(bnb\) quantizes"):
        config.build(TrainConfig, {"quantization_method": "gptq"})
    p = tmp_path / "lf.yaml"
    p.write_text(yaml.safe_dump({"dataset": "d.json", "flash_atn": "auto", "lora_rnk": 8, "zzz_unheard_of": 1}),
                 encoding="utf-8")
    r = CliRunner().invoke(main, ["train", str(p)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert (f"{p}: unknown keys 'flash_atn' (did you mean 'flash_attn'?), 'lora_rnk' (did you mean 'lora_rank'?), "
            "'zzz_unheard_of'; "
            "see --help for the known keys, or delete them") in r.output


def test_ctrl_c_exits_130_without_aborted(monkeypatch):
    """Regression: Ctrl-C during train or export exited 1 with click's "Aborted!" after our own message."""
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_check", interrupted)
    r = CliRunner().invoke(main, ["train", "--dataset", "d.json"])
    assert r.exit_code == 130 and "Aborted" not in r.output, (r.exit_code, r.output)


def test_a_second_ctrl_c_while_the_process_ends_quits_at_once_without_a_traceback(tmp_path):
    """Trial 28 S8: a second Ctrl-C while train ended (its threads joined at exit) printed "Exception ignored in:
    <module 'threading'> … KeyboardInterrupt". Here a thread that the exit waits for sends it."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import os, signal, threading, time\n"
            "from steam_persona.cli import main\n"
            "from steam_persona.trainer import train\n"
            "def interrupted(cfg):\n"
            "    threading.Thread(target=lambda: (time.sleep(0.5), os.kill(os.getpid(), signal.SIGINT), time.sleep(30)))"
            ".start()\n"
            "    raise KeyboardInterrupt\n"
            "train._check = interrupted\n"
            "main(['train', '--dataset', 'd.json'])\n")
    started = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == 130 and time.monotonic() - started < 20, (r.returncode, r.stderr)
    assert r.stderr.splitlines()[1:] == ["forced quit (Ctrl-C while stopping); rerun the same command to go on"], \
        r.stderr


def test_a_second_stop_signal_inside_the_stage_quits_at_once(tmp_path):
    """The second signal lands while the stage is still stopping (inside its stop block)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import os, signal, time\n"
            "from steam_persona.common.errors import stop_signals_interrupt\n"
            "with stop_signals_interrupt((signal.SIGINT, signal.SIGTERM)):\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        time.sleep(5)\n"
            "    except KeyboardInterrupt:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(30)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.returncode == 128 + signal.SIGTERM, (r.returncode, r.stderr)
    assert r.stderr == "forced quit (SIGTERM while stopping); rerun the same command to go on\n", r.stderr


def _log(out) -> list[dict]:
    return [json.loads(x) for x in (out / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]


def test_training_longer_on_resume_follows_the_stretched_schedule_from_the_first_resumed_step(tiny_llama_dir, eight,
                                                                                               tmp_path):
    """Regression: resumed with a larger --max_steps, the first resumed step used the old schedule's lr (restored
    from optimizer.pt): 4 steps crashed at 3, resumed with 6 ran step 3 at 2.5e-3 where the 6-step schedule gives
    3.33e-3."""
    full = tmp_path / "full"
    run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, full, max_steps=6)))
    out = tmp_path / "longer"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, out)), callbacks=(_crash_at_3,))
    run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, out, max_steps=6)))
    lrs = {r["current_steps"]: r["lr"] for r in _log(out)}
    want = {r["current_steps"]: r["lr"] for r in _log(full)}
    assert [lrs[s] for s in range(3, 7)] == pytest.approx([want[s] for s in range(3, 7)], rel=1e-9)
    assert want[3] == pytest.approx(5e-3 * 4 / 6)  # linear decay over 6 steps, no warmup


def test_resume_with_changed_dataset_contents_is_exit_2_naming_the_file(tiny_llama_dir, eight, tmp_path):
    """Regression: a dataset overwritten at the same path (8 records -> 6) was resumed silently, mixing two
    datasets in one run. Checkpoints record each data file's sha256; one without it is not compared."""
    data, held_out = tmp_path / "train.json", tmp_path / "val.json"
    data.write_bytes(eight.read_bytes())
    held_out.write_bytes(eight.read_bytes())
    out = tmp_path / "run"
    flags = _flags(tiny_llama_dir, data, out, eval_dataset=[str(held_out)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config.build(TrainConfig, flags), callbacks=(_crash_at_3,))
    ckpt = out / "checkpoint-2"
    state = json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
    assert state["data_sha256"] == train_mod.data_fingerprint(config.build(TrainConfig, flags))
    assert sorted(state["data_sha256"]) == sorted([str(data), str(held_out)])

    data.write_text(json.dumps(json.loads(eight.read_text(encoding="utf-8"))[:6]), encoding="utf-8")
    r = CliRunner().invoke(main, _argv(flags))
    msg = r.output.strip()
    assert r.exit_code == 2 and len(msg.splitlines()) == 1, msg
    assert msg == (f"Error: {data}: the dataset changed since {ckpt} was saved (its sha256 differs); put back the data the "
                   "run was trained on, or pass --overwrite_output_dir to start over on the new data")
    held_out.write_text("[]", encoding="utf-8")
    with pytest.raises(UserError, match=f"sha256 differs; so did {held_out}\\); put back"):
        train_mod.check_resume_data(config.build(TrainConfig, flags), ckpt)
    state.pop("data_sha256")  # a checkpoint saved before the fingerprint was recorded: not compared
    (ckpt / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    train_mod.check_resume_data(config.build(TrainConfig, flags), ckpt)


def test_ctrl_c_while_loading_says_what_is_kept(tiny_llama_dir, eight, tmp_path, monkeypatch):
    """Regression: Ctrl-C while the model loaded exited 130 without a word, unlike every other interrupt."""
    def ctrl_c(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod.TrainRecipe, "setup_model", ctrl_c)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, _argv(_flags(tiny_llama_dir, eight, out)))
    said = " ".join(r.output.split())
    assert r.exit_code == 130 and "Aborted" not in said, (r.exit_code, said)
    assert f"interrupted while loading, before the first step: nothing was written to {out}; rerun the same " \
           "command to start" in said
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, out)), callbacks=(_crash_at_3,))
    monkeypatch.setattr(train_mod.TrainRecipe, "setup_model", ctrl_c)
    r = CliRunner().invoke(main, _argv(_flags(tiny_llama_dir, eight, out)))
    assert r.exit_code == 130 and (f"interrupted while loading, before the first step: rerun the same command to "
                                   f"resume from {out / 'checkpoint-2'} (step 2)") in " ".join(r.output.split())


def test_a_sigterm_once_the_lock_is_taken_removes_it_and_says_where_it_stopped(tiny_llama_dir, eight, tmp_path,
                                                                             monkeypatch):
    """Trial 27 N2: a SIGTERM in train's first seconds (lock taken, handlers not yet installed) killed it by the
    signal and left a stale <run>.lock; SIGINT there exited 130 without a line. Here the signal comes right after
    the lock is taken."""
    import os
    import signal

    class Killed(Exception):
        pass

    def killed(signum, frame):  # the signal's default action, without killing pytest
        raise Killed

    old = signal.signal(signal.SIGTERM, killed)
    out = tmp_path / "run"
    lock = tmp_path / "run.lock"
    resume_point = train_mod._resume_point
    held = []

    def sigterm_under_the_lock(cfg, folder):
        held.append(lock.is_file())
        os.kill(os.getpid(), signal.SIGTERM)
        return resume_point(cfg, folder)

    monkeypatch.setattr(train_mod, "_resume_point", sigterm_under_the_lock)
    try:
        r = CliRunner().invoke(main, _argv(_flags(tiny_llama_dir, eight, out)))
    finally:
        signal.signal(signal.SIGTERM, old)
    said = " ".join(r.output.split())
    assert held == [True] and not isinstance(r.exception, Killed), r.exception
    assert r.exit_code == 128 + signal.SIGTERM and (f"interrupted while loading, before the first step: nothing was "
                                                   f"written to {out}; rerun the same command to start") in said, \
        (r.exit_code, said)
    assert not lock.exists() and not out.exists()


@pytest.mark.parametrize("where", ["dataset_dir", "name", "file", "eval_file"])
def test_the_datasets_are_checked_before_the_model_loads(eight, tmp_path, monkeypatch, where):
    """Trial 26: `train examples/train_qlora.yaml --dataset_dir /nonexist` spent ~50 s of hub retries on the model
    and reported the model, never the data-dir mistake."""
    from steam_persona.trainer import model as model_lib

    def no_load(*args, **kwargs):
        raise AssertionError("the tokenizer/model was loaded before the datasets were checked")

    monkeypatch.setattr(model_lib, "load_tokenizer", no_load)
    monkeypatch.setattr(model_lib, "load_base", no_load)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "dataset_info.json").write_text(json.dumps({"steam_reviews": {"file_name": "train.json"}}),
                                                encoding="utf-8")
    (data_dir / "train.json").write_text(eight.read_text(encoding="utf-8"), encoding="utf-8")
    flags = {**_flags("Qwen/Qwen2.5-7B-Instruct", "steam_reviews", tmp_path / "run"), "dataset_dir": str(data_dir)}
    flags.update({"dataset_dir": {"dataset_dir": str(tmp_path / "nonexist")}, "name": {"dataset": "steam_reviewz"},
                  "file": {"dataset": str(tmp_path / "nope.json")},
                  "eval_file": {"eval_dataset": str(tmp_path / "val.json")}}[where])
    r = CliRunner().invoke(main, _argv(flags))
    msg = r.output.strip()
    assert r.exit_code == 2 and len(msg.splitlines()) == 1, (r.exit_code, msg, r.exception)
    expected = {"dataset_dir": f"{tmp_path / 'nonexist' / 'dataset_info.json'}: not found",
                "name": "dataset 'steam_reviewz' is not registered (known: steam_reviews); fix --dataset",
                "file": f"{tmp_path / 'nope.json'}: dataset file not found; check --dataset / --dataset_dir",
                "eval_file": f"{tmp_path / 'val.json'}: dataset file not found; check --eval_dataset"}[where]
    assert expected in msg, msg
    assert not (tmp_path / "run").exists()


def test_repeated_flags_a_list_flag_joins_its_values_a_single_value_flag_keeps_the_last(monkeypatch):
    """A trial found --dataset a --dataset b trained on both while --learning_rate twice kept the last: list flags
    (--dataset, --eval_dataset, --lora_target) join, as collect's --appid 570 --appid 730 and LLaMA-Factory's comma
    list; --help says so."""
    seen = []

    def captured(cfg):
        seen.append(cfg)
        raise UserError("stop")

    monkeypatch.setattr(train_mod, "_check", captured)
    for argv in (["--dataset", "a.json", "--dataset", "b.json,c.json"], ["--dataset", "a.json,b.json,c.json"]):
        CliRunner().invoke(main, ["train", *argv, "--learning_rate", "1e-3", "--learning_rate", "2e-4"])
    assert [(c.dataset, c.learning_rate) for c in seen] == [(["a.json", "b.json", "c.json"], 2e-4)] * 2
    shown = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    assert "several are joined: comma-separated (LLaMA-Factory) or the flag repeated" in shown


def test_the_last_step_is_a_checkpoint_so_training_longer_resumes_exactly(tiny_llama_dir, eight, tmp_path):
    """Trial 24: a finished run suggested --resume_from_checkpoint …/checkpoint-(N-1), which trained step N again.
    The last step is saved as checkpoint-N (HF Trainer does the same), within --save_total_limit, and the finished
    run's message names it; resuming it with a larger --max_steps continues the step counter and the loss log."""
    out = tmp_path / "run"
    flags = _flags(tiny_llama_dir, eight, out, max_steps=2, save_steps=100, save_total_limit=1)
    first = run(config.build(TrainConfig, flags))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    again = CliRunner().invoke(main, _argv(flags))
    assert again.exit_code == 2 and (f"to train longer, pass a larger --max_steps (it overrides --num_train_epochs; or --max_steps -1 and a larger "
                                     f"--num_train_epochs) and "
                                     f"--resume_from_checkpoint {out / 'checkpoint-2'}: it goes on from step 2"
                                     ) in " ".join(again.output.split()), again.output
    same = CliRunner().invoke(main, _argv({**flags, "resume_from_checkpoint": str(out / "checkpoint-2")}))
    assert same.exit_code == 2 and "this checkpoint is at step 2 and the run has 2 steps; to train longer, pass a " \
        "--max_steps above 2 (it overrides --num_train_epochs; or --max_steps -1" in " ".join(same.output.split()), same.output
    longer = run(config.build(TrainConfig, {**flags, "max_steps": 3, "resume_from_checkpoint": str(out / "checkpoint-2")}))
    assert (longer["global_step"], longer["resumed_from_step"], longer["loss_first"]) == (3, 2, first["loss_first"])
    rows = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["current_steps"] for r in rows] == [1, 2, 3] and [r["total_steps"] for r in rows] == [2, 2, 3]
    assert rows[1]["loss"] == first["loss_last"] and longer["loss_last"] == rows[2]["loss"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]  # --save_total_limit 1


def test_resumed_at_the_last_step_only_finishes(tiny_llama_dir, eight, tmp_path):
    """A run stopped after saving checkpoint-N but before its final adapter: the rerun saves the adapter and the
    results from the checkpoint and the log, training no step."""
    out = tmp_path / "run"
    flags = _flags(tiny_llama_dir, eight, out, max_steps=2, save_steps=100)
    first = run(config.build(TrainConfig, flags))
    for name in ("adapter_model.safetensors", "all_results.json"):
        (out / name).unlink()
    with pytest.raises(UserError, match="; to finish the run \\(save its final adapter\\), rerun without "
                                        "--resume_from_checkpoint$"):
        run(config.build(TrainConfig, {**flags, "resume_from_checkpoint": str(out / "checkpoint-2")}))
    again = run(config.build(TrainConfig, flags))
    assert (again["global_step"], again["resumed_from_step"]) == (2, 2)
    assert {k: again[k] for k in ("loss_first", "loss_last", "loss_last_steps", "train_loss")} == \
        {k: first[k] for k in ("loss_first", "loss_last", "loss_last_steps", "train_loss")}
    assert (out / "adapter_model.safetensors").is_file()


def test_resumed_progress_lines_show_this_runs_elapsed_time(tiny_llama_dir, eight, tmp_path, monkeypatch):
    """Trial 24: after a resume the plain progress lines' elapsed time included the earlier session while the
    final bar showed this one's; the lines now show this session's and say so (the log keeps the whole run's)."""
    import io
    import re

    from steam_persona.common import console as console_mod

    out = tmp_path / "run"
    flags = _flags(tiny_llama_dir, eight, out)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config.build(TrainConfig, flags), callbacks=(_crash_at_3,))
    state_file = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    state_file.write_text(json.dumps({**state, "elapsed": 3600.0}), encoding="utf-8")  # an hour before the crash
    buf = io.StringIO()
    monkeypatch.setattr(console_mod.console, "_file", buf)
    monkeypatch.setenv("TTY_COMPATIBLE", "0")
    run(config.build(TrainConfig, flags))
    shown = re.findall(r"^train step (\d)/4 .* elapsed (\S+) this run  ETA", buf.getvalue(), re.M)
    assert [s for s, _ in shown] == ["3", "4"] and all(e.startswith("0:0") for _, e in shown), buf.getvalue()
    rows = [json.loads(x) for x in (out / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows[-1]["elapsed_time"].startswith("1:00:")  # the log's figure is the whole run's


def test_a_run_killed_while_saving_its_first_checkpoint_starts_over_without_its_temp_folder(tiny_llama_dir, eight,
                                                                                             tmp_path, capsys):
    """Trial 28 B2: a SIGKILL inside the first checkpoint's save left ``.checkpoint-2.tmp-PID/`` beside the run's
    leftovers; the rerun refused the folder (no resumable checkpoint) and nothing ever removed the temp folder."""
    from conftest import DEAD_PID

    out = tmp_path / "run"
    flags = _flags(tiny_llama_dir, eight, out, max_steps=2, save_steps=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config.build(TrainConfig, flags), callbacks=(lambda step, row: _crash_at_3(step + 2, row),))
    killed = out / f".checkpoint-2.tmp-{DEAD_PID}"
    killed.mkdir()
    (killed / "adapter_model.safetensors").write_bytes(b"partial")
    capsys.readouterr()
    assert run(config.build(TrainConfig, flags))["global_step"] == 2
    assert not killed.exists()
    said = " ".join(capsys.readouterr().err.split())
    assert f"note removed 1 temp file of an interrupted run: {killed}" in said and "starting over" in said


def test_a_final_save_killed_leaves_no_hidden_folder_after_the_rerun(tiny_llama_dir, eight, tmp_path, capsys):
    """Trial 29 N1: a kill inside the final adapter's save left ``.save-XXXXXXXX/`` (tempfile's name) in the run
    folder, which no rerun removed; the save's temp folder is now ``.save.tmp-PID``, which the rerun removes."""
    from conftest import DEAD_PID

    out = tmp_path / "run"
    killed = out / f".save.tmp-{DEAD_PID}"
    killed.mkdir(parents=True)
    (killed / "adapter_model.safetensors").write_bytes(b"partial")
    assert run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, out, max_steps=2, save_steps=2)))["global_step"] == 2
    assert not killed.exists() and not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert f"note removed 1 temp file of an interrupted run: {killed}" in " ".join(capsys.readouterr().err.split())


def test_the_adapter_save_writes_into_a_temp_folder_a_rerun_can_remove(tmp_path):
    """The final save's temp folder is named as common.atomic names temps, so remove_stale_in finds one that a
    killed save left (tempfile's ``.save-XXXXXXXX`` was never found)."""
    from steam_persona.common import atomic
    from steam_persona.trainer import train as train_mod

    seen = []

    class Model:
        def save_pretrained(self, folder):
            seen.append(Path(folder).name)
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"w")

    train_mod._save_adapter_and_tokenizer(Model(), None, tmp_path)
    assert seen == [f".save.tmp-{os.getpid()}"] and (tmp_path / "adapter_model.safetensors").read_bytes() == b"w"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter_model.safetensors"]
    assert atomic._TMP_NAME.fullmatch(seen[0])


def test_a_second_ctrl_c_at_the_end_of_the_process_still_quits_with_its_line(tmp_path):
    """Trial 29 N2: a second Ctrl-C 0.3-1 s after the first, while Python tore down its modules, killed train by
    SIGINT with no line (Python gives every signal its default action back before that teardown). Here an object
    freed in that teardown takes 3 s; the test sends SIGINT every 0.1 s once the stage has stopped: the process
    ends with 130, at most the one "forced quit" line, and never reaches the teardown."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import gc, os, signal, sys, time\n"
            "from steam_persona.cli import main\n"
            "from steam_persona.trainer import train\n"
            "class Slow:\n"
            "    def __del__(self):\n"
            "        os.write(2, b'torn down\\n'); time.sleep(3)\n"
            "slow = Slow(); slow.cycle = slow; del slow; gc.disable()\n"
            "def interrupted(cfg):\n"
            "    os.write(2, b'stopping\\n')\n"
            "    raise KeyboardInterrupt\n"
            "train._check = interrupted\n"
            "main(['train', '--dataset', 'd.json'])\n")
    p = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stderr.readline() == "stopping\n"
    assert p.stderr.readline().startswith("interrupted while loading")
    while p.poll() is None:
        p.send_signal(signal.SIGINT)
        time.sleep(0.1)
    said = p.stderr.read()
    assert p.returncode == 130, (p.returncode, said)
    assert said in ("", "forced quit (Ctrl-C while stopping); rerun the same command to go on\n"), said


@pytest.mark.parametrize("where", ["import", "flags", "checks"])
def test_a_signal_before_training_starts_says_nothing_was_written(tmp_path, where):
    """Trial 29: a Ctrl-C in train's first ~0.4 s (its modules imported, its flags read) exited 130 without a
    line. The signal comes while the sub-command's module is imported, while the flags are read, and in train's
    first checks (before its data is read)."""
    import subprocess
    import sys
    from pathlib import Path

    at = {"import": "importlib.import_module", "flags": "steam_persona.common.config.build",
          "checks": "steam_persona.trainer.train._check"}[where]
    owner, name = at.rsplit(".", 1)
    code = ("import importlib, os, signal, sys, time\n"
            "from steam_persona.cli import main\n"
            "import steam_persona.common.config, steam_persona.trainer.train\n"
            f"owner = sys.modules[{owner!r}]\n"
            f"real = getattr(owner, {name!r})\n"
            "def signalled(*args, **kwargs):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(5)\n"
            "    return real(*args, **kwargs)\n"
            f"setattr(owner, {name!r}, signalled)\n"
            "main(['train', '--dataset', 'd.json', '--output_dir', 'out'])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    said = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 130 and "Traceback" not in said, (r.returncode, said)
    if where == "checks":  # train's own stop line, as for a Ctrl-C while the model loads
        assert said == ("interrupted while loading, before the first step: nothing was written to out; rerun "
                        "the same command to start"), said
    else:
        assert said == "stopped (Ctrl-C) before training started; nothing was written", said
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.lock").exists()


def test_an_error_made_of_the_interrupt_while_loading_still_says_where_it_stopped(tiny_llama_dir, eight, tmp_path,
                                                                                  monkeypatch):
    """A SIGINT while torch was imported made the import raise its own error; stop_signals_interrupt raised it as
    KeyboardInterrupt, but only after the stop line's block had let it pass: exit 130 without a line."""
    import os

    def interrupted_import(cfg):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise ImportError("cannot import name 'x'") from None

    monkeypatch.setattr(train_mod, "check_datasets", interrupted_import)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, _argv(_flags(tiny_llama_dir, eight, out)))
    said = " ".join(r.output.split())
    assert r.exit_code == 130 and (f"interrupted while loading, before the first step: nothing was written to {out}; "
                                   "rerun the same command to start") in said, (r.exit_code, said)


def test_a_damaged_checkpoint_or_adapter_file_is_exit_2_naming_it(tiny_llama_dir, eight, tmp_path):
    """Trial 38 (3): a cut optimizer.pt, trainer_state.json or adapter_model.safetensors (a partial copy, a disk
    error) ended `train`'s resume, `export` and `chat` in a library's traceback, exit 1."""
    from steam_persona.export.merge import read_run
    from steam_persona.trainer.model import load_for_inference

    out = tmp_path / "run"
    flags = _flags(tiny_llama_dir, eight, out)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config.build(TrainConfig, flags), callbacks=(_crash_at_3,))
    ckpt = out / "checkpoint-2"
    (out / "checkpoint-1").mkdir()  # an earlier checkpoint to resume from
    (out / "checkpoint-1" / "optimizer.pt").write_bytes((ckpt / "optimizer.pt").read_bytes())
    for name, reason in [("optimizer.pt", "File is not a zip file"), ("scheduler.pt", "File is not a zip file"),
                         ("trainer_state.json", ""), ("adapter_model.safetensors", "Error while deserializing")]:
        whole = (ckpt / name).read_bytes()
        (ckpt / name).write_bytes(whole[:len(whole) // 2])
        r = CliRunner().invoke(main, _argv(flags))
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert r.output.startswith(f"Error: {ckpt / name}: damaged, cannot be read ({reason}")
        assert r.output.rstrip().endswith(f"); resume from an earlier checkpoint with --resume_from_checkpoint "
                                          f"{out / 'checkpoint-1'}, or start over with --overwrite_output_dir")
        (ckpt / name).write_bytes(whole)
    (ckpt / "adapter_model.safetensors").write_bytes(b"\0" * 100)
    fix = "copy the adapter's run again, or pass one of its checkpoint-N folders"
    for read in (read_run, lambda d: load_for_inference(None, d)):  # export; chat and eval
        with pytest.raises(UserError, match=f"adapter_model.safetensors: damaged, cannot be read .*; {fix}$"):
            read(str(ckpt))
    (ckpt / "adapter_config.json").write_text('{"r": 8,', encoding="utf-8")
    with pytest.raises(UserError, match="adapter_config.json: damaged, cannot be read \\(Expecting"):
        read_run(str(ckpt))


def test_the_train_longer_hint_names_the_flag_that_sets_the_length(tmp_path):
    """Trial 38 (6): with --max_steps set, the hint said "(or a larger --num_train_epochs)", which cannot help."""
    by_steps = config.build(TrainConfig, {"dataset": ["d"], "max_steps": 10, "num_train_epochs": 3})
    by_epochs = config.build(TrainConfig, {"dataset": ["d"], "max_steps": -1, "num_train_epochs": 3})
    assert train_mod._longer(by_steps, 10) == ("a --max_steps above 10 (it overrides --num_train_epochs; or "
                                               "--max_steps -1 and a larger --num_train_epochs)")
    assert train_mod._longer(by_epochs, 10) == "a larger --num_train_epochs (or a --max_steps above 10)"


def test_resume_with_a_changed_dataset_info_entry_is_exit_2_naming_what_changed(tiny_llama_dir, eight, tmp_path):
    """Trial 38 (2): swapping an entry's prompt and response columns between the crash and the resume went on
    training on other samples (the data file's sha256 was the same), exit 0."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.json").write_bytes(eight.read_bytes())
    info = {"steam_reviews": {"file_name": "train.json", "columns": {"prompt": "instruction", "response": "output"}}}
    (data_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    out = tmp_path / "run"
    flags = {**_flags(tiny_llama_dir, "steam_reviews", out), "dataset_dir": str(data_dir)}
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config.build(TrainConfig, flags), callbacks=(_crash_at_3,))
    info["steam_reviews"]["columns"] = {"prompt": "output", "response": "instruction"}
    (data_dir / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")
    r = CliRunner().invoke(main, _argv(flags))
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert r.output.strip() == (
        f'Error: {data_dir / "train.json"}: the dataset is read differently since {out / "checkpoint-2"} was saved '
        '(its dataset_info.json entry: columns {"prompt": "instruction", "response": "output"} then, {"prompt": '
        '"output", "response": "instruction"} now); put back the entry the run was trained with, or pass '
        "--overwrite_output_dir to start over")


def test_removing_a_checkpoint_moves_an_export_inside_it_out_first(tmp_path):
    """Trial 38 (4): --save_total_limit removed a checkpoint with the verified GGUF exported into it."""
    ckpt = tmp_path / "checkpoint-6"
    (ckpt / "export").mkdir(parents=True)
    (ckpt / "export" / "run-step-6-q8_0.gguf").write_bytes(b"GGUF")
    (ckpt / "optimizer.pt").write_bytes(b"x")
    (tmp_path / "export-checkpoint-6").mkdir()  # taken: the export keeps its own folder
    train_mod._remove_checkpoint(ckpt)
    assert not ckpt.exists()
    moved = [p for p in tmp_path.glob("export-checkpoint-6-*")]
    assert len(moved) == 1 and (moved[0] / "run-step-6-q8_0.gguf").read_bytes() == b"GGUF"


def test_a_resumed_runs_log_rows_are_the_unbroken_runs_when_a_checkpoint_falls_inside_a_logging_window(
        tiny_llama_dir, eight, tmp_path):
    """Trial 38 (5): with --save_steps 2 and --logging_steps 3, the row at step 3 of a run resumed from
    checkpoint-2 was step 3's loss alone, where the unbroken run logs the mean of steps 2 and 3."""
    def rows(out):
        return [(r["current_steps"], r["loss"]) for r in map(json.loads, (out / "trainer_log.jsonl").read_text(
            encoding="utf-8").splitlines()) if "loss" in r]

    flags = {"logging_steps": 3, "save_steps": 2}
    run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, tmp_path / "full", **flags)))
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, out, **flags)), callbacks=(_crash_at_3,))
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text(encoding="utf-8"))["pending_losses"]
    run(config.build(TrainConfig, _flags(tiny_llama_dir, eight, out, **flags)))
    full, resumed = rows(tmp_path / "full"), rows(out)
    assert [s for s, _ in resumed] == [s for s, _ in full] == [1, 3, 4]
    assert resumed == [(s, pytest.approx(loss, abs=2e-4)) for s, loss in full]


def test_a_ctrl_c_while_a_checkpoint_is_written_lets_it_finish_then_stops(tiny_llama_dir, eight, tmp_path,
                                                                          monkeypatch):
    """Trial 38 (11): a Ctrl-C milliseconds before a checkpoint's write ended threw it away, and the rerun
    trained the steps since the one before again."""
    real = train_mod._save_checkpoint

    def save(out, step, *args, **kwargs):
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(out, step, *args, **kwargs)

    monkeypatch.setattr(train_mod, "_save_checkpoint", save)
    out = tmp_path / "run"
    r = CliRunner().invoke(main, _argv(_flags(tiny_llama_dir, eight, out)))
    said = " ".join(r.output.split())
    assert r.exit_code == 130, (r.exit_code, said)
    assert (out / "checkpoint-2" / "optimizer.pt").is_file() and not list(out.glob(".checkpoint-2*"))
    assert f"rerun the same command to resume from {out / 'checkpoint-2'}" in said, said
