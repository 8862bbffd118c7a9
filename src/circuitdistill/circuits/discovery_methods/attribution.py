"""Attribution patching (AtP, optionally AtP*'s fixes, the softmax fix or integrated gradients;
circuits/attribution.py): a linear estimate of every head's effect from one forward/backward pass, normalised like an
exact score; with --verify the top K are re-scored exactly and the rest left unmeasured (NaN)."""
from __future__ import annotations

import torch

from ..ablation import baseline, head_sweep, mean_head_outputs
from ..attribution import attribution_patching
from ..method_registry import DiscoveryMethod, HeadScores, register_method
from ..patching import relative_scores


class AttributionPatching(DiscoveryMethod):
    name = "attribution"
    flags = frozenset({"verify", "qk_fix", "grad_drop", "softmax_fix"})
    needs_gradients = True
    ablations = ("corrupted", "mean", "zero")

    def check(self, cfg) -> None:
        if cfg.ig_steps and (cfg.qk_fix or cfg.grad_drop):
            raise ValueError("--ig-steps and the AtP* fixes (--qk-fix, --grad-drop) are alternatives; pick one")
        if cfg.softmax_fix and cfg.ig_steps:
            raise ValueError("--softmax-fix and --ig-steps are alternatives; pick one")
        if cfg.softmax_fix and cfg.metric != "logprob":
            raise ValueError(f"--softmax-fix is for --metric logprob (got {cfg.metric}: it has no output "
                             "softmax)")
        if cfg.verify is not None and cfg.circuit_size is not None and cfg.circuit_size > cfg.verify:
            raise ValueError(f"--circuit-size {cfg.circuit_size} is more than the {cfg.verify} heads --verify re-scores")

    def run(self, hooked, items, cfg, ablation, progress) -> HeadScores:
        shared = {} if cfg.verify else None  # the exact re-scoring reuses the unchanged passes of the ranking
        means = mean_head_outputs(hooked, items, cfg.batch_size) if ablation == "mean" else None
        est = attribution_patching(hooked, items, cfg.metric, replacement=ablation, positions=cfg.positions,
                                   ig_steps=cfg.ig_steps, means=means, batch_size=cfg.batch_size, progress=progress,
                                   qk_fix=cfg.qk_fix, grad_drop=cfg.grad_drop, rows_per_pass=cfg.rows_per_pass,
                                   shared=shared, softmax_fix=cfg.softmax_fix)
        clean = baseline(hooked, items, cfg.metric, cfg.batch_size)
        scores = relative_scores(est + clean, clean)
        if not cfg.verify:
            return HeadScores(scores, {"clean": clean})
        exact = verified_scores(hooked, items, cfg, ablation, scores, clean, means=means, shared=shared,
                                progress=progress)
        return HeadScores(exact, {"clean": clean}, selection={"verify": cfg.verify})


def verified_scores(hooked, items, cfg, ablation: str, estimated: torch.Tensor, clean: float, means=None,
                    shared: dict | None = None, progress: bool = True) -> torch.Tensor:
    """Exact activation-patching scores for the ``cfg.verify`` heads with the largest |estimated| score; NaN elsewhere.

    ``clean``: the mean metric of the unchanged run; ``means`` / ``shared``: what the ranking pass computed."""
    flat = estimated.flatten().abs().nan_to_num(-1.0)
    n_heads = estimated.shape[1]
    top = [(int(i) // n_heads, int(i) % n_heads) for i in flat.argsort(descending=True)[: cfg.verify]]
    patched = head_sweep(hooked, items, cfg.metric, ablation, means, top, cfg.batch_size, cfg.positions, cfg.seed,
                         progress, cfg.rows_per_pass, shared=shared)
    return relative_scores(patched, clean)  # NaN where not re-scored


register_method(AttributionPatching())
