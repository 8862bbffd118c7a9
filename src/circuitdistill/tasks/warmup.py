"""What the teacher and the warm student fine-tune on: the real task's splits (given files or generated) and the
warm-up recipe, a related but distinct task variant whose vocabulary avoids the real splits'.

The recipe reached the 0.5 target (docs/tasks.md); `circuitdistill warmup` and the experiment both use it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from .io import load_items, save_items
from .registry import answer_words, get_task, task_names
from .schema import TaskItem

WARMUP_LR = 2e-5
WARMUP_BOXES = (3, 4, 5)  # the variant's sizes (entity tracking: boxes), those below the real task's


def warmup_templates() -> dict[str, str]:
    """Every registered task's warm-up wording, by task name."""
    return {name: get_task(name).warmup_template for name in task_names()}


def vocab_of(items: Iterable[TaskItem], task: str | None = None) -> set[str]:
    """The words of ``items`` a warm-up must avoid (answers, corrupted answers, candidates)."""
    return get_task(task).answer_words(items) if task else answer_words(items)


def warmup_items(task: str, tok, seed: int, n: int, avoid: set[str], sizes: Sequence[int], template: str):
    """The related-but-distinct variant the warm student trains on (vocabulary disjoint from ``avoid``)."""
    return get_task(task).warmup_items(tok, seed, n, avoid, list(sizes), template)


def real_task_data(task: str, tok, size: int, seed: int, train: Path | None, validation: Path | None,
                   run_dir: Path, need_train: bool) -> tuple[list[TaskItem] | None, list[TaskItem], dict]:
    """(train, validation, file info): the given files, or the real task's splits generated with held-out vocabulary
    for validation (2000 train, 500 validation) and saved in ``run_dir``."""
    info = {}
    tr = load_items(train) if (train and need_train) else None
    va = load_items(validation) if validation else None
    if (need_train and tr is None) or va is None:
        gen = get_task(task).real_splits(2000 if need_train and tr is None else 0, 500 if va is None else 0, 0,
                                         seed, [tok], size=size)
        if need_train and tr is None:
            tr = gen["train"]
            save_items(run_dir / "data_train.jsonl", tr)
            info["train_file"] = str(run_dir / "data_train.jsonl")
        if va is None:
            va = gen["validation"]
            save_items(run_dir / "data_validation.jsonl", va)
            info["validation_file"] = str(run_dir / "data_validation.jsonl")
    if train and need_train:
        info["train_file"] = str(train)
    if validation:
        info["validation_file"] = str(validation)
    return tr, va, info


def warmup_data(task: str, tok, size: int, seed: int, validation: Path | None, avoid_files: Sequence[Path],
                n_train: int, sizes: Sequence[int], template: str | None, run_dir: Path):
    """(warm-up items, real-task validation items, file info): the variant avoids the words of the validation set
    and of ``avoid_files``; the items are saved in ``run_dir``."""
    _, va, info = real_task_data(task, tok, size, seed, None, validation, run_dir, need_train=False)
    avoid = vocab_of(va, task)
    for p in avoid_files:
        avoid |= vocab_of(load_items(p), task)
    tr, variant = warmup_items(task, tok, seed, n_train, avoid, sizes, template or get_task(task).warmup_template)
    save_items(run_dir / "data_warmup.jsonl", tr)
    info.update({"warmup_file": str(run_dir / "data_warmup.jsonl"), "variant": variant, "avoided_words": len(avoid),
                 "avoid_files": [str(p) for p in avoid_files]})
    return tr, va, info
