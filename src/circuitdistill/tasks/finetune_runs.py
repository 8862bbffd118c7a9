"""Configs of the `teacher` and `warmup` commands: a ``FinetuneConfig`` plus where its data comes from and where
the run and the model go."""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import AliasChoices, Field

from .finetune import FinetuneConfig
from .warmup import WARMUP_BOXES, WARMUP_LR


class _FinetuneRun(FinetuneConfig):
    name: Optional[str] = Field(None, min_length=1, description="cache name (default BASE-<task>-teacher or "
                                "BASE-<task>-warm)")
    boxes: int = Field(7, description="entity tracking: boxes per prompt of the real task")
    validation: Optional[Path] = Field(None, description="real-task validation JSONL (default: generated with "
                                       "held-out vocabulary, saved in the run dir)")
    out: Optional[Path] = Field(None, validation_alias=AliasChoices("out", "run_dir"), description="run directory: "
                                "checkpoints + record (default runs/tasks/NAME)")
    save_to: Optional[Path] = Field(None, description="save the model into this directory instead of under the "
                                    "name in the model cache")

    def finetune_config(self, name: str) -> FinetuneConfig:
        return FinetuneConfig(**self.model_dump(include=set(FinetuneConfig.model_fields)) | {"name": name})


class TeacherRun(_FinetuneRun):
    """`circuitdistill teacher`: fine-tune the full model on the real task."""

    mode: Literal["teacher"] = "teacher"
    target: Optional[float] = Field(0.97, ge=0, le=1, description="stop early once validation accuracy reaches "
                                    "this")
    train: Optional[Path] = Field(None, description="training JSONL (default: generated, saved in the run dir)")


class WarmupRun(_FinetuneRun):
    """`circuitdistill warmup`: fine-tune briefly on a related but distinct variant of the task."""

    mode: Literal["warmup"] = "warmup"
    lr: float = Field(WARMUP_LR, gt=0, le=1.0, description="AdamW learning rate")
    max_steps: int = Field(200, ge=0, le=100_000, description="maximum optimizer steps")
    eval_every: int = Field(5, ge=1, description="optimizer steps between validation checks")
    eval_items: int = Field(100, ge=1, description="validation items used for the stopping decision")
    target: float = Field(0.5, ge=0, le=1, description="stop once VALIDATION accuracy on the real task reaches "
                          "this")
    warm_boxes: list[int] = Field(list(WARMUP_BOXES), min_length=1, description="entity tracking: box counts of "
                                  "the warm-up variant")
    warm_template: Optional[str] = Field(None, description="wording of the variant (default: prakash for ET -- "
                                         "fewer boxes and disjoint objects make it distinct; crate transferred "
                                         "too slowly -- and alt for ToM)")
    avoid: list[Path] = Field([], description="more JSONL files (e.g. the test set) whose vocabulary the warm-up "
                              "must not use")
    n_train: int = Field(2000, ge=1, description="warm-up items generated")
