"""Linear centered kernel alignment (CKA) between two sets of representations.

Rows are examples: ``x`` is m x d1, ``y`` is m x d2 (the same m examples, any feature widths).

With K = X Xᵀ, L = Y Yᵀ and H = I − 11ᵀ/m:

* biased HSIC (Gretton et al. 2005):  HSIC_b(K, L) = tr(K H L H) / (m − 1)²
* debiased HSIC, the U-statistic of Song et al. (2012), as used for CKA by Nguyen et al. (2021):
  with K̃, L̃ the Gram matrices with their diagonals set to zero,
  HSIC_u(K, L) = [ tr(K̃ L̃) + (1ᵀK̃1)(1ᵀL̃1) / ((m − 1)(m − 2)) − 2/(m − 2) · 1ᵀK̃L̃1 ] / (m (m − 3))

CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L) + ε).

Numerics:

* computed in float32, or float64 when an input is float64 (bf16/fp16 inputs are promoted);
* both HSIC estimators are invariant to translating X or Y, so the inputs are first centered per column and
  rescaled to unit RMS (CKA is invariant to isotropic scaling). This makes ε a *relative* guard: it does not
  depend on the activations' scale, and it only matters when a representation is (near) constant;
* the ε under the square root keeps constant or degenerate inputs defined (their CKA is 0) and differentiable;
  the result is never clamped, so the debiased estimator can (correctly) be slightly negative.

``cka_all_pairs`` evaluates the biased estimator for every pair of components of two stacks at once (the
cross-model head similarity of ``analysis.similarity``).

At m = 32 the biased estimator is inflated on independent data (≈ 0.2 or more, growing with d/m); the
debiased one averages ≈ 0. The debiased estimator needs m ≥ 4.
"""
from __future__ import annotations

import torch

DEFAULT_EPS = 1e-12


def _compute_dtype(*ts: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in ts) else torch.float32


def _prepare(x: torch.Tensor, name: str, dtype: torch.dtype, eps: float) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"cka: {name} must be a 2-d matrix [m examples, d features]; got shape {tuple(x.shape)}")
    x = x.to(dtype)
    x = x - x.mean(0, keepdim=True)
    return x / torch.sqrt(x.pow(2).mean() + eps)


def _check_m(m: int, m2: int, debiased: bool) -> None:
    if m != m2:
        raise ValueError(f"cka: x has {m} rows but y has {m2}; rows are examples and must correspond")
    if debiased and m < 4:
        raise ValueError(f"cka: the debiased estimator needs at least 4 examples (rows); got {m}")
    if m < 2:
        raise ValueError(f"cka: needs at least 2 examples (rows); got {m}")


def hsic_biased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """tr(K H L H) / (m − 1)² for m x m Gram matrices."""
    m = k.shape[0]
    h = torch.eye(m, dtype=k.dtype, device=k.device) - 1.0 / m
    return torch.trace(k @ h @ l @ h) / (m - 1) ** 2


def hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Song et al. (2012) U-statistic for m x m Gram matrices (m ≥ 4)."""
    m = k.shape[0]
    kt = k - torch.diag_embed(torch.diagonal(k))
    lt = l - torch.diag_embed(torch.diagonal(l))
    ones = torch.ones(m, 1, dtype=k.dtype, device=k.device)
    term1 = (kt * lt).sum()  # tr(K̃ L̃) (both symmetric)
    term2 = kt.sum() * lt.sum() / ((m - 1) * (m - 2))
    term3 = 2.0 / (m - 2) * (ones.T @ kt @ lt @ ones).squeeze()
    return (term1 + term2 - term3) / (m * (m - 3))


def cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Differentiable linear CKA of ``x`` [m, d1] and ``y`` [m, d2]; returns a 0-d tensor.

    ``debiased=True`` uses the unbiased HSIC estimator (recommended at small m). ``eps`` guards the square root
    so constant inputs give 0 instead of NaN; the value is never clamped.
    """
    _check_m(x.shape[0] if x.dim() else 0, y.shape[0] if y.dim() else 0, debiased)
    dtype = _compute_dtype(x, y)
    xs, ys = _prepare(x, "x", dtype, eps), _prepare(y, "y", dtype, eps)
    k, l = xs @ xs.T, ys @ ys.T
    hsic = hsic_unbiased if debiased else hsic_biased
    return hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l) + eps)


def _nonzero(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.ones_like(x))


def _component_grams(x: torch.Tensor, name: str, dtype: torch.dtype, eps: float) -> torch.Tensor:
    """[m, C, d] -> Gram matrices [C, m, m] of each component, prepared as ``cka`` prepares one input."""
    if x.dim() != 3:
        raise ValueError(f"cka_all_pairs: {name} must be [m examples, components, d features]; got {tuple(x.shape)}")
    x = x.to(dtype)
    x = x - x.mean(0, keepdim=True)
    x = x / _nonzero(torch.sqrt(x.pow(2).mean((0, 2), keepdim=True) + eps))
    return torch.einsum("nad,mad->anm", x, x)


def cka_all_pairs(x: torch.Tensor, y: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Biased CKA of every pair of components: ``x`` [m, A, d1], ``y`` [m, B, d2] -> [A, B], entry (a, b) equal
    to ``cka(x[:, a], y[:, b], eps=eps)``. Centered inputs make H K H = K, so HSIC_b(K, L) = <K, L>_F / (m − 1)².

    ``eps=0`` guards only exactly constant components (CKA 0): a near-constant component is then compared as it is,
    so every component has CKA exactly 1 with itself, where the default ε pulls it towards 0.
    """
    _check_m(x.shape[0], y.shape[0], False)
    dtype = _compute_dtype(x, y)
    kx, ky = _component_grams(x, "x", dtype, eps), _component_grams(y, "y", dtype, eps)
    d = (x.shape[0] - 1) ** 2
    kl = torch.einsum("anm,bnm->ab", kx, ky) / d
    kk, ll = kx.pow(2).sum((1, 2)) / d, ky.pow(2).sum((1, 2)) / d
    return kl / _nonzero(torch.sqrt(torch.outer(kk, ll) + eps))


class CKAAccumulator:
    """Accumulate rows minibatch by minibatch and return CKA over everything seen (for evaluation).

    ``mode="exact"`` (default) keeps float64 sufficient statistics (sums, cross-products of the features and
    of the row norms) and returns exactly ``cka(all_x, all_y, debiased)`` without storing the rows: memory is
    O((d1 + d2)²), independent of the number of examples. Both estimators are expressed through
    ||XᵀY||², column sums and per-row squared norms, which stream.

    ``mode="minibatch"`` is the minibatch CKA of Nguyen et al. (2021): HSIC values are averaged over minibatches
    (each must have ≥ 4 rows for the debiased estimator) and the ratio is taken at the end.
    """

    def __init__(self, debiased: bool = False, mode: str = "exact", eps: float = DEFAULT_EPS):
        if mode not in ("exact", "minibatch"):
            raise ValueError(f"CKAAccumulator mode must be 'exact' or 'minibatch'; got {mode!r}")
        self.debiased, self.mode, self.eps = debiased, mode, eps
        self.n = 0
        self._s: dict[str, torch.Tensor] = {}
        self._shift: tuple[torch.Tensor, torch.Tensor] | None = None
        self._hsic = torch.zeros(3, dtype=torch.float64)
        self._batches = 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        _check_m(x.shape[0], y.shape[0], self.debiased and self.mode == "minibatch")
        x, y = x.detach().to(torch.float64).cpu(), y.detach().to(torch.float64).cpu()
        if self.mode == "minibatch":
            xs, ys = _prepare(x, "x", torch.float64, self.eps), _prepare(y, "y", torch.float64, self.eps)
            k, l = xs @ xs.T, ys @ ys.T
            h = hsic_unbiased if self.debiased else hsic_biased
            self._hsic += torch.stack([h(k, l), h(k, k), h(l, l)])
            self._batches += 1
            self.n += x.shape[0]
            return
        if self._shift is None:  # both estimators are translation invariant: shift for numerical stability
            self._shift = (x.mean(0), y.mean(0))
        x, y = x - self._shift[0], y - self._shift[1]
        nx, ny = x.pow(2).sum(1), y.pow(2).sum(1)
        stats = {
            "sx": x.sum(0), "sy": y.sum(0), "xx": x.T @ x, "yy": y.T @ y, "xy": x.T @ y,
            "nx": nx.sum(), "ny": ny.sum(), "nxx": (nx * nx).sum(), "nyy": (ny * ny).sum(), "nxy": (nx * ny).sum(),
            "x_nx": x.T @ nx, "y_ny": y.T @ ny, "x_ny": x.T @ ny, "y_nx": y.T @ nx,
        }
        for k, v in stats.items():
            self._s[k] = self._s[k] + v if k in self._s else v
        self.n += x.shape[0]

    def compute(self) -> torch.Tensor:
        """CKA over all rows seen so far (a float64 0-d tensor)."""
        if self.mode == "minibatch":
            if not self._batches:
                raise ValueError("CKAAccumulator: no batches were added")
            kl, kk, ll = self._hsic / self._batches
            return kl / torch.sqrt(kk * ll + self.eps)
        m = self.n
        _check_m(m, m, self.debiased)
        s = self._s
        # scale each side to unit RMS after centering (as cka() does), so eps has the same meaning
        var_x = (s["nx"] - s["sx"].pow(2).sum() / m) / (m * s["sx"].numel())
        var_y = (s["ny"] - s["sy"].pow(2).sum() / m) / (m * s["sy"].numel())
        ax, ay = 1.0 / torch.sqrt(var_x + self.eps), 1.0 / torch.sqrt(var_y + self.eps)

        def fro2(a: torch.Tensor) -> torch.Tensor:
            return a.pow(2).sum()

        # centered cross-products: Xcᵀ Yc = XᵀY − sx syᵀ / m
        cxy = s["xy"] - torch.outer(s["sx"], s["sy"]) / m
        cxx = s["xx"] - torch.outer(s["sx"], s["sx"]) / m
        cyy = s["yy"] - torch.outer(s["sy"], s["sy"]) / m
        if not self.debiased:
            d = (m - 1) ** 2
            kl, kk, ll = fro2(cxy) / d, fro2(cxx) / d, fro2(cyy) / d
        else:
            def hu(ab, sa, sb, na, nb, nab, a_nb, b_na, sum_na, sum_nb):
                # tr(K̃L̃) = ||AᵀB||² − Σ|a_i|²|b_i|²; 1ᵀK̃1 = |sa|² − Σ|a_i|²;
                # 1ᵀK̃L̃1 = Σ_i (a_i·sa − |a_i|²)(b_i·sb − |b_i|²)
                t1 = fro2(ab) - nab
                t2 = (sa.pow(2).sum() - sum_na) * (sb.pow(2).sum() - sum_nb) / ((m - 1) * (m - 2))
                t3 = sa @ ab @ sb - sa @ a_nb - sb @ b_na + nab
                return (t1 + t2 - 2.0 / (m - 2) * t3) / (m * (m - 3))

            kl = hu(s["xy"], s["sx"], s["sy"], s["nx"], s["ny"], s["nxy"], s["x_ny"], s["y_nx"], s["nx"], s["ny"])
            kk = hu(s["xx"], s["sx"], s["sx"], s["nx"], s["nx"], s["nxx"], s["x_nx"], s["x_nx"], s["nx"], s["nx"])
            ll = hu(s["yy"], s["sy"], s["sy"], s["ny"], s["ny"], s["nyy"], s["y_ny"], s["y_ny"], s["ny"], s["ny"])
        kl, kk, ll = kl * (ax * ay) ** 2, kk * ax ** 4, ll * ay ** 4
        return kl / torch.sqrt(kk * ll + self.eps)
