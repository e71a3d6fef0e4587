"""A packed training row's forward and backward as one CUDA graph, replayed for every row of the same shape:
an experiment for issue #21's host-bound steps, run by ``bench/train_speed.py --stacks ours-graph``. Not in
`steam-train train` until it is measured on a GPU (docs/gpu.md, "Written, not yet measured").

Why: a 7B QLoRA step on an H100 is bound by the host's kernel launches (~9,300 a step; the GPU idles 15-19 %
of it waiting, docs/gpu.md). A CUDA graph replays all of a row's kernels with one launch. torch.compile's own
graphs (``mode="reduce-overhead"``) are one graph per compiled layer and fall off their fast path in training
(docs/gpu.md, "Static shapes, CUDA graphs and max-autotune"); here the whole forward and backward of a row,
the fused loss included, is one graph captured with ``torch.cuda.graph`` (PyTorch's "whole-network capture").

What a graph needs, and how it gets it:
- Static shapes: a row is padded to a multiple of `ROW_BUCKET` tokens by one extra sample of padding (its
  own attention segment, no labels: it changes no other sample's loss or gradient), and its sample
  boundaries (``cu_seqlens``) to a multiple of `SEGMENT_BUCKET` entries by empty segments. A row whose
  samples share one length (fixed-length data) keeps its own exact layout (batched SDPA, `accel._uniform_sdpa`).
- No host syncs inside: the boundaries, the shifted labels and the loss's scale are built on the host from
  the CPU batch and copied into the graph's input buffers; the loss is the chunked torch cross-entropy over
  every position (`accel.chunked_linear_cross_entropy`, `ignore_index` for no label) instead of Liger's, which
  reads its count of targets on the host.
- Gradients: ``torch.autograd.grad`` inside the graph, added into each parameter's ``.grad`` (kept allocated,
  zeroed by the caller before a step), so several rows accumulate as eager backward does.
- Offloaded activations (rows of `accel.LEAN_MIN_TOKENS` tokens and more) go to pinned host buffers owned
  by the graph (`accel.OverlappedOffload` with ``host_buffers``), so replays write the same host memory.
- A capture that fails (an op that syncs with the host or can't be captured) turns the graphs off; the rows
  then run eagerly in the same layout (`StepGraphs.broken` says why).

A new shape is first run eagerly on a side stream (that run is the row's real forward and backward, and
compiles anything new), then captured; rows of that shape afterwards are replays. All graphs share one
memory pool: each graph's memory is free again when it ends, except its loss output.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from steam_persona.trainer import accel
from steam_persona.trainer.encode import IGNORE_INDEX

#: Packed rows are padded to a multiple of this many tokens: a new graph per bucket (one capture each).
ROW_BUCKET = 256
#: ``cu_seqlens`` is padded with empty segments to a multiple of this many samples.
SEGMENT_BUCKET = 8


@dataclass
class StaticRow:
    """One packed row laid out for a graph. Tensors on the CPU, (1, T) int64 unless said.

    key: the graph's shape key; ``uniform``: True when the row is fixed-length samples (batched SDPA).
    cu_seqlens: (S + 1,) int32 sample starts; max_length: the longest sample (T for a padded varlen row, so
    the key holds it fixed). shift_labels: labels[t + 1] (IGNORE_INDEX at the end and on padding).
    tokens: real tokens (without padding)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    shift_labels: torch.Tensor
    cu_seqlens: torch.Tensor
    max_length: int
    uniform: bool
    tokens: int
    key: tuple = field(init=False)

    def __post_init__(self):
        self.key = (self.input_ids.shape[1], self.cu_seqlens.shape[0], self.max_length, self.uniform)


def layout(batch: dict[str, torch.Tensor], pad_token_id: int, row_bucket: int = ROW_BUCKET,
           segment_bucket: int = SEGMENT_BUCKET) -> StaticRow:
    """The static layout of a packed row from `steam_persona.trainer.packing.pack` (CPU tensors, (1, T)).

    Samples start where ``position_ids`` is 0. Raises ValueError for a batch of more than one row."""
    if "position_ids" not in batch or batch["input_ids"].shape[0] != 1:
        raise ValueError(f"a graph takes one packed row, not a batch of {batch['input_ids'].shape[0]}")
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    t = ids.shape[1]
    starts = (pos[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0] + starts
    lengths = [b - a for a, b in zip(starts, starts[1:] + [t])]
    shift = torch.cat([labels[:, 1:], labels.new_full((1, 1), IGNORE_INDEX)], dim=1)
    if len(set(lengths)) == 1:
        cu = torch.tensor(starts + [t], dtype=torch.int32)
        return StaticRow(ids, pos, shift, cu, lengths[0], True, t)
    padded = -(-t // row_bucket) * row_bucket
    extra = padded - t
    if extra:
        ids = torch.cat([ids, ids.new_full((1, extra), pad_token_id)], dim=1)
        pos = torch.cat([pos, torch.arange(extra, dtype=pos.dtype)[None]], dim=1)
        shift = torch.cat([shift, shift.new_full((1, extra), IGNORE_INDEX)], dim=1)
        starts.append(t)
    n = len(starts)
    slots = -(-n // segment_bucket) * segment_bucket
    cu = torch.tensor(starts + [padded] * (slots - n + 1), dtype=torch.int32)
    return StaticRow(ids, pos, shift, cu, padded, False, t)


def row_loss(model, row: dict[str, torch.Tensor], max_length: int, host_buffers: list | None = None) -> torch.Tensor:
    """Summed next-token cross-entropy of a static row (tensors on the model's device, as `StaticRow`'s), from
    the final hidden states and ``lm_head`` over every position (`accel.chunked_linear_cross_entropy`): no
    host sync, no data-dependent shape. Offloads activations as `accel._fused_forward` does, into
    `host_buffers` (reused across calls when given). Returns a 0-dim fp32 tensor."""
    lm = accel._causal_lm(model)
    n_tokens = row["input_ids"].numel()
    offload = lm._steam_offload_min_tokens is not None and n_tokens >= lm._steam_offload_min_tokens
    ctx = (accel.OverlappedOffload(n_tokens, host_buffers=host_buffers).hooks() if offload
           else nullcontext())
    cu = row["cu_seqlens"]
    placeholder = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=cu.device)
    with ctx:
        hidden = getattr(lm, lm.base_model_prefix)(
            input_ids=row["input_ids"], position_ids=row["position_ids"], attention_mask=placeholder,
            cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max_length, max_length_k=max_length,
            use_cache=False).last_hidden_state
        return accel.chunked_linear_cross_entropy(hidden.reshape(-1, hidden.shape[-1]), lm.lm_head.weight,
                                                  row["shift_labels"].reshape(-1), reduction="sum")


class _Graph:
    """One captured shape: its input buffers, loss output, pinned host buffers and the graph."""

    def __init__(self, row: StaticRow, device):
        self.inputs = {k: getattr(row, k).to(device) for k in ("input_ids", "position_ids", "shift_labels",
                                                               "cu_seqlens")}
        self.scale = torch.ones((), device=device)
        self.max_length = row.max_length
        self.host_buffers: list[torch.Tensor] = []
        self.graph = None
        self.loss = None

    def load(self, row: StaticRow, scale: float) -> None:
        for k, buf in self.inputs.items():
            buf.copy_(getattr(row, k), non_blocking=True)
        self.scale.fill_(scale)


class StepGraphs:
    """Forward + backward of packed rows as CUDA graphs, one per `StaticRow.key`.

    model: the training model after `accel.apply_fast_path` (CUDA, bf16 autocast). params: the trained
    parameters; their ``.grad`` is allocated here and must be zeroed (not set to None) between steps."""

    def __init__(self, model, params: list[torch.Tensor], pad_token_id: int, amp=torch.bfloat16):
        self.model, self.params, self.pad_token_id, self.amp = model, params, pad_token_id, amp
        self.device = params[0].device
        self.graphs: dict[tuple, _Graph] = {}
        self.pool = None
        self.captures = 0
        self.broken: str | None = None
        self.error: Exception | None = None
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def run(self, batch: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
        """Add d(scale × loss sum)/d params of one packed row (CPU tensors from `packing.pack`) into the
        parameters' ``.grad``; return the row's loss sum (a device scalar, valid until the next call)."""
        row = layout(batch, self.pad_token_id)
        g = self.graphs.get(row.key)
        if g is None or self.broken is not None:
            return self._first(row, scale)
        g.load(row, scale)
        g.graph.replay()
        return g.loss

    def _forward_backward(self, g: _Graph) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.amp):
            loss = row_loss(self.model, g.inputs, g.max_length, g.host_buffers)
        grads = torch.autograd.grad(loss, self.params, grad_outputs=g.scale)
        torch._foreach_add_([p.grad for p in self.params], grads)
        return loss.detach()

    def _first(self, row: StaticRow, scale: float) -> torch.Tensor:
        """Run a new shape eagerly on a side stream (the row's real step), then capture its graph. A capture
        that fails turns the graphs off for the rest of the run (`broken` says why): every later row runs
        eagerly with the same static layout."""
        g = _Graph(row, self.device)
        g.load(row, scale)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            loss = self._forward_backward(g)
        torch.cuda.current_stream(self.device).wait_stream(side)
        if self.broken is not None:
            return loss
        torch.cuda.synchronize(self.device)
        g.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(g.graph, pool=self.pool):
                g.loss = self._forward_backward(g)
        except RuntimeError as e:  # an op that can't be captured (a host sync, a non-capturable kernel)
            self.broken, self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", e
            self.graphs.clear()
            return loss
        self.pool = g.graph.pool()
        self.graphs[row.key] = g
        self.captures += 1
        return loss
