"""Full fine-tuning on a task: the default teacher and the warm student.

Objective: cross-entropy of the answer's first token at the final prompt position (``logits_to_keep=1``,
so only that position's logits are computed), AdamW, fixed batch order per seed. Validation accuracy
on the REAL task is measured every ``eval_every`` steps; training stops once it reaches ``target``
(if set) or after ``max_steps``. Checkpoints (weights as safetensors, optimizer state, history and a
manifest of their hashes) are written every ``checkpoint_every`` steps as one directory swapped in with renames;
a rerun with the same config resumes from the last whole one.
The result is saved with ``registry.save_derived`` under ``name`` with a record of exactly what ran.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..models import registry
from ..models.placement import Device, DType, device_field, dtype_field, threads_field
from ..train_loop import TrainLoop, batch_indices
from ..utils import (UserError, make_temp_dir, provenance, set_open_modes_below, sha256_file, sha256_json, versioned,
                     write_json_atomic)
from .batching import encode_items
from .registry import TaskName
from .schema import TaskItem
from .scoring import evaluate, forward_inputs


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field("smollm2-135m", description="model to start from (registry name or directory)")
    name: str = Field(..., min_length=1, description="cache name the result is saved under")
    task: TaskName = Field("entity-tracking", description="a registered task (tasks/registry.py): "
                           "entity-tracking | tom | ...")
    mode: Literal["teacher", "warmup"] = Field("teacher", description="which fine-tune this is (recorded)")
    lr: float = Field(3e-5, gt=0, le=1.0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay")
    batch_size: int = Field(16, ge=1, le=4096, description="items per optimizer step")
    max_steps: int = Field(150, ge=0, le=100_000, description="maximum optimizer steps")
    eval_every: int = Field(10, ge=1, description="optimizer steps between validation checks")
    eval_items: int = Field(200, ge=1, description="validation items used for the stopping decision")
    eval_batch_size: int = Field(32, ge=1, description="batch size of the validation checks")
    target: float | None = Field(None, ge=0, le=1, description="stop once validation accuracy >= target")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the global gradient norm (None: off)")
    checkpoint_every: int = Field(25, ge=1, description="optimizer steps between checkpoints")
    seed: int = Field(0, description="seed of the batch order (and of the data the teacher/warmup commands "
                      "generate)")
    threads: int = threads_field()
    device: Device = device_field()
    dtype: DType = dtype_field(note=". The model trains in it, as `distill` does")
    keep_checkpoints: bool = Field(False, description="keep the run dir's checkpoint/ (weights + optimizer state) "
                                   "once the model is saved")


# may change on resume; an fp32 run keeps the hash it had before dtype was a field
_NOT_HASHED = {"max_steps", "target", "threads", "keep_checkpoints", "device"}


def final_position_loss(model, batch: dict) -> torch.Tensor:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in forward_inputs(batch).items()}
    logits = model(**inputs, logits_to_keep=1).logits[:, -1, :]
    return torch.nn.functional.cross_entropy(logits.float(), batch["answer_ids"].to(device))


CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "state.json")
MANIFEST = "manifest.json"  # sha256 of every checkpoint file, written last
LOG = "log.jsonl"


def _ckpt_dirs(run_dir: Path) -> tuple[Path, Path]:
    return run_dir / "checkpoint", run_dir / ".checkpoint.old"


def save_checkpoint(run_dir: Path, model, opt, state: dict) -> None:
    """Write the checkpoint as a new directory beside the current one (manifest last), then swap it in with
    renames: a kill at any moment leaves either the previous checkpoint or the new one, whole."""
    from safetensors.torch import save_model

    current, old = _ckpt_dirs(run_dir)
    tmp = make_temp_dir(".checkpoint.new-", run_dir)
    try:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied (shared) weights
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        write_json_atomic(tmp / "state.json", state)
        write_json_atomic(tmp / MANIFEST, {name: sha256_file(tmp / name) for name in CHECKPOINT_FILES})
        set_open_modes_below(tmp)
        if current.exists():
            shutil.rmtree(old, ignore_errors=True)
            current.rename(old)
        tmp.rename(current)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def recover_checkpoint(run_dir: Path) -> None:
    """Undo what a kill inside ``save_checkpoint`` left: put the previous checkpoint back if the swap was cut
    between its renames, and delete half-written new checkpoint directories."""
    current, old = _ckpt_dirs(run_dir)
    if old.is_dir() and not current.exists():
        old.rename(current)
    shutil.rmtree(old, ignore_errors=True)
    for stale in run_dir.glob(".checkpoint.new-*"):
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(run_dir: Path, model, opt, config_hash: str) -> dict | None:
    from safetensors.torch import load_model

    current, _ = _ckpt_dirs(run_dir)
    if not (current / "state.json").exists():
        return None
    if not (current / MANIFEST).exists():
        raise UserError(f"checkpoint {current} has no manifest: an older version wrote it one file at a time and "
                        f"it may be torn; delete that directory to start over (or use another --out)")
    manifest = json.loads((current / MANIFEST).read_text())
    for name in CHECKPOINT_FILES:
        if not (current / name).exists() or sha256_file(current / name) != manifest.get(name):
            raise UserError(f"checkpoint {current} is damaged: {name} does not match its manifest; delete that "
                            f"directory to start over")
    state = json.loads((current / "state.json").read_text())
    if state.get("config_hash") != config_hash:
        raise UserError(f"checkpoint in {current} was made with a different config or data; "
                        f"use another --out or delete that checkpoint (or pass --no-resume --overwrite)")
    load_model(model, str(current / "model.safetensors"), strict=True)
    opt.load_state_dict(torch.load(current / "optimizer.pt", weights_only=False))
    return state


def finetune(cfg: FinetuneConfig, train_items: Sequence[TaskItem], val_items: Sequence[TaskItem], run_dir: str | Path,
             resume: bool = True, model=None, tokenizer=None, save: bool = True, data_info: dict | None = None,
             progress: bool = True, save_to: str | Path | None = None, overwrite: bool = False) -> dict:
    """Fine-tune ``cfg.base`` (or the given model) and save it as ``cfg.name`` (or into the directory ``save_to``,
    which must be new, empty or a model we saved unless ``overwrite``); returns the run record."""
    if not train_items:
        raise ValueError("no training items")
    if not val_items:
        raise ValueError("no validation items")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recover_checkpoint(run_dir)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if model is None:
        model, tokenizer = registry.load_model(cfg.base, device=cfg.device, dtype=cfg.dtype)
    train_items, val_items = list(train_items), list(val_items)[: cfg.eval_items]
    data_hash = sha256_json([[it.prompt, it.answer] for it in train_items] + [[it.prompt, it.answer] for it in val_items])
    config_hash = sha256_json({"config": cfg.model_dump(mode="json", exclude=_NOT_HASHED | (
                                   {"dtype"} if cfg.dtype == "fp32" else set())),
                               "data": data_hash})
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = load_checkpoint(run_dir, model, opt, config_hash) if resume else None
    if state is None:
        state = {"config_hash": config_hash, "step": 0, "history": [], "train_seconds": 0.0, "eval_seconds": 0.0}
    history: list[dict] = state["history"]
    resumed_from = state["step"] if state["step"] else None

    def validate(step: int) -> tuple[dict, str | None]:
        s = evaluate(model, tokenizer, val_items, batch_size=cfg.eval_batch_size).summary()
        acc = s["accuracy"]["mean"]
        row = {"val_accuracy": acc, "val_candidate_accuracy": s["candidate_accuracy"]["mean"],
               "val_logprob": s["logprob"]["mean"]}
        reached = cfg.target is not None and acc >= cfg.target
        when = "before training" if step == 0 else f"at step {step}"
        return row, f"validation accuracy {acc:.3f} >= target {cfg.target} {when}" if reached else None

    stop_reason = None
    last = history[-1] if history else {}
    if "val_accuracy" in last and last["step"] == state["step"] and cfg.target is not None \
            and last["val_accuracy"] >= cfg.target:
        stop_reason = f"validation accuracy {last['val_accuracy']:.3f} >= target {cfg.target} (at resume)"

    def step_loss(step: int):
        model.train()
        idx = batch_indices(len(train_items), cfg.batch_size, step, cfg.seed)
        loss = final_position_loss(model, encode_items(tokenizer, [train_items[i] for i in idx]))
        return loss, lambda: {"loss": float(loss.item())}

    loop = TrainLoop(steps=cfg.max_steps, loss=step_loss, optimizer=opt, params=list(model.parameters()),
                     grad_clip=cfg.grad_clip, evaluate=validate, eval_key="val_accuracy", eval_every=cfg.eval_every,
                     eval_at_start=True, checkpoint_every=cfg.checkpoint_every, save_at_cap=False,
                     save=lambda: save_checkpoint(run_dir, model, opt, state), log_path=run_dir / LOG,
                     desc=f"{cfg.mode} {cfg.name}", progress=progress)
    outcome = loop.run(state, stop_reason)
    model.eval()
    step = state["step"]
    stop_reason = outcome.stop_reason
    if stop_reason is None:
        stop_reason = f"reached max_steps={cfg.max_steps}"
        if not loop.evaluated_at(history, step):
            loop.eval_row(state, step)
        save_checkpoint(run_dir, model, opt, state)
    evals = [h for h in history if "val_accuracy" in h]
    record = {
        "name": cfg.name, "mode": cfg.mode, "task": cfg.task, "base": cfg.base, "steps": step,
        "examples_seen": step * cfg.batch_size, "stop_reason": stop_reason,
        "final_val_accuracy": evals[-1]["val_accuracy"] if evals else None,
        "val_items": len(val_items), "train_items": len(train_items),
        "train_seconds": round(state["train_seconds"], 1), "eval_seconds": round(state["eval_seconds"], 1),
        "this_run_wall_seconds": round(outcome.seconds, 1), "resumed_from_step": resumed_from,
        "history": history, "data": {**(data_info or {}), "sha256": data_hash},
        "provenance": provenance(cfg.seed, cfg),
        "description": f"{cfg.mode} fine-tune of {cfg.base} on {cfg.task}: {step} steps, val acc "
                       f"{evals[-1]['val_accuracy']:.3f}" if evals else "",
    }
    write_json_atomic(run_dir / "record.json", versioned("finetune-record", record))
    if save and save_to is not None:
        record["saved_to"] = str(registry.save_model_dir(model, tokenizer, Path(save_to), record, overwrite=overwrite))
        write_json_atomic(run_dir / "record.json", versioned("finetune-record", record))
    elif save:
        record["saved_to"] = str(registry.save_derived(model, tokenizer, cfg.name, record))
        write_json_atomic(run_dir / "record.json", versioned("finetune-record", record))
    if save:  # the run dir's own copy, a Hugging Face checkpoint like every training command's OUT/model
        registry.save_model_dir(model, tokenizer, run_dir / "model", record)
        if not cfg.keep_checkpoints:
            drop_checkpoint(run_dir)
    return record


def drop_checkpoint(run_dir: str | Path) -> None:
    """Delete a finished run's checkpoint (its model is saved elsewhere; the optimizer state is 2x the model)."""
    for d in _ckpt_dirs(Path(run_dir)):
        shutil.rmtree(d, ignore_errors=True)
