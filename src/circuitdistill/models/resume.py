"""Resume a forward pass at decoder layer L from what every layer received in a recorded pass.

A change inside layer L (one head's output replaced) cannot reach anything computed before layer L.
So a sweep runs the unchanged pass once, keeps each decoder layer's call (its residual input plus the
mask, position embeddings and position ids the HF model built for it), and for each changed row runs
only the unmodified HF layers L..end, the final norm and the unembedding. Hooks installed with
``HookedLM.hooks`` fire as usual, since the same modules are called.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from .arch import get_module
from .hooks import HookedLM


@dataclass
class LayerCalls:
    """Per decoder layer: the residual input [b, p, d_model] and the rest of its call (args, kwargs)."""

    hidden: list[torch.Tensor]
    args: list[tuple]
    kwargs: list[dict]
    batch: int


def record_layer_calls(hooked: HookedLM, inputs: dict, part: str | None = None) -> LayerCalls:
    """Run ``inputs`` once (no cache, gradients off) and keep every decoder layer's call.

    ``part`` (a path inside a block, e.g. ``hooked.table.attn``) keeps that submodule's calls instead.
    """
    layers = get_module(hooked.model, hooked.table.layers)
    n = len(layers)
    hidden: list = [None] * n
    args: list = [None] * n
    kwargs: list = [None] * n

    def keeper(i):
        def pre(mod, a, kw):
            h = a[0] if a else kw["hidden_states"]
            hidden[i] = h.detach()
            args[i] = tuple(a[1:])
            kwargs[i] = {k: v for k, v in kw.items() if k != "hidden_states"}
        return pre

    handles = []
    try:
        for i, layer in enumerate(layers):
            mod = layer if part is None else get_module(layer, part)
            handles.append(mod.register_forward_pre_hook(keeper(i), with_kwargs=True))
        with torch.no_grad():
            hooked.model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return LayerCalls(hidden, args, kwargs, int(inputs["input_ids"].shape[0]))


def repeat_rows(x, batch: int, times: int):
    """Repeat every per-row tensor of a recorded call ``times`` times per row (row r -> rows r*times..)."""
    if isinstance(x, torch.Tensor):
        # per-row tensors (masks, position ids, rotary cos/sin) lead with the batch; 1-D ones
        # (cache positions) and batch-1 broadcasts are shared by every row
        if x.dim() >= 2 and x.shape[0] == batch and times > 1:
            return x.repeat_interleave(times, 0)
        return x
    if isinstance(x, tuple):
        return tuple(repeat_rows(v, batch, times) for v in x)
    if isinstance(x, list):
        return [repeat_rows(v, batch, times) for v in x]
    if isinstance(x, dict):
        return {k: repeat_rows(v, batch, times) for k, v in x.items()}
    return x


def run_from_layer(hooked: HookedLM, calls: LayerCalls, layer: int, times: int = 1,
                   hidden: torch.Tensor | None = None, trim_last: bool = True) -> torch.Tensor:
    """Final-position logits [b * times, V] of running layers ``layer``..end on the recorded input.

    Row r of the output continues recorded row r // times. ``hidden`` replaces the recorded residual
    input of ``layer`` (already repeated). Run it under the attention implementation the calls were
    recorded with: the masks HF builds differ between eager and sdpa (sdpa may pass none at all).
    ``trim_last``: the last block's MLP runs on the final position only (``final_position_mlp``).
    """
    model = hooked.model
    layers = get_module(model, hooked.table.layers)
    h = calls.hidden[layer].repeat_interleave(times, 0) if hidden is None else hidden
    last = len(layers) - 1
    for i in range(layer, len(layers)):
        trim = final_position_mlp(layers[i], hooked.table.mlp) if trim_last and i == last else nullcontext()
        with trim:
            out = layers[i](h, *repeat_rows(calls.args[i], calls.batch, times),
                            **repeat_rows(calls.kwargs[i], calls.batch, times))
        h = out[0] if isinstance(out, tuple) else out
    h = get_module(model, hooked.table.final_norm)(h[:, -1:])
    logits = model.get_output_embeddings()(h)
    cap = getattr(model.config, hooked.table.logit_softcap, None) if hooked.table.logit_softcap else None
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits[:, -1]


@contextmanager
def final_position_mlp(block: torch.nn.Module, mlp_path: str):
    """Inside the last block, run its MLP on the final position alone and write zeros elsewhere.

    Only the final position of the last block reaches the final-position logits, and an MLP acts on each position
    by itself, so that position is exact; the block's output at the other positions lacks the MLP's part, and
    nothing reads it. That MLP is about three quarters of a block's matrix work. Nothing happens when something else
    hooks the block's output or the MLP (a recording or an intervention there must see every position).
    """
    mlp = get_module(block, mlp_path)
    if block._forward_hooks or mlp._forward_hooks or mlp._forward_pre_hooks:
        yield
        return
    full_len: list[int] = []

    def last_only(mod, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        full_len.append(x.shape[1])
        x = x[:, -1:]
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    def pad(mod, args, kwargs, output):
        first = output[0] if isinstance(output, tuple) else output
        full = first.new_zeros(first.shape[0], full_len.pop(), *first.shape[2:])
        full[:, -1:] = first
        return (full, *output[1:]) if isinstance(output, tuple) else full

    handles = [mlp.register_forward_pre_hook(last_only, with_kwargs=True),
               mlp.register_forward_hook(pad, with_kwargs=True)]
    try:
        yield
    finally:
        for hd in handles:
            hd.remove()

