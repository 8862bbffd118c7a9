"""Iterative pruning never removes a component whose ablation costs T or more."""
from __future__ import annotations

import numpy as np
import pytest

from circuitdistill.analysis import influence as I
from circuitdistill.analysis.pruning import jaccard, prune, threshold_sweep
from circuitdistill.models.hooks import HookedLM
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model

from _analysis_toy import toy_items


@pytest.fixture(scope="module")
def setup():
    tok = gpt2_tokenizer()
    hm = HookedLM(tiny_model("llama", n_layers=2, seed=3), tok)
    batches = I.encode_batches(tok, toy_items(6), 6)
    inf = I.component_influence(hm, batches, "logprob")
    return hm, batches, inf


def test_pruning_guarantee(setup):
    hm, batches, inf = setup
    infl = inf.influence
    t_pct = float(np.percentile(infl, 60))  # some components above, some below
    res = prune(hm, batches, inf, threshold=t_pct, max_rounds=5)
    removed = {c.name for c in res.removed}
    assert removed and len(res.circuit) > 0
    by_name = dict(zip(inf.names, infl))
    for name in removed:
        assert by_name[name] < t_pct, f"{name} cost {by_name[name]} on the clean model but was removed"
        assert res.removal_cost[name] < t_pct, f"{name} cost {res.removal_cost[name]} when it was removed"
    for name, v in by_name.items():
        if v >= t_pct:
            assert name in {c.name for c in res.circuit}
    assert res.stable and res.rounds[-1]["removed"] == 0
    assert len(res.rounds) >= 2  # round 1 from the clean influence, then at least one marginal round
    assert np.isfinite(res.retained_metric_pct)


def test_threshold_sweep_and_jaccard(setup):
    hm, batches, inf = setup
    lo, mid, hi = (float(np.percentile(inf.influence, q)) for q in (30, 50, 80))
    sw = threshold_sweep(hm, batches, inf, thresholds=[lo, hi], reference=mid, max_rounds=3)
    rows = {r["threshold"]: r for r in sw["sweep"]}
    assert rows[mid]["jaccard_to_reference"] == 1.0
    assert rows[lo]["size"] >= rows[hi]["size"]
    assert all(0.0 <= r["jaccard_to_reference"] <= 1.0 for r in sw["sweep"])
    assert jaccard(["a", "b"], ["b", "c"]) == pytest.approx(1 / 3) and jaccard([], []) == 1.0
    with pytest.raises(ValueError, match="threshold"):
        prune(hm, batches, inf, threshold=0)
