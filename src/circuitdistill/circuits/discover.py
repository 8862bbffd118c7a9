"""Discovery: find the attention heads that implement a task -> circuit.json, heatmap.png, summary.txt."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..models import registry
from ..models.hooks import HookedLM
from ..tasks.io import load_items
from ..utils import UserError, provenance, sha256_file, write_json_atomic, write_text_atomic
from .ablation import baseline
from .attribution import attribution_patching
from .circuit import Circuit, CircuitGroup, CircuitHead
from .faithfulness import faithfulness_report, format_report
from .patching import activation_patching, relative_scores
from .path_patching import path_patching
from .plots import score_heatmap


class DiscoverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    data: Path
    method: Literal["activation", "path", "attribution"] = "activation"
    ablation: Optional[Literal["mean", "zero", "resample", "corrupted"]] = None
    positions: Literal["final", "all"] = "final"
    metric: Literal["logprob", "logit_diff", "accuracy", "candidate_accuracy"] = "logprob"
    top_n: Optional[int] = Field(None, ge=1)
    threshold: Optional[float] = Field(None, ge=0)
    n_items: int = Field(64, ge=1)
    batch_size: int = Field(32, ge=1)
    rows_per_pass: Optional[int] = Field(None, ge=1)
    seed: int = 0
    levels: int = Field(2, ge=1, description="path: receiver levels")
    per_level: int = Field(5, ge=1, description="path: heads kept per group")
    components: list[str] = Field(default_factory=lambda: ["qkv"])
    ig_steps: int = Field(0, ge=0)
    qk_fix: bool = Field(False, description="attribution: AtP*'s exact downstream attention softmax")
    grad_drop: bool = Field(False, description="attribution: AtP*'s GradDrop magnitudes")
    verify: Optional[int] = Field(None, ge=1, description="attribution: re-score the top K heads exactly")
    random_sets: int = Field(0, ge=0, description="also run circuit-only faithfulness with N random sets")
    faithfulness_positions: Literal["all", "final"] = "all"
    threads: int = Field(2, ge=1)
    out: Path

    @model_validator(mode="after")
    def _check(self) -> "DiscoverConfig":
        if self.top_n is not None and self.threshold is not None:
            raise ValueError("give --top-n or --threshold, not both")
        if self.method == "attribution" and self.metric not in ("logprob", "logit_diff"):
            raise ValueError("--method attribution needs a differentiable --metric: logprob or logit_diff")
        if self.method == "attribution" and self.ablation == "resample":
            raise ValueError("--method attribution supports --ablation corrupted, mean or zero")
        if self.method != "attribution" and (self.verify or self.qk_fix or self.grad_drop):
            raise ValueError("--verify, --qk-fix and --grad-drop belong to --method attribution")
        if self.ig_steps and (self.qk_fix or self.grad_drop):
            raise ValueError("--ig-steps and the AtP* fixes (--qk-fix, --grad-drop) are alternatives; pick one")
        if self.verify is not None and self.top_n is not None and self.top_n > self.verify:
            raise ValueError(f"--top-n {self.top_n} is more than the {self.verify} heads --verify re-scores")
        if self.method == "path" and self.ablation == "resample":
            raise ValueError("--method path supports --ablation corrupted, mean or zero")
        return self


def run_discover(cfg: DiscoverConfig, progress: bool = True):
    """Python entry point of the command: returns (Circuit, summary text); files go under cfg.out."""
    torch.set_num_threads(cfg.threads)
    items = load_items(cfg.data)[: cfg.n_items]
    has_corr = all(it.corrupted_prompt is not None for it in items)
    ablation = cfg.ablation or ("corrupted" if has_corr else "mean")
    if ablation == "corrupted" and not has_corr:
        bad = [i for i, it in enumerate(items) if it.corrupted_prompt is None][:5]
        raise ValueError(f"{cfg.data}: --ablation corrupted needs corrupted_prompt on every item (missing on items "
                         f"{bad}); use --ablation mean")
    if cfg.metric == "logit_diff" and any(it.corrupted_answer is None for it in items):
        raise ValueError(f"{cfg.data}: --metric logit_diff needs corrupted_answer on every item")
    model, tok = registry.load_model(cfg.model)
    hooked = HookedLM(model, tok)
    s = hooked.shape
    top_n, threshold = cfg.top_n, cfg.threshold
    if top_n is None and threshold is None:
        top_n = max(1, math.ceil(0.1 * s.n_total_heads))
    t0 = time.perf_counter()
    groups = []
    base = {}
    if cfg.method == "activation":
        res = activation_patching(hooked, items, cfg.metric, replacement=ablation, positions=cfg.positions,
                                  batch_size=cfg.batch_size, seed=cfg.seed, progress=progress,
                                  rows_per_pass=cfg.rows_per_pass)
        scores = res.scores
        base = {"clean": res.reference, **({"corrupted": res.other} if res.other is not None else {})}
    elif cfg.method == "attribution":
        est = attribution_patching(hooked, items, cfg.metric, replacement=ablation, positions=cfg.positions,
                                   ig_steps=cfg.ig_steps, batch_size=cfg.batch_size, progress=progress,
                                   qk_fix=cfg.qk_fix, grad_drop=cfg.grad_drop, rows_per_pass=cfg.rows_per_pass)
        clean = baseline(hooked, items, cfg.metric, cfg.batch_size)
        scores = relative_scores(est + clean, clean)
        base = {"clean": clean}
        if cfg.verify:  # the circuit is chosen among the top K by exact scores; the rest stay unmeasured (NaN)
            scores = verified_scores(hooked, items, cfg, ablation, scores, progress)
    else:
        pp = path_patching(hooked, items, cfg.metric, replacement=ablation, levels=cfg.levels, top_k=cfg.per_level,
                           threshold=cfg.threshold, components=cfg.components, batch_size=min(cfg.batch_size, 8),
                           rows_per_pass=cfg.rows_per_pass, progress=progress)
        scores = pp.union_scores((s.n_layers, s.n_heads))
        base = {"clean": pp.clean}
        groups = [CircuitGroup(level=g.level, component=g.component, receivers=g.receivers,
                               heads=[CircuitHead(layer=l, head=h, score=sc) for l, h, sc in g.heads])
                  for g in pp.groups]
        top_n, threshold = None, 0.0  # the circuit is the union of the groups
    wall = time.perf_counter() - t0
    meta = registry.resolve(cfg.model)
    circuit = Circuit.from_scores(
        scores, top_n=top_n, threshold=threshold, method=cfg.method, metric=cfg.metric, ablation=ablation,
        positions=cfg.positions, data_sha256=sha256_file(cfg.data), n_items=len(items),
        model={"name": cfg.model, "path": meta, "model_type": model.config.model_type, "n_layers": s.n_layers,
               "n_heads": s.n_heads, "n_kv_heads": s.n_kv_heads},
        seed=cfg.seed, config=cfg.model_dump(mode="json"), baseline=base, groups=groups, timing_s=round(wall, 3))
    if cfg.verify:
        circuit.selection["verify"] = cfg.verify
    if cfg.method == "path":
        circuit.selection = {"per_level": cfg.per_level, "levels": cfg.levels, "threshold": cfg.threshold}
        circuit.scores = [[None if math.isnan(v) else v for v in row]
                          for row in pp.level0_scores().tolist()]  # full grid: level-0 direct effects
    if circuit.n_heads == 0:
        best = float(scores.abs().nan_to_num(0.0).max())
        raise UserError(f"no head reached --threshold {threshold} (the largest |score| is {best:.4g}); lower it "
                        f"or use --top-n; no circuit was written")
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    circuit.save(out / "circuit.json")
    score_heatmap(circuit.score_grid(), out / "heatmap.png", circuit=circuit.as_set(),
                  label=f"relative change of {cfg.metric}", title=f"{cfg.model}: {cfg.method} ({ablation}, {cfg.positions}) - {circuit.n_heads} heads boxed")
    summary = circuit.summary() + f"wall time: {wall:.1f} s\n"
    if cfg.random_sets:
        rep = faithfulness_report(model, tok, items, circuit, n_random=cfg.random_sets, seed=cfg.seed,
                                  batch_size=cfg.batch_size, progress=progress,
                                  positions=None if cfg.faithfulness_positions == "all" else "final")
        write_json_atomic(out / "faithfulness.json", {**rep, "provenance": provenance(cfg.seed, cfg)})
        summary += format_report(rep) + "\n"
    write_text_atomic(out / "summary.txt", summary)
    return circuit, summary


def verified_scores(hooked, items, cfg: DiscoverConfig, ablation: str, estimated, progress: bool):
    """Exact activation-patching scores for the ``cfg.verify`` heads with the largest |estimated| score; NaN elsewhere."""
    flat = estimated.flatten().abs().nan_to_num(-1.0)
    n_heads = estimated.shape[1]
    top = [(int(i) // n_heads, int(i) % n_heads) for i in flat.argsort(descending=True)[: cfg.verify]]
    res = activation_patching(hooked, items, cfg.metric, replacement=ablation, positions=cfg.positions, heads=top,
                              batch_size=cfg.batch_size, seed=cfg.seed, progress=progress,
                              rows_per_pass=cfg.rows_per_pass)
    out = torch.full_like(estimated, float("nan"))
    for l, h in top:
        out[l, h] = res.scores[l, h]
    return out
