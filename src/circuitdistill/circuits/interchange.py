"""Interchange intervention on a set of heads: run the base prompts with the heads' outputs at one position
replaced by their outputs on the source prompts (the items' corrupted prompts).

The one engine behind interchange-intervention training (student and teacher side, live or cached) and the
interchange-agreement check. Base and source batches may differ in length: both are left padded, so a
position counted from the end (``-1``: the final prompt token) lines up.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import torch

from ..models.hooks import HookedLM, hook_name, patch
from ..tasks.scoring import forward_inputs

Head = tuple[int, int]


def interchange_logits(hooked: HookedLM, base: dict, source: dict, heads: Sequence[Head], position: int = -1
                       ) -> torch.Tensor:
    """Final-position logits [b, V] of ``base`` with ``heads`` (attn.hook_z) patched from ``source`` at
    ``position``. Batches come from ``tasks.batching.encode_items``. Gradients flow through the base run
    (the source outputs are taken without gradient)."""
    by_layer: dict[int, list[int]] = defaultdict(list)
    for l, h in heads:
        by_layer[int(l)].append(int(h))
    names = [hook_name(l, "attn.hook_z") for l in sorted(by_layer)]
    device = next(hooked.model.parameters()).device
    with torch.no_grad(), hooked.hooks(record=names, detach=True) as rec:
        hooked.model(**{k: v.to(device) for k, v in forward_inputs(source).items()}, logits_to_keep=1)
    ivs = [patch(hook_name(l, "attn.hook_z"), rec[hook_name(l, "attn.hook_z")], heads=sorted(hs),
                 positions=[position]) for l, hs in by_layer.items()]
    with hooked.hooks(interventions=ivs):
        out = hooked.model(**{k: v.to(device) for k, v in forward_inputs(base).items()}, logits_to_keep=1)
    return out.logits[:, -1, :]
