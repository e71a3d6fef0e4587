"""QLoRA training speed and memory: `steam-train train`'s path against the LLaMA-Factory-equivalent stack.

Runs on one GPU capped to `--cap_gib` GiB (torch.cuda.set_per_process_memory_fraction) to stand for a 24 GB
card. Model: random-weight Qwen2.5-7B built from the config in `<assets>/qwen2.5-7b-instruct-config`
(speed and memory don't depend on weight values), tokenized with the real Qwen tokenizer
(`<assets>/qwen2.5-tokenizer`). `<assets>` is `.gpu_assets/` when present (the device machine gets no
../shared), else `../shared/models` + `../shared/data`.

Data: (a) the real `steam_sft_sample.json`, (b) fixed 1024-token samples, (c) the longest context that
fits at batch 1 (ascending sweep, stops at the first OOM).

Environment: BENCH_CONFIGS (comma list) runs only those data configurations of each stack; BENCH_LONG
(comma list of lengths) replaces the long-context sweep's lengths (ascending, stops at the first OOM);
BENCH_KEEP_COMPILED=1 keeps a stack's compiled layers from one data configuration to the next (steady-state
figures are the same, the device time of recompiling is saved); BENCH_STACK_TIMEOUT (seconds) stops a stack's process that runs longer (a hang can't eat the whole run: its
figures so far are kept, marked ``timed_out``); BENCH_TRACE_DIR writes each profile configuration's Chrome
trace of ours there (`trace-<configuration>.json.gz`, for a timeline view).

Stacks (each in its own process, so peaks, kernel patches and allocator state don't leak):
- baseline: HF Trainer, peft LoRA r8/alpha16 on all linear layers but lm_head, bnb nf4 + double quant,
  bf16 autocast, peft's prepare_model_for_kbit_training (fp32 upcast of the non-quantized weights,
  reentrant gradient checkpointing), pad to the longest in each batch, no packing, batch 4.
- ours: what `steam-train train` does by default (see trainer/accel.py and docs/gpu.md).
- ablations of ours, to show what each lever pays; ours-memory adds `memory_profile` (what is live at the peak).
- unsloth: Unsloth run its recommended way (bench/unsloth_stack.py; needs unsloth, unsloth_zoo, trl, datasets
  on the GPU machine, see ../shared/reference/hf-stack.md): the anchor, not a dependency.

Metrics per configuration: effective (non-pad) tokens/s, padded tokens/s, s/step (median of the timed
steps, wall time between optimizer steps incl. collation), peak GiB (torch.cuda.max_memory_allocated),
MFU = effective tokens/s * 6 * N / 790e12 where N = parameters without the input embedding
(7.07e9 for Qwen2.5-7B; the 6·N FLOP/token rule of Kaplan et al. 2020, which for LoRA with checkpointing
counts forward + recompute + input-gradient backward). Prints a ratio table and writes
bench/results/train_speed.json (date, GPU, versions, all figures, goals met or not).

`--tiny` is a CPU dry run with a 2-layer model (figures meaningless, code paths the same).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEAK_TFLOPS = 790.0
STACKS = {
    # name: data configurations it runs
    "baseline": "loss,real,fixed,long",
    "ours": "loss,real,real_bs16,fixed,long",
    "ours-rows": "real_bs32,real_bs64",            # ours with bigger packed rows (more samples a micro-batch)
    "ours-sdpa": "fixed",                         # packed rows through SDPA's block-diagonal mask, no varlen
    "ours-liger": "real,fixed",                   # Liger RMSNorm/RoPE/SwiGLU instead of compiled layers
    "ours-no-compile": "real,fixed",              # neither: eager layers
    "ours-no-fused-loss": "fixed",                # steam_persona.trainer.packing's labelled-only logits instead of FLCE
    "ours-chunked-ce": "fixed,long32k",           # the torch fallback of the fused loss (no Triton)
    "ours-no-offload": "long",                    # long contexts without activation offload
    "ours-no-lora-mlp": "fixed,memory,long",      # the compiled MLP instead of the fused LoRA MLP op
    "ours-varlen-only": "fixed,long",             # every packed row through varlen FlashAttention 2 (no batched
                                                  # SDPA with cuDNN for rows of equal-length samples)
    "ours-keep-attn": "fixed,long",               # the compiled recompute keeps each attention call's output
                                                  # (offloaded like the layer inputs) instead of running it again
    "ours-lora-mlp-4096": "fixed,memory",         # the fused LoRA MLP in pieces of 4,096 tokens instead of 2,048
    "ours-lora-mlp-1024": "fixed,memory,real_bs16,long",  # ... in pieces of 1,024
    "ours-lean-every-row": "real_bs16,fixed",     # the fused LoRA MLP and the offload on every row (the defaults
                                                  # of 2026-12-06 10:00-13:30 UTC), not only from 4,096 tokens
    "ours-main-1206": "loss,real_bs16,fixed,long",          # the defaults before the fused LoRA MLP and offload at every
                                                  # length (offload from 16k, eager chunked MLPs over 32k)
    "ours-lowmem": "loss,fixed,long",             # compiled MLPs, eager layers with chunked MLPs for rows > 16k
    "ours-main-1205": "loss,fixed,long",          # the defaults before chunked MLPs and overlapped offload
    "ours-profile": "profile,profile_real,profile_long",  # torch.profiler: where a step's time goes
    "ours-phases": "phases,phases_real",          # unprofiled: when the host and the GPU finish each part of a step
    "ours-hostprof": "phases,phases_real,hostprof,hostprof_real",  # ... and cProfile of the host's Python
    "ours-loss-liger-budget": "phases,phases_real",  # Liger's own loss chunks (128 rows at 4,096) instead of 1,024
    "ours-no-asserts": "phases,phases_real",      # Inductor's wrappers without size/stride/alignment asserts
    "ours-cpp-wrapper": "phases,phases_real",     # Inductor's wrapper code in C++ (cpp_wrapper), not Python
    "ours-combo": "phases,phases_real",           # Inductor's combo kernels (independent kernels in one launch)
    "ours-static": "fixed,real_bs16",             # layers compiled for static shapes (one graph a row length)
    "ours-auto-dynamic": "fixed,real_bs16",       # torch's automatic dynamic: static until a row length changes
    "ours-static-graphs": "fixed,real_bs16",      # static shapes and CUDA graphs (mode="reduce-overhead")
    "ours-static-autotune": "fixed,real_bs16",    # static shapes, Inductor's max-autotune without CUDA graphs
    "ours-autotune": "fixed,real_bs16",           # dynamic shapes, Inductor's max-autotune without CUDA graphs
    "ours-repeat": "fixed,real_bs16",             # the defaults again, later in the same call (process spread)
    "ours-graph": "fixed,real_bs16",              # each row's forward + backward as one CUDA graph (bench/step_graph.py)
    "ours-graph-no-offload": "fixed,real_bs16",   # ... without activation offload
    "ours-graph-lean-every-row": "fixed,real_bs16",  # ... with the fused LoRA MLP and the offload on every row
    "ours-graph-keep-attn": "fixed,real_bs16",    # ... with the attention outputs kept (no seeded op recomputed)
    "unsloth-profile": "profile,profile_real,profile_long",  # the same for Unsloth
    "ours-memory": "fixed,memory",                # what is live at the peak of a fixed 1024 x 4 step (memory_profile)
    "unsloth": "loss,real_bs16,real_pf4x4,fixed,long",  # the anchor, run its recommended way (bench/unsloth_stack.py)
    "unsloth-short": "loss,real_bs16,fixed",      # the anchor at the config's positions (its loss compares with ours)
    "unsloth-long": "long",                       # ... and built for the long rows (RoPE scaled above 32,768)
    "ours-no-shared-dequant": "fixed",            # bitsandbytes' own 4-bit matmul (3 dequantizations a weight a step)
    "ours-ckpt-outside": "fixed",                 # checkpoint around the compiled layer (transformers 5.17's
                                                  # place), no CUDA graphs: the default before 2026-12-02
}

#: what each variant of ours changes in `accel.apply_fast_path`'s defaults
VARIANTS = {
    "ours-liger": {"liger_kernels": True},
    "ours-no-compile": {"compile_layers": False},
    "ours-ckpt-outside": {"compile_layers": False},
    "ours-sdpa": {"varlen": False},
    "ours-no-fused-loss": {"fused_loss": None},
    "ours-chunked-ce": {"fused_loss": "chunked"},
    "ours-no-offload": {"offload_min_tokens": None},
    "ours-graph-no-offload": {"offload_min_tokens": None},
    "ours-graph-lean-every-row": {"offload_min_tokens": 1, "lora_mlp_min_tokens": 1},
    "ours-no-lora-mlp": {"lora_mlp": False},
    "ours-main-1206": {"lora_mlp": False, "offload_min_tokens": 16384},
    "ours-lean-every-row": {"offload_min_tokens": 1, "lora_mlp_min_tokens": 1},
    "ours-lowmem": {"lora_mlp": False, "mlp_chunk_min_tokens": 16384},
    "ours-main-1205": {"lora_mlp": False, "offload_min_tokens": 16384, "offload_overlap": False,
                       "mlp_chunk_min_tokens": None},
}


#: Inductor settings each variant of ours changes (torch._inductor.config), read when the layers compile
INDUCTOR_VARIANTS = {
    "ours-no-asserts": {"size_asserts": False, "alignment_asserts": False},
    "ours-cpp-wrapper": {"cpp_wrapper": True},
    "ours-combo": {"combo_kernels": True},
}


#: torch.compile arguments each variant of ours compiles its decoder layers with (instead of dynamic=True)
COMPILE_VARIANTS = {
    "ours-static": {"dynamic": False},
    "ours-auto-dynamic": {"dynamic": None},
    "ours-static-graphs": {"dynamic": False, "mode": "reduce-overhead"},
    "ours-static-autotune": {"dynamic": False, "mode": "max-autotune-no-cudagraphs"},
    "ours-autotune": {"dynamic": True, "mode": "max-autotune-no-cudagraphs"},
}


def assets_dir() -> dict[str, Path]:
    """Inputs, each from `.gpu_assets/` when there (the device machine gets no ../shared), else ../shared."""
    local, shared = REPO / ".gpu_assets", REPO.parent / "shared"
    out = {}
    for key, name, fallback in (("config", "qwen2.5-7b-instruct-config", "models"),
                                ("tokenizer", "qwen2.5-tokenizer", "models"),
                                ("data", "steam_sft_sample.json", "data")):
        out[key] = local / name if (local / name).exists() else shared / fallback / name
    return out


# ----------------------------------------------------------------------------------------------- model

def model_config(tiny: bool):
    import torch
    from transformers import AutoConfig

    path = assets_dir()["config"]
    if not tiny:
        return AutoConfig.from_pretrained(path)
    d = json.loads((path / "config.json").read_text())
    # on a GPU as wide as OverlappedOffload.MIN_FEATURES, so that a tiny run offloads too; narrower on a CPU (faster)
    wide = torch.cuda.is_available()
    d.update(hidden_size=256 if wide else 64, intermediate_size=512 if wide else 128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_window_layers=2)
    d.pop("layer_types", None)
    return AutoConfig.for_model(d.pop("model_type"), **d)


def make_random_model(out: Path, tiny: bool) -> Path:
    """Save a random-weight model (bf16 safetensors) + the Qwen tokenizer to `out` once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    torch.manual_seed(0)
    cfg = model_config(tiny)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(assets_dir()["tokenizer"]).save_pretrained(tmp)
    tmp.rename(out)
    return out


def n_params_no_embedding(cfg) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in m.parameters()) - m.get_input_embeddings().weight.numel()


def load_4bit(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb, dtype=torch.bfloat16,
                                                device_map={"": dev}, attn_implementation="sdpa")


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def build_baseline(model_dir: Path):
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = load_4bit(model_dir)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)  # reentrant, fp32 upcast
    return get_peft_model(model, lora_config()), {"stack": "peft prepare_model_for_kbit_training"}


def keep_attention_in_compiled_recompute(accel) -> None:
    """Bench variant: the compiled layers' checkpoint saves the attention kernels' outputs (MUST_SAVE) and
    recomputes everything else, and the offload takes any saved tensor with a dimension of the batch's token
    count (the attention output is (samples, heads, length, head dim))."""
    import torch
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    names = ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
             "_flash_attention_forward", "_scaled_dot_product_efficient_attention")
    keep = {getattr(torch.ops.aten, n).default for n in names if hasattr(torch.ops.aten, n)}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.MUST_RECOMPUTE

    accel.recompute_everything = lambda: create_selective_checkpoint_contexts(policy)

    def wanted(self, t):
        if isinstance(t, torch.nn.Parameter) or not t.is_floating_point() or t.dim() < 2 or self.n_tokens is None:
            return False
        per_token = t.numel() // self.n_tokens
        lead = t.shape[0] * t.shape[1] if t.dim() == 3 else t.shape[0]
        return (lead == self.n_tokens or self.n_tokens in t.shape[1:]) and per_token >= self.min_features

    accel.OverlappedOffload.wanted = wanted


def build_ours(model_dir: Path, variant: str):
    """What `steam-train train --quantization_bit 4 --bf16 True` builds: steam_persona.trainer.model + steam_persona.trainer.accel."""
    import torch

    from steam_persona.trainer import accel
    from steam_persona.trainer import model as model_lib

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = model_lib.load_base(str(model_dir), quantization_bit=4, dtype=torch.bfloat16, device=dev)
    model = model_lib.add_lora(model, lora_target=["all"], lora_rank=8, lora_alpha=16, gradient_checkpointing=True)
    if variant in ("ours-keep-attn", "ours-graph-keep-attn"):
        keep_attention_in_compiled_recompute(accel)
    report = accel.apply_fast_path(model, **VARIANTS.get(variant, {}))
    if variant in INDUCTOR_VARIANTS:
        import torch._inductor.config as inductor_config

        for key, value in INDUCTOR_VARIANTS[variant].items():
            setattr(inductor_config, key, value)
        report["compile"] += f"; inductor {INDUCTOR_VARIANTS[variant]} (bench)"
    if variant in COMPILE_VARIANTS:
        for layer in model.get_base_model().model.layers:
            layer.compile(**COMPILE_VARIANTS[variant])
        report["compile"] += f"; recompiled with {COMPILE_VARIANTS[variant]} (bench)"
    if variant == "ours-loss-liger-budget":
        accel.liger_chunk_mem_const = lambda *args, **kwargs: 1
        report["fused_loss"] += "; Liger's own chunk budget (bench)"
    if variant.startswith("ours-lora-mlp-"):
        piece = int(variant.rsplit("-", 1)[1])
        for layer in model.get_base_model().model.layers:
            layer.mlp._steam_piece = piece
        report["lora_mlp"] += f", pieces of {piece} tokens (bench)"
    if variant == "ours-varlen-only":
        def varlen_only(query, key, value, n, scale):
            t = query.shape[2]
            cu = torch.arange(0, t + 1, t // n, device=query.device, dtype=torch.int32)
            q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))
            return accel._varlen_call(q, k, v, cu, t // n, scale).unsqueeze(0)

        accel._uniform_sdpa = varlen_only
        report["attention"] += "; rows of equal samples through varlen too (bench)"
    if variant == "ours-no-shared-dequant":
        for m in model.modules():
            if type(m).__name__ == "Linear4bit":
                m.__dict__.pop("forward", None)
    if variant == "ours-ckpt-outside":
        import torch._dynamo

        torch._dynamo.config.suppress_errors = True
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        from transformers.modeling_layers import GradientCheckpointingLayer

        layers = model.get_base_model().model.layers
        if "__call__" not in GradientCheckpointingLayer.__dict__:  # transformers 5.24: inside forward already
            report["compile"] = "off: this transformers checkpoints inside forward"
        else:
            for layer in layers:
                layer.compile(dynamic=True)
            report["compile"] = "on (dynamic shapes, checkpoint around the compiled layer)"
    return model, report


# ------------------------------------------------------------------------------------------------ data

def encode_real(tok, path: Path, cutoff_len: int = 1024) -> list[dict]:
    """The real sample exactly as `steam-train train` encodes it (persona system prompt, the tokenizer's
    chat template, prompt masked, steam_persona.trainer.encode's truncation)."""
    from steam_persona.common import config
    from steam_persona.trainer.train import TrainConfig, prepare_data

    cfg = config.build(TrainConfig, {"dataset": [str(path)], "cutoff_len": cutoff_len}, {})
    _, enc = prepare_data(cfg, tok)
    return [{"input_ids": i, "labels": lab} for i, lab in zip(enc.input_ids, enc.labels)]


def fixed_samples(n: int, length: int, vocab: int, seed: int = 0) -> list[dict]:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, length), generator=g).tolist()
    return [{"input_ids": x, "labels": list(x)} for x in ids]


class PadCollator:
    """Pad to the longest in the batch (DataCollatorForSeq2Seq semantics), counting tokens per batch."""

    def __init__(self, pad_id: int):
        self.pad_id, self.counts = pad_id, []

    def __call__(self, feats):
        import torch

        T = max(len(f["input_ids"]) for f in feats)
        ids = torch.full((len(feats), T), self.pad_id, dtype=torch.long)
        lab = torch.full((len(feats), T), -100, dtype=torch.long)
        att = torch.zeros((len(feats), T), dtype=torch.long)
        for i, f in enumerate(feats):
            n = len(f["input_ids"])
            ids[i, :n], lab[i, :n], att[i, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"]), 1
        self.counts.append((int(att.sum()), ids.numel()))
        return {"input_ids": ids, "labels": lab, "attention_mask": att}


# --------------------------------------------------------------------------------------------- running

def run_steps(model, dataset, collator, batch_size: int, steps: int, warmup: int, tmp: Path) -> dict:
    """Train `steps` optimizer steps with HF Trainer; time the last `steps - warmup`."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cuda = torch.cuda.is_available()
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(tmp), per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=2e-4,
        lr_scheduler_type="constant", bf16=cuda, use_cpu=not cuda, logging_steps=10_000, save_strategy="no", report_to="none",
        dataloader_num_workers=0, remove_unused_columns=False, seed=0, disable_tqdm=True)
    collator.counts.clear()
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                      callbacks=[Clock()])
    trainer.train()
    del trainer
    gc.collect()
    return _timing(ends, collator.counts, warmup, None)


def run_ours(model, samples: list[dict], batch_size: int, accum: int, padding_free: bool, steps: int,
             warmup: int, pad_id: int, phases: bool = False, graph: bool = False) -> dict:
    """Train like steam_persona.trainer.train.run's loop (steam_persona.trainer.packing.collate + loss_sum, bf16 autocast, loss / step
    tokens, clip 1.0, fused AdamW, one .item() sync per micro-batch, a step's micro-batches merged
    into rows of up to 16k tokens); time the last `steps - warmup`. `phases`: also return ``phases``, the
    timed steps' mean offsets (ms from the step's start) at which the host got past each part of the loop
    (``host``) and at which the GPU finished it (``gpu``, CUDA events): where the host, not the GPU, sets the pace.
    `graph`: each packed row's forward and backward through `step_graph.StepGraphs` (CUDA graphs); the result
    also gives ``graph_captures`` and ``peak_reserved_gib`` (the graphs' memory pool is reserved, not allocated)."""
    import torch

    from steam_persona.trainer import accel
    from steam_persona.trainer.packing import collate, loss_sum

    cuda = torch.cuda.is_available()
    dev = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, fused=cuda)
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model.train()
    graphs = None
    if graph:
        import step_graph  # bench/step_graph.py, next to this script

        graphs = step_graph.StepGraphs(model, params, pad_id)
    ends, counts, losses, captured = [], [], [], []
    t_start = time.perf_counter()
    i = 0
    marks: list[list] = []
    mark = ((lambda name: marks[-1].append((name, time.perf_counter(), _event()))) if phases and cuda
            else (lambda name: None))
    for _ in range(steps):
        marks.append([])
        mark("start")
        captures = graphs.captures if graphs else 0
        micro = []
        for _ in range(accum):
            micro.append([samples[(i + k) % len(samples)] for k in range(batch_size)])
            i += batch_size
        n_tok = sum(sum(1 for t in f["labels"][1:] if t != -100) for mb in micro for f in mb)
        if padding_free:  # as steam_persona.trainer.train.run does
            flat = [f for mb in micro for f in mb]
            starts = accel.merge_micro_batches([list(range(k, k + len(mb))) for k, mb in
                                                zip(itertools.accumulate([0] + [len(m) for m in micro]), micro)],
                                               lambda j: len(flat[j]["input_ids"]),
                                               max(batch_size * 1024, accel.ROW_TOKENS))
            micro = [[flat[j] for j in row] for row in starts]
        eff = padded = 0
        tot = 0.0
        for mb in micro:
            if graphs:
                batch = collate(mb, True, pad_id)
                mark("batch")
                ls = graphs.run(batch, 1.0 / n_tok)
                mark("backward")
                tot += ls.item()
                eff += batch["input_ids"].numel()
                padded += batch["input_ids"].numel()
                continue
            batch = {k: v.to(dev) for k, v in collate(mb, padding_free, pad_id).items()}
            mark("batch")
            with torch.autocast(dev.type, dtype=torch.bfloat16):
                ls, _ = loss_sum(model, batch)
            mark("forward")
            (ls / n_tok).backward()
            mark("backward")
            tot += ls.item()
            eff += int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
            padded += batch["input_ids"].numel()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        mark("clip")
        opt.step()
        opt.zero_grad(set_to_none=graphs is None)  # the graphs add into .grad buffers they keep
        mark("optimizer")
        if cuda:
            torch.cuda.synchronize()
        ends.append(time.perf_counter())
        captured.append(graphs is not None and graphs.captures > captures)
        counts.append((eff, padded))
        losses.append(tot / n_tok)
    if warmup >= steps:  # all warm-up (a profiled run): nothing timed
        return {"last_loss": losses[-1]}
    res = {**_timing(ends, counts, warmup, losses[-1]), "warmup_steps_s": ends[warmup - 1] - t_start}
    if graphs:  # the steps that replayed graphs only (the others captured one: a one-off, as compiling)
        step_s = [b - a for a, b, c in zip(ends[warmup - 1:], ends[warmup:], captured[warmup:]) if not c]
        tok = [c[0] for c, cap in zip(counts[warmup:], captured[warmup:]) if not cap]
        import traceback

        res.update(graph_captures=graphs.captures, graph_broken=graphs.broken,
                   graph_error="".join(traceback.format_exception(graphs.error))[-3000:] if graphs.error else None,
                   peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30,
                   losses=[round(x, 5) for x in losses], replay_steps=len(step_s),
                   replay_s_per_step=statistics.median(step_s) if step_s else None,
                   replay_tokens_per_s=sum(tok) / sum(step_s) if step_s else None)
    if phases and cuda:
        res["phases"] = _phase_offsets(marks[warmup:])
    return res


def _event():
    import torch

    e = torch.cuda.Event(enable_timing=True)
    e.record()
    return e


def _phase_offsets(steps: list[list]) -> dict:
    """{"host": {mark: ms}, "gpu": {mark: ms}}: each mark's mean offset from its step's "start" mark, on the
    host clock and on the GPU's (a mark recorded once per micro-batch keeps its last)."""
    host: dict[str, list] = {}
    gpu: dict[str, list] = {}
    for marks in steps:
        _, t0, e0 = marks[0]
        for name, (t, e) in {name: (t, e) for name, t, e in marks}.items():
            host.setdefault(name, []).append((t - t0) * 1e3)
            gpu.setdefault(name, []).append(e0.elapsed_time(e))
    return {clock: {k: round(statistics.mean(v), 2) for k, v in d.items()} for clock, d in (("host", host), ("gpu", gpu))}


def _timing(ends, counts, warmup, last_loss) -> dict:
    import torch

    step_s = [b - a for a, b in zip(ends[warmup - 1:], ends[warmup:])]
    counts = counts[warmup:warmup + len(step_s)]
    eff, padded, total = sum(c[0] for c in counts), sum(c[1] for c in counts), sum(step_s)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    return {"steps_timed": len(step_s), "s_per_step": statistics.median(step_s),
            "step_ms": [round(x * 1e3, 1) for x in step_s],
            "tokens_per_step": eff / len(step_s), "eff_tokens_per_s": eff / total,
            "padded_tokens_per_s": padded / total, "peak_gib": peak, "last_loss": last_loss}


KERNEL_KINDS = (("matmul", ("nvjet", "gemm", "cutlass", "xmma", "cublas", "splitkreduce")),
                ("attention", ("flash", "fmha", "cudnn", "attention")),
                ("dequantize", ("dequantize",)),
                ("optimizer", ("adam", "multi_tensor")),
                ("copy", ("memcpy", "memset", "copy")),
                ("triton", ("triton",)))


def kernel_summary(prof, wall: float, steps: int) -> dict:
    """A torch.profiler run's device kernels per optimizer step: wall, busy (summed kernel time), idle (wall -
    busy: the GPU waits on the host), time by kind (`KERNEL_KINDS`, first match on the lower-cased name,
    else "other") and the 25 kernels with the most device time. Only device-side events are summed (a CPU
    op's device time repeats its kernels'); kernels on a side stream (offload copies) can overlap, so busy
    may exceed wall."""
    from torch.autograd import DeviceType

    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in kernels) / 1e6
    kinds: dict[str, float] = {}
    for e in kernels:
        name = e.key.lower()
        kind = next((k for k, keys in KERNEL_KINDS if any(x in name for x in keys)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + e.self_device_time_total / 1e6 / steps
    top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)[:25]
    res = {"steps": steps, "wall_s_per_step": wall / steps, "busy_s_per_step": busy / steps,
           "idle_s_per_step": (wall - busy) / steps, "launches_per_step": sum(e.count for e in kernels) / steps,
           "kinds_s_per_step": {k: round(v, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
           "top": [{"kernel": e.key[:100], "calls_per_step": e.count / steps,
                    "device_s_per_step": round(e.self_device_time_total / 1e6 / steps, 4)} for e in top]}
    print(f"profile: wall {res['wall_s_per_step']:.3f}s a step, busy {res['busy_s_per_step']:.3f}s, "
          f"{res['launches_per_step']:.0f} kernels; {res['kinds_s_per_step']}", flush=True)
    for r in res["top"]:
        print(f"  {r['device_s_per_step']:8.4f}s {r['calls_per_step']:7.1f}  {r['kernel']}", flush=True)
    return res


def profile_steps(model, samples: list[dict], pad_id: int, batch_size: int = 4, steps: int = 2,
                  trace: Path | None = None) -> dict:
    """torch.profiler over `steps` optimizer steps of `batch_size` samples (one packed row a step), after
    2 warm-up steps of the same data: `kernel_summary`. `trace`: also write the Chrome trace there
    (gzipped) for a timeline view."""
    import gzip
    import shutil

    import torch
    from torch.profiler import ProfilerActivity, profile

    run_ours(model, samples, batch_size, 1, True, 2, 1, pad_id)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        run_ours(model, samples, batch_size, 1, True, steps, steps, pad_id)
        wall = time.perf_counter() - t0
    if trace is not None:
        raw = trace.with_suffix("")
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as f, gzip.open(trace, "wb") as g:
            shutil.copyfileobj(f, g)
        raw.unlink()
    return kernel_summary(prof, wall, steps)


def peak_blocks(events: list[dict]) -> tuple[int, dict[str, list[int]]]:
    """Replay an allocator trace (``torch.cuda.memory._snapshot()["device_traces"][0]``: dicts with action,
    addr, size, frames) to the moment the bytes allocated during it peak. Returns (peak bytes, {where:
    [bytes, blocks]}) for the blocks live then, `where` being their 4 innermost frames outside torch's own
    checkpoint and op plumbing. Frees of blocks allocated before the trace are ignored."""
    live, cur, peak, at_peak = {}, 0, 0, {}
    for ev in events:
        if ev["action"] == "alloc":
            live[ev["addr"]] = ev
            cur += ev["size"]
            if cur > peak:
                peak, at_peak = cur, dict(live)
        elif ev["action"] == "free_completed" and ev["addr"] in live:
            cur -= live.pop(ev["addr"])["size"]
    groups: dict[str, list[int]] = {}
    for ev in at_peak.values():
        frames = [f"{Path(f['filename']).name}:{f['line']}:{f['name']}" for f in ev.get("frames", [])
                  if "torch/utils" not in f["filename"] and "torch/_ops" not in f["filename"]][:4]
        g = groups.setdefault(" < ".join(frames) or "?", [0, 0])
        g[0], g[1] = g[0] + ev["size"], g[1] + 1
    return peak, groups


def memory_profile(model, samples: list[dict], pad_id: int, top: int = 25) -> dict:
    """What holds device memory at the peak of 2 steps of batch 4 (after the compiled warm-up steps).

    Records the allocator's history (``torch.cuda.memory._record_memory_history``, Python stacks), replays
    its alloc/free events to the moment the allocated bytes peak, and groups the blocks live then by the
    innermost Python frames that allocated them (`peak_blocks`). Blocks allocated before the recording
    (weights, LoRA) are ``before``: memory_allocated at the start; `run_ours` builds its optimizer afresh, so
    AdamW's state is among the groups. Returns GiB figures and the `top` groups by size."""
    import torch

    run_ours(model, samples, 4, 1, True, 2, 1, pad_id)  # compiled and warm; optimizer state allocated below
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    before = torch.cuda.memory_allocated()
    run_ours(model, samples, 4, 1, True, 2, 1, pad_id)
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak, groups = peak_blocks(snap["device_traces"][0])
    rows = sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
    gib = 2 ** 30
    res = {"before_gib": before / gib, "peak_gib": (before + peak) / gib, "transient_at_peak_gib": peak / gib,
           "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / gib,
           "groups": [{"gib": round(v[0] / gib, 4), "blocks": v[1], "where": k} for k, v in rows]}
    print(f"memory: before {res['before_gib']:.2f} GiB, transient at peak {res['transient_at_peak_gib']:.2f} GiB",
          flush=True)
    for r in res["groups"]:
        print(f"  {r['gib']:7.3f} GiB {r['blocks']:5d}  {r['where'][:200]}", flush=True)
    return res


def loss_check(model, samples: list[dict], stack: str, pad_id: int) -> dict:
    """Per-token mean loss over `samples` at the current weights (train mode, bf16 autocast, no grad):
    the baseline through the HF model's own loss on padded batches of 4; ours through steam_persona.trainer.packing on
    packed rows of 16, and each sample alone (equal to packed = no contamination between samples)."""
    import torch

    from steam_persona.trainer.packing import collate, loss_sum

    dev = next(model.parameters()).device
    model.train()
    out = {}
    with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
        if stack == "baseline":
            tot = n = 0
            c = PadCollator(pad_id)
            for i in range(0, len(samples), 4):
                b = {k: v.to(dev) for k, v in c(samples[i:i + 4]).items()}
                k = int((b["labels"][:, 1:] != -100).sum())
                tot, n = tot + float(model(**b).loss) * k, n + k
            out["padded"] = tot / n
        else:
            for name, groups in (("packed", [samples[i:i + 16] for i in range(0, len(samples), 16)]),
                                 ("alone", [[x] for x in samples])):
                tot = n = 0
                for g in groups:
                    ls, k = loss_sum(model, {key: v.to(dev) for key, v in collate(g, True, pad_id).items()})
                    tot, n = tot + float(ls), n + k
                out[name] = tot / n
    return out


def unsloth_max_seq_length(kinds: list[str], long_lengths: list[int]) -> int:
    """The ``max_seq_length`` Unsloth is built with: the longest row its configurations run. Asked for more
    than the config's 32,768 positions, Unsloth scales RoPE (a different function: its loss would not compare
    with ours), so only a long-context run asks for more."""
    if "long" not in kinds:
        return 32768
    return max(long_lengths or [49152])


#: host calls that wait for the GPU's queue to drain (a tensor's value read on the host, a pageable copy)
SYNC_CALLS = {"item": r"method 'item'", "torch.tensor": r"method torch\.tensor\b", "tolist": r"method 'tolist'",
              "cpu": r"method 'cpu'", "synchronize": r"synchronize"}


def host_profile(fn, top: int = 45) -> dict:
    """cProfile of the host's Python while `fn` runs (after compiling): the functions with the most own time
    (``tottime``) and the most time below them (``cumtime``), seconds over the whole run, as pstats prints them,
    and the callers of each of `SYNC_CALLS`."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    res = fn()
    prof.disable()
    out = {"run": res}
    for key in ("tottime", "cumtime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(key).print_stats(top)
        out[key] = buf.getvalue().splitlines()[-top - 3:]
    for name, pattern in SYNC_CALLS.items():  # who calls what waits for the GPU
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).print_callers(pattern)
        out[f"callers of {name}"] = [line for line in buf.getvalue().splitlines() if line.strip()][-40:]
    return out


def trace_path(config: str) -> Path | None:
    """Where a profile configuration's Chrome trace goes: BENCH_TRACE_DIR/trace-<config>.json.gz, or None."""
    d = os.environ.get("BENCH_TRACE_DIR")
    return Path(d) / f"trace-{config}.json.gz" if d else None


def worker(stack: str, model_dir: Path, tiny: bool, cap_gib: float, out: Path) -> None:
    if stack.startswith("unsloth"):  # Unsloth patches transformers and TRL: import it before them
        sys.path.insert(0, str(REPO / "bench"))
        import unsloth_stack
    import torch
    import torch._dynamo

    from steam_persona.trainer import model as model_lib

    if torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib * 2**30 / total))
    kinds = STACKS[stack].split(",")
    tok = model_lib.load_tokenizer(str(model_dir))
    real = encode_real(tok, assets_dir()["data"])
    pad = tok.pad_token_id
    t0 = time.perf_counter()
    torch.manual_seed(0)  # the same LoRA initialisation in every stack: their trained losses compare
    long_lengths = [int(x) for x in os.environ["BENCH_LONG"].split(",")] if os.environ.get("BENCH_LONG") else []
    only = os.environ.get("BENCH_CONFIGS")
    if only:
        kinds = [k for k in kinds if k in only.split(",")]
    if stack.startswith("unsloth"):
        model, tok, report = unsloth_stack.build(model_dir, unsloth_max_seq_length(kinds, long_lengths))
    else:
        model, report = build_baseline(model_dir) if stack == "baseline" else build_ours(model_dir, stack)
    static = torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    res: dict = {"stack": stack, "levers": report,
                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "load_s": time.perf_counter() - t0, "configs": {},
                 "static_gib": static, "real_samples": len(real), "real_mean_tokens": sum(len(x["input_ids"]) for x in real) / len(real)}
    print(f"[{stack}] loaded in {res['load_s']:.1f}s: {report}", flush=True)
    tmp = Path("/tmp") / f"bench-{stack}"
    steps, warmup = (4, 2) if tiny else (13, 3)
    flen = 64 if tiny else 1024
    vocab = len(tok) - 300
    base = stack == "baseline"
    uns = stack.startswith("unsloth")

    def record(name, fn, fresh=not os.environ.get("BENCH_KEEP_COMPILED")):
        if fresh and not base and not uns:  # each configuration compiles afresh, as a training run of that data would
            torch._dynamo.reset()
        try:
            res["configs"][name] = fn()
        except torch.OutOfMemoryError as e:
            res["configs"][name] = {"oom": str(e).splitlines()[0][:200]}
        print(f"[{stack}] {name}: {res['configs'][name]}", flush=True)
        out.write_text(json.dumps(res, indent=1))

    def ours(data, bs, accum=1, padding_free=True, n=steps, w=warmup):
        if uns:
            return lambda: unsloth_stack.run(model, tok, data, bs, n, w, padding_free,
                                             max(len(x["input_ids"]) for x in data) * (bs if padding_free else 1),
                                             tmp, _timing)
        if stack.startswith("ours-graph") and not torch.cuda.is_available():
            return lambda: {"skipped": "CUDA graphs need a CUDA GPU"}
        return lambda: run_ours(model, data, bs, accum, padding_free, n, w, pad,
                                graph=stack.startswith("ours-graph"))

    if "loss" in kinds:
        res["loss"] = unsloth_stack.loss_check(model, real[:64]) if uns else loss_check(model, real[:64], stack, pad)
        print(f"[{stack}] loss: {res['loss']}", flush=True)
    if "real" in kinds:  # the recipe: batch 4 (ours: x 4 accumulation, as LLaMA-Factory's seed command)
        record("real", (lambda: run_steps(model, real, PadCollator(pad), 4, steps, warmup, tmp)) if base
               else ours(real, 4, 4))
    for bs in (16, 32, 64):
        if f"real_bs{bs}" in kinds:
            record(f"real_bs{bs}", ours(real, bs))
    if "real_pf4x4" in kinds:  # Unsloth: 16 samples a step as 4 padding-free rows of 4, accumulated
        record("real_pf4x4", lambda: unsloth_stack.run(model, tok, real, 4, steps, warmup, True, 4096, tmp,
                                                        _timing, accum=4))
    fixed = fixed_samples(4 * steps, flen, vocab)
    if "fixed" in kinds:
        record("fixed", (lambda: run_steps(model, fixed, PadCollator(pad), 4, steps, warmup, tmp)) if base
               else ours(fixed, 4))
    if "memory" in kinds and torch.cuda.is_available():
        res["memory"] = memory_profile(model, fixed, pad)
        out.write_text(json.dumps(res, indent=1))
    for name, data, bs in (("profile", fixed, 4), ("profile_real", real, 16),
                           ("profile_long", fixed_samples(1, 32768, vocab, seed=32768), 1)):
        if name in kinds:  # where the time of a step goes: fixed 1024 x 4, the real sample at 16, 32k
            if tiny and name == "profile_long":
                data = fixed_samples(1, 256, vocab)
            res[name] = (unsloth_stack.profile(model, tok, data, bs, tmp, kernel_summary) if uns
                         else profile_steps(model, data, pad, bs, 1 if name == "profile_long" else 2,
                                            trace_path(name)))
            out.write_text(json.dumps(res, indent=1))
    for name, data, bs in (("phases", fixed, 4), ("phases_real", real, 16)):
        if name in kinds:
            record(name, lambda: run_ours(model, data, bs, 1, True, steps, warmup, pad, phases=True))
    for name, data, bs in (("hostprof", fixed, 4), ("hostprof_real", real, 16)):
        if name in kinds:
            res[name] = host_profile(lambda: run_ours(model, data, bs, 1, True, 4, 1, pad))
            out.write_text(json.dumps(res, indent=1))
    if "fixed_padded" in kinds:
        record("fixed_padded", ours(fixed, 4, padding_free=False))
    if "long" in kinds or "long32k" in kinds:
        lengths = ([128, 256] if tiny else [4096, 8192] if base else
                   [32768] if "long32k" in kinds else
                   [32768, 49152] if stack == "ours-no-offload" else [16384, 32768, 49152])
        if long_lengths and not tiny:  # e.g. the long-context sweep 32768,49152,65536,98304,131072
            lengths = long_lengths
        best = None
        for L in lengths:
            data = fixed_samples(2, L, vocab, seed=L)
            record(f"long_{L}", (lambda: run_steps(model, data, PadCollator(pad), 1, 2, 1, tmp)) if base
                   else ours(data, 1, n=2, w=1), fresh=L == lengths[0] and not os.environ.get("BENCH_KEEP_COMPILED"))  # one dynamic graph for all lengths
            if "oom" in res["configs"][f"long_{L}"]:
                break
            best = L
        res["longest_context"] = best
        out.write_text(json.dumps(res, indent=1))
    if stack.startswith("ours"):
        from torch._dynamo.utils import counters

        res["graph_breaks"] = {k[:120]: v for k, v in counters["graph_break"].items()}
        print(f"[{stack}] graph breaks: {res['graph_breaks']}", flush=True)
        out.write_text(json.dumps(res, indent=1))


# ------------------------------------------------------------------------------------------------ main

def versions() -> dict:
    import importlib.metadata as md

    v = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "liger-kernel", "triton", "unsloth",
                 "unsloth_zoo", "trl"):
        try:
            v[name] = md.version(name)
        except md.PackageNotFoundError:
            v[name] = None
    return v


def run_stack(stack: str, a: argparse.Namespace) -> dict:
    """One stack in its own process (`worker`); its JSON plus ``returncode`` (``"timed_out"`` when it ran past
    BENCH_STACK_TIMEOUT seconds and was stopped: the figures it wrote so far are kept)."""
    Path(a.work_dir).mkdir(parents=True, exist_ok=True)
    wout = Path(a.work_dir) / f"bench-{stack}.json"
    wout.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--worker", stack, "--worker_out", str(wout), "--cap_gib",
           str(a.cap_gib), "--model_dir", a.model_dir] + (["--tiny"] if a.tiny else [])
    limit = float(os.environ["BENCH_STACK_TIMEOUT"]) if os.environ.get("BENCH_STACK_TIMEOUT") else None
    try:
        rc = subprocess.run(cmd, timeout=limit).returncode
    except subprocess.TimeoutExpired:
        rc = "timed_out"
        print(f"[{stack}] stopped after {limit:.0f} s (BENCH_STACK_TIMEOUT)", flush=True)
    res = json.loads(wout.read_text()) if wout.exists() else {}
    res["returncode"] = rc
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="dry run of the harness with a 2-layer model (the 152k "
                    "vocabulary kept: 5-20 minutes on 2 CPU cores; figures meaningless, no goal lines)")
    ap.add_argument("--stacks", default="baseline,ours", help="comma list (default: baseline,ours) of " + ", ".join(STACKS))
    ap.add_argument("--cap_gib", type=float, default=24.0, help="GPU memory cap, GiB")
    ap.add_argument("--model_dir", default="/tmp/steam-bench-qwen2.5-7b-random", help="random model cache")
    ap.add_argument("--out", help="the results JSON (default: WORK_DIR/train_speed.json; the dated files in "
                                  "bench/results are written only when named here)")
    ap.add_argument("--work_dir", default="/tmp", help="where each stack's raw JSON goes (written as it runs)")
    ap.add_argument("--from_dir", help="only summarize the per-stack JSON files already in this folder")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker_out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    model_dir = Path(a.model_dir + ("-tiny" if a.tiny else ""))
    if a.worker:
        worker(a.worker, model_dir, a.tiny, a.cap_gib, Path(a.worker_out))
        return 0

    n_params = n_params_no_embedding(model_config(a.tiny))
    results = {}
    if a.from_dir:
        for stack in a.stacks.split(","):
            f = Path(a.from_dir) / f"bench-{stack}.json"
            if f.exists():
                results[stack] = json.loads(f.read_text())
    else:
        t0 = time.perf_counter()
        make_random_model(model_dir, a.tiny)
        print(f"random model ready in {time.perf_counter() - t0:.1f}s at {model_dir}", flush=True)
        for stack in a.stacks.split(","):
            results[stack] = run_stack(stack, a)
    for r in results.values():
        for c in r.get("configs", {}).values():
            if "eff_tokens_per_s" in c:
                c["mfu"] = c["eff_tokens_per_s"] * 6 * n_params / (PEAK_TFLOPS * 1e12)
    summary = summarize(results, goals_shown=not a.tiny)
    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "gpu": next((r["gpu"] for r in results.values() if "gpu" in r), "?") + (" (tiny dry run)" if a.tiny else ""),
           "cap_gib": a.cap_gib, "tiny": a.tiny, "versions": versions(), "n_params_no_embedding": n_params,
           "peak_tflops": PEAK_TFLOPS, "stacks": results, **summary}
    out = Path(a.out or Path(a.work_dir) / "train_speed.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


def summarize(results: dict, goals_shown: bool = True) -> dict:
    base = results.get("baseline", {}).get("configs", {})
    ratios = {}
    head = f"{'stack':24} {'data':8} {'s/step':>7} {'eff tok/s':>10} {'pad tok/s':>10} {'peak GiB':>8} {'MFU':>6} {'x base':>7}"
    print("\n" + head + "\n" + "-" * len(head))
    for stack, r in results.items():
        for name, c in r.get("configs", {}).items():
            if "oom" in c or "s_per_step" not in c:
                print(f"{stack:24} {name:8} " + ("OOM" if "oom" in c else c.get("skipped", "no timed steps")))
                continue
            b = base.get(name) or (base.get("real") if name.startswith("real") else None)
            ratio = c["eff_tokens_per_s"] / b["eff_tokens_per_s"] if b and "eff_tokens_per_s" in b else None
            ratios[f"{stack}/{name}"] = ratio
            print(f"{stack:24} {name:8} {c['s_per_step']:7.3f} {c['eff_tokens_per_s']:10.0f} "
                  f"{c['padded_tokens_per_s']:10.0f} {c['peak_gib']:8.2f} {c['mfu']:6.1%} "
                  f"{'' if ratio is None else f'{ratio:6.2f}x'}")
    ours = results.get("ours", {})
    oc = ours.get("configs", {})
    goals = {}

    def g(name, goal, measured, ok):
        goals[name] = {"goal": goal, "measured": measured, "met": bool(ok) if measured is not None else False}

    r_real, r_fixed = ratios.get("ours/real"), ratios.get("ours/fixed")
    g("real data effective tokens/s (recipe flags: batch 4 x accumulation 4)", ">= 8x baseline", r_real,
      r_real is not None and r_real >= 8)
    for bs in (16, 32, 64):
        r = ratios.get(f"ours/real_bs{bs}") or ratios.get(f"ours-rows/real_bs{bs}")
        if r is not None:
            g(f"real data effective tokens/s at --per_device_train_batch_size {bs} (not default)", ">= 8x baseline",
              r, r >= 8)
    g("fixed 1024x4 tokens/s", ">= 1.35x baseline", r_fixed, r_fixed is not None and r_fixed >= 1.35)
    mfu = oc.get("fixed", {}).get("mfu")
    g("fixed 1024x4 MFU", ">= 60%", mfu, mfu is not None and mfu >= 0.60)
    peak = oc.get("fixed", {}).get("peak_gib")
    g("fixed 1024x4 peak GiB", "<= 9", peak, peak is not None and peak <= 9)
    longest = ours.get("longest_context")
    g("longest context at batch 1 within cap", ">= 32768 tokens", longest, longest is not None and longest >= 32768)
    bl, ol = results.get("baseline", {}).get("loss", {}), ours.get("loss", {})
    if bl and ol:
        d = abs(ol["packed"] - bl["padded"]) / bl["padded"]
        g("loss equals baseline's on the same 64 samples (rel. diff)", "<= 1e-2 (bf16 noise)", d, d <= 1e-2)
        d = abs(ol["packed"] - ol["alone"]) / ol["alone"]
        g("packed loss equals each sample alone (rel. diff)", "<= 1e-2 (bf16 noise)", d, d <= 1e-2)
    anchor = {k: v for stack in ("unsloth", "unsloth-short", "unsloth-long")
              for k, v in results.get(stack, {}).get("configs", {}).items()}
    if anchor:
        goals.update(unsloth_goals(ours, {"configs": anchor}))
    if not goals_shown:  # a tiny dry run: its rows are not the goals' (64-token samples, not 1024 x 4)
        return {"ratios": ratios, "goals": goals}
    print()
    for k, v in goals.items():
        m = v["measured"]
        ms = "n/a" if m is None else (f"{m:.3f}" if isinstance(m, float) else str(m))
        print(f"{'MET ' if v['met'] else 'MISS'} {k}: {ms} (goal {v['goal']})")
    return {"ratios": ratios, "goals": goals}


def unsloth_goals(ours: dict, unsloth: dict) -> dict:
    """The goals against Unsloth, from stacks of the same run: {name: {"goal", "measured", "met"}}; a goal
    whose figures are missing (not run, out of memory) is not met."""
    oc, uc = ours.get("configs", {}), unsloth.get("configs", {})
    goals = {}

    def tok(c, name):
        return c.get(name, {}).get("eff_tokens_per_s")

    def peak(c, name):
        return c.get(name, {}).get("peak_gib")

    for name, label, need in (("fixed", "fixed 1024x4", 1.2), ("long_32768", "32k tokens, batch 1", 1.0)):
        ok = None not in (tok(oc, name), tok(uc, name))
        r = tok(oc, name) / tok(uc, name) if ok else None
        goals[f"{label}: tokens/s vs Unsloth's, at <= its peak GiB"] = {
            "goal": f">= {need}x, peak <= Unsloth's", "measured": [r, peak(oc, name), peak(uc, name)] if ok else None,
            "met": ok and r >= need and peak(oc, name) <= peak(uc, name)}
    mfu = oc.get("fixed", {}).get("mfu")
    goals["fixed 1024x4 MFU (against Unsloth)"] = {"goal": ">= 65%", "measured": mfu, "met": bool(mfu and mfu >= 0.65)}
    best_u = max((t for t in (tok(uc, "real_bs16"), tok(uc, "real_pf4x4")) if t), default=None)
    r = tok(oc, "real_bs16") / best_u if best_u and tok(oc, "real_bs16") else None
    goals["real sample, 16 samples a step: tokens/s vs Unsloth's best"] = {"goal": ">= 2x", "measured": r,
                                                                          "met": bool(r and r >= 2)}
    mfu = oc.get("real_bs16", {}).get("mfu")
    goals["real sample, 16 samples a step: MFU"] = {"goal": ">= 60%", "measured": mfu, "met": bool(mfu and mfu >= 0.6)}
    longest = ours.get("longest_context")
    goals["longest context at batch 1 within cap (against Unsloth)"] = {
        "goal": ">= 98304 tokens", "measured": longest, "met": bool(longest and longest >= 98304)}
    return goals


if __name__ == "__main__":
    raise SystemExit(main())
