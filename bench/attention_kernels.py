"""Causal attention kernels on the GPU at Qwen2.5-7B's shapes: which one a training step should call.

Shapes: 28 query heads, 4 key/value heads, head dim 128, bf16; (a) a packed row of 4 samples of 1,024 tokens,
(b) one sample of 32,768 tokens. Each kernel runs forward and forward + backward (gradients of q, k, v) on
the same inputs; the figure is the median of 10 timed calls (CUDA events) after 3 warm-up calls, in ms,
with the output's and q's gradient relative error against the first kernel. Kernels: torch's
``varlen_attn`` as trainer/accel.py calls it (`accel._varlen_call`), and SDPA with each backend
(flash, cuDNN, memory-efficient) on the samples as a batch, GQA by ``enable_gqa`` or, where a backend
lacks it, with key/value heads repeated. Writes bench/results/attention_kernels.json.

Needs a CUDA GPU. ``python bench/attention_kernels.py``.
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HQ, HKV, D = 28, 4, 128
CASES = {"packed_4x1024": (4, 1024), "single_32768": (1, 32768)}


def timed(fn, reps: int = 10, warm: int = 3) -> float:
    """Median ms of `fn()` over `reps` calls after `warm` calls, by CUDA events."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def kernels(n: int, length: int):
    """{name: fn(q, k, v) -> out}, q (n·length, HQ, D) and k/v (n·length, HKV, D) as packed rows."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from steam_persona.trainer import accel

    cu = torch.arange(0, (n + 1) * length, length, device="cuda", dtype=torch.int32)

    def varlen(q, k, v):
        return accel._varlen_call(q, k, v, cu, length, D ** -0.5)

    def sdpa(backend, gqa):
        def fn(q, k, v):
            q4, k4, v4 = (x.view(n, length, x.shape[1], D).transpose(1, 2) for x in (q, k, v))
            if not gqa:
                k4, v4 = (x.repeat_interleave(HQ // HKV, dim=1) for x in (k4, v4))
            with sdpa_kernel(backend):
                o = F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, enable_gqa=gqa)
            return o.transpose(1, 2).reshape(n * length, HQ, D)
        return fn

    return {"varlen (accel._varlen_call)": varlen,
            "sdpa flash, enable_gqa": sdpa(SDPBackend.FLASH_ATTENTION, True),
            "sdpa cudnn, repeated kv": sdpa(SDPBackend.CUDNN_ATTENTION, False),
            "sdpa cudnn, enable_gqa": sdpa(SDPBackend.CUDNN_ATTENTION, True),
            "sdpa efficient, repeated kv": sdpa(SDPBackend.EFFICIENT_ATTENTION, False)}


def run_case(n: int, length: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    t = n * length
    q = torch.randn(t, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
    k, v = (torch.randn(t, HKV, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
    grad = torch.randn(t, HQ, D, device="cuda", dtype=torch.bfloat16, generator=g)
    out, ref = {}, None
    for name, fn in kernels(n, length).items():
        try:
            qq, kk, vv = (x.clone().requires_grad_() for x in (q, k, v))

            def fwd():
                with torch.no_grad():
                    return fn(q, k, v)

            def fwd_bwd():
                qq.grad = kk.grad = vv.grad = None
                fn(qq, kk, vv).backward(grad)

            o = fwd().float()
            fwd_bwd()
            got = torch.cat([o.flatten(), qq.grad.float().flatten()])
            ref = got if ref is None else ref
            err = float((got - ref).norm() / ref.norm())
            torch.cuda.reset_peak_memory_stats()
            out[name] = {"fwd_ms": timed(fwd), "fwd_bwd_ms": timed(fwd_bwd), "rel_err_vs_first": err,
                         "peak_gib": torch.cuda.max_memory_allocated() / 2**30}
        except Exception as e:  # a backend without a kernel for these inputs on this GPU/torch
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
        print(f"{n}x{length} {name:30} {out[name]}", flush=True)
    return out


def main() -> int:
    from torch.nn.attention.varlen import varlen_attn

    doc = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "varlen_attn_signature": str(inspect.signature(varlen_attn)),
           "cudnn": torch.backends.cudnn.version(), "cases": {}}
    print(doc, flush=True)
    for case, (n, length) in CASES.items():
        doc["cases"][case] = run_case(n, length)
    out = REPO / "bench" / "results" / "attention_kernels.json"
    out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
