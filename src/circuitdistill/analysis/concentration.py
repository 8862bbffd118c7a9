"""Concentration of reliance (Distilled Circuits v2 robustness summaries).

The drops are the component influences I(c) in percentage points (how much of the clean metric is lost
when c alone is ablated). Per model: the worst single drop, the mean drop with a bootstrap 95% interval
over data items, the worst-5% mean, the Gini coefficient of the drops and the severity tail score
S = mean_c max(0, (min(L, m_c) − T) / (L − T)) with L = 100, T = 20.
"""
from __future__ import annotations

import math

import numpy as np

from .influence import InfluenceResult


def gini(x: np.ndarray) -> float:
    """Gini coefficient Σ_i Σ_j |x_i − x_j| / (2 n² mean) of non-negative values (0 when all are equal or 0)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        raise ValueError("gini of an empty set")
    if (x < 0).any():
        raise ValueError("gini needs non-negative values")
    mean = x.mean()
    if mean == 0:
        return 0.0
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size ** 2 * mean))


def severity_tail(drops: np.ndarray, limit: float = 100.0, threshold: float = 20.0) -> float:
    """mean(max(0, (min(L, m) − T) / (L − T)))."""
    if not limit > threshold:
        raise ValueError(f"severity tail needs L > T; got L={limit}, T={threshold}")
    m = np.asarray(drops, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, (np.minimum(limit, m) - threshold) / (limit - threshold))))


def worst_fraction_mean(drops: np.ndarray, fraction: float = 0.05) -> float:
    """Mean of the largest ceil(fraction · n) drops (at least one)."""
    d = np.sort(np.asarray(drops, dtype=np.float64))[::-1]
    return float(d[:max(1, math.ceil(fraction * d.size))].mean())


def summarise(drops: np.ndarray, limit: float = 100.0, threshold: float = 20.0) -> dict:
    d = np.asarray(drops, dtype=np.float64)
    return {"n_components": int(d.size), "worst_drop": float(d.max()), "mean_drop": float(d.mean()),
            "worst_5pct_mean": worst_fraction_mean(d, 0.05), "gini": gini(d),
            "severity_tail": severity_tail(d, limit, threshold),
            "n_above_threshold": int((d > threshold).sum())}


def concentration(inf: InfluenceResult, n_boot: int = 1000, seed: int = 0, limit: float = 100.0,
                  threshold: float = 20.0) -> dict:
    """Summaries over all components, heads only and MLPs only; mean drop with a bootstrap 95% interval."""
    drops = inf.influence
    rng = np.random.default_rng(seed)
    n = len(inf.clean)
    boot = inf.bootstrap(rng.integers(0, n, (n_boot, n))) if n_boot > 0 else np.empty((0, len(drops)))
    kinds = np.array([c.kind for c in inf.components])
    out = {"limit": limit, "threshold": threshold, "n_boot": n_boot}
    for label, sel in (("all", np.ones(len(drops), bool)), ("heads", kinds == "head"), ("mlps", kinds == "mlp")):
        if not sel.any():
            continue
        s = summarise(drops[sel], limit, threshold)
        if n_boot > 0:
            means = boot[:, sel].mean(1)
            s["mean_drop_ci"] = [float(v) for v in np.nanpercentile(means, [2.5, 97.5])]
        worst = int(np.argmax(np.where(sel, drops, -np.inf)))
        s["worst_component"] = inf.components[worst].name
        out[label] = s
    return out
