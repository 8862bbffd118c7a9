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

from ..models.hooks import HookedLM, compute_means, hook_name, mean_ablate, on_model_device, zero_ablate
from ..models.resume import LayerCalls, record_layer_calls, run_from_layer
from ..tasks import metrics as task_metrics
from ..tasks.batching import encode_items, model_inputs
from ..tasks.scoring import final_position_logits, forward_inputs
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
                   n_items: int, ablation: str, means: dict | None) -> list:
    """Ablate ``base`` in every row and ``groups[g]`` in the rows of replica g (row r: item r // G, group r % G,
    the order ``run_from_layer`` continues recorded rows in)."""
    s = hooked.shape
    head_mask = torch.zeros(s.n_layers, len(groups), s.n_heads, dtype=torch.bool)
    mlp_mask = torch.zeros(s.n_layers, len(groups), dtype=torch.bool)
    for g, group in [(slice(None), base)] + list(enumerate(groups)):
        for c in group:
            if c.head is None:
                mlp_mask[c.layer, g] = True
            else:
                head_mask[c.layer, g, c.head] = True
    ivs = []
    for l in range(s.n_layers):
        for point, mask, is_head in (("attn.hook_z", head_mask[l], True), ("hook_mlp_out", mlp_mask[l], False)):
            if not mask.any():
                continue
            name = hook_name(l, point)
            rows = mask.repeat(n_items, *([1] * (mask.dim() - 1)))
            sel = {"heads": rows} if is_head else ({} if rows.all() else {"rows": rows})
            if ablation == "zero":
                ivs.append(zero_ablate(name, **sel))
            elif ablation == "mean":
                if means is None:
                    raise ValueError("mean ablation needs the dataset means (influence.ablation_means)")
                ivs.append(mean_ablate(name, means[name], **sel))
            else:
                raise ValueError(f"unknown ablation {ablation!r}; choose zero or mean")
    return ivs


def _min_layer(group: Sequence[Component]) -> int:
    return min((c.layer for c in group), default=10**9)


@torch.no_grad()
def metric_under_ablation(hooked: HookedLM, batches: list[dict], groups: Sequence[Sequence[Component]],
                          base: Sequence[Component] = (), metric: str = "logit_diff", ablation: str = "zero",
                          means: dict | None = None, batch_rows: int = 64, progress: bool | str = False,
                          checkpoint: str | Path | None = None, skip_prefix: bool = True) -> np.ndarray:
    """Per-item metric [G, N] with ``base`` ablated everywhere plus group g ablated (an empty group = base only).

    Forward passes hold up to ``batch_rows`` rows: a chunk of groups x the items of one batch. Groups are
    processed in order of their first ablated layer; with ``skip_prefix`` the clean pass of each item batch
    runs once with every decoder layer's call kept (``models.resume``), and a chunk whose ablations all start
    at layer L runs only layers L.. (exact: nothing before L is changed). With ``checkpoint``, finished groups
    are saved after every chunk and a rerun resumes from them.
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
    calls: list[LayerCalls | None] = [None] * len(batches)
    bar = tqdm(total=len(groups), initial=done, disable=not progress,
               desc=progress if isinstance(progress, str) else "ablation sweep", unit="comp")
    for g0 in range(done, len(groups), per_chunk):
        chunk = [groups[g] for g in order[g0:g0 + per_chunk]]
        start = min([_min_layer(base), hooked.shape.n_layers - 1] + [_min_layer(g) for g in chunk])
        col = 0
        for i, b in enumerate(batches):
            n, k = len(b["input_ids"]), len(chunk)
            rep = {key: v.repeat_interleave(k, 0) for key, v in b.items()}
            if skip_prefix and calls[i] is None:
                calls[i] = record_layer_calls(hooked, on_model_device(forward_inputs(b), hooked.model))
            with hooked.hooks(interventions=_interventions(hooked, chunk, base, n, ablation, means)):
                if skip_prefix:
                    logits = run_from_layer(hooked, calls[i], start, times=k)
                else:
                    logits = final_position_logits(hooked.model, forward_inputs(rep))
            vals = task_metrics.per_item(metric, logits.float(), rep).double().cpu().numpy()
            vals_sorted[g0:g0 + k, col:col + n] = vals.reshape(n, k).T
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
