"""The two fixes of AtP* (Kramár et al. 2024) for head-output attribution patching.

**QK fix.** Plain AtP linearises through every attention softmax downstream of a patched head. Where
a downstream head's attention is saturated, the gradient through its softmax is near zero and a large
pattern change is missed. For each head h and each later layer L', the change of h's output reaches
L' directly through the residual stream as dr = o_proj(z with h replaced) - o_proj(z). We run layer
L''s unmodified attention module on its clean input plus dr, read the new attention weights A', and
replace AtP's first-order term along that path by the exact one:

    correction(h) = sum over L' > layer(h) of  <A'_L' - A_L', dM/dA_L'>  -  <dM/dA_L' . dA_L'/dx, dr>

The second term is the part of AtP's estimate that went through L''s softmax along the same path
(one backward per layer gives it for every head at once). Paths through intermediate heads and MLPs
stay linear, as in AtP; the value path stays linear too (A is held at its clean value there). When only
the final position is patched, dr is zero elsewhere and only the final query row of A changes, so
layer L' runs on the final token alone against the clean prefix's keys and values (``_FrozenPrefix``).

**GradDrop.** A head's direct and indirect effects can cancel in the gradient. For every layer l,
AtP is recomputed with the gradient through layer l's residual contribution (block output minus
block input) set to zero; the estimate is sum_l |AtP_l| / (n_layers - 1) (a head's own layer gives
zero). It is a magnitude; the sign is the undropped estimate's. Only the layers below l need a new
backward pass (``dropped_grads``), half the layer work of n_layers full backward passes.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from transformers.cache_utils import Cache

from ..models.arch import get_module
from ..models.hooks import HookedLM, hook_name
from ..models.resume import LayerCalls, repeat_rows


def pattern_hook(layer: int) -> str:
    return hook_name(layer, "attn.hook_pattern")


class _FrozenPrefix:
    """Stands in for the key/value cache of a call recorded on a cached prefix: returns the prefix's keys and
    values (each row repeated ``times`` times) followed by the new ones, and stores nothing, so the recorded call
    can be replayed on any rows."""

    def __init__(self, cache: Cache, layer: int, times: int):
        kv = cache.layers[layer]
        self.keys, self.values, self.times = kv.keys[:, :, :-1], kv.values[:, :, :-1], times  # minus the recorded token

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args, **kwargs):
        return (torch.cat([self.keys.repeat_interleave(self.times, 0), keys], 2),
                torch.cat([self.values.repeat_interleave(self.times, 0), values], 2))


def _attention_weights(hooked: HookedLM, calls: LayerCalls, layer: int, x: torch.Tensor, times: int) -> torch.Tensor:
    """Attention weights [rows, n_heads, q, k] of layer ``layer``'s unmodified attention module on residual ``x``."""
    block = hooked.block(layer)
    norm, attn = get_module(block, hooked.table.attn_norm), get_module(block, hooked.table.attn)

    def frozen(v):
        return _FrozenPrefix(v, layer, times) if isinstance(v, Cache) else v

    args = [frozen(v) for v in repeat_rows(calls.args[layer], calls.batch, times)]
    kwargs = {k: frozen(v) for k, v in repeat_rows(calls.kwargs[layer], calls.batch, times).items()}
    with hooked.hooks(record=[pattern_hook(layer)]) as rec:
        attn(norm(x), *args, **kwargs)
    return rec[pattern_hook(layer)]


def pattern_input_grads(hooked: HookedLM, calls: LayerCalls, resid: list[torch.Tensor],
                        pattern_grads: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer: d/dx <A(x), dM_e/dA> at the clean residual input x for every objective e (the softmax path, first
    order): [objectives, b, p, d_model]. ``pattern_grads``: per layer, [objectives, b, n_heads, q, k]."""
    out = []
    for layer, (x, g) in enumerate(zip(resid, pattern_grads)):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            a = _attention_weights(hooked, calls, layer, x, 1)
            out.append(torch.stack([torch.autograd.grad((a * g[e]).sum(), x, retain_graph=e + 1 < len(g))[0]
                                    for e in range(len(g))]))
    return out


@torch.no_grad()
def qk_correction(hooked: HookedLM, calls: LayerCalls, resid: list[torch.Tensor], z: dict[str, torch.Tensor],
                  delta: dict[str, torch.Tensor], patterns: list[torch.Tensor], pattern_grads: list[torch.Tensor],
                  input_grads: list[torch.Tensor], rows_per_pass: int) -> torch.Tensor:
    """[b, objectives, n_layers, n_heads], float64 on the CPU: exact minus first-order softmax term (module
    docstring), per item and per objective.

    ``z`` / ``delta``: clean head outputs and their replacement change (zero outside the selected
    positions), hook -> [b, p, n_heads, d_head]; ``calls``: the attention modules' recorded calls;
    ``resid``: every layer's clean residual input; ``pattern_grads`` / ``input_grads``: per layer, each objective's
    gradient at the attention weights and its first-order pull-back to the layer input (``pattern_input_grads``).
    """
    s = hooked.shape
    b = calls.batch
    n_obj = pattern_grads[0].shape[0]
    out = torch.zeros(b, n_obj, s.n_layers, s.n_heads, dtype=torch.float64)
    for src in range(s.n_layers - 1):
        name = hook_name(src, "attn.hook_z")
        zc, dz = z[name], delta[name]
        o_proj = get_module(hooked.block(src), hooked.table.o_proj)
        base = o_proj(zc.flatten(2))
        per = max(1, rows_per_pass // b)
        for h0 in range(0, s.n_heads, per):
            heads = list(range(h0, min(h0 + per, s.n_heads)))
            k = len(heads)
            zr = zc.repeat_interleave(k, 0).clone()  # row r: item r // k, head heads[r % k] replaced
            for j, h in enumerate(heads):
                zr[j::k, :, h] += dz[:, :, h]
            dr = o_proj(zr.flatten(2)) - base.repeat_interleave(k, 0)
            for dst in range(src + 1, s.n_layers):
                x = resid[dst].repeat_interleave(k, 0) + dr
                new = _attention_weights(hooked, calls, dst, x, k)
                change = (new - patterns[dst].repeat_interleave(k, 0)).view(b, k, -1)
                exact = torch.einsum("bkn,ebn->bek", change, pattern_grads[dst].view(n_obj, b, -1))
                first = torch.einsum("bkn,ebn->bek", dr.view(b, k, -1), input_grads[dst].view(n_obj, b, -1))
                out[:, :, src, heads] += (exact.double() - first.double()).cpu()
    return out


@contextlib.contextmanager
def block_boundaries(hooked: HookedLM) -> Iterator[list]:
    """Every decoder block's residual input and output as the autograd graph holds them: [(input, output)]."""
    seen: list = [None] * hooked.shape.n_layers
    handles = []

    def keep(layer):
        def hook(mod, args, kwargs, output):
            seen[layer] = (args[0] if args else kwargs["hidden_states"],
                           output[0] if isinstance(output, tuple) else output)
        return hook

    try:
        for layer in range(hooked.shape.n_layers):
            handles.append(hooked.block(layer).register_forward_hook(keep(layer), with_kwargs=True))
        yield seen
    finally:
        for h in handles:
            h.remove()


def dropped_grads(blocks: list, out_grads, leaves: list, grads) -> list[list[torch.Tensor]]:
    """GradDrop's gradients: for every layer l, the gradient at each layer's head outputs with block l's residual
    contribution removed from the backward pass.

    Dropping block l leaves the gradient above it unchanged and passes the gradient at its output straight to
    its input, so heads above l keep the full gradient, l's own heads get zero, and the heads below l get the
    output gradient pushed back from l's input (a backward pass over layers 0..l-1 only).
    """
    out = []
    for l in range(len(leaves)):
        below = list(torch.autograd.grad(blocks[l][0], leaves[:l], out_grads[l], retain_graph=True)) if l else []
        out.append(below + [torch.zeros_like(leaves[l])] + list(grads[l + 1:]))
    return out
