"""steam_persona.trainer.accel on CPU: the fallbacks, and the fused-loss path against the stock loss.

The Liger/Triton kernels and varlen FlashAttention need CUDA; their GPU figures and checks live in
bench/train_speed.py (bench/results/train_speed.json). Here: the chunked linear cross-entropy (the
portable fused loss) equals the full-logits cross-entropy in value and gradients, the fused training
forward equals steam_persona.trainer.packing's loss on packed and padded batches (so no contamination between packed
samples either way), and apply_fast_path() on CPU reports every GPU lever off and changes nothing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from steam_persona.trainer import accel
from steam_persona.trainer.packing import collate, loss_sum


def test_chunked_linear_cross_entropy_matches_full_logits():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(101, 16, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(101, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 101, (37,), generator=g)
    t[[0, 5, 6, 30]] = -100
    t[8:16] = -100  # one whole chunk without targets
    for reduction in ("mean", "sum"):
        for bias in (None, b):
            for x in (h, w, b):
                x.grad = None
            got = accel.chunked_linear_cross_entropy(h, w, t, bias, reduction=reduction, chunk_tokens=8)
            (got * 3).backward()  # the saved gradient is scaled by the incoming one
            grads = [x.grad.clone() if x.grad is not None else None for x in (h, w, b)]
            for x in (h, w, b):
                x.grad = None
            want = F.cross_entropy(F.linear(h, w, bias), t, ignore_index=-100, reduction=reduction)
            (want * 3).backward()
            assert got.item() == pytest.approx(want.item(), rel=1e-9)
            for mine, ref in zip(grads, (h.grad, w.grad, b.grad)):
                assert (mine is None) == (ref is None)
                if ref is not None:
                    assert torch.allclose(mine, ref, rtol=1e-9, atol=1e-12)
    with torch.no_grad():  # no gradient work without autograd
        assert accel.chunked_linear_cross_entropy(h, w, t).grad_fn is None
    with pytest.raises(ValueError, match="reduction"):
        accel.chunked_linear_cross_entropy(h, w, t, reduction="none")


def _liger_chunk_rows(n_rows, hidden, vocab, const):
    """The rows of one chunk as Liger-Kernel 0.8 sizes them (liger_kernel/ops/fused_linear_cross_entropy.py)."""
    parts = -(-vocab // (const * hidden))
    per = -(-n_rows // parts)
    return min(1 << (per - 1).bit_length(), n_rows)


@pytest.mark.parametrize("n_rows, const, chunk", [(500, 43, 500), (1024, 43, 1024), (2500, 21, 1024),
                                                 (4096, 14, 1024), (16384, 2, 1024), (32768, 1, 1024),
                                                 (60000, 1, 2048)])
def test_liger_chunk_mem_const_gives_chunks_of_1024_rows(n_rows, const, chunk):
    """Qwen2.5-7B's shapes (hidden 3,584, vocab 152,064): the loss's chunks are LOSS_CHUNK_ROWS rows where
    Liger's default budget made 128 (4,096 rows) and never more; past 43 x 1,024 rows Liger's own default."""
    assert accel.liger_chunk_mem_const(n_rows, 3584, 152064) == const
    assert _liger_chunk_rows(n_rows, 3584, 152064, const) == chunk
    assert _liger_chunk_rows(4096, 3584, 152064, 1) == 128


def test_liger_loss_passes_chunk_mem_const_when_liger_takes_it(monkeypatch):
    """Liger-Kernel needs CUDA and Triton, so a stand-in module records what the fused loss passes to it."""
    import sys
    import types

    seen = []

    def new_liger(input, weight, target, bias=None, ignore_index=-100, reduction="mean", chunk_mem_const=1):
        seen.append(chunk_mem_const)
        return torch.zeros(())

    def old_liger(input, weight, target, bias=None, ignore_index=-100, reduction="mean"):
        seen.append(None)
        return torch.zeros(())

    for fn, want in ((new_liger, 14), (old_liger, None)):
        mod = types.ModuleType("liger_kernel.transformers.functional")
        mod.liger_fused_linear_cross_entropy = fn
        monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", mod)
        accel._liger_takes_chunk_mem_const.cache_clear()
        accel._liger_linear_cross_entropy(torch.empty(4096, 3584, device="meta"),
                                          torch.empty(152064, 3584, device="meta"), torch.empty(4096, device="meta"))
        assert seen[-1] == want
    accel._liger_takes_chunk_mem_const.cache_clear()


def test_cu_seqlens_from_packed_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    kw = accel._cu_seqlens(pos)
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 5, 9]
    assert kw["cu_seq_lens_q"].dtype == torch.int32
    assert kw["max_length_q"] == 4 and kw["max_length_k"] == 4


def _lora_model(model_dir):
    from steam_persona.trainer.model import add_lora, load_base

    torch.manual_seed(0)
    model = load_base(str(model_dir), quantization_bit=None, dtype=torch.float32, device="cpu")
    model = add_lora(model, lora_target=["all"], lora_rank=4, gradient_checkpointing=True)
    for n, p in model.named_parameters():  # non-zero B so the adapter takes part in the loss
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
    model.train()
    return model


def _feats(vocab: int = 151000):
    g = torch.Generator().manual_seed(1)
    out = []
    for n in (7, 12, 5):
        ids = torch.randint(0, vocab, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * 2 + ids[2:]})
    return out


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    ls, n = loss_sum(model, batch)
    ls.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    return ls.item(), n, grads


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_per_sample_attention_on_cpu_equals_block_diagonal_mask(arch, tiny_qwen2_dir, tiny_llama_dir):
    """A packed row through the CPU varlen path (causal SDPA per sample, placeholder mask) gives the loss and
    gradients of transformers' SDPA with the block-diagonal mask, and the sum of each sample run alone."""
    model = _lora_model(tiny_qwen2_dir if arch == "qwen2" else tiny_llama_dir)
    feats = _feats(model.config.vocab_size - 10)
    batch = collate(feats, True, pad_token_id=0)
    want, n_want, g_want = _loss_and_grads(model, batch)  # sdpa + mask built from the position ids
    assert accel.apply_fast_path(model, fused_loss=None)["attention"].startswith("causal SDPA per sample")
    assert set(accel.varlen_kwargs(model, batch["position_ids"])) >= {"cu_seq_lens_q", "attention_mask"}
    got, n_got, g_got = _loss_and_grads(model, batch)
    assert n_got == n_want
    assert got == pytest.approx(want, rel=1e-5)
    for k in g_want:
        assert torch.allclose(g_got[k], g_want[k], rtol=1e-4, atol=1e-6), k  # fp32 sums in another order: 3e-7 seen
    alone = [loss_sum(model, collate([f], True, 0))[0].item() for f in feats]
    assert got == pytest.approx(sum(alone), rel=1e-5)


def test_selective_checkpointing_on_cpu_keeps_loss_and_gradients(tiny_qwen2_dir):
    """add_lora on CPU keeps the attention outputs through the recompute (steam_persona.trainer.accel.enable_checkpointing):
    the same loss and gradients as plain checkpointing, bit for bit."""
    model = _lora_model(tiny_qwen2_dir)
    layer = model.get_base_model().model.layers[0]
    assert layer._gradient_checkpointing_func.keywords["context_fn"] is accel.keep_attention_outputs
    accel.apply_fast_path(model, fused_loss=None)
    batch = collate(_feats(), True, pad_token_id=0)
    selective = _loss_and_grads(model, batch)
    model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert "context_fn" not in layer._gradient_checkpointing_func.keywords
    plain = _loss_and_grads(model, batch)
    assert selective[0] == plain[0] and selective[1] == plain[1]
    for k in plain[2]:
        assert torch.equal(selective[2][k], plain[2][k]), k


@pytest.mark.parametrize("padding_free", [True, False])
def test_fused_loss_equals_stock_loss(tiny_qwen2_dir, padding_free):
    model = _lora_model(tiny_qwen2_dir)
    batch = collate(_feats(), padding_free, pad_token_id=151643)
    want, n_want, g_want = _loss_and_grads(model, batch)
    report = accel.apply_fast_path(model, fused_loss="chunked")
    assert report["fused_loss"].startswith("on (chunked")
    assert accel.fused_loss_on(model)
    got, n_got, g_got = _loss_and_grads(model, batch)
    assert n_got == n_want == (7 - 2) + (12 - 2) + (5 - 2)  # labelled from index 2 on
    assert got == pytest.approx(want, rel=1e-5)
    for k in g_want:
        assert torch.allclose(g_got[k], g_want[k], rtol=1e-4, atol=1e-6), k  # fp32 sums in another order: 3e-7 seen


def test_packed_row_loss_equals_samples_alone(tiny_qwen2_dir):
    """No contamination: the packed row's summed loss is the sum of each sample's loss run alone."""
    model = _lora_model(tiny_qwen2_dir)
    accel.apply_fast_path(model, fused_loss="chunked")
    feats = _feats()
    packed, n, _ = _loss_and_grads(model, collate(feats, True, 151643))
    alone = [loss_sum(model, collate([f], True, 151643)) for f in feats]
    assert n == sum(k for _, k in alone)
    assert packed == pytest.approx(sum(float(ls) for ls, _ in alone), rel=1e-5)


def test_accelerate_on_cpu_reports_fallbacks_and_keeps_the_model(tiny_qwen2_dir):
    model = _lora_model(tiny_qwen2_dir)
    batch = collate(_feats(), True, 151643)
    before = float(loss_sum(model, batch)[0])
    report = accel.apply_fast_path(model)
    assert report["liger_kernels"] == "off: disabled"
    assert report["compile"] == "off: no CUDA device"
    assert report["lora_mlp"] == "off: layers not compiled"
    assert report["mlp_chunks"].startswith("on (8 checkpointed pieces")
    assert accel.apply_fast_path(_lora_model(tiny_qwen2_dir), liger_kernels=True)["liger_kernels"] == "off: no CUDA device"
    assert report["fused_loss"] == "on (chunked torch cross-entropy; Liger: no CUDA device)"
    assert accel.fused_loss_on(model)
    assert report["activation_offload"] == "off: no CUDA device"
    assert report["attention"] == ("causal SDPA per sample for packed rows, one batched SDPA call for rows of "
                                   "equal-length samples, sdpa otherwise")
    assert model.get_base_model().config._attn_implementation == accel.VARLEN
    assert accel.liger_available("cpu") == "no CUDA device"
    assert float(loss_sum(model, batch)[0]) == pytest.approx(before, rel=1e-6)


def test_varlen_attention_glue_matches_block_diagonal_sdpa():
    """The varlen branch (on CPU: causal SDPA per segment) with its layout handling (B=1, heads, GQA) equals
    SDPA with a block-diagonal causal mask; without cu_seqlens it is exactly transformers' SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    T, H, Hkv, D = 11, 4, 2, 8
    q, k, v = (torch.randn(1, h, T, D, generator=g) for h in (H, Hkv, Hkv))
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3]])
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal, module.training = H // Hkv, True, True
    out, _ = accel.varlen_attention(module, q, k, v, None, scaling=D ** -0.5, **accel._cu_seqlens(pos))
    seg = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    allowed = (seg[:, None] == seg[None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    want, _ = sdpa_attention_forward(module, q, k, v, allowed[None, None], scaling=D ** -0.5)
    assert out.shape == (1, T, H, D)
    assert torch.allclose(out, want, atol=1e-5)
    plain, _ = accel.varlen_attention(module, q, k, v, None, scaling=D ** -0.5)
    ref, _ = sdpa_attention_forward(module, q, k, v, None, scaling=D ** -0.5)
    assert torch.equal(plain, ref)


def test_equal_samples_row_is_one_batched_call_with_the_same_values_and_gradients(monkeypatch):
    """A packed row whose samples share one length (one long sample, or equal samples) runs as a batch
    (`_uniform_sdpa`), not segment by segment; output and gradients equal SDPA on each sample alone."""
    g = torch.Generator().manual_seed(1)
    T, H, Hkv, D, n = 12, 4, 2, 8, 3
    q, k, v = (torch.randn(1, h, T, D, generator=g, requires_grad=True) for h in (H, Hkv, Hkv))
    monkeypatch.setattr(accel, "_segment_sdpa", lambda *a: pytest.fail("segment path taken"))
    pos = torch.arange(T // n).repeat(n)[None]
    out, _ = accel.varlen_attention(None, q, k, v, None, scaling=D ** -0.5, **accel._cu_seqlens(pos))
    out.square().sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    want = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[..., s:s + T // n, :], *(x[..., s:s + T // n, :].repeat_interleave(H // Hkv, dim=1) for x in (k, v)),
        is_causal=True, scale=D ** -0.5).transpose(1, 2) for s in range(0, T, T // n)], dim=1)
    want.square().sum().backward()
    assert out.shape == (1, T, H, D)
    assert torch.allclose(out, want, atol=1e-6)
    for got, x in zip(grads, (q, k, v)):
        assert torch.allclose(got, x.grad, atol=1e-5)
    one, _ = accel.varlen_attention(None, q, k, v, None, scaling=D ** -0.5,
                                    **accel._cu_seqlens(torch.arange(T)[None]))
    full = torch.nn.functional.scaled_dot_product_attention(q, *(x.repeat_interleave(H // Hkv, dim=1) for x in (k, v)),
                                                            is_causal=True, scale=D ** -0.5)
    assert torch.allclose(one, full.transpose(1, 2), atol=1e-6)


def test_merge_micro_batches_keeps_samples_and_order_within_budget():
    lengths = {0: 100, 1: 300, 2: 50, 3: 700, 4: 20, 5: 5000, 6: 10}
    micro = [[0, 1], [2, 3], [4], [5], [6]]
    rows = accel.merge_micro_batches(micro, lengths.__getitem__, budget=1200)
    assert rows == [[0, 1, 2, 3, 4], [5], [6]]  # 1170 tokens, then the oversized one alone, then the rest
    assert [i for r in rows for i in r] == [i for mb in micro for i in mb]
    assert accel.merge_micro_batches([], lengths.__getitem__, 10) == []


def test_lora_input_casts_skipped_under_cpu_autocast(tiny_qwen2_dir):
    """peft casts a LoRA layer's bf16 input to fp32 under CPU autocast (its check asks about CUDA autocast):
    with the cast off no activation is copied to fp32, and the loss stays the same (autocast casts anyway)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from steam_persona.trainer.model import add_lora, load_base, skip_lora_input_casts

    torch.manual_seed(0)
    model = add_lora(load_base(str(tiny_qwen2_dir), quantization_bit=None, dtype=torch.bfloat16, device="cpu"),
                     lora_target=["all"], lora_rank=4)
    batch = collate(_feats(), True, 151643)

    class Upcasts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and args[0].dim() == 3 and kwargs.get("dtype") == torch.float32:
                Upcasts.n += 1
            return func(*args, **kwargs)

    def loss() -> float:
        Upcasts.n = 0
        with Upcasts(), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return float(loss_sum(model, batch)[0])

    before, casts_before = loss(), Upcasts.n
    assert skip_lora_input_casts(model) == 2 * 7  # 2 layers x 7 linear layers
    after = loss()
    assert casts_before >= 2 * 7 and Upcasts.n < casts_before - 2 * 7 + 1
    assert after == pytest.approx(before, rel=1e-3)


def _qlora_bf16(model_dir, **fast_path):
    """The GPU path's model on CPU: a seeded 4-bit bf16 QLoRA model (rank 4, all linears, checkpointing),
    LoRA B made non-zero so gradients flow everywhere, in train mode, with ``apply_fast_path(**fast_path)``."""
    from steam_persona.trainer.model import add_lora, load_base

    torch.manual_seed(0)
    m = load_base(str(model_dir), quantization_bit=4, dtype=torch.bfloat16, device="cpu")
    m = add_lora(m, lora_target=["all"], lora_rank=4, gradient_checkpointing=True)
    for n, p in m.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
    m.train()
    accel.apply_fast_path(m, **fast_path)
    return m


def test_compiled_layers_checkpoint_inside_and_share_dequantization(tiny_qwen2_dir):
    """The GPU path's layer compilation, run on CPU with dynamo + AOTAutograd (backend aot_eager): a 4-bit QLoRA
    model whose checkpoint moved inside the compiled layer (full recompute) and whose bitsandbytes matmuls are
    dequantize + F.linear gives bit for bit the loss and LoRA gradients of the eager model, traces both layers
    as one graph without breaks, and keeps bitsandbytes' own forward without gradients."""
    from bitsandbytes.nn import Linear4bit
    from torch._dynamo.utils import counters

    def build():
        # varlen off: CPU per-sample attention splits by sample lengths in Python (a graph break)
        return _qlora_bf16(tiny_qwen2_dir, fused_loss="chunked", varlen=False)

    batch = collate(_feats(), True, pad_token_id=0)
    eager = build()
    want = _loss_and_grads(eager, batch)
    model = build()
    torch._dynamo.reset()
    counters.clear()
    lm = model.get_base_model()
    report = accel.compile_decoder_layers(lm, backend="aot_eager")
    assert report == "on (torch.compile of 2 decoder layers, dynamic shapes, activation checkpoint inside)"
    layer = lm.model.layers[0]
    assert not layer.gradient_checkpointing  # transformers' own checkpoint is off: ours runs inside forward
    assert layer._steam_checkpoint_fn.keywords["context_fn"] is accel.recompute_everything
    linears = [m for m in layer.modules() if isinstance(m, Linear4bit)]
    assert len(linears) == 7 and all("forward" in m.__dict__ for m in linears)
    got = _loss_and_grads(model, batch)
    assert got[0] == want[0] and got[1] == want[1]
    for k in want[2]:
        assert torch.equal(got[2][k], want[2][k]), k
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] == 1  # one graph serves both layers
    with torch.no_grad():  # inference keeps bitsandbytes' fused path: same output as the plain module
        x = torch.randn(1, 3, 64, dtype=torch.bfloat16)
        assert torch.equal(linears[0](x), Linear4bit.forward(linears[0], x))
    torch._dynamo.reset()


def test_overlapped_offload_round_trip_keeps_loss_and_gradients(tiny_qwen2_dir):
    """OverlappedOffload's hooks (CPU path: plain copies, the same bookkeeping as on CUDA) around a checkpointed
    LoRA model: each per-token activation is offloaded once and comes back in reverse order, one ahead, and
    the loss and gradients equal those without offload, bit for bit."""
    model = _lora_model(tiny_qwen2_dir)
    batch = collate(_feats(), True, pad_token_id=0)
    n_tokens = batch["input_ids"].numel()
    plain = _loss_and_grads(model, batch)
    off = accel.OverlappedOffload(n_tokens, min_features=64)
    fetched = []
    fetch = off.fetch
    off.fetch = lambda rec: (fetched.append(rec.index) if rec.fetched is None else None, fetch(rec))[1]
    with off.hooks():
        got = _loss_and_grads(model, batch)
    layers = model.config.num_hidden_layers
    # the layers' inputs, and the final norm's input and its fp32 copy (eager, outside any checkpoint)
    assert len(off.saved) == layers + 2 and all(r.host.shape == (1, n_tokens, 64) for r in off.saved)
    assert fetched == list(range(len(off.saved) - 1, -1, -1))  # last saved first, each next one fetched ahead
    assert all(r.fetched is None for r in off.saved)  # nothing left on the device after the backward
    assert got[0] == plain[0] and got[1] == plain[1]
    for k in plain[2]:
        assert torch.equal(got[2][k], plain[2][k]), k
    # what stays: parameters, tensors without n_tokens positions up front, and narrow ones (rotary tables)
    assert not off.wanted(torch.nn.Parameter(torch.ones(n_tokens, 64)))
    assert not off.wanted(torch.ones(n_tokens + 1, 64)) and not off.wanted(torch.ones(1, n_tokens, 8))
    assert off.wanted(torch.ones(n_tokens, 64)) and not off.wanted(torch.ones(n_tokens, 64, dtype=torch.int64))


def test_overlapped_offload_reuses_kept_host_buffers(tiny_qwen2_dir):
    """With `host_buffers`, a second forward of the same shapes copies into the host tensors the first one kept
    (what a CUDA graph replay needs: bench/step_graph.py), and the loss and gradients stay those without offload."""
    model = _lora_model(tiny_qwen2_dir)
    batch = collate(_feats(), True, pad_token_id=0)
    n_tokens = batch["input_ids"].numel()
    plain = _loss_and_grads(model, batch)
    kept: list = []
    runs = []
    for _ in range(2):
        off = accel.OverlappedOffload(n_tokens, min_features=64, host_buffers=kept)
        with off.hooks():
            runs.append((_loss_and_grads(model, batch), [id(r.host) for r in off.saved]))
    assert len(kept) == model.config.num_hidden_layers + 2
    assert runs[0][1] == runs[1][1] == [id(h) for h in kept]  # the same host tensors, in order
    for got, _ in runs:
        assert got[0] == plain[0]
        for k in plain[2]:
            assert torch.equal(got[2][k], plain[2][k]), k


@pytest.mark.parametrize("compiled", [False, True])
def test_chunked_mlp_keeps_loss_and_gradients(tiny_qwen2_dir, compiled):
    """chunk_mlp: a row longer than the threshold runs each MLP in checkpointed pieces, in an eager model and
    in one with compiled layers (aot_eager on CPU), which such a row sets aside (nothing traced): the loss and
    LoRA gradients equal the unchunked model's."""
    from torch._dynamo.utils import counters

    model = _lora_model(tiny_qwen2_dir)
    accel.apply_fast_path(model, fused_loss="chunked", varlen=False)
    batch = collate(_feats(), True, pad_token_id=0)  # 24 tokens
    want = _loss_and_grads(model, batch)
    layers = model.get_base_model().model.layers
    assert accel.chunk_mlp(layers, min_tokens=16, chunks=3) == 2
    calls = []
    forward = type(layers[0].mlp).forward
    type(layers[0].mlp).forward = lambda self, x: (calls.append(x.shape[-2]), forward(self, x))[1]
    try:
        if compiled:  # rows over the threshold set the compiled layers aside and run chunked
            torch._dynamo.reset()
            counters.clear()
            accel.compile_decoder_layers(model.get_base_model(), backend="aot_eager")
            model.get_base_model()._steam_eager_from_tokens = 16
        got = _loss_and_grads(model, batch)
    finally:
        type(layers[0].mlp).forward = forward
    # both layers, forward and recompute: always in pieces of 24 / 3 tokens
    assert set(calls) == {8} and len(calls) >= 2 * 2 * 3
    if compiled:
        assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 0
    assert got[0] == pytest.approx(want[0], rel=1e-6) and got[1] == want[1]
    for k in want[2]:
        assert torch.allclose(got[2][k], want[2][k], rtol=1e-5, atol=1e-7), k
    torch._dynamo.reset()


def test_lora_mlp_op_equals_autograd_in_float64(monkeypatch):
    """The fused LoRA MLP's hand-written backward (trainer/lora_mlp.py) against autograd through peft's layers,
    in float64 on pieces of 5 of 26 tokens (the torch SwiGLU backward 3 rows at a time): output, input
    gradient and every LoRA gradient to rounding."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2MLP

    from steam_persona.trainer import lora_mlp

    torch.manual_seed(0)
    holder = torch.nn.Module()
    holder.mlp = Qwen2MLP(Qwen2Config(hidden_size=16, intermediate_size=40, hidden_act="silu")).double()
    holder.forward = lambda x: holder.mlp(x)
    model = get_peft_model(holder, LoraConfig(r=4, lora_alpha=8, target_modules=list(lora_mlp.PROJECTIONS)))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.3)
    x = torch.randn(2, 13, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.linspace(-1, 1, 16, dtype=torch.float64)

    def run():
        model.zero_grad(set_to_none=True)
        x.grad = None
        y = model(x)
        (y * weight).sum().backward()
        return y.detach(), x.grad, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    want = run()
    monkeypatch.setattr(lora_mlp, "SWIGLU_ROWS", 3)
    mlp = model.base_model.model.mlp
    assert lora_mlp.why_not_fusable(mlp) is None
    assert lora_mlp.fuse_lora_mlps([model.base_model.model], piece_tokens=5) == 1
    got = run()
    assert torch.allclose(got[0], want[0], rtol=1e-12, atol=1e-14)
    assert torch.allclose(got[1], want[1], rtol=1e-12, atol=1e-14)
    assert len(got[2]) == 6
    for k in want[2]:
        assert torch.allclose(got[2][k], want[2][k], rtol=1e-12, atol=1e-14), k
    mlp.eval()  # evaluation keeps peft's own forward
    with torch.no_grad():
        assert torch.equal(model(x), type(mlp).forward(mlp, x))
    mlp.train()
    mlp._steam_min_tokens = 27  # a batch of fewer tokens (26) trains through peft's own forward too
    monkeypatch.setattr(torch.ops.steam, "lora_mlp", lambda *a: pytest.fail("op used below min_tokens"))
    got = run()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    mlp.gate_proj.lora_dropout["default"] = torch.nn.Dropout(0.1)
    assert lora_mlp.why_not_fusable(mlp) == "gate_proj: LoRA dropout or DoRA"


@pytest.mark.parametrize("compiled", [False, True])
def test_lora_mlp_keeps_loss_and_gradients_of_the_qlora_model(tiny_qwen2_dir, compiled):
    """The fused LoRA MLP with pieces of 8 tokens on the GPU path's 4-bit bf16 QLoRA model (eager, and compiled
    layers with the checkpoint inside, aot_eager on CPU): the loss equals the plain model's and the LoRA
    gradients match within bf16 noise; the op is one node to dynamo (no graph break, one graph) and its
    forward runs once a step per layer in the compiled model (the recompute of its output is dead code in
    the compiled backward), twice in the eager one (checkpointing reruns it)."""
    from torch._dynamo.utils import counters

    from steam_persona.trainer import lora_mlp

    def build():
        return _qlora_bf16(tiny_qwen2_dir, fused_loss="chunked", varlen=False, mlp_chunk_min_tokens=None)

    batch = collate(_feats(), True, pad_token_id=0)  # one row of 24 tokens
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = _loss_and_grads(build(), batch)
    model = build()
    lm = model.get_base_model()
    if compiled:
        torch._dynamo.reset()
        counters.clear()
        accel.compile_decoder_layers(lm, backend="aot_eager")
    assert lora_mlp.fuse_lora_mlps(lm.model.layers, piece_tokens=8) == 2
    calls = []
    swiglu = lora_mlp._swiglu
    lora_mlp._swiglu = lambda g, u: (calls.append(g.shape), swiglu(g, u))[1]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = _loss_and_grads(model, batch)
    finally:
        lora_mlp._swiglu = swiglu
    # 2 layers x 3 pieces of 8 tokens, once in the op's forward and again in its backward; eager
    # checkpointing also reruns the op's forward in its recompute, the compiled backward drops that
    assert calls == [(8, 128)] * (2 * 3 * (2 if compiled else 3))
    if compiled:
        assert not counters["graph_break"] and counters["stats"]["unique_graphs"] == 1
    assert got[0] == pytest.approx(want[0], rel=1e-3) and got[1] == want[1]
    for k in want[2]:
        ref = want[2][k].float()
        assert (got[2][k].float() - ref).norm() <= 2e-2 * ref.norm() + 1e-6, k
    torch._dynamo.reset()
