"""Alignment score: a model against itself scores exactly 1 with every pair the identity; a randomly
initialised copy scores clearly lower than a (briefly) trained model against itself."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from circuitdistill.analysis import influence as I
from circuitdistill.analysis.alignment import align, alignment_score, normalise
from circuitdistill.analysis.similarity import Features, match, mlp_similarity, record_features
from circuitdistill.models.hooks import HookedLM
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model

from _analysis_toy import toy_items, trained_tiny

ITEMS = toy_items(12, seed=7)


@pytest.fixture(scope="module")
def tok():
    return gpt2_tokenizer()


def _profile(model, tok):
    hm = HookedLM(model, tok)
    batches = I.encode_batches(tok, ITEMS, 12)
    return I.component_influence(hm, batches, "logprob"), record_features(hm, batches)


@pytest.fixture(scope="module")
def trained(tok):
    return _profile(trained_tiny(), tok)


def test_alignment_score_hand_value():
    # S = [1, 0.5]; Î_S = [0.75, 0.25]; Î_T = [0.5, 0.5] -> mean(1 * 0.75, 0.5 * 0.75) = 0.5625
    assert alignment_score(np.array([1.0, 0.5]), np.array([3.0, 1.0]), np.array([2.0, 2.0])) == pytest.approx(0.5625)
    assert normalise(np.zeros(4)).tolist() == [0.25] * 4
    with pytest.raises(ValueError, match="no matched pairs"):
        alignment_score(np.array([]), np.array([]), np.array([]))


@pytest.mark.parametrize("head_similarity,matching", [("pattern", "greedy"), ("cka", "hungarian")])
def test_model_against_itself_is_one_and_identity(trained, head_similarity, matching):
    inf, feats = trained
    al = align(inf, inf, feats, feats, head_similarity, matching, n_boot=50)
    assert al.score == pytest.approx(1.0, abs=1e-9)
    assert al.ci_low == pytest.approx(1.0, abs=1e-9) and al.ci_high == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_array_equal(al.matched.student, al.matched.teacher)
    assert sorted(al.matched.student.tolist()) == list(range(len(inf.components)))


def test_random_copy_scores_clearly_lower_than_trained_against_itself(trained, tok):
    """Trained = tiny llama after 10 Adam steps on the toy task; random copy = same architecture, another seed."""
    inf, feats = trained
    self_score = align(inf, inf, feats, feats, n_boot=0).score
    r_inf, r_feats = _profile(tiny_model("llama", seed=1), tok)
    for hs in ("pattern", "cka"):
        al = align(inf, r_inf, feats, r_feats, hs, n_boot=100, seed=0)
        assert al.score < 0.8 * self_score, (hs, al.score)
        assert al.ci_high < 0.9, (hs, al.ci_low, al.ci_high)


def test_cross_architecture_matching_stays_within_kinds(tok):
    """Different family, depth and width: every pair is head-head or MLP-MLP and S lies in [0, 1]."""
    t_inf, t_feat = _profile(tiny_model("llama", n_layers=3, n_heads=4), tok)
    s_inf, s_feat = _profile(tiny_model("gemma3_text", n_layers=2, n_heads=2, n_kv_heads=1, d_model=32), tok)
    for matching in ("greedy", "hungarian"):
        al = align(t_inf, s_inf, t_feat, s_feat, "pattern", matching, n_boot=20)
        kinds_s = [s_inf.components[i].kind for i in al.matched.student]
        kinds_t = [t_inf.components[j].kind for j in al.matched.teacher]
        assert kinds_s == kinds_t
        assert 0.0 <= al.score <= 1.0 and np.all((al.matched.similarity >= 0) & (al.matched.similarity <= 1))
        n_pairs = len(al.matched.student)
        assert n_pairs == (6 if matching == "greedy" else 4 + 2)  # student has 4 heads + 2 MLPs


def test_mlp_subspace_similarity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2, 16))
    a = Features(np.zeros((40, 0, 2, 2)), np.zeros((40, 0, 4)), x, 2, 0)
    rot = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    b = Features(a.patterns, a.head_out, x @ rot * 3.0, 2, 0)  # same directions, rotated + rescaled space
    sim = mlp_similarity(a, b, k=3)
    np.testing.assert_allclose(np.diag(sim), 1.0, atol=1e-9)
    c = Features(a.patterns, a.head_out, rng.normal(size=(40, 2, 16)), 2, 0)
    assert mlp_similarity(a, c, k=3).max() < 0.5  # unrelated: about k/N on average
    assert match(np.array([[0.2, 0.9], [0.8, 0.1]])) == [(0, 1), (1, 0)]
