"""CPU training speed: `steam-train train` with the seed's flags vs a padded HF-Trainer-style baseline.

Runs, in one process and on the same samples, a few optimizer steps of

* **ours**: padding-free packed micro-batches + logits only at learned positions (the defaults);
* **ours-no-ckpt** (optional): ours with ``--disable_gradient_checkpointing`` (no recompute; more memory);
* **baseline**: every micro-batch padded to its longest sample and logits at every position, which is
  what HF ``Trainer`` / LLaMA-Factory 0.9.5 compute (``DataCollatorForSeq2Seq`` + ``model(labels=)``);

with the seed recipe's flags (``--template default --cutoff_len 1024``, batch 4 × accumulation 4,
lr 2e-4, warmup 0.1, ``--fp16 True`` (→ bf16 on CPU), ``--quantization_bit 4``, ``--lora_target all``)
on SmolLM2-135M-Instruct (embedded) and the real 941-record sample. ``--system ''`` keeps the token
stream identical to LLaMA-Factory's ``default`` template, which has no system prompt.

Prints samples/s, tokens/s, peak RSS and each variant's per-step loss; writes
``bench/results/train_cpu.json``. Reference: LLaMA-Factory 0.9.5 on this 2-core machine,
51 s per optimizer step of 16 samples = 0.31 samples/s (../shared/reference/hf-stack.md).

This 2-core VM's speed drifts by ±30 % within an hour (shared host), so a fixed reference figure is a
weak yardstick: ``--llamafactory PATH/llamafactory-cli`` also runs LLaMA-Factory itself, in the same
session and on the same base and data (its own venv, e.g. ``pip install torch==2.13.0
llamafactory==0.9.5``; text-only SFT never touches torchaudio, which that release imports
unconditionally, so a stub module is put on its path when the package is missing). It runs the seed's
flags with ``--lf_precision``: ``fp16`` is the seed verbatim, which on a CPU without fp16 matmuls ran
~11 min a step here; ``bf16`` (with ``--use_cpu``) is LLaMA-Factory's fastest CPU setting and the fair
baseline. The run interleaves: ours, LLaMA-Factory, ours again.

Usage: ``.venv/bin/python bench/train_cpu.py [--steps 3] [--data PATH] [--llamafactory CLI]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLAMA_FACTORY_SAMPLES_PER_S = 0.31


def _rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # ru_maxrss is KiB on Linux


def run_llamafactory(cli: str, model_dir: str, data: Path, steps: int, precision: str, work: Path) -> dict:
    """LLaMA-Factory's `train` with the seed's flags on `data`, in a subprocess; its own train_results.json."""
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "data" / "dataset_info.json").write_text(json.dumps({"steam_reviews": {"file_name": str(data.resolve())}}))
    stub = work / "stub"
    (stub / "torchaudio").mkdir(parents=True, exist_ok=True)
    (stub / "torchaudio" / "__init__.py").write_text("# text-only SFT never uses it\n")
    py = Path(cli).with_name("python")
    has_ta = subprocess.run([str(py), "-c", "import torchaudio"], capture_output=True).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
    if not has_ta:
        env["PYTHONPATH"] = str(stub)
    prec = ["--fp16", "True"] if precision == "fp16" else ["--bf16", "True", "--use_cpu", "True"]
    cmd = [cli, "train", "--stage", "sft", "--do_train", "--model_name_or_path", model_dir,
           "--dataset", "steam_reviews", "--dataset_dir", str(work / "data"), "--template", "default",
           "--cutoff_len", "1024", "--finetuning_type", "lora", "--lora_target", "all",
           "--output_dir", str(work / "out"), "--overwrite_output_dir",
           "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "4", "--learning_rate", "2e-4",
           "--num_train_epochs", "3.0", "--logging_steps", "1", "--save_steps", "100000", "--warmup_ratio", "0.1",
           *prec, "--quantization_bit", "4", "--max_steps", str(steps), "--report_to", "none"]
    t = time.time()
    r = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"LLaMA-Factory failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    res = json.loads((work / "out" / "train_results.json").read_text())
    state = json.loads((work / "out" / "trainer_state.json").read_text())
    return {"precision": precision, "samples_per_s": round(res["train_samples_per_second"], 3),
            "s_per_step": round(res["train_runtime"] / steps, 2),
            "step_losses": [x["loss"] for x in state["log_history"] if "loss" in x],
            "wall_s_incl_load": round(time.time() - t, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per variant (16 samples each)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "steam_sft_sample.json"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "train_cpu.json"))
    ap.add_argument("--variants", default="ours,baseline",
                    help="comma list of ours, baseline, ours-no-ckpt (ours + --disable_gradient_checkpointing)")
    ap.add_argument("--llamafactory", help="llamafactory-cli of a LLaMA-Factory venv: also run it, same session")
    ap.add_argument("--lf_precision", choices=["bf16", "fp16"], default="bf16",
                    help="LLaMA-Factory's precision flag (fp16 = the seed verbatim; bf16 = its fastest on CPU)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (0 = torch's default). On a CPU shared with other jobs, 1 thread "
                         "avoids straggler waits that make 2-thread matmuls several times slower")
    args = ap.parse_args()
    if args.threads:
        __import__("torch").set_num_threads(args.threads)

    from steam_persona.common import atomic
    from steam_persona.common import config
    from steam_persona.trainer.train import TrainConfig, run

    seed_flags = {"stage": "sft", "do_train": True, "model_name_or_path": "smollm2", "dataset": [args.data],
                  "template": "default", "system": "", "cutoff_len": 1024, "finetuning_type": "lora",
                  "lora_target": ["all"], "per_device_train_batch_size": 4, "gradient_accumulation_steps": 4,
                  "learning_rate": 2e-4, "num_train_epochs": 3.0, "logging_steps": 1, "save_steps": 100000,
                  "warmup_ratio": 0.1, "fp16": True, "quantization_bit": 4, "overwrite_output_dir": True,
                  "max_steps": args.steps}
    results: dict = {"date": time.strftime("%Y-%m-%d"), "flags": {k: v for k, v in seed_flags.items() if k != "dataset"},
                     "data": Path(args.data).name,
                     "torch_threads": __import__("torch").get_num_threads(), "cpu_count": os.cpu_count(),
                     "load_average_start": list(os.getloadavg()), "variants": {}}
    order = args.variants.split(",")
    if args.llamafactory:  # interleave so a drift of the host's speed hits both sides
        order = ["ours", "llamafactory", "ours#2"] + [n for n in order if n != "ours"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in order:
            if name == "llamafactory":
                from steam_persona.common import hub
                from steam_persona.trainer.model import hf_path

                results["llamafactory"] = run_llamafactory(args.llamafactory, hf_path(hub.resolve_model("smollm2")),
                                                           Path(args.data), args.steps, args.lf_precision, Path(tmp) / "lf")
                print(f"llamafactory ({args.lf_precision}): {results['llamafactory']}", flush=True)
                continue
            cfg = config.build(TrainConfig, {**seed_flags, "padding_free": name.startswith("ours"),
                                             "disable_gradient_checkpointing": name == "ours-no-ckpt",
                                             "output_dir": str(Path(tmp) / name)})
            t = time.time()
            r = run(cfg)
            rows = [x for x in atomic.read_jsonl_log(Path(tmp) / name / "trainer_log.jsonl") if "loss" in x]
            results["variants"][name] = {
                "samples_per_s": r["train_samples_per_second"], "tokens_per_s": r["train_tokens_per_second"],
                "s_per_step": round(r["train_runtime"] / args.steps, 2), "step_losses": [x["loss"] for x in rows],
                "peak_rss_gib_so_far": _rss_gib(), "wall_s_incl_load": round(time.time() - t, 1)}
    results["load_average_end"] = list(os.getloadavg())
    v = results["variants"]
    if "ours#2" in v:  # the two runs around LLaMA-Factory's, pooled
        a, b = v["ours"], v.pop("ours#2")
        v["ours"] = {**a, "samples_per_s": round((a["samples_per_s"] + b["samples_per_s"]) / 2, 3),
                     "tokens_per_s": round((a["tokens_per_s"] + b["tokens_per_s"]) / 2, 1),
                     "s_per_step": round((a["s_per_step"] + b["s_per_step"]) / 2, 2),
                     "samples_per_s_runs": [a["samples_per_s"], b["samples_per_s"]]}
    if "ours" in v and "llamafactory" in results:
        results["ratio_vs_llamafactory_same_session"] = round(
            v["ours"]["samples_per_s"] / results["llamafactory"]["samples_per_s"], 2)
    if "ours" in v:
        results["ratio_vs_llamafactory_0_9_5"] = round(v["ours"]["samples_per_s"] / LLAMA_FACTORY_SAMPLES_PER_S, 2)
    if "ours" in v and "baseline" in v:
        results["ratio_vs_padded_baseline_same_run"] = round(v["ours"]["samples_per_s"] / v["baseline"]["samples_per_s"], 2)
        results["max_step_loss_diff"] = round(max(abs(a - b) for a, b in zip(v["ours"]["step_losses"],
                                                                              v["baseline"]["step_losses"])), 4)
    atomic.write_json(args.out, results)
    for name, x in v.items():
        print(f"{name:9s} {x['samples_per_s']:.3f} samples/s  {x['tokens_per_s']:.0f} tokens/s  "
              f"{x['s_per_step']:.1f} s/step  losses {x['step_losses']}  peak RSS {x['peak_rss_gib_so_far']} GiB")
    for k in ("ratio_vs_llamafactory_same_session", "ratio_vs_llamafactory_0_9_5", "ratio_vs_padded_baseline_same_run",
              "max_step_loss_diff"):
        if k in results:
            print(f"{k}: {results[k]}")
    print(f"load average {results['load_average_start']} → {results['load_average_end']}; wrote {args.out}")


if __name__ == "__main__":
    main()
