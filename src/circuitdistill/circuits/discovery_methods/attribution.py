"""Attribution patching (AtP, optionally AtP*'s fixes or integrated gradients; circuits/attribution.py): a linear
estimate of every head's effect from one forward/backward pass, normalised like an exact score; with --verify the
top K are re-scored exactly and the rest left unmeasured (NaN)."""
from __future__ import annotations

import torch

from ..ablation import baseline
from ..attribution import attribution_patching
from ..method_registry import DiscoveryMethod, HeadScores, register_method
from ..patching import activation_patching, relative_scores


class AttributionPatching(DiscoveryMethod):
    name = "attribution"
    flags = frozenset({"verify", "qk_fix", "grad_drop"})
    needs_gradients = True
    ablations = ("corrupted", "mean", "zero")

    def check(self, cfg) -> None:
        if cfg.ig_steps and (cfg.qk_fix or cfg.grad_drop):
            raise ValueError("--ig-steps and the AtP* fixes (--qk-fix, --grad-drop) are alternatives; pick one")
        if cfg.verify is not None and cfg.circuit_size is not None and cfg.circuit_size > cfg.verify:
            raise ValueError(f"--circuit-size {cfg.circuit_size} is more than the {cfg.verify} heads --verify re-scores")

    def run(self, hooked, items, cfg, ablation, progress) -> HeadScores:
        est = attribution_patching(hooked, items, cfg.metric, replacement=ablation, positions=cfg.positions,
                                   ig_steps=cfg.ig_steps, batch_size=cfg.batch_size, progress=progress,
                                   qk_fix=cfg.qk_fix, grad_drop=cfg.grad_drop, rows_per_pass=cfg.rows_per_pass)
        clean = baseline(hooked, items, cfg.metric, cfg.batch_size)
        scores = relative_scores(est + clean, clean)
        if not cfg.verify:
            return HeadScores(scores, {"clean": clean})
        return HeadScores(verified_scores(hooked, items, cfg, ablation, scores, progress), {"clean": clean},
                          selection={"verify": cfg.verify})


def verified_scores(hooked, items, cfg, ablation: str, estimated: torch.Tensor, progress: bool) -> torch.Tensor:
    """Exact activation-patching scores for the ``cfg.verify`` heads with the largest |estimated| score; NaN elsewhere."""
    flat = estimated.flatten().abs().nan_to_num(-1.0)
    n_heads = estimated.shape[1]
    top = [(int(i) // n_heads, int(i) % n_heads) for i in flat.argsort(descending=True)[: cfg.verify]]
    res = activation_patching(hooked, items, cfg.metric, replacement=ablation, positions=cfg.positions, heads=top,
                              batch_size=cfg.batch_size, seed=cfg.seed, progress=progress,
                              rows_per_pass=cfg.rows_per_pass)
    out = torch.full_like(estimated, float("nan"))
    for l, h in top:
        out[l, h] = res.scores[l, h]
    return out


register_method(AttributionPatching())
