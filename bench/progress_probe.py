"""What a user sees on the GPU: `steam-train train` (the Python API, plain lines as in a log) on the real sample
with the random-weight Qwen2.5-7B that bench/train_speed.py saves, 4-bit, the seed's batch 4 x 4. Prints
the step lines, all_results.json's speed figures (steady tokens/s, compile seconds) and, for each step that did
not evaluate, the ETA shown against the time the run then took to end (seconds), for docs/gpu.md.

Usage: python bench/progress_probe.py MODEL_DIR DATA_JSON OUT_DIR [MAX_STEPS [VAL_SIZE EVAL_STEPS]]
(VAL_SIZE: held-out samples as --val_size; EVAL_STEPS: --eval_steps; both needed for evaluations).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _seconds(hms: str | None) -> float | None:
    """'H:MM:SS' (the log's remaining_time) in seconds; None stays None."""
    if hms is None:
        return None
    h, m, s = (float(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s


def main(argv: list[str]) -> int:
    from steam_persona.common import config
    from steam_persona.trainer.train import TrainConfig, run

    model_dir, data, out = argv[:3]
    steps = int(argv[3]) if len(argv) > 3 else 20
    evals = {"val_size": float(argv[4]), "eval_steps": int(argv[5])} if len(argv) > 5 else {}
    cfg = config.build(TrainConfig, {
        "model_name_or_path": model_dir, "dataset": [data], "output_dir": out, "overwrite_output_dir": True,
        "template": "qwen", "quantization_bit": 4, "bf16": True, "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 4, "learning_rate": 2e-4, "max_steps": steps, "logging_steps": 5,
        "save_steps": 1000, **evals})
    seen: list[tuple[int, float, float | None]] = []  # (step, wall time after it, ETA shown at it in s)
    eval_every = evals.get("eval_steps", 0)
    r = run(cfg, callbacks=(lambda step, row: seen.append((step, time.time(), _seconds(row["remaining_time"]))),))
    end = seen[-1][1]  # after the last step, its eval and its checkpoint
    eta = [{"step": s, "eta_s": e, "took_s": round(end - t, 1)} for s, t, e in seen
           if e is not None and not (eval_every and s % eval_every == 0) and s < steps]
    print(json.dumps({k: r[k] for k in ("train_runtime", "train_tokens_per_second", "steady_tokens_per_second",
                                        "compile_seconds", "loss_first", "loss_last")}))
    print(json.dumps({"eta_against_actual": eta}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
