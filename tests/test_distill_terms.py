"""Loss terms against direct computations."""
import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes

from circuitdistill.distill.losses.procrustes import procrustes_similarity
from circuitdistill.distill.losses.terms import TERMS, StepInputs
from circuitdistill.distill.methods import METHODS, fields_read


def _unit(x):
    x = x - x.mean(0)
    return x / np.linalg.norm(x)


def test_procrustes_similarity_equals_the_orthogonal_procrustes_residual():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)), rng.normal(size=(32, 6))
    r, _ = orthogonal_procrustes(_unit(x), _unit(y))
    residual = np.linalg.norm(_unit(x) @ r - _unit(y)) ** 2
    sim = procrustes_similarity(torch.tensor(x), torch.tensor(y)).item()
    assert residual == pytest.approx(2 - 2 * sim, abs=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert procrustes_similarity(torch.tensor(x), torch.tensor(3 * x @ q + 1)).item() == pytest.approx(1, abs=1e-10)
    wide = procrustes_similarity(torch.tensor(x), torch.tensor(rng.normal(size=(32, 9)))).item()
    assert 0 < wide < 1


def test_interchange_term_restricted_to_the_top_k_is_zero_for_equal_distributions_and_positive_otherwise():
    logits = torch.randn(4, 50)
    top = logits.topk(8, dim=-1)
    same = StepInputs(final=logits, labels=torch.zeros(4, dtype=torch.long), cf_final=logits,
                      cf_teacher=(top.values, top.indices))
    assert TERMS["iit"].value(same, None)[0].item() == pytest.approx(0, abs=1e-6)
    other = StepInputs(final=logits, labels=torch.zeros(4, dtype=torch.long), cf_final=torch.randn(4, 50),
                       cf_teacher=(top.values, top.indices))
    assert TERMS["iit"].value(other, None)[0].item() > 0.01
    full = StepInputs(final=logits, labels=torch.zeros(4, dtype=torch.long), cf_final=logits, cf_teacher=logits)
    assert TERMS["iit"].value(full, None)[0].item() == pytest.approx(0, abs=1e-6)


def test_every_method_names_registered_terms_and_declares_what_it_reads():
    for name, m in METHODS.items():
        assert all(t in TERMS for t, _ in m.terms), name
    assert "lam" in fields_read("circuit") and "estimator" in fields_read("circuit")
    assert "lam" not in fields_read("circuit-ce") and "iit_weight" in fields_read("circuit-iit")
    assert "random_pool" in fields_read("circuit-random")
