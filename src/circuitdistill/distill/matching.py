"""Pair student heads with the teacher circuit's heads (SPEC §1 step 2); pairing.json I/O.

By ablation effects (paper, default):

* mean-ablate every student head h_s (batched sweep, ``circuits.ablation.head_ablation_sweep``) and take the
  drop dP_s(h_s) = P_s(base) - P_s(h_s ablated);
* mean-ablate every teacher CIRCUIT head h_t: dP_t(h_t) = P_base - P_t(h_t ablated), where P_base is the
  STUDENT's base accuracy (``baseline="student"``, as the paper states it) or the teacher's own
  (``baseline="teacher"``);
* distance D(h_s, h_t) = |dP_s(h_s) - dP_t(h_t)|.

By activation similarity (``by="cka"``): D(h_s, h_t) = 1 - CKA of the two heads' outputs at ``position``
over the items.

Which student heads get a partner: the relevant ones (|dP_s| > ``relevance_threshold``; with the default 0 a
head whose ablation changed nothing is not relevant, so a student without a measurable circuit gets fewer
pairs than the budget rather than arbitrary ones), at most
``budget`` of them (default 15% of the student's heads), largest |dP_s| first (``select="relevance"``;
for by=cka: highest best-CKA first) or smallest distance first (``select="distance"``). Each then takes
its nearest teacher head (many-to-one, paper) or, with ``assignment="hungarian"``, the selected heads and
the teacher heads are paired one-to-one at minimum total distance (``scipy.optimize.linear_sum_assignment``;
at most as many pairs as teacher heads).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..utils import read_json_file


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
        return sorted({p.teacher for p in self.pairs})


def load_pairing(path: str | Path) -> Pairing:
    p = Path(path)
    raw = read_json_file(p, "pairing file", "; make one with: circuitdistill match ...")
    try:
        pairing = Pairing(**raw)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"{p}: not a valid pairing file:\n" + "\n".join(lines)) from None
    seen = set()
    for i, pair in enumerate(pairing.pairs):
        if pair.student in seen:
            raise ValueError(f"{p}: pairs.{i}: student head L{pair.student[0]}.H{pair.student[1]} appears twice; "
                             "each student head has one teacher partner")
        seen.add(pair.student)
    return pairing


def pairing_warnings(pairs: list[dict], n_teacher_heads: int, dpt=None) -> list[str]:
    """Say when a pairing has collapsed onto few teacher heads: the alignment loss would then pull many
    student heads towards one teacher head's representation."""
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
                   "distinct value(s): the distances cannot tell its heads apart, and ties go to the first head. "
                   "Use more items (max_items), by='cka', or assignment='hungarian'")
    return out


def _budget(cfg, n_total: int) -> int:
    n = int(round(cfg.budget * n_total)) if cfg.budget < 1 else int(cfg.budget)
    return max(1, min(n, n_total))


def pair_heads(dist, order_key, candidates, budget: int, assignment: str):
    """Choose student heads and partners from a distance matrix.

    ``dist`` [n_student, n_teacher] (numpy), ``candidates``: student row indices that may be paired,
    ``order_key(i)``: sort key for filling the budget. Returns [(student_row, teacher_col)].
    """
    import numpy as np

    chosen = sorted(candidates, key=order_key)[:budget]
    if not chosen:
        return []
    if assignment == "nearest":
        return [(i, int(np.argmin(dist[i]))) for i in chosen]
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(dist[chosen])
    return sorted(((chosen[r], int(c)) for r, c in zip(rows, cols)), key=lambda rc: chosen.index(rc[0]))


@torch.no_grad()
def _head_rows(hooked, items, layers, position: int, batch_size: int) -> dict[int, torch.Tensor]:
    """layer -> [n_items, n_heads, d_head] head outputs at ``position``."""
    from ..models.hooks import hook_name
    from ..tasks.batching import batches
    from ..tasks.scoring import forward_inputs

    out: dict[int, list] = {l: [] for l in layers}
    for b in batches(hooked.tokenizer, items, batch_size):
        with hooked.hooks(record=[hook_name(l, "attn.hook_z") for l in layers], detach=True) as rec:
            hooked.model(**forward_inputs(b), logits_to_keep=1)
        for l in layers:
            out[l].append(rec[hook_name(l, "attn.hook_z")][:, position].float())
    return {l: torch.cat(v) for l, v in out.items()}


def match(cfg, progress: bool = True) -> Pairing:
    """Run the matching of ``cfg`` (a MatchConfig); writes pairing.json and pairing.png to ``cfg.out``."""
    import time

    import numpy as np

    from ..circuits.circuit import Circuit
    from ..models.hooks import HookedLM
    from ..models.registry import load_model
    from ..tasks.io import load_items
    from ..utils import provenance, seed_everything, sha256_file, write_json_atomic
    from .cka import cka

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    items = load_items(cfg.data)
    if cfg.max_items:
        items = items[:cfg.max_items]
    circuit = Circuit.load(cfg.circuit)
    teacher, t_tok = load_model(cfg.teacher)
    student, s_tok = load_model(cfg.student)
    th, sh = HookedLM(teacher, t_tok), HookedLM(student, s_tok)
    if (circuit.n_layers, circuit.n_heads_per_layer) != (th.shape.n_layers, th.shape.n_heads):
        raise ValueError(f"{cfg.circuit} describes a model with {circuit.n_layers} layers x "
                         f"{circuit.n_heads_per_layer} heads, but teacher {cfg.teacher} has {th.shape.n_layers} x "
                         f"{th.shape.n_heads}; was the circuit found on another model?")
    t_heads = circuit.as_list()
    if not t_heads:
        raise ValueError(f"{cfg.circuit} lists no heads")
    s_heads = [(l, h) for l in range(sh.shape.n_layers) for h in range(sh.shape.n_heads)]
    timing: dict[str, float] = {}
    record: dict = {}
    t0 = time.perf_counter()
    if cfg.by == "ablation":
        from ..circuits.ablation import baseline, head_ablation_sweep, mean_head_outputs

        s_means = mean_head_outputs(sh, items, batch_size=cfg.batch_size)
        s_base = baseline(sh, items, cfg.metric, cfg.batch_size)
        pos = None if cfg.ablation_positions == "all" else "final"
        s_abl = head_ablation_sweep(sh, items, cfg.metric, "mean", s_means, batch_size=cfg.batch_size,
                                    positions=pos, progress=progress)
        timing["student_sweep_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        t_means = mean_head_outputs(th, items, batch_size=cfg.batch_size)
        t_base = baseline(th, items, cfg.metric, cfg.batch_size)
        t_abl = head_ablation_sweep(th, items, cfg.metric, "mean", t_means, heads=[list(h) for h in t_heads],
                                    batch_size=cfg.batch_size, positions=pos, progress=progress)
        timing["teacher_sweep_s"] = time.perf_counter() - t1
        ref = s_base if cfg.baseline == "student" else t_base
        dps = np.array([s_base - float(s_abl[l, h]) for l, h in s_heads])
        dpt = np.array([ref - float(t_abl[l, h]) for l, h in t_heads])
        dist = np.abs(dps[:, None] - dpt[None, :])
        # strict: with the default threshold 0, a head whose ablation changed nothing is not relevant
        candidates = [i for i in range(len(s_heads)) if abs(dps[i]) > cfg.relevance_threshold]
        if cfg.select == "relevance":
            key = lambda i: (-abs(dps[i]), dist[i].min(), s_heads[i])  # noqa: E731
        else:
            key = lambda i: (dist[i].min(), -abs(dps[i]), s_heads[i])  # noqa: E731
        record.update({"student_base": s_base, "teacher_base": t_base, "reference_base": ref,
                       "dP_student_grid": [[s_base - float(s_abl[l, h]) for h in range(sh.shape.n_heads)]
                                           for l in range(sh.shape.n_layers)],
                       "dP_teacher": {f"L{l}.H{h}": float(v) for (l, h), v in zip(t_heads, dpt)}})
    else:
        s_rows = _head_rows(sh, items, range(sh.shape.n_layers), cfg.position, cfg.batch_size)
        t_rows = _head_rows(th, items, sorted({l for l, _ in t_heads}), cfg.position, cfg.batch_size)
        deb = cfg.estimator == "debiased"
        sim = np.array([[cka(s_rows[ls][:, hs], t_rows[lt][:, ht], debiased=deb).item() for lt, ht in t_heads]
                        for ls, hs in s_heads])
        timing["cka_s"] = time.perf_counter() - t0
        dist = 1.0 - sim
        dps = dpt = None
        candidates = list(range(len(s_heads)))
        key = lambda i: (dist[i].min(), s_heads[i])  # noqa: E731
    chosen = pair_heads(dist, key, candidates, _budget(cfg, len(s_heads)), cfg.assignment)
    if not chosen:
        raise ValueError(f"no student head is relevant: every |dP_s| <= relevance_threshold={cfg.relevance_threshold}"
                         f" on {len(items)} items; lower the threshold or use more items (max_items)")
    pairs = []
    for i, j in chosen:
        p = {"student": list(s_heads[i]), "teacher": list(t_heads[j]), "distance": float(dist[i, j])}
        if dps is not None:
            p.update({"dP_student": float(dps[i]), "dP_teacher": float(dpt[j])})
        else:
            p["cka"] = float(1.0 - dist[i, j])
        pairs.append(p)
    warns = pairing_warnings(pairs, len(t_heads), dpt)
    for w in warns:
        warnings.warn(f"matching: {w}", stacklevel=2)
    doc = {"pairs": pairs, "student_model": cfg.student, "teacher_model": cfg.teacher, "warnings": warns,
           "teacher_heads": [list(h) for h in t_heads], "n_student_heads": len(s_heads),
           "n_pairs": len(pairs), "budget": _budget(cfg, len(s_heads)), "n_items": len(items),
           "data_sha256": sha256_file(cfg.data), "circuit_sha256": sha256_file(cfg.circuit),
           "distance_matrix": {"rows": "student heads (layer-major)", "cols": "teacher_heads",
                               "values": np.round(dist, 6).tolist()},
           "timing_s": timing, **record, **provenance(cfg.seed, cfg)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "pairing.json", doc)
    _plot(out / "pairing.png", doc, sh.shape, s_heads, t_heads, dist, cfg)
    return Pairing(**doc)


def _plot(path: Path, doc: dict, shape, s_heads, t_heads, dist, cfg) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from ..utils import save_figure_atomic

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
        fig.colorbar(im, ax=ax, label="best CKA with a teacher circuit head")
    for p in doc["pairs"]:
        ax.scatter(p["student"][0], p["student"][1], marker="s", s=60, facecolors="none", edgecolors="k")
    ax.set_xlabel("student layer")
    ax.set_ylabel("student head")
    ax.set_title(f"student heads; squares: the {len(doc['pairs'])} paired")
    ax = axes[1]
    rows = [s_heads.index(tuple(p["student"])) for p in doc["pairs"]]
    sub = dist[rows]
    im = ax.imshow(sub, cmap="magma_r", aspect="auto")
    fig.colorbar(im, ax=ax, label="distance" + (" |dP_s - dP_t|" if cfg.by == "ablation" else " 1 - CKA"))
    for r, p in enumerate(doc["pairs"]):
        ax.scatter(t_heads.index(tuple(p["teacher"])), r, marker="x", color="cyan", s=40)
    ax.set_xticks(range(len(t_heads)), [f"L{l}.H{h}" for l, h in t_heads], rotation=90, fontsize=7)
    ax.set_yticks(range(len(rows)), [f"L{p['student'][0]}.H{p['student'][1]}" for p in doc["pairs"]], fontsize=7)
    ax.set_xlabel("teacher circuit head")
    ax.set_title(f"paired student heads x teacher heads ({cfg.assignment}); x = partner")
    fig.tight_layout()
    save_figure_atomic(fig, path, dpi=110)
    plt.close(fig)
