"""Cross-model head similarity by CKA: entry (i, j) is the CKA, by the HSIC formula, of the second model's head i
and the first model's head j over the items (or a bootstrap resample of them)."""
import numpy as np

from _cka_reference import np_cka
from circuitdistill.analysis.similarity import Features, cka_similarity


def _features(rng, n_items: int, n_heads: int, d_head: int) -> Features:
    head_out = rng.normal(size=(n_items, n_heads, d_head)).astype(np.float32)
    return Features(patterns=np.zeros((n_items, n_heads, 2, 2)), head_out=head_out,
                    mlp_out=np.zeros((n_items, 1, 4)), n_layers=1, n_heads=n_heads)


def test_head_cka_is_the_hsic_formula_per_pair_on_the_resampled_items():
    rng = np.random.default_rng(0)
    a, b = _features(rng, 24, 3, 5), _features(rng, 24, 4, 7)
    b.head_out[:, 1] = a.head_out[:, 2] @ rng.normal(size=(5, 7))
    for idx in (None, rng.integers(0, 24, size=24)):
        rows = slice(None) if idx is None else idx
        got = cka_similarity(a, b, idx)
        want = np.array([[np_cka(b.head_out[rows, i], a.head_out[rows, j], debiased=False) for j in range(3)]
                         for i in range(4)])
        assert got.shape == (4, 3)
        np.testing.assert_allclose(got, want, atol=1e-9)
