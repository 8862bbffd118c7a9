"""Task data files: a registered task's items (one set, or train/validation/test splits) written with a manifest."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

from ..output_dirs import prepare_output_file
from ..utils import UserError, provenance, sha256_file, versioned, write_json_atomic
from .io import save_items
from .registry import TaskName, get_task, rejected_words
from .vocab import load_tokenizer


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: TaskName = Field(description="a registered task (tasks/registry.py)")
    n: int = Field(1000, ge=1, le=10_000_000)
    seed: int = 0
    models: list[str] = Field(default_factory=lambda: ["smollm2-135m"], min_length=1)
    corruption: Optional[str] = Field(None, description="the task's corruption (None: its default)")
    template: Optional[str] = Field(None, description="the task's wording (None: the real task's)")
    boxes: Optional[int] = Field(7, ge=2, le=26, description="the task's size (entity tracking: boxes per prompt)")
    splits: Optional[tuple[int, int, int]] = None
    disjoint_vocab: bool = False


def make_data(cfg: DataConfig):
    """The items ``cfg`` asks for: a list, or {split: items} with ``cfg.splits``."""
    task, toks = get_task(cfg.task), [load_tokenizer(m) for m in cfg.models]
    opts = dict(size=cfg.boxes, corruption=cfg.corruption, template=cfg.template)
    if cfg.splits:
        return task.make_splits(*cfg.splits, cfg.seed, toks, disjoint_vocab=cfg.disjoint_vocab, **opts)
    return task.generate(cfg.n, cfg.seed, toks, **opts)


def write_data(cfg: DataConfig, result, out: Path | None, out_dir: Path | None, prefix: str) -> tuple[dict, Path]:
    """Write ``result`` (``make_data``'s) to ``out`` or, for splits, ``out_dir/PREFIX_SPLIT.jsonl``, then a manifest
    with hashes, the words each word list rejected (not single tokens for every model's tokenizer) and provenance;
    returns ({split: {path, n, sha256}}, manifest path)."""
    written = {}
    if isinstance(result, dict):
        if out_dir is None:
            raise UserError("--splits writes three files; give --out-dir (and optionally --prefix)")
        if out_dir.exists() and not out_dir.is_dir():
            raise UserError(f"--out-dir {out_dir} is a file")
        for split in result:
            prepare_output_file(out_dir / f"{prefix}_{split}.jsonl")
        for split, items in result.items():
            path = out_dir / f"{prefix}_{split}.jsonl"
            save_items(path, items)
            written[split] = {"path": str(path), "n": len(items), "sha256": sha256_file(path)}
        manifest = out_dir / f"{prefix}_manifest.json"
    else:
        if out is None:
            raise UserError("give --out F.jsonl")
        prepare_output_file(out)
        save_items(out, result)
        written["all"] = {"path": str(out), "n": len(result), "sha256": sha256_file(out)}
        manifest = out.with_suffix(".manifest.json")
    vocab = rejected_words(get_task(cfg.task), [load_tokenizer(m) for m in cfg.models])
    write_json_atomic(manifest, versioned("data-manifest", {"files": written, "vocabulary": vocab,
                                                            **provenance(cfg.seed, cfg)}))
    return written, manifest
