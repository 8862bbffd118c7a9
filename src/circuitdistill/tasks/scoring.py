"""Batched task evaluation: per-item metric vectors plus means with 95% confidence intervals.

Built on ``tasks.batching`` (left padding, so position -1 is every row's final prompt token) and
``tasks.metrics`` (the single definition of each metric). Position ids are computed from the
attention mask, so a left-padded row sees exactly the positions it would see alone (this matters for
absolute position embeddings such as GPT-2's; rotary models are shift-invariant anyway).

The per-item vectors are kept (``EvalResult.per_item``) because later steps compare two models on the
same items with paired tests (McNemar on the 0/1 correctness vectors).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..models.hooks import HookedLM, on_model_device
from . import metrics as M
from .batching import encode_items, left_padded_position_ids, model_inputs
from .schema import TaskItem

Interventions = Sequence | Callable[[dict], Sequence] | None
BINARY = ("accuracy", "candidate_accuracy")


def forward_inputs(batch: dict) -> dict:
    """What the HF forward takes, with left-padding-aware position ids: an ``encode_items`` batch carries them;
    a batch without them gets ``left_padded_position_ids`` of its attention mask."""
    if "position_ids" in batch:
        return model_inputs(batch)
    return {**{k: batch[k] for k in ("input_ids", "attention_mask")},
            "position_ids": left_padded_position_ids(batch["attention_mask"])}


_TAKES_LOGITS_TO_KEEP: dict[type, bool] = {}


def final_position_logits(model, inputs: dict) -> torch.Tensor:
    """[b, V] logits at the final position for the forward arguments ``inputs`` (moved to the model's device);
    asks the model for only that position when its forward takes ``logits_to_keep``."""
    inputs = on_model_device(inputs, model)
    if _TAKES_LOGITS_TO_KEEP.get(type(model), True):
        try:
            return M.final_logits(model(**inputs, logits_to_keep=1).logits)
        except TypeError as e:
            if "logits_to_keep" not in str(e):
                raise
            _TAKES_LOGITS_TO_KEEP[type(model)] = False
    return M.final_logits(model(**inputs).logits)


def wilson_ci(k: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (well behaved at 0 and 1)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(x: torch.Tensor) -> tuple[float, float]:
    """Student-t 95% interval of the mean."""
    from scipy import stats

    n = x.numel()
    if n < 2:
        return (float("nan"), float("nan"))
    m = x.double().mean().item()
    se = x.double().std(unbiased=True).item() / math.sqrt(n)
    t = float(stats.t.ppf(0.975, n - 1))
    return (m - t * se, m + t * se)


@dataclass
class EvalResult:
    """Per-item metric tensors ([n] each, in item order) and their summary."""

    accuracy: torch.Tensor
    candidate_accuracy: torch.Tensor
    logprob: torch.Tensor
    logit_diff: torch.Tensor | None = None
    wall_s: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.accuracy.numel())

    @property
    def per_item(self) -> dict[str, torch.Tensor]:
        out = {"accuracy": self.accuracy, "candidate_accuracy": self.candidate_accuracy, "logprob": self.logprob}
        if self.logit_diff is not None:
            out["logit_diff"] = self.logit_diff
        return out

    def summary(self) -> dict:
        """{"n", metric: {"mean", "ci95": [lo, hi]}}; Wilson intervals for 0/1 metrics, t intervals otherwise."""
        out: dict = {"n": self.n}
        for name, v in self.per_item.items():
            mean = v.double().mean().item() if self.n else float("nan")
            ci = wilson_ci(v.sum().item(), self.n) if name in BINARY else mean_ci(v)
            out[name] = {"mean": mean, "ci95": [ci[0], ci[1]]}
        return out

    def to_json(self, per_item: bool = True) -> dict:
        d = {"summary": self.summary(), "wall_s": self.wall_s, **self.info}
        if per_item:
            d["per_item"] = {k: v.tolist() for k, v in self.per_item.items()}
        return d


def format_summary(s: dict) -> str:
    rows = [f"n = {s['n']}"]
    for k, v in s.items():
        if k == "n":
            continue
        rows.append(f"{k:<19} {v['mean']:8.4f}   95% CI [{v['ci95'][0]:.4f}, {v['ci95'][1]:.4f}]")
    return "\n".join(rows)


@torch.no_grad()
def evaluate(model, tokenizer, items: Sequence[TaskItem], batch_size: int = 32, interventions: Interventions = None,
             progress: bool = False, hooked=None) -> EvalResult:
    """Score ``items`` in left-padded batches; returns per-item vectors and a summary with 95% CIs.

    ``interventions``: None, a list of ``hooks.Intervention`` (same for every batch), or a callable
    ``batch -> list[Intervention]`` (e.g. a mean-ablation whose per-row selection depends on the batch).
    They are installed with ``HookedLM.hooks`` around each batch and always removed.
    Logit difference is filled only when every item has a corrupted answer.
    """
    items = list(items)
    if not items:
        raise ValueError("no items to evaluate")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    was_training = model.training
    model.eval()
    if interventions is not None and hooked is None:
        hooked = HookedLM(model, tokenizer)
    has_corr = all(it.corrupted_answer is not None for it in items)
    acc, cacc, lp, ld = [], [], [], []
    t0 = time.perf_counter()
    try:
        starts = range(0, len(items), batch_size)
        for i in tqdm(starts, desc="evaluate", unit="batch", disable=not progress):
            batch = encode_items(tokenizer, items[i:i + batch_size])
            if interventions is None:
                final = final_position_logits(model, forward_inputs(batch))
            else:
                ivs = interventions(batch) if callable(interventions) else interventions
                with hooked.hooks(interventions=ivs):
                    final = final_position_logits(model, forward_inputs(batch))
            final = final.float().cpu()
            acc.append(M.accuracy(final, batch))
            cacc.append(M.candidate_accuracy(final, batch))
            lp.append(M.answer_logprob(final, batch))
            if has_corr:
                ld.append(M.logit_diff(final, batch))
    finally:
        if was_training:
            model.train()
    return EvalResult(accuracy=torch.cat(acc), candidate_accuracy=torch.cat(cacc), logprob=torch.cat(lp),
                      logit_diff=torch.cat(ld) if has_corr else None, wall_s=time.perf_counter() - t0,
                      info={"batch_size": batch_size})
