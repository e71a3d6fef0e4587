"""What a user sees on the GPU: `steam-train train` (the Python API, plain lines as in a log) on the real sample
with the random-weight Qwen2.5-7B that bench/train_speed.py saves, 4-bit, the seed's batch 4 x 4. Prints
the step lines and all_results.json's speed figures (steady tokens/s, compile seconds) for docs/gpu.md.

Usage: python bench/progress_probe.py MODEL_DIR DATA_JSON OUT_DIR [MAX_STEPS]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> int:
    from steam_persona.common import config
    from steam_persona.trainer.train import TrainConfig, run

    model_dir, data, out = argv[:3]
    steps = int(argv[3]) if len(argv) > 3 else 20
    cfg = config.build(TrainConfig, {
        "model_name_or_path": model_dir, "dataset": [data], "output_dir": out, "overwrite_output_dir": True,
        "template": "qwen", "quantization_bit": 4, "bf16": True, "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 4, "learning_rate": 2e-4, "max_steps": steps, "logging_steps": 5,
        "save_steps": 1000})
    r = run(cfg)
    print(json.dumps({k: r[k] for k in ("train_runtime", "train_tokens_per_second", "steady_tokens_per_second",
                                        "compile_seconds", "loss_first", "loss_last")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
