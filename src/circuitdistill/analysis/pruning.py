"""Circuits by iterative pruning (Distilled Circuits).

Start from every component. In each round, every component still in the circuit gets a cost: how much
of the current circuit's metric is lost when it is ablated as well, |100 · (1 − m(removed ∪ {c}) / m(removed))|
(round 1: the clean single-component influence). All components costing less than T are removed (ablated
from then on), and the rounds repeat until no component is removed (the circuit is stable).

Guarantee: a component is never removed when its ablation costs T or more, neither in the round it would
be removed (its marginal cost) nor on the clean model (its influence): components with influence ≥ T are
protected from the start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..models.hooks import HookedLM
from .influence import Component, InfluenceResult, metric_under_ablation

DEFAULT_SWEEP = (10.0, 15.0, 20.0, 25.0, 30.0)


@dataclass
class PruneResult:
    threshold: float
    circuit: list[Component]
    removed: list[Component]
    retained_metric_pct: float  # 100 · m(circuit) / m(clean)
    rounds: list[dict] = field(default_factory=list)
    removal_cost: dict[str, float] = field(default_factory=dict)  # cost when it was removed
    stable: bool = True

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "size": len(self.circuit),
                "n_heads": sum(c.kind == "head" for c in self.circuit),
                "n_mlps": sum(c.kind == "mlp" for c in self.circuit),
                "retained_metric_pct": self.retained_metric_pct, "stable": self.stable,
                "circuit": [c.name for c in self.circuit], "rounds": self.rounds,
                "removal_cost": self.removal_cost}


def relative_cost(context: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """|100 (1 − mean ablated / mean context)| per row of ``ablated`` [G, N]; ``context`` [N]."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(100.0 * (1.0 - ablated.mean(-1) / context.mean()))


def prune(hooked: HookedLM, batches: list[dict], inf: InfluenceResult, threshold: float = 20.0,
          means: dict | None = None, batch_rows: int = 64, max_rounds: int = 10, progress: bool = False
          ) -> PruneResult:
    if not 0 < threshold < 100:
        raise ValueError(f"pruning threshold must be in (0, 100) percent; got {threshold}")
    comps = list(inf.components)
    clean_cost = inf.influence
    protected = {c for c, i in zip(comps, clean_cost) if not i < threshold}  # NaN counts as protected
    removed: list[Component] = []
    removal_cost: dict[str, float] = {}
    rounds = []
    stable = False
    for r in range(1, max_rounds + 1):
        circuit = [c for c in comps if c not in set(removed)]
        if r == 1:
            costs = clean_cost
        else:
            vals = metric_under_ablation(hooked, batches, [[]] + [[c] for c in circuit], removed, inf.metric,
                                         inf.ablation, means, batch_rows,
                                         progress and f"prune T={threshold:g} round {r}")
            costs = relative_cost(vals[0], vals[1:])
        drop = [c for c, k in zip(circuit, costs) if k < threshold and c not in protected]
        for c, k in zip(circuit, costs):
            if c in drop:
                removal_cost[c.name] = float(k)
        rounds.append({"round": r, "size_before": len(circuit), "removed": len(drop)})
        if not drop:
            stable = True
            break
        removed += drop
    circuit = [c for c in comps if c not in set(removed)]
    if removed:
        vals = metric_under_ablation(hooked, batches, [[]], removed, inf.metric, inf.ablation, means, batch_rows)
        retained = float(100.0 * vals[0].mean() / inf.clean.mean())
    else:
        retained = 100.0
    return PruneResult(threshold, circuit, removed, retained, rounds, removal_cost, stable)


def jaccard(a: Sequence, b: Sequence) -> float:
    sa, sb = set(a), set(b)
    return 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)


def threshold_sweep(hooked: HookedLM, batches: list[dict], inf: InfluenceResult,
                    thresholds: Sequence[float] = DEFAULT_SWEEP, reference: float = 20.0, means: dict | None = None,
                    batch_rows: int = 64, max_rounds: int = 10, progress: bool = False) -> dict:
    """Prune at every T; report each circuit's size, retained metric and Jaccard overlap with the T=reference one."""
    ts = sorted(set(map(float, thresholds)) | {float(reference)})
    results = {t: prune(hooked, batches, inf, t, means, batch_rows, max_rounds, progress) for t in ts}
    ref = results[float(reference)]
    return {"reference": float(reference), "circuit": ref.to_dict(),
            "sweep": [{"threshold": t, "size": len(res.circuit), "retained_metric_pct": res.retained_metric_pct,
                       "jaccard_to_reference": jaccard([c.name for c in res.circuit], [c.name for c in ref.circuit]),
                       "stable": res.stable, "rounds": len(res.rounds)} for t, res in results.items()],
            "results": results}
