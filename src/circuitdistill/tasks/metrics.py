"""Per-item task metrics from the final-position logits (the single place they are defined).

All functions take ``final_logits`` [batch, vocab] (the logits at position -1 of a left-padded batch)
and a batch from ``tasks.batching.encode_items``.
"""
from __future__ import annotations

from typing import Literal

import torch

Metric = Literal["logit_diff", "logprob", "accuracy", "candidate_accuracy"]
METRICS: tuple[str, ...] = ("logit_diff", "logprob", "accuracy", "candidate_accuracy")


def final_logits(logits: torch.Tensor) -> torch.Tensor:
    """[b, p, V] -> [b, V] at the last position (left padding makes it every row's last token)."""
    return logits[:, -1, :]


def accuracy(final: torch.Tensor, batch: dict) -> torch.Tensor:
    """1.0 where the answer's first token is the argmax over the full vocabulary."""
    return (final.argmax(-1) == batch["answer_ids"].to(final.device)).float()


def candidate_accuracy(final: torch.Tensor, batch: dict) -> torch.Tensor:
    """1.0 where the answer beats every other candidate (falls back to full-vocab accuracy without candidates)."""
    cands = batch["candidate_ids"].to(final.device)
    if cands.shape[1] == 0:
        return accuracy(final, batch)
    scores = final.gather(1, cands.clamp_min(0)).masked_fill(cands < 0, float("-inf"))
    picked = cands.gather(1, scores.argmax(-1, keepdim=True)).squeeze(1)
    return (picked == batch["answer_ids"].to(final.device)).float()


def answer_logprob(final: torch.Tensor, batch: dict) -> torch.Tensor:
    return final.float().log_softmax(-1).gather(1, batch["answer_ids"].to(final.device)[:, None]).squeeze(1)


def logit_diff(final: torch.Tensor, batch: dict) -> torch.Tensor:
    """logit(answer) - logit(corrupted answer); needs corrupted_answer_ids."""
    corr = batch["corrupted_answer_ids"].to(final.device)
    if (corr < 0).any():
        raise ValueError("logit_diff needs a corrupted_answer for every item")
    ans = batch["answer_ids"].to(final.device)
    return final.gather(1, ans[:, None]).squeeze(1) - final.gather(1, corr[:, None]).squeeze(1)


_FNS = {"logit_diff": logit_diff, "logprob": answer_logprob, "accuracy": accuracy,
        "candidate_accuracy": candidate_accuracy}


def per_item(metric: str, final: torch.Tensor, batch: dict) -> torch.Tensor:
    if metric not in _FNS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    return _FNS[metric](final, batch)
