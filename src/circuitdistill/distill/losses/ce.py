"""Cross-entropy at the final prompt position on hard labels (the teacher's predicted token, or gold)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def final_ce(final_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE of ``final_logits`` [b, V] against token ids ``labels`` [b], computed in float32."""
    if final_logits.dim() != 2 or labels.shape != final_logits.shape[:1]:
        raise ValueError(f"final_ce: logits [b, V] and labels [b] expected; got {tuple(final_logits.shape)} and "
                         f"{tuple(labels.shape)}")
    return F.cross_entropy(final_logits.float(), labels.to(final_logits.device).long())
