"""Speed and memory levers for QLoRA training: GPU kernels with clean fallbacks on CPU and without Triton,
and the CPU's own (per-sample attention, selective checkpointing).

What `apply_fast_path(model)` does to an already-built (peft-wrapped or plain) causal LM, and why:

- **Fused linear cross-entropy** (default on). The stock `*ForCausalLM.forward` materialises the logits
  (tokens x vocab in bf16, then an fp32 copy inside the loss: 4,096 tokens x 152,064 vocab = 1.25 GB + 2.5 GB
  + 2.5 GB for its gradient). We replace the instance's training forward so the loss is computed from the
  final hidden states and ``lm_head.weight`` chunk by chunk, never holding the whole logits tensor: with
  Liger-Kernel's ``LigerFusedLinearCrossEntropyFunction`` (Triton, CUDA; in chunks of `LOSS_CHUNK_ROWS`
  rows) when it is importable, else with
  `chunked_linear_cross_entropy` (plain torch, any device). Both compute exactly
  ``transformers.loss.loss_utils.ForCausalLMLoss`` (shift by one, ignore_index -100, mean over label tokens
  or sum / ``num_items_in_batch``). Generic over decoder-only models with ``.model`` and ``.lm_head``.
- **Compiled decoder layers** (default on, CUDA + Triton only): ``torch.compile(dynamic=True)`` of each
  decoder layer (``nn.Module.compile``: state-dict keys unchanged), with the layer's activation checkpoint
  inside the compiled region and full recompute (`checkpoint_inside`, `recompute_everything`), and
  bitsandbytes' 4-bit matmuls as dequantize + ``F.linear`` so the compiled backward dequantizes each weight
  once (`share_dequantization`). A 7B QLoRA step is bound by the Python/launch cost of ~10k small kernels
  (bitsandbytes dequantization, peft's LoRA casts and adds, norms, RoPE) and, with the checkpoint around the
  compiled layer, by three compiled calls a layer a step. Compiled layers with the checkpoint inside are
  the fastest variant measured (docs/gpu.md, "Measured"). Dynamic shapes: packed rows of any length
  reuse one graph. A backend failure falls back to eager (``suppress_errors``).
- **Liger RMSNorm / RoPE / SwiGLU** (off by default, ``--enable_liger_kernel``): Liger-Kernel's own
  instance patch (``_apply_liger_kernel_to_instance``). Measured slower than compiled layers (and than
  plain eager) in these launch-bound steps: each Triton launch costs more host time than it saves;
  dynamo also cannot trace its autograd functions, so it excludes compilation.
- **Activation offload** (default on from `LEAN_MIN_TOKENS` tokens a batch): the
  checkpointed layer inputs (layers x tokens x hidden bf16, 6.6 GB at 32k for a 7B) go to pinned host memory
  while the forward runs and come back in the backward, the copies overlapped with compute
  (`OverlappedOffload`; ``save_on_cpu``'s blocking copies with ``offload_overlap=False``).
- **Fused LoRA MLPs** (default on with compiled layers, from `LEAN_MIN_TOKENS` tokens a row): each layer's
  SwiGLU MLP with its three LoRA projections runs as one custom op whose backward recomputes it in pieces
  along the sequence and holds three (piece x intermediate) tensors instead of the compiled backward's
  eleven (tokens x intermediate) ones (trainer/lora_mlp.py). Long rows stay compiled.
- **Chunked MLPs** where the fused MLP is off, for rows over `MLP_CHUNK_MIN_TOKENS` (`chunk_mlp`): such a
  row runs the layers eagerly with each MLP in checkpointed pieces along the sequence, so a layer's
  backward holds one piece's (tokens x intermediate) activations instead of the row's.
- **Varlen attention for packed rows** (default on where torch has it): a packed row (one row, position
  ids restarting per sample, no attention mask) goes through ``torch.nn.attention.varlen.varlen_attn``
  (FlashAttention with ``cu_seqlens``): each sample attends only to itself, and the kernel skips the
  cross-sample blocks that SDPA with transformers' block-diagonal mask computes and then masks (a 4,096
  token row of 1,024-token samples: 4x less attention work). A row whose samples share one length (a long
  sample alone, or equal samples) is one batched SDPA call instead, cuDNN's kernel first on CUDA
  (`_uniform_sdpa`: faster than torch's FlashAttention 2 on Hopper, docs/gpu.md). Registered as a
  transformers attention function (``AttentionInterface``) that falls back to SDPA for every other input (padded batches,
  generation, eval). Self-checked against SDPA on first use; off when the check fails.
- **Selective checkpointing on CPU** (`keep_attention_outputs`, via `enable_checkpointing`): the
  recompute in the backward reuses each attention call's outputs instead of running attention again.
- **Non-reentrant activation checkpointing** (`enable_checkpointing`): no ``enable_input_require_grads``
  hack, works with frozen embeddings, recommended by PyTorch.

Kernels are Liger's and torch's; the only code of our own here is the glue and the chunked fallback (a
portable loss that keeps long contexts trainable where Triton is missing, e.g. CUDA on Windows).
"""

from __future__ import annotations

import functools
import types
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

IGNORE_INDEX = -100
#: Batches of at least this many tokens take the memory-lean levers on a GPU: the fused LoRA MLPs
#: (trainer/lora_mlp.py) and activation offload. Shorter rows' activations are small next to a 24 GB card,
#: and their steps are host-bound, where the levers' extra launches and copies cost speed (figures in
#: docs/gpu.md, "Figures behind trainer/accel.py's defaults").
LEAN_MIN_TOKENS = 4096

#: Rows of more tokens than this run each decoder layer's MLP in `MLP_CHUNKS` checkpointed pieces, eagerly
#: (`chunk_mlp`): at 49,152 tokens one gate/up activation of a 7B is 1.73 GiB, and the backward holds several.
#: Up to 32k tokens the compiled layers fit a 24 GiB card and run faster (docs/gpu.md).
MLP_CHUNK_MIN_TOKENS = 32768
MLP_CHUNKS = 8

#: Liger's fused loss computes the logits of at most this many rows at a time (`liger_chunk_mem_const`). Its
#: own budget (logits no bigger than the hidden states) cuts a 4,096-token row of a 152k vocabulary into 32
#: chunks of 128 rows, whose logits matmuls keep a fraction of an H100 busy; 1,024 rows are 311 MiB of bf16
#: logits, transient at the end of the forward (figures in docs/gpu.md).
LOSS_CHUNK_ROWS = 1024

#: Longest packed row `merge_micro_batches` builds on a GPU by default: a 7B QLoRA step of this many tokens
#: fits a 24 GB card with room (docs/gpu.md, "Figures behind trainer/accel.py's defaults").
ROW_TOKENS = 16384


def merge_micro_batches(micro: list[list[int]], n_tokens, budget: int) -> list[list[int]]:
    """Concatenate consecutive micro-batches of one optimizer step while a row stays within `budget` tokens.

    Why: on a GPU every forward/backward of a 7B QLoRA pays a fixed kernel-launch cost whatever its
    length, so one long row trains faster than several short ones; on a CPU one row a step means fewer,
    larger matmuls (figures in docs/gpu.md). Attention stays per sample (varlen),
    so a longer row costs no extra attention. The samples
    of the step and its loss (sum over the step's learned tokens) are unchanged: packed rows keep each
    sample's attention to itself. micro: lists of sample indices; n_tokens(i): sample i's length.
    A micro-batch longer than `budget` on its own stays one row.
    """
    rows: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for mb in micro:
        t = sum(n_tokens(i) for i in mb)
        if cur and used + t > budget:
            rows.append(cur)
            cur, used = [], 0
        cur, used = cur + list(mb), used + t
    if cur:
        rows.append(cur)
    return rows


def liger_available(device: torch.device | str | None = None) -> str | None:
    """Why Liger-Kernel can't run here, or None when it can (CUDA device, Triton and liger_kernel importable)."""
    dev = torch.device(device) if device is not None else None
    if not torch.cuda.is_available() or (dev is not None and dev.type != "cuda"):
        return "no CUDA device"
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken Triton install
        return "Triton not installed"
    try:
        import liger_kernel.transformers  # noqa: F401
    except Exception as e:
        return f"liger-kernel not importable ({type(e).__name__}); pip install 'steam-persona[gpu]'"
    return None


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                                 bias: torch.Tensor | None = None, *, reduction: str = "mean",
                                 ignore_index: int = IGNORE_INDEX, chunk_tokens: int | None = None) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T (+ bias)`` against `target` without holding all the logits.

    Args: hidden (N, H) any float dtype; weight (V, H); target (N,) int64 with `ignore_index` for "no
    label"; reduction "mean" (over non-ignored targets) or "sum". Each chunk of `chunk_tokens` rows
    (default: about 2**27 logits on CUDA, 1,024 rows for a 152k vocabulary; 2**24 on CPU, 341 rows of
    SmolLM2's 49k) computes its logits in the weight's dtype and upcasts them to fp32 (as
    ``ForCausalLMLoss`` does). When gradients are needed the chunk's
    gradient is computed right there, in the forward (softmax - one-hot, then ``@ weight``), and the
    backward only scales it: the algorithm of Liger-Kernel's fused linear cross-entropy
    (liger_kernel/ops/fused_linear_cross_entropy.py), in plain torch. Against logits + ``F.cross_entropy``
    it skips the log-softmax backward pass and never holds more than one chunk of logits, so it is both
    faster and far smaller in peak memory (figures in docs/training.md).
    Returns a 0-dim fp32 tensor (fp64 for fp64 weights). Equal to ``F.cross_entropy(logits.float(), target)``
    up to fp32 summation order. Raises ValueError for another reduction.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    chunk = chunk_tokens or max(1, (1 << (27 if hidden.is_cuda else 24)) // weight.shape[0])
    total = _LinearCrossEntropy.apply(hidden, weight, target, bias, ignore_index, chunk, torch.is_grad_enabled())
    if reduction == "sum":
        return total
    return total / (target != ignore_index).sum().clamp(min=1)


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of a linear layer's output with the gradient computed in the forward (see
    `chunked_linear_cross_entropy`). Gradients are kept only for the inputs that require them."""

    @staticmethod
    def forward(ctx, hidden, weight, target, bias, ignore_index, chunk, grad_on):
        need = [grad_on and x is not None and x.requires_grad for x in (hidden, weight, bias)]
        acc = torch.promote_types(weight.dtype, torch.float32)  # fp32 for bf16/fp16/fp32 weights
        g_h = torch.empty_like(hidden) if need[0] else None
        g_w = torch.zeros_like(weight, dtype=acc) if need[1] else None
        g_b = torch.zeros_like(bias, dtype=acc) if need[2] else None
        total = torch.zeros((), dtype=acc, device=hidden.device)
        # CPU: the fp32 work runs on a few rows at a time so it stays in cache; CUDA: the whole chunk at once
        sub = chunk if hidden.is_cuda else max(1, (1 << 19) // weight.shape[0])
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk].to(weight.dtype), target[start:start + chunk]
            valid = t != ignore_index
            safe_t = t.masked_fill(~valid, 0)
            logits = F.linear(h, weight, bias)
            for a in range(0, len(t), sub):
                x, tt, ok = logits[a:a + sub].to(acc), safe_t[a:a + sub], valid[a:a + sub]
                lse = torch.logsumexp(x, dim=-1)
                total += ((lse - x.gather(1, tt[:, None])[:, 0]) * ok).sum()
                if any(need):  # d loss / d logits = softmax - one-hot, written over the logits
                    x.sub_(lse[:, None]).exp_()
                    x[torch.arange(len(tt), device=tt.device), tt] -= 1.0
                    x.mul_(ok[:, None])
                    if need[2]:
                        g_b += x.sum(0)
                    logits[a:a + sub] = x
            if need[0]:
                g_h[start:start + chunk] = (logits @ weight).to(hidden.dtype)
            if need[1]:
                g_w += (logits.t() @ h).to(acc)
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (g_h, g_w, g_b)))
        ctx.need = need
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        saved = ctx.saved_tensors
        out = [saved[i].mul(grad_out).to(ctx.dtypes[i]) if ctx.need[i] else None for i in range(3)]
        return out[0], out[1], None, out[2], None, None, None


def liger_chunk_mem_const(n_rows: int, hidden_size: int, vocab_size: int, rows: int = LOSS_CHUNK_ROWS) -> int:
    """Liger-Kernel's ``chunk_mem_const`` that makes its fused loss take chunks of at most `rows` rows.

    Liger (liger_kernel/ops/fused_linear_cross_entropy.py) splits n_rows into
    parts = ceil(vocab / (chunk_mem_const * hidden)) chunks, each rounded up to a power of two rows; the
    largest constant that still gives at least ceil(n_rows / rows) parts makes the chunks as big as allowed
    (one part when n_rows <= rows). 1, Liger's default, when n_rows needs more parts than that makes."""
    want = -(-n_rows // rows)
    if want <= 1:
        return -(-vocab_size // hidden_size)
    # parts >= want  <=>  vocab / (const * hidden) > want - 1
    return max(1, -(-vocab_size // (hidden_size * (want - 1))) - 1)


@functools.cache
def _liger_takes_chunk_mem_const() -> bool:
    import inspect

    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    return "chunk_mem_const" in inspect.signature(liger_fused_linear_cross_entropy).parameters


def _liger_linear_cross_entropy(hidden, weight, target, bias=None, *, reduction="mean", ignore_index=IGNORE_INDEX):
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    kw = {}
    if _liger_takes_chunk_mem_const():  # liger-kernel < 0.8 keeps its own chunks
        kw["chunk_mem_const"] = liger_chunk_mem_const(hidden.shape[0], hidden.shape[1], weight.shape[0])
    return liger_fused_linear_cross_entropy(hidden, weight, target, bias, ignore_index=ignore_index,
                                            reduction=reduction, **kw)


def causal_lm_loss(hidden: torch.Tensor, lm_head: torch.nn.Linear, labels: torch.Tensor, *,
                   num_items_in_batch=None, shift_labels: torch.Tensor | None = None, impl: str = "chunked"
                   ) -> torch.Tensor:
    """``ForCausalLMLoss`` computed from final hidden states (B, T, H) and `lm_head`, never all logits at once.

    labels (B, T) int64, -100 = no loss; the target of position t is labels[t + 1] (or `shift_labels[t]` if
    given, as transformers passes for packed batches). With `num_items_in_batch` (set by the Trainer under
    gradient accumulation) the loss is the sum over tokens divided by it, else the mean over label tokens.
    impl: "liger" (Liger-Kernel FLCE, CUDA + Triton) or "chunked" (`chunked_linear_cross_entropy`).
    Source of the semantics: transformers/loss/loss_utils.py (ForCausalLMLoss, fixed_cross_entropy).
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    h = hidden.reshape(-1, hidden.shape[-1])
    t = shift_labels.reshape(-1).to(h.device)
    keep = t != IGNORE_INDEX  # only positions with a target reach lm_head (prompt positions cost nothing)
    h, t = h[keep], t[keep]
    fn = _liger_linear_cross_entropy if impl == "liger" else chunked_linear_cross_entropy
    reduction = "sum" if num_items_in_batch is not None else "mean"
    loss = fn(h, lm_head.weight, t, getattr(lm_head, "bias", None), reduction=reduction)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss


def fused_loss_on(model) -> bool:
    """True when `apply_fast_path` gave `model` the fused loss: ``model(**batch, labels=..., num_items_in_batch=1)``
    in train mode then returns the summed loss without computing logits."""
    return getattr(_causal_lm(model), "_steam_loss_impl", None) is not None


def _fused_forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                   labels=None, num_items_in_batch=None, shift_labels=None, **kwargs):
    """Training forward of a ``*ForCausalLM`` that returns the loss without logits (bound per instance)."""
    if labels is None or not self.training:
        return self._steam_plain_forward(input_ids=input_ids, attention_mask=attention_mask,
                                         position_ids=position_ids, inputs_embeds=inputs_embeds, labels=labels,
                                         num_items_in_batch=num_items_in_batch, **kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithPast

    kwargs.pop("logits_to_keep", None)
    kwargs.pop("use_cache", None)
    n_tokens = (input_ids if input_ids is not None else inputs_embeds[..., 0]).numel()
    offload = (self._steam_offload_min_tokens is not None and n_tokens >= self._steam_offload_min_tokens
               and self.lm_head.weight.is_cuda)
    ctx = offload_activations(n_tokens, overlap=self._steam_offload_overlap) if offload else nullcontext()
    eager_from = getattr(self, "_steam_eager_from_tokens", None)
    stance = (torch.compiler.set_stance("force_eager") if eager_from is not None and n_tokens > eager_from
              else nullcontext())  # long rows: eager layers with chunked MLPs (chunk_mlp)
    if attention_mask is None and position_ids is not None and "cu_seq_lens_q" not in kwargs:
        extra = varlen_kwargs(self, position_ids)
        attention_mask = extra.pop("attention_mask", None)
        kwargs.update(extra)
    with ctx, stance:
        out = getattr(self, self.base_model_prefix)(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            inputs_embeds=inputs_embeds, use_cache=False, **kwargs)
        loss = causal_lm_loss(out.last_hidden_state, self.lm_head, labels, num_items_in_batch=num_items_in_batch,
                              shift_labels=shift_labels, impl=self._steam_loss_impl)
    return CausalLMOutputWithPast(loss=loss, logits=None)


def offload_activations(n_tokens: int | None = None, overlap: bool = False):
    """Saved-tensor hooks that keep activations in pinned host memory between the forward and the backward.

    overlap=False: ``torch.autograd.graph.save_on_cpu(pin_memory=True)`` for activations only (parameters, which
    stay on the GPU anyway, are left alone; source of the hooks: torch/autograd/graph.py save_on_cpu). Each
    device-to-host copy waits for the GPU, so the forward stalls at every layer.
    overlap=True: `OverlappedOffload` for the activations laid out per token of an `n_tokens` batch: copies
    on a side stream, overlapped with compute, and the backward fetches one saved tensor ahead."""
    if overlap:
        return OverlappedOffload(n_tokens).hooks()

    def pack(t):
        if isinstance(t, torch.nn.Parameter) or not t.is_cuda:
            return t
        host = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, pin_memory=True)
        host.copy_(t)
        return t.device, host

    def unpack(packed):
        if isinstance(packed, torch.Tensor):
            return packed
        device, host = packed
        return host.to(device, non_blocking=True)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


class _Saved:
    """One offloaded tensor: its host copy, the event that ends a pending copy, and its fetched device copy."""

    __slots__ = ("device", "host", "event", "fetched", "index")

    def __init__(self, device, host, event, index):
        self.device, self.host, self.event, self.fetched, self.index = device, host, event, None, index


class OverlappedOffload:
    """Offload the per-token activations autograd saves (a checkpointed decoder layer's input, (B, T, H)) to
    pinned host memory, double-buffered: the forward's device-to-host copies run on a side CUDA stream while
    the next layers compute, and when the backward takes saved tensor i back it also starts the host-to-device
    copy of tensor i - 1 (the layer it runs next), so that copy overlaps layer i's backward. The algorithm of
    Unsloth's "smart gradient offloading" (unsloth_zoo/gradient_checkpointing.py), written against
    ``torch.autograd.graph.saved_tensors_hooks`` so it works around any checkpoint, compiled or not.

    Offloaded: tensors with `n_tokens` token positions in their leading dimensions ((n_tokens, F) or
    (B, T, F) with B x T = n_tokens) and at least `MIN_FEATURES` features a token. Kept on the device:
    parameters, the quantization state, rotary tables (few features) and anything else, which offloading
    would not free or would copy every layer. On a CPU tensor (tests) the same hooks run with plain copies.
    The GPU keeps at most two offloaded tensors fetched at a time in the backward (the one in use and the next).
    host_buffers: a list that keeps the pinned host copies, the i-th offloaded tensor's at index i, reused by
    the next forward of the same shapes (a CUDA graph replays copies into the same host memory:
    bench/step_graph.py); None: a fresh host buffer each time.
    """

    MIN_FEATURES = 256

    def __init__(self, n_tokens: int | None, min_features: int = MIN_FEATURES, host_buffers: list | None = None):
        self.n_tokens, self.min_features = n_tokens, min_features
        self.saved: list[_Saved] = []
        self.stream = None
        self.host_buffers = host_buffers

    def _host(self, t: torch.Tensor) -> torch.Tensor:
        """A host tensor shaped like `t` (pinned for a CUDA `t`): the kept one at this index when `host_buffers`
        has it."""
        i, kept = len(self.saved), self.host_buffers
        if kept is not None and i < len(kept) and kept[i].shape == t.shape and kept[i].dtype == t.dtype:
            return kept[i]
        host = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, pin_memory=t.is_cuda)
        if kept is not None:
            kept[i:] = [host]
        return host

    def wanted(self, t: torch.Tensor) -> bool:
        """Offload `t`? See the class docstring for the rule."""
        if isinstance(t, torch.nn.Parameter) or not t.is_floating_point() or t.dim() < 2 or self.n_tokens is None:
            return False
        lead = t.shape[0] * t.shape[1] if t.dim() == 3 else t.shape[0]
        return lead == self.n_tokens and t.numel() // max(lead, 1) >= self.min_features

    def pack(self, t: torch.Tensor):
        if not self.wanted(t):
            return t
        if not t.is_cuda:
            rec = _Saved(t.device, self._host(t).copy_(t.detach()), None, len(self.saved))
        else:
            if self.stream is None:
                self.stream = torch.cuda.Stream(t.device)
            host = self._host(t)
            self.stream.wait_stream(torch.cuda.current_stream(t.device))
            with torch.cuda.stream(self.stream):
                host.copy_(t, non_blocking=True)
                event = torch.cuda.Event()
                event.record(self.stream)
            t.record_stream(self.stream)  # the allocator keeps t's memory until the copy has read it
            rec = _Saved(t.device, host, event, len(self.saved))
        self.saved.append(rec)
        return rec

    def fetch(self, rec: _Saved) -> None:
        """Start the host-to-device copy of `rec` (on the side stream, after its offload copy ended)."""
        if rec.fetched is not None:
            return
        if rec.event is None:  # CPU
            rec.fetched = rec.host.clone()
            return
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(rec.event)
            rec.fetched = rec.host.to(rec.device, non_blocking=True)
            rec.event = torch.cuda.Event()
            rec.event.record(self.stream)

    def unpack(self, rec):
        if not isinstance(rec, _Saved):
            return rec
        self.fetch(rec)
        if rec.index > 0:  # the backward runs the layers in reverse: fetch the next one while this one runs
            self.fetch(self.saved[rec.index - 1])
        t, rec.fetched = rec.fetched, None
        if rec.event is not None:
            current = torch.cuda.current_stream(rec.device)
            current.wait_event(rec.event)
            t.record_stream(current)  # allocated on the side stream, used on this one
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)


def _causal_lm(model):
    """The transformers ``*ForCausalLM`` inside a DDP and/or peft wrapper (or the model itself)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing on every decoder layer (torch.utils.checkpoint's
    recommendation); on CPU selective, keeping the attention outputs (`keep_attention_outputs`)."""
    lm = _causal_lm(model)
    lm.config.use_cache = False
    kwargs = {"use_reentrant": False}
    if next(lm.parameters()).device.type == "cpu":
        kwargs["context_fn"] = keep_attention_outputs
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def keep_attention_outputs():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint``: selective activation checkpointing that keeps
    each CPU attention call's outputs (output + logsumexp, (1, H, L, D) + (1, H, L) per sample) and
    recomputes everything else of the layer in the backward.

    Why: plain checkpointing runs the per-sample flash attention forward twice, a noticeable share of a
    small model's CPU step; its outputs are a few MB a layer. Gradients are identical (the same ops
    run; only where a value comes from changes). Source: torch.utils.checkpoint
    create_selective_checkpoint_contexts (PyTorch 2.4+).
    """
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    keep = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default}

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in keep else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def recompute_everything():
    """``context_fn`` for ``torch.utils.checkpoint.checkpoint`` under torch.compile: every op of the layer is
    recomputed in the backward (``CheckpointPolicy.MUST_RECOMPUTE``), so only the layer's inputs are kept,
    as eager checkpointing does. Without it AOTAutograd's min-cut partitioner treats the region's ops as
    "prefer recompute" and still saves what it deems costly to recompute (matmul and bitsandbytes
    outputs). Source: torch.utils.checkpoint create_selective_checkpoint_contexts (PyTorch 2.4+)."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(lambda ctx, op, *args, **kwargs: CheckpointPolicy.MUST_RECOMPUTE)


def apply_fast_path(model, *, liger_kernels: bool = False, fused_loss: str | None = "auto", varlen: bool = True,
                    offload_min_tokens: int | None = LEAN_MIN_TOKENS, offload_overlap: bool = True,
                    compile_layers: bool = True, mlp_chunk_min_tokens: int | None = MLP_CHUNK_MIN_TOKENS,
                    lora_mlp: bool = True, lora_mlp_min_tokens: int = LEAN_MIN_TOKENS) -> dict[str, str]:
    """Apply the levers above to `model` in place (after peft wrapping is fine: Liger patches forwards only).

    fused_loss: "auto" (Liger on CUDA with Triton, else `chunked_linear_cross_entropy`), "liger",
    "chunked", or None (off: steam_persona.trainer.packing's labelled-only logits).
    offload_min_tokens: batches of at least this many tokens offload saved activations (None: never);
    offload_overlap: with `OverlappedOffload` instead of ``save_on_cpu``'s blocking copies.
    mlp_chunk_min_tokens: rows longer than this run the MLPs in checkpointed pieces (`chunk_mlp`; None: off),
    where the fused LoRA MLP is off.
    liger_kernels: Liger RMSNorm/RoPE/SwiGLU (then layers are not compiled). compile_layers: compile each
    decoder layer where CUDA and Triton are present (`compile_decoder_layers`). lora_mlp: each compiled
    layer's LoRA SwiGLU MLP as one op with a hand-written, piecewise backward (trainer/lora_mlp.py), for
    batches of at least `lora_mlp_min_tokens` tokens. Returns {lever: "on (...)" | "off: reason"} for the
    run log. Never raises for a missing kernel: each lever that can't run here is reported off and the
    stock path stays.
    """
    lm = _causal_lm(model)
    device = next(lm.parameters()).device
    why_not = liger_available(device)
    report = {"liger_kernels": _apply_liger(lm, liger_kernels, why_not)}
    if not compile_layers or report["liger_kernels"].startswith("on"):
        report["compile"] = "off: " + ("disabled" if not compile_layers else "Liger kernels are on (dynamo can't trace them)")
    elif device.type != "cuda" or why_not == "Triton not installed":
        report["compile"] = "off: " + ("no CUDA device" if device.type != "cuda" else why_not)
    else:
        report["compile"] = compile_decoder_layers(lm)
    report["lora_mlp"] = _apply_lora_mlp(lm, lora_mlp, report["compile"], lora_mlp_min_tokens)
    report["mlp_chunks"] = (_apply_mlp_chunks(lm, mlp_chunk_min_tokens) if not report["lora_mlp"].startswith("on")
                            else "off: the fused LoRA MLPs work in pieces (long rows stay compiled)")
    report.update(_apply_fused_loss(lm, fused_loss, why_not, offload_min_tokens, offload_overlap))
    report["attention"] = _apply_varlen(lm, device) if varlen else "sdpa (varlen disabled)"
    return report


def _apply_liger(lm, wanted: bool, why_not: str | None) -> str:
    """Liger-Kernel's RMSNorm/RoPE/SwiGLU instance patch when `wanted` and possible; the report line."""
    if not wanted or why_not is not None:
        return "off: " + ("disabled" if not wanted else why_not)
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance

    if lm.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return f"off: no Liger kernels for model type {lm.config.model_type!r}"
    _apply_liger_kernel_to_instance(model=lm, rope=True, rms_norm=True, swiglu=True,
                                    cross_entropy=False, fused_linear_cross_entropy=False)
    return "on (RMSNorm, RoPE, SwiGLU)"


def _apply_lora_mlp(lm, wanted: bool, compiled: str, min_tokens: int) -> str:
    """`lora_mlp.fuse_lora_mlps` on every decoder layer when `wanted`, the layers are compiled (CUDA + Triton:
    the CPU path and the no-Triton fallback keep the stock MLP) and every MLP fits the op; the report line."""
    from steam_persona.trainer import lora_mlp as lora_mlp_lib

    layers = getattr(getattr(lm, getattr(lm, "base_model_prefix", ""), None), "layers", None)
    if not wanted or not compiled.startswith("on") or layers is None:
        return "off: " + ("disabled" if not wanted else "no decoder layers found" if layers is None
                          else "layers not compiled")
    why = next((w for w in (lora_mlp_lib.why_not_fusable(layer.mlp) for layer in layers) if w), None)
    if why:
        return f"off: {why}"
    n = lora_mlp_lib.fuse_lora_mlps(layers, min_tokens=min_tokens)
    return (f"on ({n} MLPs as one op each for rows of {min_tokens}+ tokens, recomputed in pieces of "
            f"{lora_mlp_lib.MLP_PIECE_TOKENS} tokens)")


def _apply_mlp_chunks(lm, min_tokens: int | None) -> str:
    """`chunk_mlp` on the decoder layers for rows over `min_tokens` (None: off); the report line."""
    layers = getattr(getattr(lm, getattr(lm, "base_model_prefix", ""), None), "layers", None)
    if min_tokens is None or layers is None:
        return "off: " + ("disabled" if min_tokens is None else "no decoder layers found")
    chunk_mlp(layers, min_tokens)
    lm._steam_eager_from_tokens = min_tokens
    return f"on ({MLP_CHUNKS} checkpointed pieces, eager layers, for rows over {min_tokens} tokens)"


def _apply_fused_loss(lm, fused_loss: str | None, why_not: str | None, offload_min_tokens: int | None,
                      offload_overlap: bool) -> dict[str, str]:
    """Replace `lm`'s training forward with `_fused_forward` (the loss from hidden states, activation offload
    for long batches); the report lines ``fused_loss`` and, when on, ``activation_offload``."""
    impl = fused_loss
    if impl == "auto":
        impl = "liger" if why_not is None else "chunked"
    if impl == "liger" and why_not is not None:
        impl = "chunked"
    if not impl:
        return {"fused_loss": "off: disabled"}
    if type(getattr(lm, "lm_head", None)) is not torch.nn.Linear or not hasattr(lm, getattr(lm, "base_model_prefix", "")):
        return {"fused_loss": "off: lm_head is not a plain nn.Linear (quantized or adapted)"}
    lm._steam_loss_impl = impl
    lm._steam_offload_min_tokens = offload_min_tokens
    lm._steam_offload_overlap = offload_overlap
    if "_steam_plain_forward" not in lm.__dict__:
        lm._steam_plain_forward = lm.forward
        lm.forward = types.MethodType(_fused_forward, lm)
    on_cuda = next(lm.parameters()).device.type == "cuda"
    return {"fused_loss": ("on (Liger fused linear cross-entropy)" if impl == "liger"
                           else f"on (chunked torch cross-entropy; Liger: {why_not or 'not chosen'})"),
            "activation_offload": ("off: disabled" if offload_min_tokens is None else "off: no CUDA device"
                                   if not on_cuda else f"on from {offload_min_tokens} tokens a batch"
                                   + (", overlapped copies" if offload_overlap else ""))}


def _apply_varlen(lm, device: torch.device) -> str:
    """Switch `lm` from SDPA to `varlen_attention` where it works here; the report line."""
    why = varlen_available(device)
    if why is not None or lm.config._attn_implementation != "sdpa":
        return f"{lm.config._attn_implementation} (varlen: {why or 'model is not on sdpa'})"
    try:
        lm.set_attn_implementation(VARLEN)
    except AttributeError:  # transformers without set_attn_implementation
        lm.config._attn_implementation = VARLEN
    return ("varlen FlashAttention" if device.type == "cuda" else "causal SDPA per sample") + \
        " for packed rows, one batched SDPA call for rows of equal-length samples" + \
        (" (cuDNN first)" if device.type == "cuda" else "") + ", sdpa otherwise"


def varlen_kwargs(model, position_ids: torch.Tensor) -> dict:
    """Extra forward kwargs for one packed row when `model` uses the varlen attention: the sample
    boundaries (`_cu_seqlens`) and a 1x1x1x1 placeholder mask. transformers returns a 4-D mask as is
    (masking_utils._preprocess_mask_arguments) instead of building the T x T block-diagonal one from the
    position ids (2.4 GB at 49k tokens), and `varlen_attention` ignores it when it has the boundaries.
    ``{}`` for any other attention implementation or a batch of more than one row."""
    if position_ids.shape[0] != 1 or _causal_lm(model).config._attn_implementation != VARLEN:
        return {}
    placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=position_ids.device)
    return {**_cu_seqlens(position_ids), "attention_mask": placeholder}


def compile_decoder_layers(lm, *, backend: str = "inductor") -> str:
    """``layer.compile(dynamic=True)`` on each decoder layer of `lm` (``lm.<base_model_prefix>.layers``), with
    the layer's activation checkpoint inside the compiled region (`checkpoint_inside`, full recompute:
    `recompute_everything`) and bitsandbytes' 4-bit matmuls as dequantize + matmul (`share_dequantization`).

    The checkpoint inside beats the checkpoint around the compiled layer (transformers 5.17's place); CUDA
    graphs (``mode="reduce-overhead"``) over these layers were slower, and much slower with offloaded
    activations, so they are not used (docs/gpu.md, "Measured"). backend: "aot_eager" for tests on CPU.
    Returns the report line. Compilation itself happens on the first forward (tens of seconds, once per
    process); ``torch._dynamo.config.suppress_errors`` makes a backend failure run that layer eagerly.
    """
    layers = getattr(getattr(lm, getattr(lm, "base_model_prefix", ""), None), "layers", None)
    if layers is None:
        return "off: no decoder layers found"
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    # one graph serves all layers (same code, parameters are inputs); eval/padded shapes add a few more
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    # transformers >= 5.25 wraps attention modules in `kernels`' use_kernelized_func, whose forward sets and
    # resets a module-level routing variable; inside the checkpoint region dynamo refuses to replay that
    # mutation in the recompute and breaks the graph. The variable only routes Python calls while tracing
    # (set and reset within one attention call), so the recompute needs no replay of it.
    if hasattr(torch._dynamo.config, "skip_fwd_side_effects_in_bwd_under_checkpoint"):
        torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    # full recompute, as checkpointing outside compile does: left to itself the partitioner keeps matmul
    # outputs, about twice the memory (docs/gpu.md, "Measured")
    inside = [checkpoint_inside(layer, context_fn=recompute_everything) for layer in layers]
    if all(inside):
        share_dequantization(layers)
    for layer in layers:
        layer.compile(dynamic=True, backend=backend)
    ckpt = ", activation checkpoint inside" if all(inside) else ""
    return f"on (torch.compile of {len(layers)} decoder layers, dynamic shapes{ckpt})"


def checkpoint_inside(layer, context_fn=None) -> bool:
    """Move transformers' activation checkpoint of a decoder layer into the layer's own ``forward``.

    transformers 5.17 checkpoints around ``GradientCheckpointingLayer.__call__``, outside a compiled
    ``forward`` (5.24 inside ``forward``; this gives both the same place and our policy). Outside, each
    layer runs its compiled forward twice (forward, recompute) as separate calls and the checkpoint's
    saved-tensor hooks work in Python. Inside, dynamo traces the checkpoint as one region
    (``tag_activation_checkpoint``) and AOTAutograd puts the recompute into the compiled backward: two
    compiled calls a layer instead of three, the recompute fused with the backward, no Python hooks per
    saved tensor. The same checkpoint function (``_gradient_checkpointing_func``) and arguments are used,
    so values are unchanged;
    `context_fn` (a ``torch.utils.checkpoint`` selective-checkpointing context) replaces its own if given.
    Returns False (and changes nothing) when the layer is not checkpointed."""
    if not getattr(layer, "gradient_checkpointing", False):
        return False
    fn = layer._gradient_checkpointing_func
    if context_fn is not None:  # transformers sets partial(torch.utils.checkpoint.checkpoint, **kwargs)
        fn = functools.partial(fn.func, *fn.args, **{**fn.keywords, "context_fn": context_fn})
    layer._steam_checkpoint_fn = fn
    layer.gradient_checkpointing = False
    layer.forward = types.MethodType(_checkpointed_forward, layer)
    return True


def chunk_mlp(layers, min_tokens: int = MLP_CHUNK_MIN_TOKENS, chunks: int = MLP_CHUNKS) -> int:
    """Give each decoder layer's ``mlp`` `_chunked_mlp_forward`: in eager training, a row of more than
    `min_tokens` tokens goes through the MLP in `chunks` pieces along the sequence, each under its own
    non-reentrant activation checkpoint, so the backward holds one piece's intermediates (tokens / chunks x
    intermediate size, several of them) instead of the whole row's. Exact: the MLP is per token. Never inside
    torch.compile (dynamo fails on the nested checkpoint around peft's layers in torch 2.11, and a failed
    frame would then run eagerly for every row): `_fused_forward` runs rows this long with the compiled
    layers set aside (``torch.compiler.set_stance("force_eager")``). Returns the number of MLPs changed."""
    n = 0
    for layer in layers:
        mlp = getattr(layer, "mlp", None)
        if mlp is not None:
            mlp._steam_chunk = (min_tokens, chunks)
            mlp.forward = types.MethodType(_chunked_mlp_forward, mlp)
            n += 1
    return n


def _chunked_mlp_forward(self, x):
    """Instance ``forward`` of a decoder layer's MLP set by `chunk_mlp`; x (B, T, H) -> (B, T, H)."""
    forward = type(self).forward
    min_tokens, chunks = self._steam_chunk
    if (not (self.training and torch.is_grad_enabled()) or torch.compiler.is_compiling()
            or x.shape[-2] <= min_tokens):
        return forward(self, x)
    from torch.utils.checkpoint import checkpoint

    pieces = x.tensor_split(chunks, dim=-2)
    return torch.cat([checkpoint(forward, self, piece, use_reentrant=False) for piece in pieces], dim=-2)


def share_dequantization(layers) -> None:
    """Give each bitsandbytes 4-bit linear inside `layers` `_dequant_linear_forward` for training. Only for
    checkpointed, compiled layers (see `_dequant_linear_forward`)."""
    try:
        from bitsandbytes.nn import Linear4bit
    except Exception:  # no bitsandbytes: nothing is quantized
        return
    for layer in layers:
        for m in layer.modules():
            if isinstance(m, Linear4bit):
                m.forward = types.MethodType(_dequant_linear_forward, m)


def _dequant_linear_forward(self, x):
    """bitsandbytes ``Linear4bit.forward`` in training as NF4 dequantization + ``F.linear``: what bitsandbytes'
    own ``gemm_4bit`` runs on CUDA for training-sized inputs (backends/cuda/ops.py, ``_dequant_linear_fallback``),
    but with the two ops visible to torch.compile. Inside a checkpointed compiled layer the backward graph
    then dequantizes each weight once for both the recompute and the input gradient (AOTAutograd's CSE merges
    the two identical calls), where ``gemm_4bit``'s opaque op plus ``MatMul4Bit.backward`` dequantize twice:
    two dequantizations a weight per step instead of three, the same values (CPU trace of the compiled
    graphs: 14 instead of 20 4-bit dequantizations a step for a layer's 7 linears). Its speed alone is not
    isolated (docs/gpu.md, "Measured"). Outside a
    checkpoint autograd would keep each dequantized bf16 weight for the backward, so `share_dequantization`
    is only applied to checkpointed layers. Inference (no grad) keeps bitsandbytes' own path (its fused small-batch kernels)."""
    if not (self.training and torch.is_grad_enabled()):
        return type(self).forward(self, x)
    import bitsandbytes.functional as bnbF

    inp_dtype = x.dtype
    if self.compute_dtype is not None:
        x = x.to(self.compute_dtype)
    bias = None if self.bias is None else self.bias.to(x.dtype)
    weight = bnbF.dequantize_4bit(self.weight.data, self.weight.quant_state).to(x.dtype)
    return F.linear(x, weight, bias).to(inp_dtype)


def _checkpointed_forward(self, *args, **kwargs):
    """Instance ``forward`` set by `checkpoint_inside` (module level: one function, so all layers share
    one compiled graph)."""
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return self._steam_checkpoint_fn(functools.partial(forward, self, **kwargs), *args)
    return forward(self, *args, **kwargs)


# ------------------------------------------------------------------------------- varlen attention

VARLEN = "steam_varlen"


def _cu_seqlens(position_ids: torch.Tensor) -> dict:
    """FlashAttention varlen kwargs for one packed row: sample starts are where the position id is 0.

    Returns cu_seq_lens_q/k (int32, (n_samples + 1,)) and max_length_q/k (int), the names transformers'
    flash-attention path uses (modeling_flash_attention_utils.prepare_fa_kwargs_from_position_ids)."""
    pos = position_ids[0]
    starts = (pos == 0).nonzero().flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    cu = torch.cat([starts, starts.new_tensor([pos.numel()])]).to(torch.int32)
    m = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": m, "max_length_k": m}


def _varlen_call(q, k, v, cu, max_len, scale):
    """q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D), causal within each cu_seqlens segment.

    CUDA: torch's varlen FlashAttention. Elsewhere: `_segment_sdpa`."""
    if not q.is_cuda:
        return _segment_sdpa(q, k, v, cu, scale)
    import inspect

    from torch.nn.attention.varlen import varlen_attn

    params = inspect.signature(varlen_attn).parameters
    kw = {}
    if "scale" in params:
        kw["scale"] = scale
    if "window_size" in params:
        kw["window_size"] = (-1, 0)
    else:
        kw["is_causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kw)


def _segment_sdpa(q, k, v, cu, scale):
    """Causal SDPA on each cu_seqlens segment of a packed row: (T, Hq, D), (T, Hkv, D) -> (T, Hq, D).

    Why our own: torch has no varlen kernel on CPU, and SDPA with transformers' block-diagonal mask
    computes the whole T x T score matrix of the row. Per segment the work is sum(L_i^2) instead of
    (sum L_i)^2, and ``is_causal`` lets the kernel skip the upper triangle (figures in docs/gpu.md)."""
    rep = q.shape[1] // k.shape[1]
    if rep > 1:  # once for the row, not per segment
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    lens = (cu[1:] - cu[:-1]).tolist()
    # split, not slices: the backward of split is one concatenation, where each slice's backward
    # zero-fills a row-sized gradient
    # (1, H, L, D): CPU SDPA picks its flash kernel only for 4-D inputs (3-D falls back to math)
    outs = [F.scaled_dot_product_attention(*(x.transpose(0, 1).unsqueeze(0) for x in qkv), is_causal=True,
                                           scale=scale)[0].transpose(0, 1)
            for qkv in zip(q.split(lens), k.split(lens), v.split(lens))]
    return torch.cat(outs)


#: SDPA backends for rows of equal-length samples on CUDA, in order: cuDNN's attention (Hopper-tuned, with GQA)
#: is faster than the FlashAttention 2 build behind torch's varlen_attn (bench/attention_kernels.py, figures
#: in docs/gpu.md); the others where cuDNN has no kernel for the GPU or the inputs.
UNIFORM_BACKENDS = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                    SDPBackend.MATH]


def _uniform_sdpa(query, key, value, n: int, scale):
    """Causal attention over a packed row of `n` samples of one length, as a batch of `n`.

    query (1, Hq, T, D), key/value (1, Hkv, T, D), T = n * L -> (1, T, Hq, D). CUDA: SDPA by
    `UNIFORM_BACKENDS`, GQA without repeating key/value heads; CPU: key/value heads repeated (CPU SDPA's
    flash kernel takes no GQA)."""
    _, hq, t, d = query.shape
    q, k, v = (x.view(x.shape[1], n, t // n, d).transpose(0, 1) for x in (query, key, value))
    if not q.is_cuda:
        k, v = (x.repeat_interleave(hq // k.shape[1], dim=1) for x in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        with sdpa_kernel(UNIFORM_BACKENDS, set_priority=True):
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=True)
    return out.transpose(1, 2).reshape(1, t, hq, d)


def varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                     cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers attention function: packed rows without padding, SDPA for anything else.

    query (1, Hq, T, D), key/value (1, Hkv, T, D) -> (1, T, Hq, D), None. Takes the packed path only when
    `_fused_forward` passed cu_seq_lens_q (a training row without padding) and no dropout or sliding window:
    a row whose samples all have one length (one long sample, or equal samples) as a batch through
    `_uniform_sdpa`, any other through varlen FlashAttention (`_varlen_call`)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1 or dropout or sliding_window:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, **kwargs)
    n = cu_seq_lens_q.shape[0] - 1
    if max_length_q * n == query.shape[2]:
        return _uniform_sdpa(query, key, value, n, scaling), None
    q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))
    out = _varlen_call(q, k, v, cu_seq_lens_q, max_length_q, scaling)
    return out.unsqueeze(0), None


def varlen_available(device: torch.device) -> str | None:
    """Why varlen attention can't be used on `device`, or None (registers it with transformers on success).

    CPU: always available (`_segment_sdpa`). CUDA self-check (once per process, `_packed_error`): rows of
    two samples of unequal and of equal length through `varlen_attention`, forward and backward, against
    SDPA on each sample alone; relative error must stay under bf16 noise (2e-2)."""
    if device.type != "cuda":
        _register_varlen()
        return None
    global _VARLEN_CHECK
    if _VARLEN_CHECK is None:
        _VARLEN_CHECK = _check_varlen(device)
    return _VARLEN_CHECK


_VARLEN_CHECK: str | None = None


def _check_varlen(device) -> str | None:
    try:
        for cut in (40, 48):  # samples of 40 + 56 tokens (varlen_attn), of 48 + 48 (`_uniform_sdpa`)
            err = _packed_error(device, cut)
            if not err < 2e-2:
                return f"self-check error {err:.1e} ({'equal' if cut == 48 else 'unequal'} samples)"
        _register_varlen()
        return None
    except Exception as e:  # torch without varlen_attn (< 2.9), no kernel for this GPU, ...
        return f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def _packed_error(device, n1: int, T: int = 96, H: int = 4, Hkv: int = 2, D: int = 64) -> float:
    """Relative error of `varlen_attention`'s packed path (a row of two samples, the first `n1` tokens long;
    forward output and the query's gradient, bf16) against SDPA on each sample alone."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, h, T, D, device=device, dtype=torch.bfloat16, generator=g).requires_grad_()
               for h in (H, Hkv, Hkv))
    pos = torch.cat([torch.arange(n1), torch.arange(T - n1)]).to(device)[None]
    out, _ = varlen_attention(None, q, k, v, None, scaling=D ** -0.5, **_cu_seqlens(pos))
    out.float().square().sum().backward()
    got = torch.cat([out.detach().float().flatten(), q.grad.float().flatten()])
    q2, k2, v2 = (x.detach().clone().requires_grad_() for x in (q, k, v))
    refs = []
    for a, b in ((0, n1), (n1, T)):
        kk, vv = (x[..., a:b, :].repeat_interleave(H // Hkv, dim=1) for x in (k2, v2))
        refs.append(F.scaled_dot_product_attention(q2[..., a:b, :], kk, vv, is_causal=True).transpose(1, 2))
    ref = torch.cat(refs, dim=1)
    ref.float().square().sum().backward()
    want = torch.cat([ref.detach().float().flatten(), q2.grad.float().flatten()])
    return float((got - want).norm() / want.norm())


def _register_varlen() -> None:
    """Make VARLEN a transformers attention implementation (masks built as for sdpa)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(VARLEN, varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN, sdpa_mask)
