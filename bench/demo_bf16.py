"""CPU training step cost of the demo's recipe in float32 vs bfloat16 (why `demo` trains in bf16).

QLoRA on the embedded SmolLM2-135M-Instruct (4-bit NF4 base, LoRA r8 on every linear layer, no
gradient checkpointing), batch 2 × 160 tokens, AdamW: the demo's settings. Interleaved fp32, bf16,
fp32, bf16 in one process, one torch thread, and each step timed in CPU seconds of this process
(``time.process_time``), so a machine shared with other jobs inflates both variants alike instead
of whichever ran during a busy minute. Prints per-variant CPU s/step (best of steps 2-4) and the
ratio; writes ``bench/results/demo_bf16.json``.

Usage: ``.venv/bin/python bench/demo_bf16.py``
"""

from __future__ import annotations

import datetime
import json
import os
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results" / "demo_bf16.json"


def step_costs(dtype: torch.dtype, steps: int = 4) -> list[float]:
    from steam_persona.trainer import model as M

    m = M.add_lora(M.load_base("smollm2", quantization_bit=4, dtype=dtype, device="cpu"), lora_target=["all"],
                   lora_rank=8, gradient_checkpointing=False)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.randint(100, 40000, (2, 160), generator=torch.Generator().manual_seed(0))
    costs = []
    for _ in range(steps):
        t = time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            m(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        costs.append(round(time.process_time() - t, 3))
    return costs


def main() -> None:
    from steam_persona.trainer.train import _cpu_has_bf16

    torch.set_num_threads(1)
    runs: dict[str, list[list[float]]] = {"float32": [], "bfloat16": []}
    for name in ("float32", "bfloat16", "float32", "bfloat16"):
        runs[name].append(step_costs(getattr(torch, name)))
        print(name, runs[name][-1], flush=True)
    best = {k: min(min(r[1:]) for r in v) for k, v in runs.items()}
    result = {"date": datetime.date.today().isoformat(), "cpu_bf16": _cpu_has_bf16(), "torch_threads": 1,
              "load_average_start": os.getloadavg()[0], "cpu_s_per_step": runs, "best_cpu_s_per_step": best,
              "bf16_speedup": round(best["float32"] / best["bfloat16"], 2)}
    print(json.dumps({k: result[k] for k in ("best_cpu_s_per_step", "bf16_speedup")}))
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
