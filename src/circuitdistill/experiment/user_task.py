"""`experiment` on a user's task: train / validation / test JSONL files with an existing teacher and student.

The files are parsed before any stage runs (a bad line is a ``TaskFileError`` naming file, line and field).
Items whose answer, corrupted answer or candidates are not single tokens for both the teacher's and the
student's tokenizer are dropped, with a count. The data stage's key is the files' content (sha256), so an
edited file re-runs every stage that read it; the paths themselves are not part of it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from ..distill.methods import term_names
from ..tasks.io import load_items, save_items, single_token_problems
from ..tasks.schema import TaskItem
from ..utils import UserError, sha256_file

SPLITS = ("train", "validation", "test")
MIN_ITEMS = 16  # the smallest split a built-in task may have (ExperimentConfig.n_validation etc.)
_PATCHED_FROM = {"validation": "discovery patches the teacher's heads from the corrupted prompts",
                 "test": "the mechanism checks patch from the corrupted prompts",
                 "train": "circuit-iit trains on patches from the corrupted prompts"}


def user_files(cfg) -> dict[str, str] | None:
    """split -> file of a user's task; None for a built-in task."""
    return {s: getattr(cfg, f"{s}_file") for s in SPLITS} if cfg.train_file else None


def data_key(cfg) -> dict:
    """The data stage's key: the files' content."""
    return {"files": {s: sha256_file(p) for s, p in user_files(cfg).items()}}


def read_user_files(cfg) -> dict[str, list[TaskItem]]:
    """Every split parsed, with corrupted prompts wherever the run patches from them."""
    files = user_files(cfg)
    splits = {s: load_items(p) for s, p in files.items()}
    patched = ["validation", "test"] + (["train"] if any("iit" in term_names(m) for m in cfg.methods) else [])
    for s in patched:
        missing = [i for i, it in enumerate(splits[s], start=1) if not it.corrupted_prompt]
        if missing:
            raise UserError(f"{files[s]}: {len(missing)} of {len(splits[s])} items have no corrupted_prompt (first: "
                            f"item {missing[0]}); {_PATCHED_FROM[s]}, so every {s} item needs one")
    return splits


def write_user_splits(cfg, tokenizers: Sequence, d: Path, log: Callable[[str], None] = print) -> dict:
    """The kept items of each split under ``d`` (what every later stage reads) and a record of the files."""
    files, out, record = user_files(cfg), {}, {}
    for s, items in read_user_files(cfg).items():
        bad = {i for tok in tokenizers for i, _, _ in single_token_problems(items, tok)}
        kept = [it for i, it in enumerate(items, start=1) if i not in bad]
        need = max(MIN_ITEMS, cfg.batch_size) if s == "train" else MIN_ITEMS
        if len(kept) < need:
            raise UserError(f"{files[s]}: only {len(kept)} of {len(items)} items have an answer, corrupted answer "
                            f"and candidates that are single tokens for both the teacher's and the student's "
                            f"tokenizer; the {s} split needs at least {need}")
        if bad:
            log(f"[data] {files[s]}: dropped {len(bad)} of {len(items)} items whose answer, corrupted answer or "
                "candidates are not single tokens for both tokenizers")
        out[s] = str(save_items(d / f"{s}.jsonl", kept))
        record[s] = {"path": str(Path(files[s]).resolve()), "sha256": sha256_file(files[s]), "n_items": len(items),
                     "n_used": len(kept), "n_dropped_multi_token": len(bad)}
    return {**out, "files": record}
