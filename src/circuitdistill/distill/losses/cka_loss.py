"""Alignment loss: lambda · Σ over pairs (1 − CKA(X_s, X_t)), X = m x d_head head outputs at one position."""
from __future__ import annotations

from typing import Sequence

import torch

from ..cka import cka


def cka_alignment_loss(student_rows: Sequence[torch.Tensor], teacher_rows: Sequence[torch.Tensor], lam: float,
                       debiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (loss, per-pair CKA [n_pairs] detached). Row i of every matrix is the same example."""
    if len(student_rows) != len(teacher_rows) or not student_rows:
        raise ValueError(f"cka_alignment_loss: {len(student_rows)} student and {len(teacher_rows)} teacher matrices; "
                         "need one of each per pair (at least one pair)")
    values = torch.stack([cka(xs, xt.to(xs.device), debiased=debiased) for xs, xt in zip(student_rows, teacher_rows)])
    return lam * (1.0 - values).sum(), values.detach()
