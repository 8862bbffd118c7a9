"""Orthogonal-Procrustes similarity of two representations of the same m examples.

Both m x d matrices are centered per column and scaled to unit Frobenius norm; then, for equal widths,
min over orthogonal R of ||X R - Y||_F^2 = 2 - 2 * ||X^T Y||_* (the nuclear norm). For different widths the
nuclear norm is the largest tr(R^T X^T Y) over semi-orthogonal maps R between the widths. The similarity lies in
[0, 1] and is 1 exactly when one representation is a rotation (and scaling) of the other, a stricter demand
than CKA's.
"""
from __future__ import annotations

import torch


def _unit(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float() if x.dtype != torch.float64 else x
    x = x - x.mean(0, keepdim=True)
    return x / torch.sqrt(x.pow(2).sum() + eps)


def procrustes_similarity(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """||X^T Y||_* of the centered, unit-norm matrices (rows are examples); float32 or float64."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"procrustes: two [m, d] matrices with the same m expected; got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    xu, yu = _unit(x, eps), _unit(y.to(x.device), eps)
    return torch.linalg.svdvals(xu.T @ yu.to(xu.dtype)).sum()
