"""Cross-model component similarity and matching (Distilled Circuits).

Two models may differ in architecture, size and tokenizer, so nothing here compares token positions
directly. What is compared, per item (rows = the same data items in both models):

* heads, ``pattern`` (default): cosine similarity of batch-averaged attention patterns. Each model's
  pattern of item i is cropped to its last P query and key positions (the prompts are left padded, so
  these are real tokens), P = the shortest prompt of either model, capped at ``pattern_len``; the crop
  lines up the ends of the prompts, which is where the answer is read out.
* heads, ``cka``: linear CKA between the heads' outputs (``attn.hook_z``) at each item's final token.
* MLPs: similarity of the top-k (k = 3) principal directions of the MLP outputs at each item's final
  token. The directions live in different residual spaces in the two models, so they are compared through
  the items: each direction's scores over the items are the left singular vectors U_k (N x k), and the
  similarity is the mean squared canonical correlation of the two k-dimensional score subspaces,
  ||U_Sᵀ U_T||²_F / k (1 = same directions up to rotation, about k/N for unrelated ones).

Matching pairs each student component with a teacher component of the same kind: ``greedy`` takes the
teacher's best match for every student component (teacher components may be reused), ``hungarian`` is
one-to-one (scipy's linear_sum_assignment), min(n_S, n_T) pairs per kind.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..distill.cka import cka_all_pairs
from ..distill.matching import assign
from ..models.hooks import HookedLM, hook_name
from ..tasks.batching import model_inputs

HeadSimilarity = Literal["pattern", "cka"]
Matching = Literal["greedy", "hungarian"]


@dataclass
class Features:
    """Per-item activations a model contributes to cross-model similarity."""

    patterns: np.ndarray  # [N, L*H, P, P] right-aligned crops of each item's attention pattern
    head_out: np.ndarray  # [N, L*H, d_head] head outputs at each item's final token
    mlp_out: np.ndarray  # [N, L, d_model] MLP outputs at each item's final token
    n_layers: int
    n_heads: int

    def to_dict(self) -> dict:
        return dict(patterns=self.patterns, head_out=self.head_out, mlp_out=self.mlp_out, n_layers=self.n_layers,
                    n_heads=self.n_heads)


@torch.no_grad()
def record_features(hooked: HookedLM, batches: list[dict], pattern_len: int = 32, progress: bool = False) -> Features:
    """One clean pass (eager attention while patterns are recorded) over the item batches."""
    s = hooked.shape
    lengths = torch.cat([b["attention_mask"].sum(1) for b in batches])
    p = int(min(int(lengths.min()), pattern_len))
    names = [hook_name(l, q) for l in range(s.n_layers) for q in ("attn.hook_pattern", "attn.hook_z", "hook_mlp_out")]
    device = next(hooked.model.parameters()).device
    pats, zs, mlps = [], [], []
    for b in tqdm(batches, disable=not progress, desc="record features", unit="batch"):
        with hooked.hooks(record=names, detach=True) as rec:
            hooked.model(**{k: v.to(device) for k, v in model_inputs(b).items()})
        pats.append(torch.stack([rec[hook_name(l, "attn.hook_pattern")][:, :, -p:, -p:] for l in range(s.n_layers)], 1)
                    .flatten(1, 2).float().cpu())
        zs.append(torch.stack([rec[hook_name(l, "attn.hook_z")][:, -1] for l in range(s.n_layers)], 1)
                  .flatten(1, 2).float().cpu())
        mlps.append(torch.stack([rec[hook_name(l, "hook_mlp_out")][:, -1] for l in range(s.n_layers)], 1).float().cpu())
    return Features(torch.cat(pats).numpy(), torch.cat(zs).numpy(), torch.cat(mlps).numpy(), s.n_layers, s.n_heads)


def _weights(n: int, idx: np.ndarray | None) -> np.ndarray:
    """Item weights of a resample (counts / N); uniform without one."""
    return np.full(n, 1.0 / n) if idx is None else np.bincount(idx, minlength=n) / len(idx)


def pattern_similarity(a: Features, b: Features, idx: np.ndarray | None = None) -> np.ndarray:
    """Cosine of batch-averaged, commonly cropped attention patterns: [H_b, H_a] (rows: ``b``'s heads)."""
    p = min(a.patterns.shape[-1], b.patterns.shape[-1])
    n = a.patterns.shape[0]
    if b.patterns.shape[0] != n:
        raise ValueError(f"the two models saw {n} and {b.patterns.shape[0]} items; they must see the same items")
    w = _weights(n, idx)
    ma = np.einsum("n,nhk->hk", w, a.patterns[:, :, -p:, -p:].reshape(n, a.patterns.shape[1], -1).astype(np.float64))
    mb = np.einsum("n,nhk->hk", w, b.patterns[:, :, -p:, -p:].reshape(n, b.patterns.shape[1], -1).astype(np.float64))
    ma /= np.linalg.norm(ma, axis=1, keepdims=True).clip(1e-300)
    mb /= np.linalg.norm(mb, axis=1, keepdims=True).clip(1e-300)
    return np.clip(mb @ ma.T, -1.0, 1.0)


def cka_similarity(a: Features, b: Features, idx: np.ndarray | None = None) -> np.ndarray:
    """Linear CKA (biased, ``distill.cka.cka_all_pairs`` without ε) of final-token head outputs: [H_b, H_a]."""
    rows = slice(None) if idx is None else idx
    x = torch.from_numpy(b.head_out[rows].astype(np.float64))
    y = torch.from_numpy(a.head_out[rows].astype(np.float64))
    return np.clip(cka_all_pairs(x, y, eps=0.0).numpy(), -1.0, 1.0)


def _top_k_scores(x: np.ndarray, k: int, idx: np.ndarray | None) -> np.ndarray:
    """x [N, L, d] -> left singular vectors [L, N', k] of each layer's centered item x feature matrix."""
    if idx is not None:
        x = x[idx]
    x = x.astype(np.float64)
    x = x - x.mean(0, keepdims=True)
    gram = np.einsum("nld,mld->lnm", x, x)
    evals, evecs = np.linalg.eigh(gram)  # ascending
    k = min(k, x.shape[0] - 1)
    u = evecs[:, :, ::-1][:, :, :k]
    keep = evals[:, ::-1][:, :k] > 1e-10 * np.maximum(evals[:, -1:], 1e-300)  # drop null directions
    return u * keep[:, None, :], keep.sum(1)


def mlp_similarity(a: Features, b: Features, k: int = 3, idx: np.ndarray | None = None) -> np.ndarray:
    """Mean squared canonical correlation of the top-k principal score subspaces: [L_b, L_a].

    Normalised by the larger of the two subspaces' ranks, so a rank-deficient layer cannot look identical.
    """
    (ua, ra), (ub, rb) = _top_k_scores(a.mlp_out, k, idx), _top_k_scores(b.mlp_out, k, idx)
    overlap = (np.einsum("inj,mnk->imjk", ub, ua) ** 2).sum((2, 3))
    return np.clip(overlap / np.maximum(np.maximum.outer(rb, ra), 1), 0.0, 1.0)


def match(sim: np.ndarray, method: str = "greedy") -> list[tuple[int, int]]:
    """Pairs (row i of ``sim`` = student component, column j = teacher component).

    Greedy ties (within 1e-12) go to the teacher component at the closest relative position, so a model
    compared with itself matches every component to itself.
    """
    if method not in ("greedy", "hungarian"):
        raise ValueError(f"unknown matching {method!r}; choose greedy or hungarian")
    n_s, n_t = sim.shape
    rel_s = (np.arange(n_s) + 0.5) / n_s
    rel_t = (np.arange(n_t) + 0.5) / n_t
    return assign(-np.asarray(sim), method == "hungarian", tie=lambda i: np.abs(rel_t - rel_s[i]))


@dataclass
class Matched:
    """Matched pairs across both component kinds, indexing each model's component list (heads then MLPs)."""

    student: np.ndarray  # [M] indices into the student's components
    teacher: np.ndarray  # [M] indices into the teacher's components
    similarity: np.ndarray  # [M]


def match_components(teacher: Features, student: Features, head_similarity: str = "pattern",
                     matching: str = "greedy", k: int = 3, idx: np.ndarray | None = None) -> Matched:
    """Heads with heads, MLPs with MLPs; component order is all heads (layer-major) then all MLP layers."""
    if head_similarity == "pattern":
        sh = pattern_similarity(teacher, student, idx)
    elif head_similarity == "cka":
        sh = cka_similarity(teacher, student, idx)
    else:
        raise ValueError(f"unknown head similarity {head_similarity!r}; choose pattern or cka")
    sm = mlp_similarity(teacher, student, k, idx)
    hs, ht = sh.shape
    s_idx, t_idx, sims = [], [], []
    for i, j in match(sh, matching):
        s_idx.append(i), t_idx.append(j), sims.append(sh[i, j])
    for i, j in match(sm, matching):
        s_idx.append(hs + i), t_idx.append(ht + j), sims.append(sm[i, j])
    return Matched(np.array(s_idx), np.array(t_idx), np.array(sims, dtype=np.float64))
