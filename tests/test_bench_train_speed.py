"""bench/train_speed.py's pure parts: the allocator-trace replay of the memory profile and the goals against
Unsloth (the GPU runs themselves are in bench/results/train_speed_unsloth.json)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import train_speed  # noqa: E402


def _ev(action, addr, size, where="a.py"):
    return {"action": action, "addr": addr, "size": size, "frames": [{"filename": f"/x/{where}", "line": 1, "name": "f"}]}


def test_peak_blocks_replays_to_the_peak_and_groups_live_blocks():
    events = [_ev("alloc", 1, 100), _ev("alloc", 2, 50, "b.py"), _ev("free_requested", 1, 100),
              _ev("free_completed", 1, 100), _ev("alloc", 3, 120, "b.py"), _ev("alloc", 4, 10),
              _ev("free_completed", 9, 999),  # allocated before the trace: ignored
              _ev("free_completed", 3, 120, "b.py"), _ev("alloc", 5, 20)]
    peak, groups = train_speed.peak_blocks(events)
    assert peak == 180  # blocks 2, 3, 4 (the first peak, 150, is lower)
    assert groups == {"b.py:1:f": [170, 2], "a.py:1:f": [10, 1]}


def test_unsloth_goals_compare_the_same_rows():
    ours = {"configs": {"fixed": {"eff_tokens_per_s": 12000, "peak_gib": 6.0, "mfu": 0.66},
                        "real_bs16": {"eff_tokens_per_s": 10000, "mfu": 0.59},
                        "long_32768": {"oom": "out of memory"}}, "longest_context": 98304}
    uns = {"configs": {"fixed": {"eff_tokens_per_s": 10000, "peak_gib": 6.5},
                       "real_bs16": {"eff_tokens_per_s": 4000}, "real_pf4x4": {"eff_tokens_per_s": 5000},
                       "long_32768": {"eff_tokens_per_s": 7000, "peak_gib": 11.0}}}
    goals = train_speed.unsloth_goals(ours, uns)
    fixed = goals["fixed 1024x4: tokens/s vs Unsloth's, at <= its peak GiB"]
    assert fixed["met"] and fixed["measured"] == [1.2, 6.0, 6.5]
    assert not goals["32k tokens, batch 1: tokens/s vs Unsloth's, at <= its peak GiB"]["met"]  # ours out of memory
    real = goals["real sample, 16 samples a step: tokens/s vs Unsloth's best"]
    assert real["measured"] == 2.0 and real["met"]  # against Unsloth's best of its two ways
    assert not goals["real sample, 16 samples a step: MFU"]["met"]
    assert goals["fixed 1024x4 MFU (against Unsloth)"]["met"]
    assert goals["longest context at batch 1 within cap (against Unsloth)"]["met"]


def test_a_stack_past_its_timeout_is_stopped_and_keeps_its_figures(tmp_path, monkeypatch):
    """BENCH_STACK_TIMEOUT: the stack's process gets that many seconds; one that runs longer is stopped and what
    it wrote so far is kept, marked timed_out (a hang can't eat the device call)."""
    import argparse
    import subprocess

    def hang(cmd, timeout=None):
        assert timeout == 7.0 and cmd[cmd.index("--worker") + 1] == "ours"
        (tmp_path / "bench-ours.json").write_text('{"configs": {"fixed": {"peak_gib": 6.5}}}')
        raise subprocess.TimeoutExpired(cmd, timeout)

    monkeypatch.setenv("BENCH_STACK_TIMEOUT", "7")
    monkeypatch.setattr(train_speed.subprocess, "run", hang)
    a = argparse.Namespace(work_dir=str(tmp_path), cap_gib=24.0, model_dir="/m", tiny=False)
    res = train_speed.run_stack("ours", a)
    assert res == {"configs": {"fixed": {"peak_gib": 6.5}}, "returncode": "timed_out"}


def test_unsloth_is_built_for_the_config_positions_unless_a_long_run_needs_more():
    """Above the config's 32,768 positions Unsloth scales RoPE: its loss would not be ours'."""
    assert train_speed.unsloth_max_seq_length(["loss", "real_bs16", "fixed"], [98304]) == 32768
    assert train_speed.unsloth_max_seq_length(["fixed", "long"], [65536, 98304]) == 98304
    assert train_speed.unsloth_max_seq_length(["long"], []) == 49152


def test_summary_lists_a_skipped_config_without_timing_it(capsys):
    """`--stacks ours-graph` on a CPU skips its configs; the summary table raised KeyError 's_per_step'."""
    res = {"ours-graph": {"configs": {"fixed": {"skipped": "CUDA graphs need a CUDA GPU"}}}}
    summary = train_speed.summarize(res)
    assert "ours-graph               fixed    CUDA graphs need a CUDA GPU" in capsys.readouterr().out
    assert summary["goals"]["fixed 1024x4 tokens/s"]["met"] is False
