"""Pydantic configs for `match`, `cache-teacher` and `distill`. The schemas double as the documentation:
every field has a description, and ``circuitdistill distill --help`` / docs/distill.md are generated from them.
"""
from __future__ import annotations

import json
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..models.placement import Device, DType, device_field, dtype_field, threads_field

from .losses.terms import TERMS
from .methods import HEAD_ONLY, METHOD_NAMES, METHODS, term_names

HOOKED_TERMS = {n for n, t in TERMS.items() if t.needs}  # terms that read or patch heads through hooks
METHODS_HELP = " | ".join(f"{m.name}: {m.description}" for m in METHODS.values())


class _Base(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DistillConfig(_Base):
    """One training run: a row of the paper's table. Reproducible from this config alone."""

    method: str = Field("circuit", description=METHODS_HELP)
    student: str = Field(..., description="student model: built-in name, derived name or local HF directory")
    teacher: str | None = Field(None, description="live teacher model (loaded and run every step); give this "
                                "or teacher_cache")
    teacher_cache: str | None = Field(None, description="directory written by `circuitdistill cache-teacher`; "
                                      "training from it never loads the teacher")
    data: str = Field(..., description="training items (JSONL, circuitdistill.tasks format)")
    pairing: str | None = Field(None, description="pairing.json from `circuitdistill match`; required by the "
                                "circuit-* methods")
    out: str = Field("runs/distill/run", description="output directory: run_config.json, log.jsonl, loss PNG, "
                     "checkpoint, summary.json, the final model as a Hugging Face checkpoint in model/ (and, for "
                     "head-only methods, the trained slices alone in head_deltas.safetensors)")
    lam: float = Field(0.1, ge=0.0, description="lambda, weight of the pair alignment term (CKA or Procrustes) "
                       "over pairs of (1 - similarity). The paper leaves it open; 0.1 was chosen on validation data "
                       "with the sum over ~40 pairs")
    lam_reduction: Literal["sum", "mean"] = Field("sum", description="the pair alignment term sums (paper) or "
                                                  "averages (1 - similarity) over the pairs")
    iit_weight: float = Field(1.0, ge=0.0, description="weight of the interchange term (a KL, on the scale of CE)")
    interchange_cache: str | None = Field(None, description="circuit-iit from a teacher cache: the directory "
                                          "written by `cache-teacher --interchange-pairing` (the teacher's "
                                          "outputs with its paired heads patched from the corrupted prompts)")
    lr: float = Field(2e-5, gt=0.0, description="AdamW learning rate; 2e-5 is the paper's value for every method "
                      "(head-only methods can tolerate larger values; the paper did not tune them separately)")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW decoupled weight decay. For head-only methods it "
                                "acts on the per-head deltas (pulls heads toward their initial weights)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    grad_clip: float | None = Field(1.0, gt=0.0, description="clip the global gradient norm (None: off)")
    steps: int = Field(100, ge=1, description="optimizer steps")
    batch_size: int = Field(16, ge=1, description="GLOBAL batch size (examples per step over all processes); must "
                            "divide by the number of processes. The CKA's m is this number")
    seed: int = Field(0, description="seeds data order, random pairing and everything else random")
    position: int = Field(-1, le=-1, description="token position that feeds CKA and the loss, counted from the "
                          "end of each left-padded row (-1: final prompt token). Negative only, so padding "
                          "never enters")
    estimator: Literal["biased", "debiased"] = Field(
        "biased", description="CKA estimator in the loss: biased HSIC tr(KHLH)/(m-1)^2 as in the paper, or the "
        "debiased U-statistic (Song et al. 2012), recommended at small batches where the biased one is inflated")
    gqa_policy: Literal["train", "freeze", "whole-group"] = Field(
        "train", description="grouped-query attention: train a selected head's shared k/v slice always (train), "
        "never (freeze) or only when every query head of its group is selected (whole-group)")
    label_source: Literal["teacher", "gold"] = Field(
        "teacher", description="CE target: the teacher's predicted token (paper) or the dataset's gold answer")
    kd_temperature: float = Field(2.0, gt=0.0, description="logit-kd: softmax temperature T (loss scaled by T^2)")
    kd_ce_weight: float = Field(0.0, ge=0.0, description="logit-kd: weight of an added CE term on the teacher's "
                                "labels (0 = pure Hinton KL)")
    random_pool: Literal["circuit", "all"] = Field(
        "circuit", description="circuit-random: each distinct aligned partner is replaced by a distinct random "
        "teacher head (never itself when another exists), so the control keeps the pairing's many-to-one "
        "structure; drawn from the teacher circuit (default) or from all teacher heads")
    max_train_items: int | None = Field(None, ge=1, description="use only the first N training items")
    eval_data: str | None = Field(None, description="validation items (JSONL) scored every eval_interval steps "
                                  "and at the end; never use the test split for choices")
    eval_teacher_cache: str | None = Field(None, description="teacher cache of eval_data: adds the held-out "
                                           "alignment, exact debiased CKA over the whole eval set between each "
                                           "student head and its ALIGNED partner (also for rows that train "
                                           "no alignment), before training and at every evaluation")
    eval_pairing: str | None = Field(None, description="pairing.json whose pairs the held-out alignment measures "
                                     "(default: `pairing`); lets full-kd report it too")
    eval_interval: int = Field(0, ge=0, description="evaluate every N steps (0: only at the end)")
    eval_max_items: int | None = Field(200, ge=1, description="score at most N eval items")
    eval_batch_size: int = Field(32, ge=1, description="batch size for evaluation")
    checkpoint_every: int = Field(25, ge=1, description="save an atomic checkpoint every N steps (and at the end)")
    keep_checkpoints: bool = Field(False, description="keep checkpoint.pt (trainable tensors + optimizer state) "
                                   "after the run finishes, e.g. to extend it later with --resume and more steps; "
                                   "by default it is deleted once model/ is written")
    save_as: str | None = Field(None, description="also save the trained model under this registry name "
                                "(load_model accepts it afterwards)")
    threads: int = threads_field("num_threads", note=", per process")
    dtype: DType = dtype_field(note=". The device is accelerate's (run under `accelerate launch` to choose GPUs)")
    gradient_checkpointing: bool = Field(False, description="recompute each layer's activations in the backward "
                                         "pass (less memory, ~1/3 more compute); full-model methods only")

    @model_validator(mode="after")
    def _check(self):
        if self.teacher is None and self.teacher_cache is None:
            raise ValueError("give a teacher: either `teacher` (a model, run live) or `teacher_cache` (a directory "
                             "from `circuitdistill cache-teacher`)")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose from {', '.join(METHOD_NAMES)}")
        if self.method in HEAD_ONLY and self.pairing is None:
            raise ValueError(f"method {self.method} trains matched heads only and needs `pairing` (pairing.json "
                             "from `circuitdistill match`)")
        if self.gradient_checkpointing and (self.method in HEAD_ONLY or HOOKED_TERMS & set(term_names(self.method))):
            raise ValueError(f"gradient_checkpointing is for methods that train the full model without head hooks "
                             f"(e.g. full-kd, logit-kd); {self.method} records or patches heads through hooks, which "
                             "the recomputation would run twice")
        return self


class MergeConfig(_Base):
    """`merge`: apply a head-only run's head_deltas.safetensors to its base model."""

    base: str = Field(..., description="the student the deltas were trained on: built-in name, derived name or "
                      "local HF directory")
    deltas: str = Field(..., description="head_deltas.safetensors written by a head-only `distill` run")
    out: str = Field(..., description="directory for the merged model (a Hugging Face checkpoint)")
    dtype: DType = dtype_field(note=". The base is loaded, merged and saved in it: use the training run's to "
                               "reproduce its model/ exactly")


class CacheConfig(_Base):
    """`cache-teacher`: run the teacher once over the training data."""

    teacher: str = Field(..., description="teacher model")
    data: str = Field(..., description="items to cache (JSONL)")
    out: str = Field(..., description="output directory (teacher.safetensors + meta.json)")
    position: int = Field(-1, le=-1, description="token position of the stored head outputs (from the end)")
    top_k_logits: int = Field(64, ge=1, validation_alias=AliasChoices("top_k_logits", "top_k"),
                              description="how many of the teacher's largest final-position logits to keep "
                              "(for logit-kd from the cache)")
    heads: Literal["all", "paired"] = Field(
        "all", description="which teacher heads' outputs to store: all heads (needed by circuit-random with "
        "random_pool=all) or only the teacher heads named in `pairing`")
    pairing: str | None = Field(None, description="pairing.json (required for heads=paired)")
    interchange_pairing: str | None = Field(None, description="also store the teacher's final-position top-k "
                                            "logits with the pairing's teacher heads patched from each item's "
                                            "corrupted prompt (what circuit-iit trains towards); items need "
                                            "corrupted prompts")
    batch_size: int = Field(32, ge=1, description="teacher forward batch size")
    max_items: int | None = Field(None, ge=1, description="cache only the first N items")
    threads: int = threads_field("num_threads")
    device: Device = device_field()
    dtype: DType = dtype_field(note=". The cache is stored in float32")

    @model_validator(mode="after")
    def _check(self):
        if self.heads == "paired" and self.pairing is None:
            raise ValueError("heads=paired needs `pairing` (pairing.json)")
        return self


class MatchConfig(_Base):
    """`match`: pair student heads with the teacher circuit's heads."""

    teacher: str = Field(..., description="teacher model")
    student: str = Field(..., description="student model")
    circuit: str = Field(..., description="circuit.json of the teacher (a `heads` list of {layer, head, score})")
    data: str = Field(..., description="items for the ablation sweeps (JSONL); use a validation split")
    out: str = Field("runs/distill/match", description="output directory (pairing.json + pairing.png)")
    by: Literal["ablation", "cka", "identity"] = Field(
        "ablation", description="ablation: distance between the heads' mean-ablation effects | cka: 1 - CKA of "
        "the heads' outputs at `position` over the data | identity: student L.H with teacher L.H for every "
        "circuit head (same architecture only; no budget)")
    baseline: Literal["own", "student"] = Field(
        "own", description="own: each model's effects against its own baseline, normalised per model (see "
        "`normalise`) | student: the paper's literal rule, teacher effects against the STUDENT's base (collapses "
        "onto one teacher head whenever the teacher beats the student by more than one head's effect)")
    normalise: Literal["share", "rank", "none"] = Field(
        "share", description="baseline=own: share: effect / mean positive effect of the heads compared | rank: "
        "quantile of the effect among them | none")
    metric: Literal["logprob", "logit_diff", "accuracy", "candidate_accuracy"] = Field(
        "logprob", description="the metric whose drop is a head's effect: answer log-prob (continuous), logit "
        "difference to the corrupted answer, or accuracy (steps of 1/items)")
    per_position_means: bool = Field(True, description="ablate with per-position means, as the circuit-only "
                                     "evaluation does (False: one mean per head over all positions)")
    assignment: Literal["nearest", "hungarian"] = Field(
        "nearest", description="nearest: each student head takes its closest teacher head (many-to-one, paper); "
        "hungarian: one-to-one minimum-cost assignment (scipy linear_sum_assignment)")
    relevance_threshold: float = Field(0.0, ge=0.0, description="a student head is relevant when its ablation "
                                       "hurts the metric by more than this (by=ablation)")
    budget: float = Field(0.15, gt=0.0, description="student heads to pair: a fraction of all student heads "
                          "(<1) or a count (>=1). Default 15% (the paper trains ~11-15% of heads)")
    select: Literal["relevance", "distance"] = Field(
        "relevance", description="which relevant student heads fill the budget: most harmful ablation first (relevance) "
        "or smallest distance to a teacher head first (distance)")
    ablation_positions: Literal["all", "final"] = Field(
        "final", description="where a head is mean-ablated in the sweeps: only the final prompt token, where the "
        "circuit is found (final; exact KV-cache shortcut, ~20x cheaper) or every position (all)")
    position: int = Field(-1, le=-1, description="token position of the head outputs compared by by=cka")
    estimator: Literal["biased", "debiased"] = Field("debiased", description="CKA estimator for by=cka")
    max_items: int | None = Field(64, ge=1, description="use at most N items")
    batch_size: int = Field(32, ge=1, description="batch size of the ablation sweeps")

    @field_validator("baseline", mode="before")
    @classmethod
    def _old_baseline(cls, v):
        return "own" if v == "teacher" else v  # the former name of the own-baseline rule

    @field_validator("metric", mode="before")
    @classmethod
    def _dash(cls, v):
        return v.replace("-", "_") if isinstance(v, str) else v
    seed: int = Field(0, description="seed (recorded; matching itself is deterministic)")
    threads: int = threads_field("num_threads")
    device: Device = device_field()
    dtype: DType = dtype_field()


def schema_markdown(cls: type[_Base]) -> str:
    """A Markdown table of the fields (used for docs/distill.md)."""
    rows = ["| field | default | description |", "|---|---|---|"]
    for name, f in cls.model_fields.items():
        default = ("required" if f.is_required() else "cores available" if f.default_factory is not None
                   else json.dumps(f.default))
        desc = (f.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | `{default}` | {desc} |")
    return "\n".join(rows)
