"""Derive a depth-pruned, healed student from a model and save it in the registry under a new name.

Steps: check everything that can be checked from the source's config (name, layer spec, keep); load the
source; score layer importance on general text (recorded always, used for ``keep``); measure the source's
held-out perplexity; drop the layers (``prune``); heal (``heal``); save as a normal HF checkpoint with the
derivation's provenance in ``circuitdistill.json``.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Sequence

import torch
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

from ..utils import cache_home, provenance, sha256_json, versioned, write_json_atomic
from . import registry
from .general_text import load_passages, perplexity, split_passages
from .heal import HealConfig, heal
from .placement import Device, DType, device_field, dtype_field
from .prune import angular_distances, check_drop, least_important_block, parse_layer_spec, prune_layers

FORMAT_VERSION = 1


class DeriveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(..., min_length=1, description="model to prune: a built-in name, a cached name or a local "
                        "HF directory")
    name: str = Field(..., min_length=1, description="registry name the result is saved under")
    drop_layers: str | None = Field(None, description="layers to drop, e.g. '20-29' or '3,5,7-9'")
    keep: int | None = Field(None, ge=1, description="layers to keep; drops the contiguous block whose input and "
                             "output hidden states are closest in angle")
    heal: HealConfig = Field(HealConfig(), description="the healing run")
    heldout_passages: int = Field(48, ge=1, description="general-text passages held out for perplexity")
    importance_passages: int = Field(32, ge=1, description="healing passages the importance score reads")
    seed: int = Field(0, description="seed of the held-out split and of healing")
    out: str | None = Field(None, validation_alias=AliasChoices("out", "run_dir"), description="run directory "
                            "(checkpoints, record.json); default $CIRCUITDISTILL_HOME/derive-runs/NAME. The model "
                            "itself is saved under NAME in the registry")
    device: Device = device_field()
    dtype: DType = dtype_field(note=". The pruned student trains in it, as `distill` does")
    overwrite: bool = Field(False, description="replace an earlier derived model of the same name")

    @model_validator(mode="after")
    def _one_choice(self):
        if (self.drop_layers is None) == (self.keep is None):
            raise ValueError("give exactly one of drop_layers (e.g. '20-29') or keep (a layer count)")
        return self


def check_name(name: str, overwrite: bool = False) -> None:
    if "/" in name or "\\" in name or ".." in name or name.startswith(".") or name != name.strip():
        raise ValueError(f"model name {name!r} must be a plain name: no path separators, no '..', no leading dot")
    if name in registry.BUILTINS:
        raise ValueError(f"model name {name!r} is a built-in model; choose another name")
    existing = registry.cached_dir(name)
    if existing.exists():
        meta = existing / "circuitdistill.json"
        ours = meta.exists() and "derivation" in json.loads(meta.read_text())
        if not ours:
            raise ValueError(f"{existing} exists and was not made by 'models derive'; choose another name")
        if not overwrite:
            raise ValueError(f"derived model {name!r} exists ({existing}); pass --overwrite to replace it")


def plan_drop(cfg: DeriveConfig, n_layers: int) -> list[int] | None:
    """The explicit drop list (checked), or None when ``keep`` leaves the choice to the importance score."""
    if cfg.drop_layers is not None:
        return parse_layer_spec(cfg.drop_layers, n_layers)
    if cfg.keep >= n_layers:
        raise ValueError(f"keep={cfg.keep} must be below the source's {n_layers} layers")
    return None


def validate(cfg: DeriveConfig) -> int:
    """All checks that need no compute; returns the source's layer count."""
    from transformers import AutoConfig

    check_name(cfg.name, cfg.overwrite)
    path = registry.resolve(cfg.source)
    n_layers = AutoConfig.from_pretrained(path, local_files_only=True).num_hidden_layers
    plan_drop(cfg, n_layers)
    return n_layers


def derive(cfg: DeriveConfig, texts: Sequence[str] | None = None, resume: bool = True, progress: bool = True,
           stop_after: int | None = None) -> dict:
    """Prune, heal and save ``cfg.source`` as ``cfg.name``; return the record (also in circuitdistill.json).

    ``texts``: general-text passages (default: the cached public-domain corpus, see ``general_text``).
    """
    n_layers = validate(cfg)
    torch.set_num_threads(cfg.heal.threads)
    t0 = time.perf_counter()
    text_info: dict = {"source": "given"}
    if texts is None:
        header, texts = load_passages()
        text_info = {"source": header["package"], "passages": header["n_passages"]}
    train, heldout = split_passages(list(texts), cfg.heldout_passages, cfg.seed)
    text_info.update(train_passages=len(train), heldout_passages=len(heldout),
                     train_sha256=sha256_json(train), heldout_sha256=sha256_json(heldout))

    teacher, tok = registry.load_model(cfg.source, device=cfg.device, dtype=cfg.dtype)
    for p in teacher.parameters():
        p.requires_grad_(False)
    explicit = plan_drop(cfg, n_layers)
    block = len(explicit) if explicit is not None else n_layers - cfg.keep
    scores = angular_distances(teacher, tok, train[: cfg.importance_passages], block, progress=progress)
    drop = explicit if explicit is not None else least_important_block(scores["block"], block)
    check_drop(drop, n_layers)
    teacher_ppl = perplexity(teacher, tok, heldout, max_length=cfg.heal.eval_max_length, progress=progress)

    student = prune_layers(copy.deepcopy(teacher), drop)
    for p in student.parameters():
        p.requires_grad_(True)
    run_dir = Path(cfg.out) if cfg.out else cache_home() / "derive-runs" / cfg.name
    identity = {"source": cfg.source, "drop": drop, "text": text_info}
    if cfg.heal.steps > 0:
        healing = heal(student, teacher, tok, train, heldout, cfg.heal, cfg.seed, run_dir, teacher_ppl, identity,
                       resume=resume, progress=progress, stop_after=stop_after)
        if healing.get("interrupted"):
            return healing
    else:
        ppl = perplexity(student, tok, heldout, max_length=cfg.heal.eval_max_length, progress=progress)
        healing = {"steps": 0, "stop_reason": "healing skipped", "ppl_before": ppl, "ppl_after": ppl,
                   "ratio_after": ppl / teacher_ppl}
    derivation = {
        "format_version": FORMAT_VERSION, "source": cfg.source, "source_layers": n_layers,
        "dropped_layers": drop, "kept_layers": [i for i in range(n_layers) if i not in drop],
        "chosen_by": "given" if explicit is not None else "angular distance of the contiguous block",
        "angular_distance": scores, "unpruned_ppl": teacher_ppl, "ppl_before_healing": healing["ppl_before"],
        "ppl_after_healing": healing["ppl_after"], "healing_steps": healing["steps"], "text": text_info,
        "total_wall_seconds": round(time.perf_counter() - t0, 1),
    }
    record = {
        "description": (f"{cfg.source} minus layers {_ranges(drop)} ({n_layers - len(drop)} of {n_layers} kept), "
                        f"healed {healing['steps']} steps: held-out ppl {healing['ppl_before']:.2f} -> "
                        f"{healing['ppl_after']:.2f} (unpruned {teacher_ppl:.2f})"),
        "derivation": derivation, "healing": healing, "provenance": provenance(cfg.seed, cfg),
    }
    student.config.circuitdistill_name = cfg.name
    out = registry.save_derived(student, tok, cfg.name, record)
    write_json_atomic(run_dir / "record.json", versioned("derive-record", {**record, "saved_to": str(out)}))
    return {**record, "saved_to": str(out)}


def _ranges(idx: Sequence[int]) -> str:
    out, start = [], None
    for i, v in enumerate(idx):
        if start is None:
            start = v
        if i + 1 == len(idx) or idx[i + 1] != v + 1:
            out.append(f"{start}" if start == v else f"{start}-{v}")
            start = None
    return ",".join(out)
