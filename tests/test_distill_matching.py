"""Head matching: the pairing rules on known distances, and the ablation effects against a direct loop."""
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from circuitdistill.circuits.ablation import mean_head_outputs, per_item_metric
from circuitdistill.circuits.circuit import Circuit, CircuitHead
from circuitdistill.distill.cka import cka
from circuitdistill.distill.config import MatchConfig
from circuitdistill.distill.matching import (additive_cost, load_pairing, match, pair_heads, pairing_warnings,
                                             pairs_from_effects)
from circuitdistill.models.hooks import HookedLM, hook_name, mean_ablate
from circuitdistill.models.registry import load_model
from circuitdistill.tasks.io import load_items
from circuitdistill.tasks.scoring import evaluate

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import make_world  # noqa: E402


def test_nearest_is_many_to_one_and_respects_budget_and_order():
    dist = np.array([[0.1, 0.5], [0.2, 0.9], [0.7, 0.3], [0.05, 0.6]])
    rel = np.array([0.5, 0.1, 0.9, 0.2])
    got = pair_heads(dist, lambda i: -rel[i], range(4), budget=3, assignment="nearest")
    assert got == [(2, 1), (0, 0), (3, 0)]  # largest relevance first; teacher 0 taken twice
    got = pair_heads(dist, lambda i: dist[i].min(), [0, 1, 2], budget=2, assignment="nearest")
    assert got == [(0, 0), (1, 0)]


def test_a_pairing_collapsed_onto_one_teacher_head_is_flagged():
    collapsed = [{"student": [l, 0], "teacher": [3, 1]} for l in range(5)] + [{"student": [5, 0], "teacher": [2, 0]}]
    spread = [{"student": [l, 0], "teacher": [l % 3, 1]} for l in range(6)]
    w = pairing_warnings(collapsed, n_teacher_heads=4)
    assert len(w) == 1 and "5 of 6" in w[0] and "L3.H1" in w[0]
    assert pairing_warnings(spread, n_teacher_heads=4) == []
    ties = pairing_warnings(spread, n_teacher_heads=4, dpt=[0.1, 0.1, 0.1, 0.2])
    assert len(ties) == 1 and "2 distinct" in ties[0]
    assert pairing_warnings(spread, n_teacher_heads=4, dpt=[0.1, 0.2, 0.3, 0.4]) == []


def test_hungarian_is_the_optimal_one_to_one_assignment():
    rng = np.random.default_rng(0)
    dist = rng.random((5, 3))
    got = pair_heads(dist, lambda i: i, range(5), budget=5, assignment="hungarian")
    assert len(got) == 3 and len({t for _, t in got}) == 3
    best = min(sum(dist[r, c] for r, c in zip(rows, range(3)))
               for rows in itertools.permutations(range(5), 3))
    assert sum(dist[r, c] for r, c in got) == pytest.approx(best)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    w = make_world(tmp_path_factory.mktemp("match"), n_items=24)
    circ = Circuit(heads=[CircuitHead(layer=1, head=2, score=0.5), CircuitHead(layer=0, head=3, score=-0.2),
                          CircuitHead(layer=1, head=0, score=0.1)],
                   n_layers=2, n_heads_per_layer=4, method="test", metric="candidate_accuracy")
    w["circuit"] = str(circ.save(w["root"] / "circuit.json"))
    return w


def _direct_drops(model_dir, items, heads, metric="candidate_accuracy"):
    model, tok = load_model(model_dir)
    hooked = HookedLM(model, tok)
    means = mean_head_outputs(hooked, items, batch_size=8)
    base = per_item_metric(hooked, items, metric, 8).mean().item()
    abl = {}
    for l, h in heads:
        ivs = [mean_ablate(hook_name(l, "attn.hook_z"), means[hook_name(l, "attn.hook_z")], heads=[h])]
        abl[(l, h)] = per_item_metric(hooked, items, metric, 8, interventions=ivs).mean().item()
    return base, abl


@pytest.mark.parametrize("baseline", ["student", "own"])
def test_ablation_effects_match_a_direct_loop(world, tmp_path, baseline):
    cfg = MatchConfig(teacher=world["teacher"], student=world["student"], circuit=world["circuit"],
                      data=world["data"], out=str(tmp_path), metric="logprob", budget=3,
                      baseline=baseline, normalise="none", per_position_means=False, batch_size=8, threads=1,
                      ablation_positions="all")
    pairing = match(cfg, progress=False)
    doc = json.loads((tmp_path / "pairing.json").read_text())
    assert (tmp_path / "pairing.png").stat().st_size > 0
    items = load_items(world["data"])
    s_base, s_abl = _direct_drops(world["student"], items, [(l, h) for l in range(2) for h in range(4)], "logprob")
    t_base, t_abl = _direct_drops(world["teacher"], items, [(1, 2), (0, 3), (1, 0)], "logprob")
    assert doc["student_base"] == pytest.approx(s_base, abs=2e-5)
    for l in range(2):
        for h in range(4):
            assert doc["dP_student_grid"][l][h] == pytest.approx(s_base - s_abl[(l, h)], abs=2e-5)
    ref = s_base if baseline == "student" else t_base
    for (l, h), v in t_abl.items():
        assert doc["dP_teacher"][f"L{l}.H{h}"] == pytest.approx(ref - v, abs=2e-5)
    # every pair is the nearest teacher head under |dP_s - dP_t|; only heads whose ablation hurts are paired
    hurting = sorted((s_base - v for v in s_abl.values() if s_base - v > 0), reverse=True)
    assert len(pairing.pairs) == min(3, len(hurting)) > 0
    assert sorted((p["dP_student"] for p in doc["pairs"]), reverse=True) == pytest.approx(hurting[:3], abs=2e-5)
    for p in doc["pairs"]:
        ds = s_base - s_abl[tuple(p["student"])]
        dists = {t: abs(ds - (ref - v)) for t, v in t_abl.items()}
        assert p["distance"] == pytest.approx(min(dists.values()), abs=2e-5)
        assert dists[tuple(p["teacher"])] == pytest.approx(min(dists.values()), abs=2e-5)
    # the file is what training reads
    assert load_pairing(tmp_path / "pairing.json").student_heads == [tuple(p["student"]) for p in doc["pairs"]]
    assert doc["seed"] == 0 and doc["timing_s"]["student_sweep_s"] > 0
    assert doc["warnings"] == pairing_warnings(doc["pairs"], 3, list(doc["dP_teacher"].values()))
    assert doc["rule"]["baseline"] == baseline and doc["format"] == 2


def test_match_by_cka_uses_activation_similarity(world, tmp_path):
    cfg = MatchConfig(teacher=world["teacher"], student=world["student"], circuit=world["circuit"],
                      data=world["data"], out=str(tmp_path), by="cka", budget=0.25, assignment="hungarian",
                      batch_size=8, threads=1)
    pairing = match(cfg, progress=False)
    assert len(pairing.pairs) == 2 and len({p.teacher for p in pairing.pairs}) == 2  # 25% of 8, one-to-one
    # check one pair's distance directly
    items = load_items(world["data"])
    rows = {}
    for name, path in (("s", world["student"]), ("t", world["teacher"])):
        model, tok = load_model(path)
        hooked = HookedLM(model, tok)
        from circuitdistill.tasks.batching import encode_items
        from circuitdistill.tasks.scoring import forward_inputs

        b = encode_items(tok, items)
        with hooked.hooks(record=[hook_name(l, "attn.hook_z") for l in range(2)], detach=True) as rec:
            model(**forward_inputs(b))
        rows[name] = {l: rec[hook_name(l, "attn.hook_z")][:, -1] for l in range(2)}
    p = pairing.pairs[0]
    direct = cka(rows["s"][p.student[0]][:, p.student[1]], rows["t"][p.teacher[0]][:, p.teacher[1]], debiased=True)
    assert 1 - p.distance == pytest.approx(direct.item(), abs=1e-5)


def test_threshold_that_excludes_everything_is_explained(world, tmp_path):
    cfg = MatchConfig(teacher=world["teacher"], student=world["student"], circuit=world["circuit"],
                      data=world["data"], out=str(tmp_path), metric="candidate_accuracy",
                      relevance_threshold=2.0, batch_size=8, threads=1)
    with pytest.raises(ValueError, match="relevance_threshold"):
        match(cfg, progress=False)


# ---- the matching rule on synthetic effects with a known answer ----------------------------------------------
def _rule(**kw):
    base = dict(teacher="t", student="s", circuit="c.json", data="d.jsonl")
    return MatchConfig(**{**base, **kw})


def _synthetic(seed=0, n_t=6, n_extra=10, scale=8.0):
    """Teacher circuit effects (small: a robust teacher) and a student whose true partner of teacher head j is
    student head perm[j] with `scale` times its effect; extra student heads matter less or help."""
    rng = np.random.default_rng(seed)
    e_t = np.sort(rng.uniform(0.005, 0.04, n_t))[::-1].copy()
    perm = rng.permutation(n_t)
    e_s = np.concatenate([np.zeros(n_t), rng.uniform(-0.05, 0.02, n_extra)])
    e_s[perm] = scale * e_t
    return e_s, e_t, {int(perm[j]): j for j in range(n_t)}


@pytest.mark.parametrize("normalise", ["share", "rank"])
def test_default_rule_recovers_the_true_partners(normalise):
    e_s, e_t, truth = _synthetic()
    cfg = _rule(normalise=normalise)
    assert cfg.baseline == "own" and cfg.metric == "logprob"  # the defaults under test
    chosen, dist, _, _ = pairs_from_effects(e_s, e_t, cfg, budget=len(e_t))
    assert dict(chosen) == truth


def test_the_papers_literal_rule_collapses_and_says_so():
    e_s, e_t, truth = _synthetic()
    s_base, t_base = -1.3, -0.1  # the teacher is far better than the student
    dpt = s_base - (t_base - e_t)  # teacher effects measured against the STUDENT's base
    chosen, dist, _, _ = pairs_from_effects(e_s, dpt, _rule(baseline="student"), budget=len(e_t))
    partners = {j for _, j in chosen}
    assert partners == {int(np.argmax(e_t))}  # every student head -> the teacher head whose ablation hurts most
    pairs = [{"student": [i, 0], "teacher": [j, 0]} for i, j in chosen]
    assert any("pair with one teacher head" in w for w in pairing_warnings(pairs, len(e_t), dpt))


def test_hungarian_cost_depends_on_the_assignment_only_under_the_own_baseline():
    e_s, e_t, _ = _synthetic(seed=1)
    s_base, t_base = -1.3, -0.1
    rng = np.random.default_rng(0)
    for cfg, dpt in ((_rule(assignment="hungarian"), e_t),
                     (_rule(assignment="hungarian", baseline="student"), s_base - (t_base - e_t))):
        chosen, dist, _, _ = pairs_from_effects(e_s, dpt, cfg, budget=len(e_t))
        rows = sorted(i for i, _ in chosen)
        costs = {round(float(dist[rows, p].sum()), 9) for p in (rng.permutation(len(e_t)) for _ in range(6))}
        if cfg.baseline == "own":
            assert len(costs) > 1 and not additive_cost(dist[rows])
        else:
            assert len(costs) == 1 and additive_cost(dist[rows])
            assert any("every assignment costs the same" in w for w in
                       pairing_warnings([{"student": [0, 0], "teacher": [0, 0]}], len(e_t), dpt, dist[rows]))


def test_relevance_keeps_only_harmful_heads_and_ties_go_to_the_larger_teacher_effect():
    e_s = np.array([0.3, -0.5, 0.0, 0.1])
    e_t = np.array([0.2, 0.4])
    chosen, _, _, _ = pairs_from_effects(e_s, e_t, _rule(normalise="none"), budget=4)
    assert [i for i, _ in chosen] == [0, 3]  # the helping (-0.5) and inert heads are never chosen
    dist = np.array([[0.1, 0.1]])
    assert pair_heads(dist, lambda i: i, [0], 1, "nearest", teacher_effect=[0.2, 0.4]) == [(0, 1)]


def test_a_teacher_that_is_a_copy_of_the_student_pairs_every_head_with_itself(world, tmp_path):
    circ = Circuit(heads=[CircuitHead(layer=l, head=h, score=0.0) for l in range(2) for h in range(4)],
                   n_layers=2, n_heads_per_layer=4, method="test", metric="logprob")
    path = circ.save(tmp_path / "all.json")
    cfg = MatchConfig(teacher=world["student"], student=world["student"], circuit=str(path), data=world["data"],
                      out=str(tmp_path / "m"), by="ablation", metric="logprob", budget=8, batch_size=8,
                      threads=1)
    pairing = match(cfg, progress=False)
    assert len(pairing.pairs) >= 2
    assert all(p.student == p.teacher for p in pairing.pairs)


def test_identity_pairs_the_circuit_heads_with_themselves(world, tmp_path):
    cfg = MatchConfig(teacher=world["teacher"], student=world["student"], circuit=world["circuit"],
                      data=world["data"], out=str(tmp_path), by="identity", batch_size=8, threads=1)
    pairing = match(cfg, progress=False)
    assert [(p.student, p.teacher) for p in pairing.pairs] == [(h, h) for h in [(1, 2), (0, 3), (1, 0)]]
