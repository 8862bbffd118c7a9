"""Component influence (Distilled Circuits): I(c) = |100 · (1 − metric_ablated / metric_clean)|.

Components are every attention head (``L{l}.H{h}``) and every MLP layer (``L{l}.MLP``). Ablation is zero
(the authors' default) or mean (dataset mean of the component's output, padding excluded), over every
position. The metric is the task metric of ``circuitdistill.tasks.metrics`` averaged over items: by default
the logit difference between the answer and the corrupted answer.

Sweeps are batched: each forward pass replicates a chunk of items once per component and ablates a
different component in each replica (heads: a per-row bool head mask on ``blocks.L.attn.hook_z``; MLPs:
a per-row ``rows`` mask on ``blocks.L.hook_mlp_out``). Everything is kept per item so influence, its
bootstrap and the pruning costs can be recomputed on any resample of the items.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from torch import nn

from ..models.arch import get_module
from ..models.hooks import HookedLM, compute_means, hook_name, mean_ablate, zero_ablate
from ..tasks import metrics as task_metrics
from ..tasks.batching import encode_items, model_inputs
from ..tasks.scoring import final_position_logits
from ..tasks.schema import TaskItem
from ..utils import atomic_path

Ablation = Literal["zero", "mean"]
InfluenceMetric = Literal["logit_diff", "logprob", "accuracy"]
INFLUENCE_METRICS = ("logit_diff", "logprob", "accuracy")


@dataclass(frozen=True, order=True)
class Component:
    """One attention head (``head`` set) or one MLP layer (``head is None``)."""

    layer: int
    head: int | None = None

    @property
    def kind(self) -> str:
        return "mlp" if self.head is None else "head"

    @property
    def name(self) -> str:
        return f"L{self.layer}.MLP" if self.head is None else f"L{self.layer}.H{self.head}"

    @staticmethod
    def parse(name: str) -> "Component":
        import re

        m = re.fullmatch(r"L(\d+)\.(?:H(\d+)|MLP)", name)
        if not m:
            raise ValueError(f"bad component name {name!r}; expected L<layer>.H<head> or L<layer>.MLP")
        return Component(int(m.group(1)), None if m.group(2) is None else int(m.group(2)))


def all_components(hooked: HookedLM) -> list[Component]:
    """Every head, then every MLP layer, in layer order."""
    s = hooked.shape
    heads = [Component(l, h) for l in range(s.n_layers) for h in range(s.n_heads)]
    return heads + [Component(l) for l in range(s.n_layers)]


def influence_from_metrics(clean: np.ndarray, ablated: np.ndarray) -> np.ndarray:
    """|100 (1 − mean ablated / mean clean)| per component; ``clean`` [..., N], ``ablated`` [C, ..., N]."""
    c = np.asarray(clean, dtype=np.float64).mean(-1)
    a = np.asarray(ablated, dtype=np.float64).mean(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.abs(100.0 * (1.0 - a / c))


@dataclass
class InfluenceResult:
    components: list[Component]
    clean: np.ndarray  # [N] per-item clean metric
    ablated: np.ndarray  # [C, N] per-item metric with component c ablated
    metric: str
    ablation: str

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.components]

    @property
    def influence(self) -> np.ndarray:
        return influence_from_metrics(self.clean, self.ablated)

    @property
    def signed_drop(self) -> np.ndarray:
        """100 (1 − ablated/clean): positive when ablation hurts."""
        return 100.0 * (1.0 - self.ablated.mean(-1) / self.clean.mean())

    def bootstrap(self, idx: np.ndarray) -> np.ndarray:
        """Influence on resampled items: ``idx`` [B, N] item indices -> [B, C]."""
        clean = self.clean[idx]  # [B, N]
        abl = self.ablated[:, idx]  # [C, B, N]
        return influence_from_metrics(clean, abl).T

    def to_dict(self) -> dict:
        return {"components": self.names, "clean": self.clean, "ablated": self.ablated, "metric": self.metric,
                "ablation": self.ablation}

    @staticmethod
    def from_dict(d: dict) -> "InfluenceResult":
        return InfluenceResult([Component.parse(n) for n in d["components"]], np.asarray(d["clean"]),
                               np.asarray(d["ablated"]), d["metric"], d["ablation"])


def encode_batches(tokenizer, items: Sequence[TaskItem], item_batch: int) -> list[dict]:
    """Each model tokenises the items itself (left padding: position -1 is every row's last prompt token)."""
    return [encode_items(tokenizer, items[i:i + item_batch]) for i in range(0, len(items), item_batch)]


def check_metric_inputs(batches: list[dict], metric: str) -> None:
    if metric not in INFLUENCE_METRICS:
        raise ValueError(f"unknown influence metric {metric!r}; choose from {', '.join(INFLUENCE_METRICS)}")
    if metric == "logit_diff":
        for b in batches:
            if (b["corrupted_answer_ids"] < 0).any():
                raise ValueError("metric logit_diff needs a corrupted_answer on every item; use --metric logprob "
                                 "or --metric accuracy for data without one")


def ablation_means(hooked: HookedLM, batches: list[dict]) -> dict[str, torch.Tensor]:
    """Dataset means of every head output and MLP output (padding excluded), for mean ablation."""
    hooks = [hook_name(l, p) for l in range(hooked.shape.n_layers) for p in ("attn.hook_z", "hook_mlp_out")]
    return compute_means(hooked, [model_inputs(b) for b in batches], hooks)


def _interventions(hooked: HookedLM, groups: Sequence[Sequence[Component]], base: Sequence[Component],
                   n_rep: int, ablation: str, means: dict | None) -> list:
    """Ablate ``base`` in every row and ``groups[g]`` in the rows of replica g (rows are group-major)."""
    s = hooked.shape
    rows = len(groups) * n_rep
    head_mask = torch.zeros(s.n_layers, rows, s.n_heads, dtype=torch.bool)
    mlp_mask = torch.zeros(s.n_layers, rows, dtype=torch.bool)
    for c in base:
        if c.head is None:
            mlp_mask[c.layer, :] = True
        else:
            head_mask[c.layer, :, c.head] = True
    for g, group in enumerate(groups):
        sl = slice(g * n_rep, (g + 1) * n_rep)
        for c in group:
            if c.head is None:
                mlp_mask[c.layer, sl] = True
            else:
                head_mask[c.layer, sl, c.head] = True
    ivs = []
    for l in range(s.n_layers):
        for point, mask, is_head in (("attn.hook_z", head_mask[l], True), ("hook_mlp_out", mlp_mask[l], False)):
            if not mask.any():
                continue
            name = hook_name(l, point)
            sel = {"heads": mask} if is_head else ({} if mask.all() else {"rows": mask})
            if ablation == "zero":
                ivs.append(zero_ablate(name, **sel))
            elif ablation == "mean":
                if means is None:
                    raise ValueError("mean ablation needs the dataset means (influence.ablation_means)")
                ivs.append(mean_ablate(name, means[name], **sel))
            else:
                raise ValueError(f"unknown ablation {ablation!r}; choose zero or mean")
    return ivs


def _layer_list(hooked: HookedLM):
    parent_path, attr = hooked.table.layers.rsplit(".", 1)
    return get_module(hooked.model, parent_path), attr


@torch.no_grad()
def suffix_final_logits(hooked: HookedLM, resid_pre: torch.Tensor, attention_mask: torch.Tensor,
                        start: int) -> torch.Tensor:
    """Final-position logits of the unmodified HF model run from decoder layer ``start`` on, given that layer's
    input ``resid_pre`` [b, p, d] (the layers before it are skipped: they would compute exactly this)."""
    if start == 0 or not hooked.table.runs_layer_suffix:
        raise ValueError("suffix forward needs start > 0 and a family whose table sets runs_layer_suffix")
    parent, attr = _layer_list(hooked)
    layers = getattr(parent, attr)
    try:
        setattr(parent, attr, nn.ModuleList(list(layers)[start:]))
        return final_position_logits(hooked.model, {"inputs_embeds": resid_pre, "attention_mask": attention_mask})
    finally:
        setattr(parent, attr, layers)


def _min_layer(group: Sequence[Component]) -> int:
    return min((c.layer for c in group), default=10**9)


@torch.no_grad()
def metric_under_ablation(hooked: HookedLM, batches: list[dict], groups: Sequence[Sequence[Component]],
                          base: Sequence[Component] = (), metric: str = "logit_diff", ablation: str = "zero",
                          means: dict | None = None, batch_rows: int = 64, progress: bool | str = False,
                          checkpoint: str | Path | None = None, skip_prefix: bool = True) -> np.ndarray:
    """Per-item metric [G, N] with ``base`` ablated everywhere plus group g ablated (an empty group = base only).

    Forward passes hold up to ``batch_rows`` rows: a chunk of groups x the items of one batch. Groups are
    processed in order of their first ablated layer; with ``skip_prefix`` (families with ``runs_layer_suffix``) a chunk
    whose ablations all start at layer L >= 1 runs only layers L.. from the cached clean residual stream
    (exact: nothing before L is changed). With ``checkpoint``, finished groups are saved after every chunk
    and a rerun resumes from them.
    """
    check_metric_inputs(batches, metric)
    n_items = sum(len(b["input_ids"]) for b in batches)
    order = sorted(range(len(groups)), key=lambda g: _min_layer(groups[g]))
    vals_sorted = np.full((len(groups), n_items), np.nan)
    done = 0
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        if state.get("shape") == vals_sorted.shape:
            done = int(state["done"])
            vals_sorted[:done] = state["values"][:done]
    max_items = max(len(b["input_ids"]) for b in batches)
    per_chunk = max(1, batch_rows // max_items)
    device = next(hooked.model.parameters()).device
    base_start = _min_layer(base)
    skip = skip_prefix and hooked.table.runs_layer_suffix
    resid: list[dict[int, torch.Tensor]] = [{} for _ in batches]
    if skip and min(base_start, max((_min_layer(g) for g in groups), default=0)) > 0:
        names = [hook_name(l, "hook_resid_pre") for l in range(1, hooked.shape.n_layers)]
        for i, b in enumerate(batches):
            with hooked.hooks(record=names, detach=True) as rec:
                hooked.model(**{k: v.to(device) for k, v in model_inputs(b).items()})
            resid[i] = {l: rec[hook_name(l, "hook_resid_pre")] for l in range(1, hooked.shape.n_layers)}
    bar = tqdm(total=len(groups), initial=done, disable=not progress,
               desc=progress if isinstance(progress, str) else "ablation sweep", unit="comp")
    for g0 in range(done, len(groups), per_chunk):
        chunk = [groups[g] for g in order[g0:g0 + per_chunk]]
        start = min([base_start] + [_min_layer(g) for g in chunk])
        start = start if (skip and 0 < start < hooked.shape.n_layers) else 0
        col = 0
        for i, b in enumerate(batches):
            n = len(b["input_ids"])
            ivs = _interventions(hooked, chunk, base, n, ablation, means)
            inputs = {k: v.repeat(len(chunk), 1).to(device) for k, v in model_inputs(b).items()}
            rep = {k: v.repeat(len(chunk), *([1] * (v.dim() - 1))) for k, v in b.items()}
            with hooked.hooks(interventions=ivs):
                if start > 0:
                    logits = suffix_final_logits(hooked, resid[i][start].repeat(len(chunk), 1, 1),
                                                 inputs["attention_mask"], start)
                else:
                    logits = final_position_logits(hooked.model, inputs)
            vals = task_metrics.per_item(metric, logits.float(), rep).double().cpu().numpy()
            vals_sorted[g0:g0 + len(chunk), col:col + n] = vals.reshape(len(chunk), n)
            col += n
        bar.update(len(chunk))
        if ckpt is not None:
            _save_ckpt(ckpt, {"shape": vals_sorted.shape, "done": g0 + len(chunk), "values": vals_sorted})
    bar.close()
    out = np.empty_like(vals_sorted)
    out[order] = vals_sorted
    return out


def _save_ckpt(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def component_influence(hooked: HookedLM, batches: list[dict], metric: str = "logit_diff", ablation: str = "zero",
                        components: Sequence[Component] | None = None, means: dict | None = None,
                        batch_rows: int = 64, progress: bool | str = False,
                        checkpoint: str | Path | None = None) -> InfluenceResult:
    """Ablate every component alone (batched) and record the per-item metric, with the clean run first."""
    comps = list(components) if components is not None else all_components(hooked)
    if ablation == "mean" and means is None:
        means = ablation_means(hooked, batches)
    vals = metric_under_ablation(hooked, batches, [[]] + [[c] for c in comps], (), metric, ablation, means,
                                 batch_rows, progress, checkpoint)
    clean, ablated = vals[0], vals[1:]
    if abs(clean.mean()) < 1e-8:
        raise ValueError(f"the clean {metric} averages {clean.mean():.3g} over the items, so relative influence "
                         "is undefined; choose another metric (--metric) or items the model solves")
    return InfluenceResult(comps, clean, ablated, metric, ablation)
