"""`circuitdistill experiment` configuration. The schema doubles as documentation; presets fill it in."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..circuits.method_registry import MethodName
from ..distill.methods import METHOD_NAMES
from ..models.placement import Device, DType, device_field, dtype_field, threads_field
from ..tasks.registry import TaskName

ROWS_DEMO = ("full-kd", "circuit-ce", "circuit-random", "circuit")
ROWS_PAPER = ("full-kd", "circuit-ce", "circuit-align", "circuit-random", "circuit")


class ExperimentConfig(BaseModel):
    """One end-to-end reproduction of the paper's table on one task."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    preset: Literal["demo", "paper", "tiny", "custom"] = Field("demo", description="where the defaults came from")
    task: TaskName = Field("entity-tracking", description="a registered task (tasks/registry.py): "
                           "entity-tracking | tom")
    out: str = Field("runs/demo", description="output directory: report.md, results.json, PNGs, stages/")
    seeds: list[int] = Field([0], min_length=1, description="training seeds; results report mean ± spread")
    # ---- models ----
    teacher_base: str = Field("smollm2-135m", description="model the teacher is fine-tuned from")
    teacher: str | None = Field(None, description="an existing teacher (skips fine-tuning); default: fine-tune "
                                "teacher_base and cache it as BASE-<task>-teacher")
    student_base: str = Field("smollm2-135m", description="model the students start from")
    students: list[Literal["warm", "cold"]] = Field(
        ["warm"], min_length=1, description="warm: student_base warmed up on a related task variant to "
        "warm_target validation accuracy (a stand-in for a partly capable pretrained student); cold: untouched")
    student: str | None = Field(None, description="an existing student model (overrides `students`)")
    warm_target: float = Field(0.5, gt=0, le=1, description="warm-up stops at this real-task validation accuracy")
    warm_steps: int = Field(200, ge=1, description="warm-up step cap")
    teacher_steps: int = Field(150, ge=1, description="teacher fine-tune step cap")
    teacher_target: float = Field(0.97, gt=0, le=1, description="teacher fine-tune stops at this validation accuracy")
    # ---- data ----
    boxes: int = Field(7, ge=2, description="the task's size: entity tracking's boxes per prompt (paper: 7)")
    n_train: int = Field(2000, ge=16, description="training items (teacher fine-tune and distillation)")
    n_validation: int = Field(300, ge=16, description="validation items: matching, stopping, curves")
    n_test: int = Field(1000, ge=16, description="held-out test items: the table and McNemar tests")
    data_seed: int = Field(0, description="seed of the data generator")
    train_file: str | None = Field(None, description="a task of your own instead of `task`: training items (JSONL, "
                                   "the task-item format); give train_file, validation_file and test_file together, "
                                   "with an existing `teacher` and `student`. Every item of the files is used "
                                   "(n_train, n_validation, n_test, boxes and data_seed are the built-in tasks')")
    validation_file: str | None = Field(None, description="a task of your own: validation items (JSONL; discovery, "
                                        "matching, curves); need corrupted_prompt")
    test_file: str | None = Field(None, description="a task of your own: held-out test items (JSONL; the table); "
                                  "need corrupted_prompt")
    # ---- discovery and matching ----
    discovery_method: MethodName = Field("activation", description="a registered discovery method "
                                  "(circuits/method_registry.py): activation | attribution | path")
    discovery_items: int = Field(64, ge=4, description="items for the discovery sweep")
    circuit_share: float = Field(0.10, gt=0, le=1, description="teacher circuit size as a share of its heads")
    match_by: Literal["ablation", "cka", "identity"] = Field(
        "ablation", description="ablation effects, activation CKA, or identity (student L.H ~ teacher L.H over the "
        "circuit; same architecture only)")
    match_baseline: Literal["own", "student"] = Field(
        "own", description="ablation effects against each model's own baseline, normalised (own), or the paper's "
        "literal rule against the student's base (student; collapses when the teacher is much better)")
    match_normalise: Literal["share", "rank", "none"] = Field("share", description="per-model normalisation of "
                                                              "the effects (baseline own)")
    match_metric: Literal["logprob", "logit_diff", "accuracy", "candidate_accuracy"] = Field(
        "logprob", description="the metric whose drop is a head's effect in matching")
    match_items: int = Field(64, ge=4, description="validation items for the matching sweeps")
    match_positions: Literal["final", "all"] = Field(
        "final", description="where heads are mean-ablated in the matching sweeps: the final token (where the "
        "circuit was found; exact KV-prefix shortcut, ~20x cheaper) or every position")
    head_budget: float = Field(0.15, gt=0, le=1, description="max share of student heads trained")
    one_to_one: bool = Field(False, description="Hungarian one-to-one matching instead of many-to-one")
    # ---- training ----
    methods: list[str] = Field(list(ROWS_DEMO), min_length=1, description=f"rows to train: {', '.join(METHOD_NAMES)}")
    steps: int = Field(40, ge=1, description="optimizer steps per method")
    batch_size: int = Field(16, ge=2, description="global batch size (the CKA's m)")
    lr: float = Field(2e-5, gt=0, description="learning rate, all methods (paper: 2e-5)")
    head_lr: float | None = Field(None, gt=0, description="learning rate for head-only methods (None: same as lr)")
    lam: float = Field(0.1, ge=0, description="lambda of the pair alignment term (CKA or Procrustes)")
    lam_reduction: Literal["sum", "mean"] = Field("sum", description="pair alignment term: sum or mean over pairs")
    iit_weight: float = Field(1.0, ge=0, description="weight of the interchange term (circuit-iit)")
    estimator: Literal["biased", "debiased"] = Field("biased", description="CKA estimator in the loss")
    eval_interval: int = Field(10, ge=0, description="validation accuracy every N steps (sample-efficiency curve)")
    eval_items: int = Field(100, ge=8, description="validation items per curve point")
    # ---- evaluation ----
    test_batch_size: int = Field(32, ge=1)
    n_random_sets: int = Field(3, ge=0, description="random head sets for the faithfulness control")
    circuit_positions: Literal["final", "all"] = Field(
        "final", description="circuit-only accuracy: where heads outside the circuit are mean-ablated. 'final' "
        "matches where the circuit was discovered and where the alignment loss acts")
    per_position_means: bool = Field(
        True, description="ablation means per (right-aligned) position, as in Prakash et al.; False: one mean "
        "per head over all positions (discovery found that version destroys every head set alike)")
    mechanism_items: int = Field(100, ge=4, description="items for interchange agreement and re-discovery")
    compare_items: int = Field(32, ge=4, description="items for the alignment score A (compare)")
    analyze_methods: list[str] | None = Field(
        None, description="trained rows that get the mechanism checks and the alignment score A (None: all). "
        "The base student always gets A")
    threads: int = threads_field(note="; part of the stage keys, as results depend on it")
    device: Device = device_field(note=", for every stage")
    dtype: DType = dtype_field(note=", for every stage; the models also train in it")
    gradient_checkpointing: bool = Field(False, description="recompute each layer's activations in the backward "
                                         "pass of the rows that train the full model (full-kd, logit-kd): less "
                                         "memory, ~1/3 more compute; head-only rows never use it")
    keep_checkpoints: bool = Field(False, description="keep each trained row's checkpoint (weights + optimizer "
                                   "state) once its model/ is written")

    @model_validator(mode="after")
    def _check(self):
        bad = [m for m in self.methods + (self.analyze_methods or []) if m not in METHOD_NAMES]
        if bad:
            raise ValueError(f"unknown methods {bad}; choose from {', '.join(METHOD_NAMES)}")
        files = [self.train_file, self.validation_file, self.test_file]
        if any(files) and not all(files):
            raise ValueError("a task from files needs all three of train_file, validation_file and test_file")
        if all(files) and not (self.teacher and self.student):
            raise ValueError("a task from files needs an existing `teacher` and `student`: the experiment fine-tunes "
                             "a teacher and warms up a student only for a built-in task. Fine-tune one first, e.g. "
                             "`circuitdistill teacher --train FILE --validation FILE`")
        return self


def preset(name: str, task: str = "entity-tracking", out: str | None = None, **overrides) -> ExperimentConfig:
    """demo: entity tracking, one seed, the demo rows, sized for <= 40 min on 2 CPU cores.
    paper: both tasks (one run per task), every row of the paper's table, 3 seeds, warm and cold students.
    tiny: a seconds-long smoke run on tiny random models (tests)."""
    if name == "demo":
        # head-only rows update ~0.4% of the parameters; at the paper's 2e-5 they barely move in 40 steps, so
        # they get 5x (chosen a priori, before any test result; --head-lr overrides)
        # the analyses (mechanism checks ~4 min, A ~3 min per row on 2 cores) go to the two rows the claims are
        # about, so the whole demo fits in ~40 min; the paper preset analyses every row
        # lambda 0.1, not 1: chosen on the VALIDATION split (docs/distill.md, "Validation study"): with the
        # paper's sum over 40 pairs the alignment term outweighs CE ~15x at lambda 1 and the row fell to 0.78
        # (0.91 at 0.1, 0.89 for CE alone, 300 validation items); the test split played no part
        base = dict(preset="demo", n_test=500, head_lr=1e-4, lam=0.1, mechanism_items=32, compare_items=8,
                    analyze_methods=["full-kd", "circuit"])
    elif name == "paper":
        base = dict(preset="paper", seeds=[0, 1, 2], students=["warm", "cold"], methods=list(ROWS_PAPER),
                    steps=60, n_test=1000, n_random_sets=5, head_lr=1e-4, lam=0.1)  # lambda: as demo
    elif name == "tiny":
        base = dict(preset="tiny", n_train=64, n_validation=32, n_test=32, boxes=3, teacher_steps=2, warm_steps=2,
                    discovery_items=8, match_items=8, steps=3, batch_size=8, eval_interval=2, eval_items=8,
                    mechanism_items=8, compare_items=8, n_random_sets=1, lr=1e-3, circuit_share=0.25,
                    head_budget=0.25, match_by="cka")  # random models: no head's ablation moves accuracy
    else:
        raise ValueError(f"unknown preset {name!r}; choose demo, paper or tiny")
    base.update(task=task, out=out or f"runs/{name}-{task}")
    base.update({k: v for k, v in overrides.items() if v is not None})
    return ExperimentConfig(**base)
