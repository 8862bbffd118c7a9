"""analysis/similarity.py computes CKA for every head pair at once; it must agree with distill/cka.py, the one the
loss uses, pair by pair (also on a bootstrap resample of the items)."""
import numpy as np
import torch

from circuitdistill.analysis.similarity import Features, cka_similarity
from circuitdistill.distill.cka import cka


def _features(rng, n_items: int, n_heads: int, d_head: int) -> Features:
    head_out = rng.normal(size=(n_items, n_heads, d_head))
    head_out[:, 0] *= 1e3  # scale must not matter
    return Features(patterns=np.zeros((n_items, n_heads, 2, 2)), head_out=head_out,
                    mlp_out=np.zeros((n_items, 1, 4)), n_layers=1, n_heads=n_heads)


def test_all_pairs_cka_equals_the_loss_cka_per_pair():
    rng = np.random.default_rng(0)
    a, b = _features(rng, 24, 3, 5), _features(rng, 24, 4, 7)
    b.head_out[:, 1] = a.head_out[:, 2] @ rng.normal(size=(5, 7))  # one linearly related pair
    for idx in (None, rng.integers(0, 24, size=24)):
        rows = slice(None) if idx is None else idx
        got = cka_similarity(a, b, idx)
        want = np.array([[float(cka(torch.from_numpy(b.head_out[rows, i]), torch.from_numpy(a.head_out[rows, j])))
                          for j in range(3)] for i in range(4)])
        assert got.shape == (4, 3)
        np.testing.assert_allclose(got, want, atol=1e-9)
