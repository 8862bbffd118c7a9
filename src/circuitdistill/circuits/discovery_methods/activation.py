"""Activation patching: replace one head's output at a time and measure the metric exactly (circuits/patching.py)."""
from __future__ import annotations

from ..method_registry import DiscoveryMethod, HeadScores, register_method
from ..patching import activation_patching


class ActivationPatching(DiscoveryMethod):
    name = "activation"

    def run(self, hooked, items, cfg, ablation, progress) -> HeadScores:
        res = activation_patching(hooked, items, cfg.metric, replacement=ablation, positions=cfg.positions,
                                  batch_size=cfg.batch_size, seed=cfg.seed, progress=progress,
                                  rows_per_pass=cfg.rows_per_pass)
        base = {"clean": res.reference, **({"corrupted": res.other} if res.other is not None else {})}
        return HeadScores(res.scores, base)


register_method(ActivationPatching())
