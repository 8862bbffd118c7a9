"""The `compare` job: mechanistic teacher–student comparison à la "Distilled Circuits".

For each model (each tokenises the items itself): component influence of every head and MLP layer,
circuits by iterative pruning with a threshold sweep, concentration of reliance; then components are
matched across the two models and the alignment score A is computed with a bootstrap interval.

Outputs in ``out``: compare.json (top-level ``alignment_score``), compare.md and three PNGs.
A model's influence sweep, features and pruning are cached (keyed by its weights, the items and the
settings) under $CIRCUITDISTILL_HOME/compare, so a teacher is swept once for many students; the sweep
itself checkpoints and resumes.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from ..models import registry
from ..models.hooks import HookedLM
from ..models.placement import Device, DType, device_field, dtype_field, threads_field
from ..tasks.io import load_items
from ..tasks.schema import TaskItem
from ..utils import atomic_path, cache_home, provenance, save_figure_atomic, sha256_file, sha256_json, \
    versioned, write_json_atomic, write_text_atomic
from . import concentration as conc
from .alignment import align
from .influence import Component, InfluenceResult, ablation_means, component_influence, encode_batches
from .pruning import PruneResult, threshold_sweep
from .similarity import Features, record_features

CACHE_VERSION = 1


class CompareConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(description="teacher model: built-in name, derived name or local directory")
    student: str = Field(description="student model: built-in name, derived name or local directory")
    data: Path = Field(description="task items, JSONL (circuitdistill.tasks.schema.TaskItem per line)")
    out: Path = Field(description="output directory (compare.json, compare.md, PNGs)")
    max_items: int = Field(64, ge=4, validation_alias=AliasChoices("max_items", "n_items"),
                           description="items drawn (seeded) from the data file; all if fewer")
    seed: int = Field(0, description="seed of the item draw and the bootstrap")
    metric: Literal["logit_diff", "logprob", "accuracy"] = Field(
        "logit_diff", description="the metric whose drop is a component's influence")
    ablation: Literal["zero", "mean"] = Field("zero", description="how a component is knocked out")
    head_similarity: Literal["pattern", "cka"] = Field(
        "pattern", description="pattern (cosine of attention patterns) | cka (head outputs)")
    matching: Literal["greedy", "hungarian"] = Field("greedy", description="greedy (best match) | hungarian "
                                                     "(one-to-one)")
    k: int = Field(3, ge=1, le=64, description="principal directions per MLP")
    threshold: float = Field(20.0, gt=0, lt=100, description="pruning threshold T in percent")
    sweep: list[float] = Field(default_factory=lambda: [10.0, 15.0, 20.0, 25.0, 30.0],
                               description="comma-separated pruning thresholds (percent) for the sweep")
    tail_limit: float = Field(100.0, gt=0, description="L of the severity tail score")
    prune: bool = Field(True, description="find circuits by iterative pruning")
    max_prune_rounds: int = Field(10, ge=1, description="stop pruning after this many rounds (reported as "
                                  "unstable)")
    n_boot: int = Field(1000, ge=0, le=100000, description="bootstrap resamples of the items")
    batch_rows: int = Field(64, ge=1, description="rows per forward pass in ablation sweeps")
    item_batch: int = Field(16, ge=1, description="items per tokenised batch")
    pattern_len: int = Field(32, ge=2, description="attention patterns are cropped to at most this many final tokens")
    device: Device = device_field()
    dtype: DType = dtype_field()
    threads: int = threads_field()
    cache: bool = Field(True, description="reuse/store per-model sweeps under $CIRCUITDISTILL_HOME/compare")
    progress: bool = Field(True, description="progress bars")

    @field_validator("sweep")
    @classmethod
    def _sweep_range(cls, v: list[float]) -> list[float]:
        bad = [t for t in v if not 0 < t < 100]
        if bad:
            raise ValueError(f"sweep thresholds must be in (0, 100) percent; got {bad}")
        return sorted(set(v))


def load_task_items(path: Path) -> list[TaskItem]:
    return load_items(path)


def select_items(items: list[TaskItem], n: int, seed: int) -> tuple[list[TaskItem], list[int]]:
    idx = list(range(len(items)))
    if len(items) > n:
        idx = sorted(random.Random(seed).sample(idx, n))
    return [items[i] for i in idx], idx


def weights_fingerprint(path: str) -> dict:
    p = Path(path)
    files = sorted(list(p.glob("*.safetensors")) + list(p.glob("*.bin")))
    return {"config": sha256_file(p / "config.json") if (p / "config.json").exists() else None,
            "weights": [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]}


def _profile_key(model_name: str, items: list[TaskItem], cfg: CompareConfig) -> str:
    path = registry.resolve(model_name)
    return sha256_json({"v": CACHE_VERSION, "model": path, "fp": weights_fingerprint(path),
                        "items": [it.model_dump(mode="json") for it in items],
                        **cfg.model_dump(include={"metric", "ablation", "pattern_len", "item_batch", "threshold",
                                                  "sweep", "prune", "max_prune_rounds"}, mode="json"),
                        **_dtype_key(cfg)})[:24]


def _dtype_key(cfg: CompareConfig) -> dict:
    """Float32 profiles keep the keys they had before the dtype was an option."""
    dtype = registry.resolve_dtype(cfg.dtype, registry.resolve_device(cfg.device))
    return {} if dtype == torch.float32 else {"dtype": str(dtype)}


def profile_model(model_name: str, items: list[TaskItem], cfg: CompareConfig, label: str) -> dict:
    """Influence, features and pruning for one model (cached)."""
    cache_dir = cache_home() / "compare"
    key = _profile_key(model_name, items, cfg)
    cached = cache_dir / f"{key}.pt"
    if cfg.cache and cached.exists():
        state = torch.load(cached, weights_only=False)
        state["from_cache"] = True
        return state
    t0 = time.time()
    model, tok = registry.load_model(model_name, device=cfg.device, dtype=cfg.dtype)
    hooked = HookedLM(model, tok)
    batches = encode_batches(tok, items, cfg.item_batch)
    means = ablation_means(hooked, batches) if cfg.ablation == "mean" else None
    cache_dir.mkdir(parents=True, exist_ok=True)
    inf = component_influence(hooked, batches, cfg.metric, cfg.ablation, means=means, batch_rows=cfg.batch_rows,
                              progress=cfg.progress and f"{label}: ablation sweep",
                              checkpoint=(cache_dir / f"{key}.sweep.ckpt") if cfg.cache else None)
    t_sweep = time.time() - t0
    feats = record_features(hooked, batches, cfg.pattern_len)
    prune_out = None
    if cfg.prune:
        sw = threshold_sweep(hooked, batches, inf, cfg.sweep, cfg.threshold, means, cfg.batch_rows,
                             cfg.max_prune_rounds, cfg.progress)
        prune_out = {k: v for k, v in sw.items() if k != "results"}
    s = hooked.shape
    state = {"model": model_name, "path": registry.resolve(model_name), "family": model.config.model_type,
             "shape": {"n_layers": s.n_layers, "n_heads": s.n_heads, "n_kv_heads": s.n_kv_heads, "d_head": s.d_head,
                       "d_model": s.d_model},
             "n_prompt_tokens": [int(b["attention_mask"].sum(1).min()) for b in batches],
             "influence": inf.to_dict(), "features": feats.to_dict(), "prune": prune_out,
             "wall_s": {"sweep": round(t_sweep, 2), "total": round(time.time() - t0, 2)}, "from_cache": False}
    if cfg.cache:
        with atomic_path(cached) as tmp:
            torch.save(state, tmp)
        (cache_dir / f"{key}.sweep.ckpt").unlink(missing_ok=True)
    del model, hooked
    return state


def run_compare(cfg: CompareConfig) -> dict:
    t0 = time.time()
    torch.set_num_threads(cfg.threads)
    if not cfg.data.exists():
        raise FileNotFoundError(f"data file {cfg.data} does not exist (pass --data F.jsonl)")
    all_items = load_task_items(cfg.data)
    items, idx = select_items(all_items, cfg.max_items, cfg.seed)
    if len(items) < 4:
        raise ValueError(f"{cfg.data} holds {len(items)} items; the comparison needs at least 4")
    prof = {"teacher": profile_model(cfg.teacher, items, cfg, "teacher"),
            "student": profile_model(cfg.student, items, cfg, "student")}
    inf = {r: InfluenceResult.from_dict(p["influence"]) for r, p in prof.items()}
    feats = {r: Features(**p["features"]) for r, p in prof.items()}
    t_al = time.time()
    al = align(inf["teacher"], inf["student"], feats["teacher"], feats["student"], cfg.head_similarity,
               cfg.matching, cfg.k, cfg.n_boot, cfg.seed, cfg.progress)
    t_al = time.time() - t_al
    pairs = []
    for s_i, t_i, sim, ns, nt in zip(al.matched.student, al.matched.teacher, al.matched.similarity, al.norm_student,
                                     al.norm_teacher):
        cs, ct = inf["student"].components[s_i], inf["teacher"].components[t_i]
        pairs.append({"student": cs.name, "teacher": ct.name, "kind": cs.kind, "similarity": float(sim),
                      "influence_student": float(inf["student"].influence[s_i]),
                      "influence_teacher": float(inf["teacher"].influence[t_i]),
                      "norm_influence_student": float(ns), "norm_influence_teacher": float(nt),
                      "term": float(sim * (1 - abs(ns - nt)))})
    models = {}
    for r in ("teacher", "student"):
        p, i = prof[r], inf[r]
        models[r] = {"name": getattr(cfg, r), "path": p["path"], "family": p["family"], "shape": p["shape"],
                     "n_components": len(i.components), "clean_metric_mean": float(i.clean.mean()),
                     "concentration": conc.concentration(i, cfg.n_boot, cfg.seed, cfg.tail_limit, cfg.threshold),
                     "circuit": _circuit_summary(p["prune"]), "prune_sweep": p["prune"]["sweep"] if p["prune"] else None,
                     "influence": dict(zip(i.names, map(float, i.influence))),
                     "wall_s": p["wall_s"], "from_cache": p["from_cache"]}
    kinds = np.array([pp["kind"] for pp in pairs])
    terms = np.array([pp["term"] for pp in pairs])
    result = {
        "alignment_score": al.score,
        "alignment_ci95": [al.ci_low, al.ci_high],
        "alignment_bootstrap_mean": al.boot_mean,
        "alignment_by_kind": {k: float(terms[kinds == k].mean()) for k in ("head", "mlp") if (kinds == k).any()},
        "n_items": len(items), "metric": cfg.metric, "ablation": cfg.ablation, "head_similarity": cfg.head_similarity,
        "matching": cfg.matching,
        "teacher": models["teacher"], "student": models["student"], "matched_pairs": pairs,
        "items": {"path": str(cfg.data), "sha256": sha256_file(cfg.data), "indices": idx},
        "wall_s": {"total": round(time.time() - t0, 2), "alignment_bootstrap": round(t_al, 2)},
        "provenance": provenance(cfg.seed, cfg),
    }
    cfg.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cfg.out / "compare.json", versioned("compare", result))
    plot_all(result, cfg.out, cfg.threshold)
    write_text_atomic(cfg.out / "compare.md", render_markdown(result, cfg))
    return result


def _circuit_summary(prune: dict | None) -> dict | None:
    if not prune:
        return None
    c = prune["circuit"]
    return {k: c[k] for k in ("threshold", "size", "n_heads", "n_mlps", "retained_metric_pct", "stable", "circuit")}


# ---- report ---------------------------------------------------------------------------------------
def _grid(model: dict) -> np.ndarray:
    s = model["shape"]
    g = np.full((s["n_layers"], s["n_heads"] + 1), np.nan)
    for name, v in model["influence"].items():
        c = Component.parse(name)
        g[c.layer, s["n_heads"] if c.head is None else c.head] = v
    return g


def plot_all(result: dict, out: Path, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, s = result["teacher"], result["student"]
    # 1. influence heatmaps side by side (last column: the MLP layer)
    fig, axes = plt.subplots(1, 2, figsize=(11, 6))
    for ax, m, role in zip(axes, (t, s), ("teacher", "student")):
        g = _grid(m)
        im = ax.imshow(g, aspect="auto", cmap="viridis", origin="lower")
        nh = m["shape"]["n_heads"]
        ax.axvline(nh - 0.5, color="white", lw=2)
        ax.set_xticks(list(range(nh + 1)), [str(h) for h in range(nh)] + ["MLP"])
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{role}: {m['name']}\ninfluence |Δmetric| %")
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    save_figure_atomic(fig, out / "influence_heatmaps.png", dpi=110)
    plt.close(fig)

    # 2. matched pairs: relative depth of each pair, and normalised influence of both sides
    pairs = result["matched_pairs"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    lt, ls = t["shape"]["n_layers"], s["shape"]["n_layers"]
    for kind, marker in (("head", "o"), ("mlp", "s")):
        pp = [p for p in pairs if p["kind"] == kind]
        if not pp:
            continue
        xs = [(Component.parse(p["student"]).layer + 0.5) / ls for p in pp]
        ys = [(Component.parse(p["teacher"]).layer + 0.5) / lt for p in pp]
        sc = axes[0].scatter(xs, ys, c=[p["similarity"] for p in pp], vmin=0, vmax=1, cmap="plasma", marker=marker,
                             s=[20 + 400 * p["norm_influence_student"] for p in pp], alpha=0.7, label=kind)
        axes[1].scatter([p["norm_influence_teacher"] for p in pp], [p["norm_influence_student"] for p in pp],
                        marker=marker, alpha=0.7, label=kind)
    fig.colorbar(sc, ax=axes[0], label="similarity S")
    axes[0].plot([0, 1], [0, 1], "k:", lw=1)
    axes[0].set_xlabel("student component relative depth")
    axes[0].set_ylabel("matched teacher component relative depth")
    axes[0].set_title("matched pairs (size: student's normalised influence)")
    axes[0].legend()
    lim = max([p["norm_influence_teacher"] for p in pairs] + [p["norm_influence_student"] for p in pairs] + [1e-6])
    axes[1].plot([0, lim], [0, lim], "k:", lw=1)
    axes[1].set_xlabel("teacher Î")
    axes[1].set_ylabel("student Î")
    axes[1].set_title(f"A = {result['alignment_score']:.3f} "
                      f"[{result['alignment_ci95'][0]:.3f}, {result['alignment_ci95'][1]:.3f}]")
    axes[1].legend()
    fig.tight_layout()
    save_figure_atomic(fig, out / "matched_pairs.png", dpi=110)
    plt.close(fig)

    # 3. drop distributions: sorted drops and histograms
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for m, role in ((t, "teacher"), (s, "student")):
        d = np.sort(np.array(list(m["influence"].values())))[::-1]
        axes[0].plot(np.arange(1, len(d) + 1) / len(d), np.maximum(d, 1e-4), label=f"{role}: {m['name']}")
        axes[1].hist(d, bins=40, alpha=0.5, label=role)
    axes[0].axhline(threshold, color="k", ls="--", lw=1, label=f"T = {threshold:g}%")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("fraction of components (sorted by drop)")
    axes[0].set_ylabel("drop when ablated (%)")
    axes[0].legend()
    axes[1].axvline(threshold, color="k", ls="--", lw=1)
    axes[1].set_xlabel("drop when ablated (%)")
    axes[1].set_ylabel("components")
    axes[1].set_yscale("log")
    axes[1].legend()
    fig.tight_layout()
    save_figure_atomic(fig, out / "drop_distributions.png", dpi=110)
    plt.close(fig)


def render_markdown(r: dict, cfg: CompareConfig) -> str:
    t, s = r["teacher"], r["student"]
    lo, hi = r["alignment_ci95"]
    lines = [f"# Teacher–student comparison: {t['name']} vs {s['name']}", "",
             f"Items: {r['n_items']} from `{r['items']['path']}`; metric `{r['metric']}`, {r['ablation']} ablation, "
             f"heads matched by `{r['head_similarity']}`, `{r['matching']}` matching, MLPs by top-{cfg.k} principal "
             f"directions.", "",
             f"**Alignment score A = {r['alignment_score']:.4f}** (95% bootstrap interval [{lo:.4f}, {hi:.4f}], "
             f"{cfg.n_boot} resamples of the items)" + "".join(f"; {k}s {v:.4f}" for k, v in r["alignment_by_kind"].items()),
             "", "Percentile bootstrap: with few items a resample repeats items, which lowers the rank of the "
             "item x feature matrices and inflates the MLP subspace overlap and CKA, so the resampled scores "
             f"(mean {r.get('alignment_bootstrap_mean', float('nan')):.4f}) can sit above A; use more items "
             "(--max-items) for a tighter, better-centred interval.",
             "", "| | teacher | student |", "|---|---|---|"]

    def row(label, f):
        lines.append(f"| {label} | {f(t)} | {f(s)} |")

    row("model", lambda m: f"`{m['name']}` ({m['family']}, {m['shape']['n_layers']}x{m['shape']['n_heads']} heads)")
    row("clean metric (mean)", lambda m: f"{m['clean_metric_mean']:.3f}")
    for key, label in (("worst_drop", "worst single drop (%)"), ("mean_drop", "mean drop (%)"),
                       ("worst_5pct_mean", "worst-5% mean drop (%)"), ("gini", "Gini of drops"),
                       ("severity_tail", f"severity tail (L={cfg.tail_limit:g}, T={cfg.threshold:g})")):
        row(label, lambda m, key=key: f"{m['concentration']['all'][key]:.3f}")
    row("mean drop 95% CI", lambda m: "[{:.3f}, {:.3f}]".format(*m["concentration"]["all"].get("mean_drop_ci", [np.nan] * 2)))
    row("worst component", lambda m: m["concentration"]["all"]["worst_component"])
    if t["circuit"] and s["circuit"]:
        row(f"circuit at T={cfg.threshold:g}% (heads + MLPs)",
            lambda m: f"{m['circuit']['size']} ({m['circuit']['n_heads']} + {m['circuit']['n_mlps']})")
        row("circuit retained metric (%)", lambda m: f"{m['circuit']['retained_metric_pct']:.1f}")
        lines += ["", "Threshold sweep (size / retained % / Jaccard to the T=20% circuit):", "",
                  "| T (%) | teacher | student |", "|---|---|---|"]
        for a, b in zip(t["prune_sweep"], s["prune_sweep"]):
            lines.append(f"| {a['threshold']:g} | {a['size']} / {a['retained_metric_pct']:.1f} / "
                         f"{a['jaccard_to_reference']:.2f} | {b['size']} / {b['retained_metric_pct']:.1f} / "
                         f"{b['jaccard_to_reference']:.2f} |")
    top = sorted(r["matched_pairs"], key=lambda p: -max(p["norm_influence_student"], p["norm_influence_teacher"]))[:15]
    lines += ["", "Most influential matched pairs:", "", "| student | teacher | S | Î_S | Î_T |", "|---|---|---|---|---|"]
    lines += [f"| {p['student']} | {p['teacher']} | {p['similarity']:.3f} | {p['norm_influence_student']:.4f} | "
              f"{p['norm_influence_teacher']:.4f} |" for p in top]
    lines += ["", "![influence](influence_heatmaps.png)", "", "![pairs](matched_pairs.png)", "",
              "![drops](drop_distributions.png)", "", f"Wall time: {r['wall_s']['total']:.1f} s "
              f"(teacher sweep {t['wall_s']['sweep']} s{' cached' if t['from_cache'] else ''}, "
              f"student sweep {s['wall_s']['sweep']} s{' cached' if s['from_cache'] else ''}).", ""]
    return "\n".join(lines)


def summary_line(r: dict) -> str:
    return json.dumps({"alignment_score": round(r["alignment_score"], 4),
                       "ci95": [round(v, 4) for v in r["alignment_ci95"]]})
