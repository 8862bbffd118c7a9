"""Hinton-style logit distillation: KL(teacher_T || student_T) · T² at the final prompt position.

A live teacher gives full-vocabulary logits. A teacher cache keeps only the top-k logits: the teacher
distribution is then the softmax over those k tokens (renormalised) and the student's log-probabilities
are its full-vocabulary log-softmax read at the same k token ids (the usual sparse-KD approximation;
with k = V it is exact).
"""
from __future__ import annotations

import hashlib
import json

import torch
import torch.nn.functional as F


class VocabularyMismatch(ValueError):
    pass


def vocab_fingerprint(tokenizer) -> str:
    """sha256 of the token -> id map (what 'same tokenizer' means for logit distillation)."""
    vocab = tokenizer.get_vocab()
    return hashlib.sha256(json.dumps(sorted(vocab.items(), key=lambda kv: kv[1])).encode()).hexdigest()


def check_same_vocab(teacher_vocab_size: int, student_vocab_size: int, teacher_fp: str | None,
                     student_fp: str | None, teacher_name: str = "teacher", student_name: str = "student") -> None:
    """Raise VocabularyMismatch (before any training) when logits cannot be compared token by token."""
    if teacher_vocab_size != student_vocab_size:
        raise VocabularyMismatch(
            f"logit-kd needs teacher and student to share a vocabulary: {teacher_name} has {teacher_vocab_size} "
            f"output logits, {student_name} has {student_vocab_size}. Use method full-kd (CE on the teacher's "
            "labels, which only needs the answer token) or a student with the teacher's tokenizer.")
    if teacher_fp is not None and student_fp is not None and teacher_fp != student_fp:
        raise VocabularyMismatch(
            f"logit-kd needs teacher and student to share a tokenizer: {teacher_name} and {student_name} have "
            f"{teacher_vocab_size} logits each but map tokens to different ids (vocabulary sha256 "
            f"{teacher_fp[:12]} vs {student_fp[:12]}). Use method full-kd or a student with the teacher's tokenizer.")


def kd_loss_full(student_final: torch.Tensor, teacher_final: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_t || p_s) · T², both [b, V] logits; batch mean."""
    t = temperature
    log_ps = F.log_softmax(student_final.float() / t, -1)
    log_pt = F.log_softmax(teacher_final.float() / t, -1)
    return F.kl_div(log_ps, log_pt, log_target=True, reduction="batchmean") * t * t


def kd_loss_topk(student_final: torch.Tensor, topk_values: torch.Tensor, topk_indices: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """Sparse KD from cached top-k teacher logits ([b, k] values and token ids)."""
    t = temperature
    log_ps = F.log_softmax(student_final.float() / t, -1).gather(1, topk_indices.to(student_final.device).long())
    log_pt = F.log_softmax(topk_values.to(student_final.device).float() / t, -1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * t * t
