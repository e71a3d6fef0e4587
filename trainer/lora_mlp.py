"""A decoder layer's SwiGLU MLP with LoRA on its three projections, as one custom op with a hand-written backward.

The MLP of Llama/Qwen2-style layers: ``y = down(silu(gate(x)) * up(x))``, x and y (..., H), intermediate size I.
With peft LoRA each projection p computes ``p(z) = z W_p^T + s_p (z A_p^T) B_p^T``: W_p frozen (bf16, or
bitsandbytes 4-bit dequantized on use), A_p (r, in) and B_p (out, r) the trainable LoRA weights (fp32), s_p
peft's scaling (lora_alpha / r). For an output gradient d of p at input z (Hu et al. 2021, LoRA, eq. 3, by
the chain rule): ``dz = d W_p + s_p (d B_p) A_p``, ``dA_p = s_p (d B_p)^T z``, ``dB_p = s_p d^T (z A_p^T)``;
for ``h = silu(g) * u``: ``du = dh * silu(g)``, ``dg = dh * u * sigmoid(g) * (1 + g (1 - sigmoid(g)))``.

Why our own: inside a compiled, checkpointed decoder layer the backward of this MLP keeps about eleven
(tokens x I) bf16 tensors alive at once (docs/gpu.md, the memory profile: 1.58 GiB at 4,096 tokens of a 7B):
the recomputed base and LoRA outputs of gate and up, their sums, the product, and the gradients. The op's
backward recomputes the MLP in pieces of `MLP_PIECE_TOKENS` tokens and holds at most three (piece x I)
tensors at a time (gate, up, and the product's gradient; the SwiGLU backward writes its two gradients over
gate and up), plus the three dequantized weights. That is the scheme of Unsloth's ``LoRA_MLP``
(unsloth/kernels/fast_lora.py), written here against peft's modules with Liger-Kernel's in-place SwiGLU
kernels (liger_kernel.ops.swiglu) where Triton runs, and plain torch elsewhere (tests on CPU).

To dynamo the op is one node: its forward runs without autograd and saves only x, which the layer's
checkpoint recomputes; the compiled backward calls ``steam::lora_mlp_backward`` and never reruns the op's
forward (its output is not needed there). Matmuls run in x's dtype (bf16 under the GPU path's autocast), as
autocast runs peft's; LoRA gradients accumulate in fp32 over the pieces.
"""

from __future__ import annotations

import functools
import types
import weakref

import torch
import torch.nn.functional as F

#: Tokens a piece of the op's forward and backward: three (piece x I) bf16 tensors are 0.22 GiB for a 7B
#: (I = 18,944) at 2,048; larger pieces save launches, smaller ones memory (figures in docs/gpu.md).
MLP_PIECE_TOKENS = 2048
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
#: rows of the torch SwiGLU backward at a time (without Liger-Kernel): its fp32 temporaries, 5 x rows x I
SWIGLU_ROWS = 256

#: the MLPs given the op, by the data pointer of their first LoRA weight (see `_mlp_of`); weak, so a model
#: that is freed leaves nothing behind
_MLPS: weakref.WeakValueDictionary[int, torch.nn.Module] = weakref.WeakValueDictionary()


def fuse_lora_mlps(layers, piece_tokens: int = MLP_PIECE_TOKENS, min_tokens: int = 1) -> int:
    """Give each decoder layer's ``mlp`` in `layers` the op for training (`_lora_mlp_forward`) where it fits
    (`why_not_fusable` is None), for batches of at least `min_tokens` tokens; evaluation, generation and
    smaller batches keep the module's own forward. Returns how many MLPs changed."""
    _register_ops()
    n = 0
    for layer in layers:
        mlp = getattr(layer, "mlp", None)
        if mlp is None or why_not_fusable(mlp) is not None:
            continue
        params = [w for name in PROJECTIONS for w in _lora_weights(getattr(mlp, name))]
        _MLPS[params[0].data_ptr()] = mlp
        mlp._steam_lora_params, mlp._steam_piece, mlp._steam_min_tokens = params, piece_tokens, min_tokens
        mlp.forward = types.MethodType(_lora_mlp_forward, mlp)
        n += 1
    return n


def why_not_fusable(mlp) -> str | None:
    """Why `mlp` can't run as the op, or None: it needs gate/up/down projections that are peft LoRA layers with
    one active adapter, no dropout, DoRA or bias, not merged, over a bias-free nn.Linear or bitsandbytes
    Linear4bit, and a SiLU activation."""
    act = getattr(mlp, "act_fn", None)
    if type(act).__name__ not in ("SiLU", "SiLUActivation"):
        return f"activation is {type(act).__name__}, not SiLU"
    for name in PROJECTIONS:
        proj = getattr(mlp, name, None)
        why = _why_not_lora(proj)
        if why:
            return f"{name}: {why}"
    return None


def _why_not_lora(proj) -> str | None:
    adapters = getattr(proj, "active_adapters", None)
    if not hasattr(proj, "lora_A") or not adapters or len(adapters) != 1 or adapters[0] not in proj.lora_A:
        return "not a LoRA layer with one active adapter"
    name = adapters[0]
    if getattr(proj, "merged", False) or getattr(proj, "disable_adapters", False):
        return "adapter merged or disabled"
    if not isinstance(proj.lora_dropout[name], torch.nn.Identity) or proj.use_dora.get(name, False):
        return "LoRA dropout or DoRA"
    if getattr(proj, "lora_bias", {}).get(name, False) or proj.lora_B[name].bias is not None:
        return "LoRA bias"
    base = proj.get_base_layer()
    if type(base).__name__ not in ("Linear", "Linear4bit") or base.bias is not None:
        return f"base layer {type(base).__name__} (with bias?)"
    return None


def _lora_weights(proj) -> tuple[torch.Tensor, torch.Tensor]:
    name = proj.active_adapters[0]
    return proj.lora_A[name].weight, proj.lora_B[name].weight


def _lora_mlp_forward(self, x):
    """Instance ``forward`` set by `fuse_lora_mlps`: the op in training on batches of `_steam_min_tokens` tokens
    or more, the module's own forward otherwise."""
    if self.training and torch.is_grad_enabled() and x.shape[:-1].numel() >= self._steam_min_tokens:
        return torch.ops.steam.lora_mlp(x, self._steam_lora_params)
    return type(self).forward(self, x)


def _mlp_of(params):
    """The MLP whose LoRA weights are `params` (the op's tensor inputs: the same storage)."""
    return _MLPS[params[0].data_ptr()]


def _base_weight(proj, dtype) -> torch.Tensor:
    """The frozen weight of a LoRA projection as a (out, in) tensor of `dtype` (4-bit: dequantized, a new tensor)."""
    base = proj.get_base_layer()
    w = base.weight
    if type(base).__name__ == "Linear4bit":
        import bitsandbytes.functional as bnbF

        return bnbF.dequantize_4bit(w.data, w.quant_state).to(dtype)
    return w.detach().to(dtype)


def _setup(mlp, dtype):
    """(weights, lora) for one op call: the dequantized base weights {name: (out, in)} and {name: (A, B,
    scaling)}, in `dtype` (the input's: the matmuls run in it)."""
    weights = {name: _base_weight(getattr(mlp, name), dtype) for name in PROJECTIONS}
    lora = {}
    for name in PROJECTIONS:
        proj = getattr(mlp, name)
        a, b = _lora_weights(proj)
        lora[name] = (a.detach().to(dtype), b.detach().to(dtype), float(proj.scaling[proj.active_adapters[0]]))
    return weights, lora


def _project(z, w, a, b, s):
    """z W^T + s (z A^T) B^T, and z A^T (the backward needs it)."""
    za = z @ a.t()
    return (z @ w.t()).addmm_(za, b.t(), alpha=s), za


def _lora_mlp_impl(x: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """``steam::lora_mlp``: the MLP on x (..., H), piece by piece, without autograd; same shape and dtype."""
    mlp = _mlp_of(params)
    with torch.autocast(x.device.type, enabled=False):
        w, lora = _setup(mlp, x.dtype)
        flat = x.reshape(-1, x.shape[-1])
        y = torch.empty_like(flat)
        for sl in _pieces(flat.shape[0], mlp._steam_piece):
            h = _swiglu(_project(flat[sl], w["gate_proj"], *lora["gate_proj"])[0],
                        _project(flat[sl], w["up_proj"], *lora["up_proj"])[0])
            y[sl] = _project(h, w["down_proj"], *lora["down_proj"])[0]
    return y.reshape(x.shape)


def _lora_mlp_backward_impl(x: torch.Tensor, grad: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """``steam::lora_mlp_backward``: [grad_x, *grad_params] for the op's output gradient `grad` (shape of x);
    the MLP is recomputed piece by piece (`_backward_piece`)."""
    mlp = _mlp_of(params)
    with torch.autocast(x.device.type, enabled=False):
        w, lora = _setup(mlp, x.dtype)
        flat, dy = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1]).to(x.dtype)
        dx = torch.empty_like(flat)
        acc = {name: [torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32))
                      for p in _lora_weights(getattr(mlp, name))]
               for name in PROJECTIONS}
        for sl in _pieces(flat.shape[0], mlp._steam_piece):
            dx[sl] = _backward_piece(flat[sl], dy[sl], w, lora, acc)
    grads = [g.to(p.dtype) for g, p in zip((g for name in PROJECTIONS for g in acc[name]), params)]
    return [dx.reshape(x.shape), *grads]


def _backward_piece(x, dy, w, lora, acc) -> torch.Tensor:
    """Recompute one piece (x (n, H)) and backpropagate dy (n, H): returns dx (n, H) and adds the LoRA
    gradients to `acc` ({name: [dA, dB]}, fp32). Holds at most three (n x I) tensors at a time."""
    (ag, bg, sg), (au, bu, su), (ad, bd, sd) = (lora[n] for n in PROJECTIONS)
    g, xa_g = _project(x, w["gate_proj"], ag, bg, sg)
    u, xa_u = _project(x, w["up_proj"], au, bu, su)
    h = _swiglu(g, u)
    dyb = dy @ bd  # (n, r)
    _add_lora_grads(acc["down_proj"], sd, dyb, h, dy, h @ ad.t())
    del h
    dh = (dy @ w["down_proj"]).addmm_(dyb, ad, alpha=sd)
    _swiglu_backward_(g, u, dh)  # g, u now hold d gate, d up
    del dh
    dgb, dub = g @ bg, u @ bu
    dx = (g @ w["gate_proj"]).addmm_(u, w["up_proj"])
    dx.addmm_(dgb, ag, alpha=sg).addmm_(dub, au, alpha=su)
    _add_lora_grads(acc["gate_proj"], sg, dgb, x, g, xa_g)
    _add_lora_grads(acc["up_proj"], su, dub, x, u, xa_u)
    return dx


def _add_lora_grads(acc, s, d_b, z, d, z_a) -> None:
    """acc[0] += s (d B)^T z (dA, (r, in)); acc[1] += s d^T (z A^T) (dB, (out, r))."""
    acc[0].add_(d_b.t() @ z, alpha=s)
    acc[1].add_(d.t() @ z_a, alpha=s)


def _pieces(n: int, step: int) -> list[slice]:
    return [slice(a, min(a + step, n)) for a in range(0, n, step)]


def _swiglu(g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """silu(g) * u, (n, I) each: Liger-Kernel's Triton kernel on CUDA, torch elsewhere (the same rounding:
    silu in fp32, rounded, times u)."""
    if g.is_cuda and _liger_swiglu() is not None:
        return _liger_swiglu()[0](g, u)[2]
    return F.silu(g) * u


def _swiglu_backward_(g: torch.Tensor, u: torch.Tensor, dh: torch.Tensor) -> None:
    """In place: g <- d gate, u <- d up for h = silu(g) * u and dh = d h, (n, I) each (at least fp32
    arithmetic, as Liger's kernel). The torch path works on `SWIGLU_ROWS` rows at a time, so its fp32
    temporaries stay small next to the (n, I) tensors."""
    if g.is_cuda and _liger_swiglu() is not None:
        _liger_swiglu()[1](g, u, dh)
        return
    acc = torch.promote_types(g.dtype, torch.float32)
    for sl in _pieces(g.shape[0], SWIGLU_ROWS):
        gf = g[sl].to(acc)
        sig = torch.sigmoid(gf)
        silu = gf * sig
        dhf = dh[sl].to(acc)
        g[sl] = dhf * u[sl].to(acc) * (silu * (1 - sig) + sig)
        u[sl] = dhf * silu


@functools.cache
def _liger_swiglu():
    """(swiglu_forward, swiglu_backward) of Liger-Kernel, or None without it or Triton."""
    try:
        from liger_kernel.ops.swiglu import swiglu_backward, swiglu_forward
    except Exception:  # no liger-kernel, no Triton
        return None
    return swiglu_forward, swiglu_backward


@functools.cache
def _register_ops() -> None:
    """Define ``steam::lora_mlp`` and ``steam::lora_mlp_backward`` once, on first use."""
    if hasattr(torch.ops.steam, "lora_mlp"):  # registered by another import of this module
        return
    fwd = torch.library.custom_op("steam::lora_mlp", mutates_args=())(_lora_mlp_impl)
    fwd.register_fake(lambda x, params: torch.empty_like(x))
    bwd = torch.library.custom_op("steam::lora_mlp_backward", mutates_args=())(_lora_mlp_backward_impl)
    bwd.register_fake(lambda x, grad, params: [torch.empty_like(x), *(torch.empty_like(p) for p in params)])

    def setup(ctx, inputs, output):
        x, params = inputs
        ctx.save_for_backward(x, *params)

    def backward(ctx, grad):
        x, *params = ctx.saved_tensors
        grad_x, *grad_p = torch.ops.steam.lora_mlp_backward(x, grad, params)
        return grad_x, grad_p

    fwd.register_autograd(backward, setup_context=setup)
