"""Discovery: find the attention heads that implement a task -> circuit.json, heatmap.png, summary.txt."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from ..models import registry
from ..models.hooks import HookedLM
from ..models.placement import Device, DType, device_field, dtype_field, threads_field
from ..tasks.io import load_items
from ..utils import UserError, provenance, sha256_file, versioned, write_json_atomic, write_text_atomic
from .circuit import Circuit
from .faithfulness import faithfulness_report, format_report
from .output_softmax import check_candidates
from .method_registry import MethodName, get_method, method_names
from .plots import score_heatmap

DIFFERENTIABLE = ("logprob", "logit_diff")


class DiscoverConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="model name (built-in, derived, or a local HF directory)")
    data: Path = Field(..., description="task items, JSONL (circuitdistill data ...)")
    method: MethodName = Field("activation", description="a registered discovery method "
                               "(circuits/method_registry.py): activation | path | attribution")
    ablation: Optional[Literal["mean", "zero", "resample", "corrupted"]] = Field(
        None, description="how a head is knocked out (default: corrupted when every item has a corrupted_prompt, "
        "else mean)")
    positions: Literal["final", "all"] = Field("final", description="where a head's output is replaced")
    metric: Literal["logprob", "logit_diff", "accuracy", "candidate_accuracy"] = Field(
        "logprob", description="the metric whose drop is a head's score")
    circuit_size: Optional[int] = Field(None, ge=1, validation_alias=AliasChoices("circuit_size", "top_n"),
                                        description="keep the K heads with the largest |score| (default: 10% of "
                                        "heads)")
    threshold: Optional[float] = Field(None, ge=0, description="keep heads with |score| >= X instead")
    max_items: int = Field(64, ge=1, validation_alias=AliasChoices("max_items", "n_items"),
                           description="use the first N items of the file")
    batch_size: int = Field(32, ge=1, description="items per batch")
    rows_per_pass: Optional[int] = Field(None, ge=1, description="rows of one batched forward pass")
    seed: int = Field(0, description="seed of resample ablation and of the random head sets")
    levels: int = Field(2, ge=1, description="path: receiver levels")
    per_level: int = Field(5, ge=1, description="path: heads kept per group")
    components: list[str] = Field(default_factory=lambda: ["qkv"], description="path: receiver inputs, comma "
                                  "separated groups, e.g. qkv or q,k,v")
    ig_steps: int = Field(0, ge=0, description="attribution: integrated-gradient steps (0 = plain AtP)")
    qk_fix: bool = Field(False, description="attribution: recompute downstream attention softmaxes exactly (AtP*)")
    grad_drop: bool = Field(False, description="attribution: GradDrop magnitudes against cancelling paths (AtP*)")
    softmax_fix: bool = Field(False, description="attribution: linearise the candidates' logits and apply the "
                              "output log-softmax exactly (metric logprob; items need candidates)")
    verify: Optional[int] = Field(None, ge=1, description="attribution: re-score the top K heads by exact "
                                  "patching and choose the circuit among them")
    random_sets: int = Field(0, ge=0, description="also report circuit-only faithfulness with N random head sets")
    faithfulness_positions: Literal["all", "final"] = Field(
        "all", description="with random_sets: ablate non-circuit heads at all positions or only at the final one")
    threads: int = threads_field()
    device: Device = device_field()
    dtype: DType = dtype_field()
    out: Path = Field(..., description="output directory (circuit.json, heatmap.png, summary.txt)")

    @model_validator(mode="after")
    def _check(self) -> "DiscoverConfig":
        if self.circuit_size is not None and self.threshold is not None:
            raise ValueError("give --circuit-size or --threshold, not both")
        m = get_method(self.method)
        if m.needs_gradients and self.metric not in DIFFERENTIABLE:
            raise ValueError(f"--method {m.name} needs a differentiable --metric: {_one_of(DIFFERENTIABLE)}")
        if self.ablation is not None and self.ablation not in m.ablations:
            raise ValueError(f"--method {m.name} supports --ablation {_one_of(m.ablations)}")
        flags = {"verify": self.verify, "qk_fix": self.qk_fix, "grad_drop": self.grad_drop,
                 "softmax_fix": self.softmax_fix}
        if any(v and f not in m.flags for f, v in flags.items()):
            owners = [n for n in method_names() if get_method(n).flags & set(flags)]
            raise ValueError(f"--verify, --qk-fix, --grad-drop and --softmax-fix belong to --method {_one_of(owners)}")
        m.check(self)
        return self


def _one_of(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def default_ablation(method: str, items) -> str:
    """Corrupted prompts when every item has one, else mean ablation; the method's first choice if it has neither."""
    preferred = "corrupted" if all(it.corrupted_prompt is not None for it in items) else "mean"
    supported = get_method(method).ablations
    return preferred if preferred in supported else supported[0]


def run_discover(cfg: DiscoverConfig, progress: bool = True):
    """Python entry point of the command: returns (Circuit, summary text); files go under cfg.out."""
    torch.set_num_threads(cfg.threads)
    items = load_items(cfg.data)[: cfg.max_items]
    ablation = cfg.ablation or default_ablation(cfg.method, items)
    if ablation == "corrupted" and not all(it.corrupted_prompt is not None for it in items):
        bad = [i for i, it in enumerate(items) if it.corrupted_prompt is None][:5]
        raise ValueError(f"{cfg.data}: --ablation corrupted needs corrupted_prompt on every item (missing on items "
                         f"{bad}); use --ablation mean")
    if cfg.metric == "logit_diff" and any(it.corrupted_answer is None for it in items):
        raise ValueError(f"{cfg.data}: --metric logit_diff needs corrupted_answer on every item")
    if cfg.softmax_fix:
        check_candidates(items)
    model, tok = registry.load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
    hooked = HookedLM(model, tok)
    s = hooked.shape
    top_n, threshold = cfg.circuit_size, cfg.threshold
    if top_n is None and threshold is None:
        top_n = max(1, math.ceil(0.1 * s.n_total_heads))
    t0 = time.perf_counter()
    res = get_method(cfg.method).run(hooked, items, cfg, ablation, progress)
    if res.own_selection:
        top_n, threshold = None, 0.0  # every head the method picked
    wall = time.perf_counter() - t0
    meta = registry.resolve(cfg.model)
    circuit = Circuit.from_scores(
        res.scores, top_n=top_n, threshold=threshold, method=cfg.method, metric=cfg.metric, ablation=ablation,
        positions=cfg.positions, data_sha256=sha256_file(cfg.data), n_items=len(items),
        model={"name": cfg.model, "path": meta, "model_type": model.config.model_type, "n_layers": s.n_layers,
               "n_heads": s.n_heads, "n_kv_heads": s.n_kv_heads},
        seed=cfg.seed, config=cfg.model_dump(mode="json"), baseline=res.baseline, groups=res.groups,
        timing_s=round(wall, 3))
    circuit.selection.update(res.selection)
    if res.grid is not None:
        circuit.scores = [[None if math.isnan(v) else v for v in row] for row in res.grid.tolist()]
    if circuit.n_heads == 0:
        best = float(res.scores.abs().nan_to_num(0.0).max())
        raise UserError(f"no head reached --threshold {threshold} (the largest |score| is {best:.4g}); lower it "
                        f"or use --circuit-size; no circuit was written")
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
        write_json_atomic(out / "faithfulness.json", versioned("faithfulness", {**rep, "provenance": provenance(cfg.seed, cfg)}))
        summary += format_report(rep) + "\n"
    write_text_atomic(out / "summary.txt", summary)
    return circuit, summary
