"""Path patching in the style of Prakash et al. (2024), built on the hook layer.

Level 0 (senders -> logits): for every head s, run the clean prompt with s's output at the FINAL
position replaced (corrupted / mean / zero) while every other head's output is frozen to its clean
value; the metric change is the effect of s that reaches the logits without passing through another
attention head (MLPs recompute unless ``freeze_mlps``). The strongest heads form receiver group 0.

Level n >= 1 (senders -> receivers' q/k/v): for every head s earlier than the receivers,
  (a) run clean with s replaced (all positions) and every other head frozen; record the receivers'
      query / key / value inputs (``attn.hook_q/k/v``);
  (b) run clean with ONLY those receiver inputs patched to the values recorded in (a).
The metric change is the effect of s that flows through the receivers' chosen inputs. The strongest
senders become the next receiver group. Under grouped-query attention, patching a receiver's key or
value patches its key/value head, which every query head of that group reads (documented policy).
Receiver queries of group 0 are patched at the final position (those heads act there); keys, values
and deeper groups' queries at every position.

All senders of a level go through the batched per-row head masks (one sender per row group).
Scores are relative changes (M - M_clean) / |M_clean|, as everywhere in ``circuits``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from tqdm.auto import tqdm

from ..models.hooks import HookedLM, Intervention, hook_name
from ..tasks.batching import encode_items
from ..tasks.metrics import final_logits, per_item
from ..tasks.schema import TaskItem
from ..tasks.scoring import forward_inputs
from .ablation import all_heads, baseline, check_metric, mean_head_outputs, z_hook
from .patching import relative_scores

COMPONENTS = ("q", "k", "v")


@dataclass
class PathGroup:
    level: int
    component: str  # "logits" or e.g. "qkv", "q"
    receivers: list[tuple[int, int]]
    scores: torch.Tensor  # [n_layers, n_heads] relative scores (NaN: not a sender at this level)
    heads: list[tuple[int, int, float]]  # selected (layer, head, score)


@dataclass
class PathPatchingResult:
    groups: list[PathGroup]
    clean: float
    metric: str
    wall_s: float = 0.0
    info: dict = field(default_factory=dict)

    def union_scores(self, shape: tuple[int, int]) -> torch.Tensor:
        """Score of each selected head in the first group that found it (NaN elsewhere)."""
        out = torch.full(shape, float("nan"))
        for g in self.groups:
            for l, h, s in g.heads:
                if torch.isnan(out[l, h]):
                    out[l, h] = s
        return out

    def level0_scores(self) -> torch.Tensor:
        return self.groups[0].scores


def _select(scores: torch.Tensor, top_k: int | None, threshold: float | None, exclude=()) -> list[tuple[int, int, float]]:
    L, H = scores.shape
    cand = [(l, h, float(scores[l, h])) for l in range(L) for h in range(H)
            if not torch.isnan(scores[l, h]) and (l, h) not in set(exclude)]
    cand.sort(key=lambda t: -abs(t[2]))
    if threshold is not None:
        cand = [c for c in cand if abs(c[2]) >= threshold]
    return cand[:top_k] if top_k is not None else cand


class _Runner:
    """Per item chunk: clean / replacement recordings and batched sender passes."""

    def __init__(self, hooked: HookedLM, chunk: Sequence[TaskItem], metric: str, replacement: str, means, freeze_mlps):
        self.hk, self.metric, self.freeze_mlps = hooked, metric, freeze_mlps
        s = hooked.shape
        self.L, self.H = s.n_layers, s.n_heads
        self.clean = encode_items(hooked.tokenizer, chunk)
        self.inputs = forward_inputs(self.clean)
        self.n, self.p = self.clean["input_ids"].shape
        zs = [z_hook(l) for l in range(self.L)]
        mlps = [hook_name(l, "hook_mlp_out") for l in range(self.L)] if freeze_mlps else []
        with torch.no_grad():
            _, rec = hooked.run(self.inputs, record=zs + mlps, detach=True, logits_to_keep=1)
        self.clean_rec = dict(rec)
        if replacement == "corrupted":
            corr = encode_items(hooked.tokenizer, chunk, corrupted=True)
            with torch.no_grad():
                _, rec = hooked.run(forward_inputs(corr), record=zs, detach=True, logits_to_keep=1)
            self.src = dict(rec)
        elif replacement == "mean":
            self.src = {h: means[h].expand(self.n, self.p, self.H, -1) for h in zs}
        else:
            self.src = {h: torch.zeros_like(self.clean_rec[h]) for h in zs}

    def _rep(self, t: torch.Tensor, g: int) -> torch.Tensor:
        return t.repeat_interleave(g, 0)

    def _frozen_with_senders(self, group: list[tuple[int, int]], sender_pos) -> list[Intervention]:
        g = len(group)
        ivs = []
        for l in range(self.L):
            hk = z_hook(l)
            ivs.append(Intervention(hk, "patch", None, None, self._rep(self.clean_rec[hk], g)))  # freeze all heads
            rows = [j for j, (sl, _) in enumerate(group) if sl == l]
            if rows:
                mask = torch.zeros(g, self.H, dtype=torch.bool)
                for j in rows:
                    mask[j, group[j][1]] = True
                ivs.append(Intervention(hk, "patch", mask.repeat(self.n, 1), sender_pos, self._rep(self.src[hk], g)))
            if self.freeze_mlps:
                mk = hook_name(l, "hook_mlp_out")
                ivs.append(Intervention(mk, "patch", None, None, self._rep(self.clean_rec[mk], g)))
        return ivs

    def _metric(self, inputs_rep: dict, batch_rep: dict, ivs, record=()) -> tuple[torch.Tensor, dict]:
        with torch.no_grad(), self.hk.hooks(record=record, interventions=ivs, detach=True) as rec:
            out = self.hk.model(**inputs_rep, logits_to_keep=1)
        return per_item(self.metric, final_logits(out.logits), batch_rep).float(), dict(rec)

    def direct(self, group: list[tuple[int, int]]) -> torch.Tensor:
        """[n, g] metric with each sender replaced at the final position, all other heads frozen."""
        g = len(group)
        rep = {k: self._rep(v, g) for k, v in self.clean.items()}
        vals, _ = self._metric(forward_inputs(rep), rep, self._frozen_with_senders(group, [-1]))
        return vals.view(self.n, g)

    def through(self, group: list[tuple[int, int]], receivers: list[tuple[int, int]], comps: str,
                q_positions) -> torch.Tensor:
        """[n, g] metric when only the receivers' ``comps`` inputs see each sender's change."""
        g = len(group)
        rep = {k: self._rep(v, g) for k, v in self.clean.items()}
        inputs = forward_inputs(rep)
        shape = self.hk.shape
        record, patches = [], []
        for l in sorted({l for l, _ in receivers}):
            qh = sorted({h for rl, h in receivers if rl == l})
            kvh = sorted({shape.kv_head_of(h) for h in qh})
            for c in comps:
                name = hook_name(l, f"attn.hook_{c}")
                record.append(name)
                patches.append((name, qh if c == "q" else kvh, q_positions if c == "q" else None))
        _, rec = self._metric(inputs, rep, self._frozen_with_senders(group, None), record=record)
        ivs = [Intervention(name, "patch", heads, pos, rec[name]) for name, heads, pos in patches]
        vals, _ = self._metric(inputs, rep, ivs)
        return vals.view(self.n, g)


def path_patching(hooked: HookedLM, items: Sequence[TaskItem], metric: str = "logprob",
                  replacement: Literal["corrupted", "mean", "zero"] = "corrupted", levels: int = 2,
                  top_k: int | None = 5, threshold: float | None = None, components: Sequence[str] = ("qkv",),
                  batch_size: int = 8, rows_per_pass: int | None = None, freeze_mlps: bool = False,
                  means: dict | None = None, progress: bool = True) -> PathPatchingResult:
    """Find receiver groups level by level; ``components`` e.g. ("qkv",) or ("q", "k", "v")."""
    check_metric(metric)
    if replacement not in ("corrupted", "mean", "zero"):
        raise ValueError(f"replacement must be corrupted, mean or zero (got {replacement!r})")
    if levels < 1:
        raise ValueError(f"levels must be >= 1 (got {levels})")
    if top_k is None and threshold is None:
        raise ValueError("give top_k and/or threshold to choose each level's heads")
    for c in components:
        if not c or any(ch not in COMPONENTS for ch in c):
            raise ValueError(f"component {c!r} must be made of q, k and v")
    if replacement == "corrupted" and any(it.corrupted_prompt is None for it in items):
        raise ValueError("replacement='corrupted' needs a corrupted_prompt for every item")
    model = hooked.model
    if model.training:
        raise RuntimeError("call model.eval() first: path patching must not run with dropout")
    if replacement == "mean" and means is None:
        means = mean_head_outputs(hooked, items, batch_size)
    t0 = time.perf_counter()
    L, H = hooked.shape.n_layers, hooked.shape.n_heads
    rpp = rows_per_pass or batch_size
    chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    runners = [_Runner(hooked, c, metric, replacement, means, freeze_mlps) for c in chunks]
    clean = baseline(hooked, items, metric, batch_size)

    def sweep(senders, fn, desc) -> torch.Tensor:
        total = torch.full((L, H), float("nan"))
        acc = torch.zeros(len(senders))
        n_pass = sum(-(-len(senders) // max(1, rpp // r.n)) for r in runners)
        with tqdm(total=n_pass, desc=desc, disable=not progress, leave=False) as bar:
            for r in runners:
                k = max(1, rpp // r.n)
                for st in range(0, len(senders), k):
                    grp = senders[st:st + k]
                    acc[st:st + len(grp)] += fn(r, grp).sum(0)
                    bar.update(1)
        for j, (l, h) in enumerate(senders):
            total[l, h] = acc[j] / len(items)
        return relative_scores(total, clean)

    groups: list[PathGroup] = []
    s0 = sweep(all_heads(hooked), lambda r, g: r.direct(g), "path patching: heads -> logits")
    groups.append(PathGroup(0, "logits", [], s0, _select(s0, top_k, threshold)))
    frontier = [g for g in groups]
    for level in range(1, levels):
        nxt = []
        for rg in frontier:
            receivers = [(l, h) for l, h, _ in rg.heads]
            if not receivers:
                continue
            max_l = max(l for l, _ in receivers)
            senders = [(l, h) for l, h in all_heads(hooked) if l < max_l and (l, h) not in receivers]
            if not senders:
                continue
            qpos = [-1] if rg.level == 0 else None
            for comp in components:
                sc = sweep(senders, lambda r, g, comp=comp, rec=receivers: r.through(g, rec, comp, qpos),
                           f"path patching level {level} via {comp}")
                grp = PathGroup(level, comp, receivers, sc, _select(sc, top_k, threshold))
                groups.append(grp)
                nxt.append(grp)
        frontier = nxt
    return PathPatchingResult(groups, clean, metric, time.perf_counter() - t0,
                              {"replacement": replacement, "levels": levels, "top_k": top_k, "threshold": threshold,
                               "components": list(components), "freeze_mlps": freeze_mlps, "n_items": len(items)})
