"""The one item format every task produces and every later step consumes."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TaskItem(BaseModel):
    """One prompt with its answer; the answer is the continuation text (usually with a leading space).

    Scoring uses the answer's FIRST token, so generators guarantee single-token answers.
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    answer: str = Field(min_length=1, description="continuation scored at the prompt's final position, e.g. ' apple'")
    corrupted_prompt: str | None = Field(None, description="counterpart for patching; same template, different answer")
    corrupted_answer: str | None = Field(None, description="the answer of corrupted_prompt (for logit difference)")
    candidates: list[str] | None = Field(None, description="answer options for candidate-restricted accuracy")
    split: str | None = Field(None, description="train / validation / test")
    meta: dict[str, Any] = Field(default_factory=dict, description="generator details: task, mode, seed, ...")
