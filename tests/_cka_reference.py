"""Linear CKA written out from the HSIC formulas in float64 NumPy, as the reference the implementation is tested
against."""
import numpy as np


def np_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """Biased HSIC (Gretton et al. 2005) or the debiased U-statistic (Song et al. 2012), in float64."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    m = x.shape[0]
    K, L = x @ x.T, y @ y.T

    def hsic_b(A, B):
        H = np.eye(m) - np.ones((m, m)) / m
        return np.trace(A @ H @ B @ H) / (m - 1) ** 2

    def hsic_u(A, B):
        At, Bt = A.copy(), B.copy()
        np.fill_diagonal(At, 0.0)
        np.fill_diagonal(Bt, 0.0)
        one = np.ones((m, 1))
        val = (np.trace(At @ Bt) + (one.T @ At @ one).item() * (one.T @ Bt @ one).item() / ((m - 1) * (m - 2))
               - 2.0 / (m - 2) * (one.T @ At @ Bt @ one).item())
        return val / (m * (m - 3))

    h = hsic_u if debiased else hsic_b
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))
