"""Loss terms: small objects that a method (``distill/methods.py``) sums with weights.

Each term declares the DistillConfig fields it reads (``reads``: they key cached stages and resumes) and what
the training step must compute for it (``needs``): ``head_rows`` (the matched heads' outputs at ``position``
over the global batch, student and teacher) or ``counterfactual`` (the student's and the teacher's outputs
under the interchange of the matched heads). ``value`` returns the unweighted loss and what to log.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cka import cka
from .ce import final_ce
from .kd import kd_loss_full, kd_loss_topk
from .procrustes import procrustes_similarity


@dataclass
class StepInputs:
    """What one training step offers the terms (student tensors keep their gradients)."""

    final: torch.Tensor                              # student final-position logits [b, V]
    labels: torch.Tensor                             # CE targets [b] (teacher's prediction or gold)
    teacher_logits: torch.Tensor | None = None       # live teacher [b, V]
    teacher_topk: tuple | None = None                # cached teacher (values, ids) [b, k]
    student_rows: torch.Tensor | None = None         # [m, n_pairs, d_s], global batch
    teacher_rows: torch.Tensor | None = None         # [m, n_pairs, d_t]
    cf_final: torch.Tensor | None = None             # student logits under the interchange [b, V]
    cf_teacher: torch.Tensor | tuple | None = None   # teacher's, [b, V] live or (values, ids) [b, k] cached


class LossTerm:
    name: str = ""
    reads: tuple[str, ...] = ()
    needs: frozenset[str] = frozenset()

    def value(self, x: StepInputs, cfg) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


class CrossEntropy(LossTerm):
    name, reads = "ce", ("label_source",)

    def value(self, x, cfg):
        return final_ce(x.final, x.labels), {}


class LogitKD(LossTerm):
    name, reads = "kd", ("kd_temperature",)

    def value(self, x, cfg):
        if x.teacher_logits is not None:
            return kd_loss_full(x.final, x.teacher_logits.to(x.final.device), cfg.kd_temperature), {}
        return kd_loss_topk(x.final, *x.teacher_topk, cfg.kd_temperature), {}


class _PairTerm(LossTerm):
    """Sum (or mean, ``lam_reduction``) over pairs of (1 - similarity) between paired heads' rows."""

    needs = frozenset({"head_rows"})

    def similarity(self, xs: torch.Tensor, xt: torch.Tensor, cfg) -> torch.Tensor:
        raise NotImplementedError

    def value(self, x, cfg):
        s, t = x.student_rows, x.teacher_rows.to(x.student_rows.device)
        sims = torch.stack([self.similarity(s[:, i], t[:, i], cfg) for i in range(s.shape[1])])
        loss = (1.0 - sims).sum() if cfg.lam_reduction == "sum" else (1.0 - sims).mean()
        return loss, {"pair_similarity": sims.detach()}


class CKAAlignment(_PairTerm):
    name, reads = "cka", ("estimator", "lam_reduction", "position")

    def similarity(self, xs, xt, cfg):
        return cka(xs, xt, debiased=cfg.estimator == "debiased")


class ProcrustesAlignment(_PairTerm):
    name, reads = "procrustes", ("lam_reduction", "position")

    def similarity(self, xs, xt, cfg):
        return procrustes_similarity(xs, xt)


class Interchange(LossTerm):
    """KL(teacher || student) of the final-position distributions under the interchange (temperature 1). From a
    cache holding the teacher's top-k logits both distributions are restricted to those k tokens and
    renormalised, so a student that matches the teacher has zero loss at any k."""

    name, needs = "iit", frozenset({"counterfactual"})

    def value(self, x, cfg):
        if isinstance(x.cf_teacher, torch.Tensor):
            return kd_loss_full(x.cf_final, x.cf_teacher.to(x.cf_final.device), 1.0), {}
        values, ids = (t.to(x.cf_final.device) for t in x.cf_teacher)
        log_ps = F.log_softmax(x.cf_final.float().gather(1, ids.long()), -1)
        log_pt = F.log_softmax(values.float(), -1)
        return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean(), {}


TERMS: dict[str, LossTerm] = {t.name: t for t in (CrossEntropy(), LogitKD(), CKAAlignment(), ProcrustesAlignment(),
                                                   Interchange())}
