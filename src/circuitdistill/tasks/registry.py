"""Tasks by name. A task is one ``Task`` object; `data`, `teacher`, `warmup` and the experiment look it up here.

A new task is one new file under ``tasks/catalog/`` (copy ``catalog/tom_task.py``) that defines a ``Task`` subclass
and calls ``register``: every module there is imported on the first lookup. A task can also be registered
from anywhere else (a test, a script) by calling ``register`` before the lookup.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Annotated, Iterable, Sequence

from pydantic import AfterValidator

from ..plugins import Plugins
from .schema import TaskItem

Splits = dict[str, list[TaskItem]]


def answer_words(items: Iterable[TaskItem]) -> set[str]:
    """Every answer, corrupted answer and candidate word of ``items`` (stripped)."""
    out = set()
    for it in items:
        for w in [it.answer, it.corrupted_answer, *(it.candidates or [])]:
            if w:
                out.add(w.strip())
    return out


class Task(ABC):
    """One task: its generator, its splits (one signature for every task), its corruptions and its warm-up variant.

    Items carry their own answer, candidates and corrupted counterpart, so scoring (``tasks/scoring.py``) and
    every discovery method need nothing more from the task. ``size`` is the task's one difficulty knob
    (entity tracking: boxes per prompt); a task without one ignores it.
    """

    name: str  # CLI and config name, e.g. "entity-tracking"
    short: str  # in derived model names: BASE-<short>-teacher
    description: str = ""
    corruptions: tuple[str, ...] = ()  # accepted ``corruption`` values; the first is the default
    templates: tuple[str, ...] = ()  # accepted ``template`` values; the first is the real task's wording
    warmup_template: str = ""  # the warm-up variant's wording (one of ``templates``)
    default_size: int | None = None

    @abstractmethod
    def generate(self, n: int, seed: int, tokenizers: Sequence, *, size: int | None = None,
                 corruption: str | None = None, template: str | None = None) -> list[TaskItem]:
        """``n`` items, deterministic per seed, answers single tokens for every tokenizer."""

    @abstractmethod
    def make_splits(self, n_train: int, n_validation: int, n_test: int, seed: int, tokenizers: Sequence, *,
                    size: int | None = None, corruption: str | None = None, template: str | None = None,
                    disjoint_vocab: bool = False) -> Splits:
        """train / validation / test with no prompt repeated across splits; with ``disjoint_vocab`` train's answer
        vocabulary is disjoint from validation's and test's."""

    @abstractmethod
    def warmup_items(self, tokenizer, seed: int, n: int, avoid: set[str], sizes: Sequence[int],
                     template: str) -> tuple[list[TaskItem], dict]:
        """The related-but-distinct variant a warm student trains on, using no word of ``avoid``; returns (items, a
        description of the variant)."""

    def real_splits(self, n_train: int, n_validation: int, n_test: int, seed: int, tokenizers: Sequence,
                    size: int | None = None) -> Splits:
        """The splits the teacher, the warm-up and the experiment use: the real wording, the default corruption,
        train's vocabulary held out of validation and test."""
        return self.make_splits(n_train, n_validation, n_test, seed, tokenizers, size=size, disjoint_vocab=True)

    def answer_words(self, items: Iterable[TaskItem]) -> set[str]:
        """The words a warm-up must avoid so it teaches nothing about ``items``."""
        return answer_words(items)

    def vocabularies(self, tokenizers: Sequence) -> dict[str, tuple[Sequence[str], Sequence[str]]]:
        """Each word list the generator draws from: (the shipped words, those it keeps because they are single
        tokens for every tokenizer). A task without word lists returns {}."""
        return {}


def rejected_words(task: Task, tokenizers: Sequence) -> dict[str, dict]:
    """Per word list of ``task``: how many shipped words it keeps for ``tokenizers`` and which it rejects."""
    out = {}
    for name, (shipped, kept) in task.vocabularies(tokenizers).items():
        keep = set(kept)
        out[name] = {"shipped": len(shipped), "kept": len(keep), "rejected": [w for w in shipped if w not in keep]}
    return out


TASKS: Plugins[Task] = Plugins("task", "circuitdistill.tasks.catalog")
register, get_task, task_names = TASKS.register, TASKS.get, TASKS.names
TaskName = Annotated[str, AfterValidator(TASKS.check_name)]  # a config field holding a registered task's name
