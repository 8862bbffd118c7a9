"""Pair student heads with the teacher circuit's heads; pairing.json I/O.

By ablation effects (``by="ablation"``): mean-ablate every student head and every teacher circuit head and
take each head's effect, e(h) = metric(base) - metric(h ablated), so a positive effect means the ablation
HURTS the task. ``metric`` is continuous by default (answer log-prob), not accuracy on a few dozen items.

* ``baseline="own"`` (default): each model's effects are taken against its own baseline and then
  ``normalise``-d per model (``share``: divided by the mean positive effect of the heads being compared, so a
  robust teacher whose heads each matter little is on the student's scale; ``rank``: the quantile of the
  effect among those heads; ``none``). The distance is |e_s - e_t| on the normalised effects.
* ``baseline="student"`` is the rule as the paper states it: the teacher's effects are measured against the
  STUDENT's base, e_t = P_s(base) - P_t(h ablated). Then P_s(base) cancels from |e_s - e_t|, and whenever the
  teacher beats the student by more than any single head's effect every student head maps to the teacher head
  whose ablation hurts the teacher most. Kept for reproduction; ``pairing.json`` warns when it collapses.

By activation similarity (``by="cka"``): distance = 1 - debiased CKA of the two heads' outputs at ``position``.
By identity (``by="identity"``, same architecture only): student L.H is paired with teacher L.H for every
circuit head.

Which student heads get a partner (ablation): the relevant ones, whose ablation hurts (e_s > threshold), most
harmful first, at most ``budget``. Each then takes its nearest teacher head (many-to-one, ties broken towards
the larger teacher effect) or, with ``assignment="hungarian"``, a one-to-one minimum-cost assignment. A cost
matrix of the form a_i + b_j makes every assignment cost the same; ``pairing.json`` warns when that happens.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..circuits.ablation import baseline, head_ablation_sweep, mean_head_outputs
from ..circuits.circuit import Circuit
from ..models.hooks import HookedLM, hook_name, on_model_device
from ..models.registry import load_model
from ..tasks.batching import batches
from ..tasks.io import load_items
from ..tasks.scoring import forward_inputs
from ..utils import (UserError, provenance, read_json_file, save_figure_atomic, seed_everything, sha256_file,
                     write_json_atomic)
from .cka import cka


class Pair(BaseModel):
    model_config = ConfigDict(extra="allow")

    student: tuple[int, int] = Field(..., description="(layer, head) of the student head")
    teacher: tuple[int, int] = Field(..., description="(layer, head) of its teacher partner")
    distance: float | None = Field(None, description="matching distance (|dP_s - dP_t| or 1 - CKA)")


class Pairing(BaseModel):
    model_config = ConfigDict(extra="allow")

    pairs: list[Pair] = Field(..., min_length=1)
    student_model: str | None = None
    teacher_model: str | None = None

    @property
    def student_heads(self) -> list[tuple[int, int]]:
        return [p.student for p in self.pairs]

    @property
    def teacher_heads(self) -> list[tuple[int, int]]:
        """The distinct teacher partners."""
        return sorted({p.teacher for p in self.pairs})

    @property
    def circuit(self) -> list[tuple[int, int]]:
        """The whole teacher circuit the pairing was drawn from (the partners when the file does not say)."""
        heads = (self.model_extra or {}).get("teacher_heads")
        return sorted({tuple(map(int, h)) for h in heads}) if heads else self.teacher_heads


def load_pairing(path: str | Path) -> Pairing:
    p = Path(path)
    raw = read_json_file(p, "pairing file", "; make one with: circuitdistill match ...")
    try:
        pairing = Pairing(**raw)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise UserError(f"{p}: not a valid pairing file:\n" + "\n".join(lines)) from None
    seen = set()
    for i, pair in enumerate(pairing.pairs):
        if pair.student in seen:
            raise UserError(f"{p}: pairs.{i}: student head L{pair.student[0]}.H{pair.student[1]} appears twice; "
                             "each student head has one teacher partner")
        seen.add(pair.student)
    return pairing


def pairing_warnings(pairs: list[dict], n_teacher_heads: int, dpt=None, cost=None) -> list[str]:
    """Say when a pairing cannot mean what it claims: collapsed onto one teacher head (the alignment loss would
    pull many student heads towards one representation), tied teacher effects, or a one-to-one cost matrix
    under which every assignment costs the same."""
    from collections import Counter


    counts = Counter(tuple(p["teacher"]) for p in pairs)
    out = []
    (top, n_top), = counts.most_common(1)
    if n_teacher_heads > 1 and len(pairs) >= 4 and n_top > len(pairs) / 2:
        out.append(f"{n_top} of {len(pairs)} student heads pair with one teacher head, L{top[0]}.H{top[1]} "
                   f"({len(counts)} distinct partners of {n_teacher_heads} circuit heads)")
    n_values = len({round(float(v), 9) for v in dpt}) if dpt is not None else None
    if n_values is not None and n_teacher_heads > 1 and n_values <= 2:
        out.append(f"the teacher circuit's ablation effects take only {n_values} "
                   "distinct value(s): the distances cannot tell its heads apart. Use a continuous metric "
                   "(metric='logprob'), by='cka' or by='identity'")
    if cost is not None and additive_cost(np.asarray(cost)):
        out.append("the one-to-one cost matrix is a row term plus a column term: every assignment costs the "
                   "same, so the assignment is arbitrary (typical of baseline='student'); use baseline='own'")
    return out


def additive_cost(cost, tol: float = 1e-9) -> bool:
    """True when cost[i, j] = a[i] + b[j] (every one-to-one assignment of the rows then costs the same)."""
    if cost.shape[0] < 2 or cost.shape[1] < 2:
        return False
    resid = cost - cost.mean(1, keepdims=True) - cost.mean(0, keepdims=True) + cost.mean()
    return bool(np.abs(resid).max() <= tol * max(1.0, float(np.abs(cost).max())))


def normalise_effects(effects, how: str):
    """Per-model normalisation of ablation effects (positive = the ablation hurts); see the module doc."""
    from scipy.stats import rankdata

    e = np.asarray(effects, dtype=float)
    if how == "none" or e.size == 0:
        return e
    if how == "share":
        pos = e[e > 0]
        scale = pos.mean() if pos.size else np.abs(e).mean()
        return e / scale if scale > 0 else e
    if how == "rank":
        return (rankdata(e) - 1) / max(1, e.size - 1)
    raise ValueError(f"normalise={how!r}: use none, share or rank")


def _budget(cfg, n_total: int) -> int:
    n = int(round(cfg.budget * n_total)) if cfg.budget < 1 else int(cfg.budget)
    return max(1, min(n, n_total))


def assign(cost, one_to_one: bool, tie=None) -> list[tuple[int, int]]:
    """Each row of ``cost`` [rows, cols] with a column: the cheapest one, ties within 1e-12 going to the column
    with the smallest ``tie(row)`` value (default: the first), or, ``one_to_one``, scipy's minimum-cost assignment
    (min(rows, cols) pairs). Returns [(row, col)] in row order."""
    cost = np.asarray(cost, dtype=float)
    if one_to_one:
        from scipy.optimize import linear_sum_assignment  # deferred: scipy loads only for one-to-one matching

        rows, cols = linear_sum_assignment(cost)
        return [(int(r), int(c)) for r, c in sorted(zip(rows, cols))]
    out = []
    for i in range(cost.shape[0]):
        best = np.flatnonzero(cost[i] <= cost[i].min() + 1e-12)
        out.append((i, int(best[np.argmin(tie(i)[best])] if tie is not None else best[0])))
    return out


def pair_heads(dist, order_key, candidates, budget: int, assignment: str, teacher_effect=None):
    """Choose student heads and partners from a distance matrix.

    ``dist`` [n_student, n_teacher] (numpy), ``candidates``: student row indices that may be paired,
    ``order_key(i)``: sort key for filling the budget; ``teacher_effect`` [n_teacher] breaks distance ties
    towards the larger effect (else the first column). Returns [(student_row, teacher_col)].
    """
    chosen = sorted(candidates, key=order_key)[:budget]
    if not chosen:
        return []
    tie = None if teacher_effect is None else (lambda _: -np.asarray(teacher_effect, dtype=float))
    return [(chosen[r], c) for r, c in assign(np.asarray(dist)[chosen], assignment == "hungarian", tie)]


def pairs_from_effects(e_s, e_t, cfg, budget: int):
    """Ablation-effect matching on given effects (student [n_s], teacher circuit [n_t], positive = hurts).

    Returns (pairs [(student_row, teacher_col)], distance matrix on the normalised effects, normalised student
    effects, normalised teacher effects). The student's relevant heads (raw effect above the threshold) are
    chosen first; normalisation then runs over the heads actually compared.
    """
    e_s, e_t = np.asarray(e_s, dtype=float), np.asarray(e_t, dtype=float)
    candidates = [i for i in range(e_s.size) if e_s[i] > cfg.relevance_threshold]
    compared = sorted(candidates, key=lambda i: (-e_s[i], i))[:budget] if cfg.select == "relevance" else candidates
    if cfg.baseline == "student":  # the paper's literal rule: raw effects on one shared (student) baseline
        ns, nt = e_s, e_t
    else:
        ns = np.zeros_like(e_s)
        ns[compared] = normalise_effects(e_s[compared], cfg.normalise)
        nt = normalise_effects(e_t, cfg.normalise)
    dist = np.abs(ns[:, None] - nt[None, :])
    if cfg.select == "relevance":
        key = lambda i: (-e_s[i], dist[i].min(), i)  # noqa: E731
    else:
        key = lambda i: (dist[i].min(), -e_s[i], i)  # noqa: E731
    return pair_heads(dist, key, compared, budget, cfg.assignment, teacher_effect=e_t), dist, ns, nt


@torch.no_grad()
def _head_rows(hooked, items, layers, position: int, batch_size: int) -> dict[int, torch.Tensor]:
    """layer -> [n_items, n_heads, d_head] head outputs at ``position``."""
    out: dict[int, list] = {l: [] for l in layers}
    for b in batches(hooked.tokenizer, items, batch_size):
        with hooked.hooks(record=[hook_name(l, "attn.hook_z") for l in layers], detach=True) as rec:
            hooked.model(**on_model_device(forward_inputs(b), hooked.model), logits_to_keep=1)
        for l in layers:
            out[l].append(rec[hook_name(l, "attn.hook_z")][:, position].float())
    return {l: torch.cat(v) for l, v in out.items()}


def match(cfg, progress: bool = True) -> Pairing:
    """Run the matching of ``cfg`` (a MatchConfig); writes pairing.json and pairing.png to ``cfg.out``."""
    import time


    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    items = load_items(cfg.data)
    if cfg.max_items:
        items = items[:cfg.max_items]
    circuit = Circuit.load(cfg.circuit)
    teacher, t_tok = load_model(cfg.teacher, device=cfg.device, dtype=cfg.dtype)
    student, s_tok = load_model(cfg.student, device=cfg.device, dtype=cfg.dtype)
    th, sh = HookedLM(teacher, t_tok), HookedLM(student, s_tok)
    if (circuit.n_layers, circuit.n_heads_per_layer) != (th.shape.n_layers, th.shape.n_heads):
        raise ValueError(f"{cfg.circuit} describes a model with {circuit.n_layers} layers x "
                         f"{circuit.n_heads_per_layer} heads, but teacher {cfg.teacher} has {th.shape.n_layers} x "
                         f"{th.shape.n_heads}; was the circuit found on another model?")
    t_heads = circuit.as_list()
    if not t_heads:
        raise ValueError(f"{cfg.circuit} lists no heads")
    if cfg.by == "identity" and (sh.shape.n_layers, sh.shape.n_heads) != (th.shape.n_layers, th.shape.n_heads):
        raise ValueError(f"by=identity pairs student L.H with teacher L.H and needs one architecture; the student "
                         f"has {sh.shape.n_layers} x {sh.shape.n_heads} heads, the teacher {th.shape.n_layers} x "
                         f"{th.shape.n_heads}. Use by=ablation or by=cka")
    s_heads = [(l, h) for l in range(sh.shape.n_layers) for h in range(sh.shape.n_heads)]
    budget = _budget(cfg, len(s_heads))
    timing: dict[str, float] = {}
    record: dict = {}
    t0 = time.perf_counter()
    cost = None
    if cfg.by == "ablation":
        e_s, e_t, s_base, t_base = _ablation_effects(cfg, sh, th, items, t_heads, timing, progress)
        ref = s_base if cfg.baseline == "student" else t_base
        dpt = ref - (t_base - e_t)  # effect against the chosen reference baseline
        chosen, dist, ns, nt = pairs_from_effects(e_s, dpt, cfg, budget)
        if cfg.assignment == "hungarian" and chosen:
            rows = sorted({i for i, _ in chosen})
            cost = dist[rows]
        dps = e_s
        record.update({"metric": cfg.metric, "student_base": s_base, "teacher_base": t_base, "reference_base": ref,
                       "dP_student_grid": e_s.reshape(sh.shape.n_layers, sh.shape.n_heads).tolist(),
                       "dP_teacher": {f"L{l}.H{h}": float(v) for (l, h), v in zip(t_heads, dpt)},
                       "normalised_teacher": {f"L{l}.H{h}": float(v) for (l, h), v in zip(t_heads, nt)}})
        if not chosen:
            raise ValueError(f"no student head is relevant: no ablation hurt the {cfg.metric} by more than "
                             f"relevance_threshold={cfg.relevance_threshold} on {len(items)} items; lower the "
                             "threshold or use more items (max_items)")
    elif cfg.by == "cka":
        s_rows = _head_rows(sh, items, range(sh.shape.n_layers), cfg.position, cfg.batch_size)
        t_rows = _head_rows(th, items, sorted({l for l, _ in t_heads}), cfg.position, cfg.batch_size)
        deb = cfg.estimator == "debiased"
        sim = np.array([[cka(s_rows[ls][:, hs], t_rows[lt][:, ht], debiased=deb).item() for lt, ht in t_heads]
                        for ls, hs in s_heads])
        timing["cka_s"] = time.perf_counter() - t0
        dist = 1.0 - sim
        dps = dpt = None
        chosen = pair_heads(dist, lambda i: (dist[i].min(), s_heads[i]), range(len(s_heads)), budget,
                            cfg.assignment)
    else:
        dist = np.ones((len(s_heads), len(t_heads)))
        for j, hd in enumerate(t_heads):
            dist[s_heads.index(hd), j] = 0.0
        dps = dpt = None
        chosen = [(s_heads.index(hd), j) for j, hd in enumerate(t_heads)]  # the whole circuit; no budget
    pairs = []
    for i, j in chosen:
        p = {"student": list(s_heads[i]), "teacher": list(t_heads[j]), "distance": float(dist[i, j])}
        if dps is not None:
            p.update({"dP_student": float(dps[i]), "dP_teacher": float(dpt[j])})
        elif cfg.by == "cka":
            p["cka"] = float(1.0 - dist[i, j])
        pairs.append(p)
    warns = pairing_warnings(pairs, len(t_heads), dpt, cost)
    for w in warns:
        warnings.warn(f"matching: {w}", stacklevel=2)
    doc = {"format": 2, "pairs": pairs, "student_model": cfg.student, "teacher_model": cfg.teacher,
           "warnings": warns, "rule": {k: getattr(cfg, k) for k in ("by", "metric", "baseline", "normalise",
                                                                      "assignment", "select")},
           "teacher_heads": [list(h) for h in t_heads], "n_student_heads": len(s_heads),
           "n_pairs": len(pairs), "budget": budget, "n_items": len(items),
           "data_sha256": sha256_file(cfg.data), "circuit_sha256": sha256_file(cfg.circuit),
           "distance_matrix": {"rows": "student heads (layer-major)", "cols": "teacher_heads",
                               "values": np.round(dist, 6).tolist()},
           "timing_s": timing, **record, **provenance(cfg.seed, cfg)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "pairing.json", doc)
    _plot(out / "pairing.png", doc, sh.shape, s_heads, t_heads, dist, cfg)
    return Pairing(**doc)


def _ablation_effects(cfg, sh, th, items, t_heads, timing: dict, progress: bool):
    """Own-baseline effects e = metric(base) - metric(head mean-ablated): every student head [n_s] and the
    teacher circuit heads [n_t], plus both baselines. Means are per position when ``cfg.per_position_means``
    (as the circuit-only evaluation ablates)."""
    import time


    pos = None if cfg.ablation_positions == "all" else "final"
    out = []
    for hooked, heads in ((sh, None), (th, [list(h) for h in t_heads])):
        t0 = time.perf_counter()
        means = mean_head_outputs(hooked, items, batch_size=cfg.batch_size, per_position=cfg.per_position_means)
        base = baseline(hooked, items, cfg.metric, cfg.batch_size)
        abl = head_ablation_sweep(hooked, items, cfg.metric, "mean", means, heads=heads, batch_size=cfg.batch_size,
                                  positions=pos, progress=progress)
        hs = heads or [(l, h) for l in range(hooked.shape.n_layers) for h in range(hooked.shape.n_heads)]
        out.append((np.array([base - float(abl[l, h]) for l, h in hs]), base))
        timing["student_sweep_s" if heads is None else "teacher_sweep_s"] = time.perf_counter() - t0
    (e_s, s_base), (e_t, t_base) = out
    return e_s, e_t, s_base, t_base


def _plot(path: Path, doc: dict, shape, s_heads, t_heads, dist, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    if "dP_student_grid" in doc:
        grid = np.array(doc["dP_student_grid"])
        lim = max(1e-6, np.abs(grid).max())
        im = ax.imshow(grid.T, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
        fig.colorbar(im, ax=ax, label=f"dP_s ({cfg.metric} drop when mean-ablated)")
    else:
        best = (1 - dist.min(1)).reshape(shape.n_layers, shape.n_heads)
        im = ax.imshow(best.T, cmap="viridis", aspect="auto", origin="lower")
        fig.colorbar(im, ax=ax, label="best CKA with a teacher circuit head" if cfg.by == "cka"
                     else "1: same head as a teacher circuit head")
    for p in doc["pairs"]:
        ax.scatter(p["student"][0], p["student"][1], marker="s", s=60, facecolors="none", edgecolors="k")
    ax.set_xlabel("student layer")
    ax.set_ylabel("student head")
    ax.set_title(f"student heads; squares: the {len(doc['pairs'])} paired")
    ax = axes[1]
    rows = [s_heads.index(tuple(p["student"])) for p in doc["pairs"]]
    sub = dist[rows]
    im = ax.imshow(sub, cmap="magma_r", aspect="auto")
    fig.colorbar(im, ax=ax, label="distance" + {"ablation": " |e_s - e_t| (normalised)", "cka": " 1 - CKA",
                                                 "identity": " (0: same head)"}[cfg.by])
    for r, p in enumerate(doc["pairs"]):
        ax.scatter(t_heads.index(tuple(p["teacher"])), r, marker="x", color="cyan", s=40)
    ax.set_xticks(range(len(t_heads)), [f"L{l}.H{h}" for l, h in t_heads], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [f"L{p['student'][0]}.H{p['student'][1]}" for p in doc["pairs"]], fontsize=7)
    ax.set_xlabel("teacher circuit head")
    ax.set_title(f"paired student heads x teacher heads ({cfg.assignment}); x = partner")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
