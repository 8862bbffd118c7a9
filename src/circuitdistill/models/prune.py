"""Depth pruning: drop decoder blocks from an HF causal LM, and score which contiguous block to drop.

Which layers (``--keep N``): the contiguous block of ``n = L - N`` layers whose input and output hidden states
are closest in angle on general text, i.e. the start ``l`` minimising the mean over tokens of
``arccos(cos(h_l, h_{l+n})) / pi`` (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper
Layers"; ShortGPT scores single blocks the same way). A contiguous block is chosen rather than the ``n``
individually least important blocks because single-block scores assume every other block is present: the
block after a run of removed blocks then sees a residual stream the scores never measured. The contiguous
score measures exactly the gap the kept block will bridge. The first position is left out of the mean (its
hidden state is the attention sink, with an outlying norm on most models).

What dropping fixes besides the layer list (found through the architecture table): ``num_hidden_layers``,
every submodule's ``layer_idx`` (the KV cache is indexed by it), and ``config.layer_types`` (per-layer
attention kinds). Kept blocks are the same module objects, so their weights are untouched.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .arch import get_module, table_for


def parse_layer_spec(spec: str, n_layers: int) -> list[int]:
    """'20-29' or '3,5,7-9' -> sorted distinct layer indices, each checked against ``n_layers``."""
    out: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ValueError(f"bad layer spec {spec!r}: use indices and ranges like '20-29' or '3,5,7-9'")
        lo, hi = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if lo > hi:
            raise ValueError(f"bad layer range {part!r} in {spec!r}: start after end")
        out.update(range(lo, hi + 1))
    check_drop(sorted(out), n_layers)
    return sorted(out)


def check_drop(drop: Sequence[int], n_layers: int) -> None:
    bad = [i for i in drop if not 0 <= i < n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{n_layers - 1}")
    if len(set(drop)) >= n_layers:
        raise ValueError(f"dropping {len(set(drop))} of {n_layers} layers leaves none")


def check_prunable(model: nn.Module) -> None:
    if getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("this model scales attention by 1/(layer index + 1): renumbering layers would change "
                         "what the kept layers compute, so it cannot be depth-pruned")


def prune_layers(model: nn.Module, drop: Sequence[int]) -> nn.Module:
    """Remove the decoder blocks ``drop`` in place; return the model."""
    check_prunable(model)
    path = table_for(model).layers
    layers = get_module(model, path)
    n = len(layers)
    check_drop(drop, n)
    keep = [i for i in range(n) if i not in set(drop)]
    parent, _, attr = path.rpartition(".")
    setattr(get_module(model, parent) if parent else model, attr, nn.ModuleList([layers[i] for i in keep]))
    for new_idx, old_idx in enumerate(keep):
        for mod in layers[old_idx].modules():
            if hasattr(mod, "layer_idx"):
                mod.layer_idx = new_idx
    cfg = model.config
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[i] for i in keep]
    cfg.num_hidden_layers = len(keep)
    return model


@torch.no_grad()
def angular_distances(model: nn.Module, tokenizer, texts: Sequence[str], block: int, batch_size: int = 8,
                      max_length: int = 128, progress: bool = False) -> dict[str, list[float]]:
    """Mean angular distance (in units of pi) between the residual stream before layer ``l`` and after layer
    ``l + n - 1``, for ``n = block`` (key "block", one value per start ``l``) and ``n = 1`` (key "single")."""
    layers = get_module(model, table_for(model).layers)
    n_layers = len(layers)
    if not 1 <= block < n_layers:
        raise ValueError(f"block length {block} must be between 1 and {n_layers - 1}")
    states: list[torch.Tensor] = [None] * (n_layers + 1)  # type: ignore[list-item]

    def pre_hook(i):
        def fn(_mod, args, kwargs):
            states[i] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return fn

    def last_hook(_mod, _args, out):
        states[n_layers] = out[0] if isinstance(out, tuple) else out

    handles = [layer.register_forward_pre_hook(pre_hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    handles.append(layers[-1].register_forward_hook(last_hook))
    sums = {"block": torch.zeros(n_layers - block + 1, dtype=torch.float64),
            "single": torch.zeros(n_layers, dtype=torch.float64)}
    count = 0
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    device = next(model.parameters()).device
    try:
        for i in tqdm(range(0, len(texts), batch_size), desc="layer importance", disable=not progress, leave=False):
            enc = tokenizer(list(texts[i:i + batch_size]), return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length).to(device)
            model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, use_cache=False)
            mask = enc.attention_mask.bool().clone()
            mask[:, 0] = False
            h = torch.stack([s[mask].double() for s in states])  # [L+1, tokens, d]
            for key, n in (("block", block), ("single", 1)):
                cos = torch.nn.functional.cosine_similarity(h[:-n], h[n:], dim=-1).clamp(-1, 1)
                sums[key] += (torch.arccos(cos) / math.pi).sum(-1)
            count += int(mask.sum())
    finally:
        tokenizer.padding_side = side
        for hd in handles:
            hd.remove()
    return {k: (v / max(count, 1)).tolist() for k, v in sums.items()}


def least_important_block(distances: Sequence[float], block: int) -> list[int]:
    start = min(range(len(distances)), key=lambda l: distances[l])
    return list(range(start, start + block))
