"""Concentration of reliance: Gini, severity tail and worst-5% mean against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from circuitdistill.analysis.concentration import concentration, gini, severity_tail, summarise, worst_fraction_mean
from circuitdistill.analysis.influence import Component, InfluenceResult


def test_gini_hand_values():
    assert gini(np.array([5.0, 5.0, 5.0, 5.0])) == 0.0
    # sum_ij |xi - xj| = 2 * 3 * 10 = 60; 2 n^2 mean = 2 * 16 * 2.5 = 80
    assert gini(np.array([0.0, 0.0, 0.0, 10.0])) == pytest.approx(0.75)
    # ordered differences 1,2,3,1,2,1 (x2) = 20; 2 * 16 * 2.5 = 80
    assert gini(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(0.25)
    assert gini(np.zeros(3)) == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        gini(np.array([1.0, -1.0]))


def test_severity_tail_hand_values():
    # L=100, T=20: (min(L,m)-T)/(L-T) clipped at 0 -> 0, 0, 0.5, 1, 1 -> mean 0.5
    assert severity_tail(np.array([10.0, 20.0, 60.0, 100.0, 150.0])) == pytest.approx(0.5)
    assert severity_tail(np.array([30.0]), limit=50, threshold=10) == pytest.approx(0.5)
    assert severity_tail(np.array([0.0, 19.9])) == 0.0
    with pytest.raises(ValueError, match="L > T"):
        severity_tail(np.array([1.0]), limit=10, threshold=20)


def test_worst_fraction_and_summary():
    d = np.arange(1.0, 41.0)  # 40 drops: worst 5% = top 2 = 40, 39
    assert worst_fraction_mean(d) == pytest.approx(39.5)
    assert worst_fraction_mean(np.array([3.0, 1.0])) == 3.0  # at least one component
    s = summarise(d)
    assert s["worst_drop"] == 40 and s["mean_drop"] == pytest.approx(20.5) and s["n_above_threshold"] == 20


def test_concentration_bootstrap_interval_brackets_mean():
    rng = np.random.default_rng(0)
    clean = 2.0 + rng.normal(0, 0.1, 30)
    ablated = clean[None] * rng.uniform(0.2, 1.0, (6, 1)) + rng.normal(0, 0.05, (6, 30))
    comps = [Component(0, h) for h in range(4)] + [Component(0), Component(1)]
    inf = InfluenceResult(comps, clean, ablated, "logit_diff", "zero")
    out = concentration(inf, n_boot=500, seed=1)
    lo, hi = out["all"]["mean_drop_ci"]
    assert lo <= out["all"]["mean_drop"] <= hi
    assert out["heads"]["n_components"] == 4 and out["mlps"]["n_components"] == 2
    assert out["all"]["worst_drop"] == pytest.approx(inf.influence.max())
    assert out["all"]["worst_component"] == comps[int(np.argmax(inf.influence))].name
    assert out["all"]["gini"] == pytest.approx(gini(inf.influence))
