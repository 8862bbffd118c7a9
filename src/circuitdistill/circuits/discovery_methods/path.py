"""Path patching (circuits/path_patching.py): heads that act on the logits directly, then the heads that act on
those through q, k or v, level by level; the circuit is the union of the groups it keeps."""
from __future__ import annotations

from ..circuit import CircuitGroup, CircuitHead
from ..method_registry import DiscoveryMethod, HeadScores, register_method
from ..path_patching import path_patching


class PathPatching(DiscoveryMethod):
    name = "path"
    ablations = ("corrupted", "mean", "zero")

    def run(self, hooked, items, cfg, ablation, progress) -> HeadScores:
        s = hooked.shape
        pp = path_patching(hooked, items, cfg.metric, replacement=ablation, levels=cfg.levels, top_k=cfg.per_level,
                           threshold=cfg.threshold, components=cfg.components, batch_size=min(cfg.batch_size, 8),
                           rows_per_pass=cfg.rows_per_pass, progress=progress)
        groups = [CircuitGroup(level=g.level, component=g.component, receivers=g.receivers,
                               heads=[CircuitHead(layer=l, head=h, score=sc) for l, h, sc in g.heads])
                  for g in pp.groups]
        return HeadScores(pp.union_scores((s.n_layers, s.n_heads)), {"clean": pp.clean}, own_selection=True, groups=groups,
                          grid=pp.level0_scores(),  # full grid: level-0 direct effects
                          selection={"per_level": cfg.per_level, "levels": cfg.levels, "threshold": cfg.threshold})


register_method(PathPatching())
