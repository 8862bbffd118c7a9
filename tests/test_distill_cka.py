"""CKA: formula against a direct float64 NumPy evaluation, invariances, estimator bias, degenerate inputs."""
import numpy as np
import pytest
import torch

import circuitdistill
from _cka_reference import np_cka
from circuitdistill.distill.cka import DEFAULT_EPS, CKAAccumulator, cka, cka_all_pairs


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("m,d1,d2", [(8, 5, 3), (32, 64, 64), (50, 16, 7)])
def test_matches_numpy_formula(debiased, m, d1, d2):
    rng = np.random.default_rng(m + d1)
    x = rng.normal(size=(m, d1)) * 2.0 + rng.normal(size=d1)  # uncentered on purpose
    y = np.tanh(x @ rng.normal(size=(d1, d2))) + 0.5 * rng.normal(size=(m, d2)) + 3.0
    ref = np_cka(x, y, debiased)
    got64 = cka(torch.from_numpy(x), torch.from_numpy(y), debiased=debiased)
    got32 = cka(torch.from_numpy(x).float(), torch.from_numpy(y).float(), debiased=debiased)
    assert got64.dim() == 0 and got64.dtype == torch.float64 and got32.dtype == torch.float32
    assert got64.item() == pytest.approx(ref, abs=1e-10)
    assert got32.item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("eps", [DEFAULT_EPS, 0.0])
def test_all_pairs_equals_the_numpy_formula_for_every_pair(eps):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 3, 5)) + rng.normal(size=(3, 5))
    y = rng.normal(size=(24, 4, 7))
    x[:, 0] *= 1e3  # scale must not matter
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    y[:, 1] = np.pad(x[:, 2] @ q * 2.5, ((0, 0), (0, 2)))  # the same representation, rotated and rescaled
    y[:, 3] = 1.0  # a constant component: CKA 0, not NaN
    got = cka_all_pairs(torch.from_numpy(x), torch.from_numpy(y), eps=eps)
    assert got.shape == (3, 4) and got.dtype == torch.float64
    want = np.array([[np_cka(x[:, a], y[:, b], debiased=False) if b != 3 else 0.0 for b in range(4)]
                     for a in range(3)])
    np.testing.assert_allclose(got.numpy(), want, atol=1e-10)
    assert got[2, 1].item() == pytest.approx(1.0, abs=1e-10)
    pair = cka(torch.from_numpy(x[:, 1]), torch.from_numpy(y[:, 2]), eps=eps)
    assert got[1, 2].item() == pytest.approx(pair.item(), abs=1e-12)


def test_all_pairs_without_eps_keeps_a_near_constant_component_identical_to_itself():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(1.0 + 1e-9 * rng.normal(size=(16, 2, 4)))
    assert cka_all_pairs(x, x, eps=0.0).diagonal().tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    assert cka_all_pairs(x, x)[0, 0].item() < 0.5  # the default ε treats it as constant


def test_low_precision_inputs_are_computed_in_float32():
    x = torch.randn(16, 8).bfloat16()
    assert cka(x, x * 2).dtype == torch.float32


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(debiased):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 10, generator=g, dtype=torch.float64)
    y = x[:, :6] @ torch.randn(6, 6, generator=g, dtype=torch.float64) + torch.randn(24, 6, generator=g,
                                                                                      dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    base = cka(x, y, debiased=debiased)
    assert cka(x @ q, y, debiased=debiased).item() == pytest.approx(base.item(), abs=1e-10)
    assert cka(x * 37.5, y * 1e-3, debiased=debiased).item() == pytest.approx(base.item(), abs=1e-10)
    assert cka(x, x, debiased=debiased).item() == pytest.approx(1.0, abs=1e-10)


def test_debiased_removes_the_small_batch_inflation():
    g = torch.Generator().manual_seed(1)
    biased, debiased = [], []
    for _ in range(100):
        x, y = torch.randn(32, 64, generator=g), torch.randn(32, 64, generator=g)
        biased.append(cka(x, y).item())
        debiased.append(cka(x, y, debiased=True).item())
    assert np.mean(np.abs(debiased)) < 0.05
    assert np.mean(biased) > 0.2  # the known inflation of the biased estimator at m=32
    assert min(biased) > max(np.abs(debiased))


@pytest.mark.parametrize("debiased", [False, True])
def test_constant_inputs_give_a_defined_value_and_gradient(debiased):
    x = torch.ones(16, 4, requires_grad=True)
    y = torch.randn(16, 3, requires_grad=True)
    for a, b in [(x, y), (y, x), (x, x * 3)]:
        v = cka(a, b, debiased=debiased)
        assert torch.isfinite(v) and v.item() == 0.0
        v.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(10, 5, generator=g, dtype=torch.float64)
    for deb in (False, True):
        assert torch.autograd.gradcheck(lambda a: cka(a, y, debiased=deb), (x,))


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match="rows"):
        cka(torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="at least 4"):
        cka(torch.randn(3, 3), torch.randn(3, 3), debiased=True)
    with pytest.raises(ValueError, match="2-d"):
        cka(torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError, match="components"):
        cka_all_pairs(torch.randn(5, 3), torch.randn(5, 2, 3))


@pytest.mark.parametrize("debiased", [False, True])
def test_accumulator_exact_equals_cka_over_all_rows(debiased):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(203, 9, generator=g, dtype=torch.float64) * 5 + 100.0  # large offset: stability check
    y = x[:, :4] ** 2 + torch.randn(203, 4, generator=g, dtype=torch.float64)
    acc = CKAAccumulator(debiased=debiased)
    for i in range(0, 203, 17):
        acc.update(x[i:i + 17], y[i:i + 17])
    assert acc.n == 203
    assert acc.compute().item() == pytest.approx(cka(x, y, debiased=debiased).item(), abs=1e-9)


def test_accumulator_minibatch_mode_is_an_average_of_batch_hsics():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 6, generator=g, dtype=torch.float64)
    y = x + 0.1 * torch.randn(64, 6, generator=g, dtype=torch.float64)
    acc = CKAAccumulator(debiased=True, mode="minibatch")
    for i in range(0, 64, 16):
        acc.update(x[i:i + 16], y[i:i + 16])
    v = acc.compute().item()
    assert 0.9 < v <= 1.0 + 1e-9


def test_exported_from_package_root():
    assert circuitdistill.cka is cka
