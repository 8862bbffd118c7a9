"""Activation patching per attention head (exact), with scores normalised the same way for every method.

Directions: ``noising`` runs the CLEAN prompt and patches one head's output from the corrupted
prompt (how much does the head's clean output matter?); ``denoising`` runs the CORRUPTED prompt and
patches in the clean output (TransformerLens' ``get_act_patch_attn_head_out_all_pos`` convention).
Ablation modes (mean / zero / resample) replace the head's output without a corrupted prompt.

Score of head h: (M_h - M_clean) / |M_clean|, the relative change of the mean metric M (for the
denoising direction, M_corrupted takes the place of M_clean). Negative means the replacement hurts
the answer; importance is |score|.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from ..models.hooks import HookedLM
from ..tasks.schema import TaskItem
from .ablation import baseline, head_sweep

Replacement = Literal["corrupted", "mean", "zero", "resample"]


@dataclass
class PatchingResult:
    patched: torch.Tensor  # [n_layers, n_heads] mean metric with the head replaced
    reference: float  # mean metric of the run that is patched into (clean for noising)
    other: float | None  # mean metric of the opposite run (corrupted for noising), when there is one
    metric: str
    mode: str
    positions: str
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def effect(self) -> torch.Tensor:
        return self.patched - self.reference

    @property
    def scores(self) -> torch.Tensor:
        """Relative change (M_h - M_ref) / |M_ref|."""
        denom = abs(self.reference) if self.reference != 0 else 1.0
        return self.effect / denom

    def baseline_dict(self) -> dict[str, float]:
        out = {"reference": self.reference}
        if self.other is not None:
            out["other"] = self.other
        return out


def relative_scores(values: torch.Tensor, reference: float) -> torch.Tensor:
    return (values - reference) / (abs(reference) if reference != 0 else 1.0)


def activation_patching(hooked: HookedLM, items: Sequence[TaskItem], metric: str = "logprob",
                        replacement: Replacement = "corrupted", direction: Literal["noising", "denoising"] = "noising",
                        positions="final", means: dict | None = None, heads=None, batch_size: int = 32,
                        seed: int = 0, progress: bool = True, rows_per_pass: int | None = None) -> PatchingResult:
    """Exact per-head patching sweep (batched across heads; see ``ablation.head_sweep``)."""
    if direction not in ("noising", "denoising"):
        raise ValueError(f"direction must be noising or denoising (got {direction!r})")
    if replacement != "corrupted" and direction == "denoising":
        raise ValueError("denoising patches clean outputs into the corrupted run; use replacement='corrupted'")
    needs_corr = replacement == "corrupted"
    if needs_corr:
        missing = [i for i, it in enumerate(items) if it.corrupted_prompt is None]
        if missing:
            raise ValueError(f"replacement='corrupted' needs a corrupted_prompt for every item; items {missing[:10]} "
                             "have none (use an ablation: mean, zero or resample)")
    mode = ("clean" if direction == "denoising" else "corrupted") if needs_corr else replacement
    t0 = time.perf_counter()
    patched = head_sweep(hooked, items, metric, mode, means, heads, batch_size, positions, seed, progress,
                         rows_per_pass)
    wall = time.perf_counter() - t0
    clean = baseline(hooked, items, metric, batch_size)
    corr = baseline(hooked, items, metric, batch_size, corrupted=True) if needs_corr else None
    ref, other = (corr, clean) if direction == "denoising" else (clean, corr)
    pos = positions if isinstance(positions, str) or positions is None else ",".join(map(str, positions))
    return PatchingResult(patched, ref, other, metric, mode, pos or "all", wall)
