"""Full fine-tuning on a task: the default teacher and the warm student.

Objective: cross-entropy of the answer's first token at the final prompt position (``logits_to_keep=1``,
so only that position's logits are computed), AdamW, fixed batch order per seed. Validation accuracy
on the REAL task is measured every ``eval_every`` steps; training stops once it reaches ``target``
(if set) or after ``max_steps``. Checkpoints (weights as safetensors, optimizer state, history) are
written atomically every ``checkpoint_every`` steps; a rerun with the same config resumes from them.
The result is saved with ``registry.save_derived`` under ``name`` with a record of exactly what ran.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from ..utils import atomic_path, batch_indices, provenance, sha256_json, write_json_atomic  # noqa: F401
from .batching import encode_items
from .schema import TaskItem
from .scoring import evaluate, forward_inputs


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field("smollm2-135m", description="model to start from (registry name or directory)")
    name: str = Field(..., min_length=1, description="cache name the result is saved under")
    task: Literal["entity-tracking", "tom"] = "entity-tracking"
    mode: Literal["teacher", "warmup"] = "teacher"
    lr: float = Field(3e-5, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1, le=4096)
    max_steps: int = Field(150, ge=0, le=100_000)
    eval_every: int = Field(10, ge=1)
    eval_items: int = Field(200, ge=1, description="validation items used for the stopping decision")
    eval_batch_size: int = Field(32, ge=1)
    target: float | None = Field(None, ge=0, le=1, description="stop once validation accuracy >= target")
    grad_clip: float | None = Field(1.0, gt=0)
    checkpoint_every: int = Field(25, ge=1)
    seed: int = 0
    threads: int = Field(2, ge=1, le=256)


def final_position_loss(model, batch: dict) -> torch.Tensor:
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in forward_inputs(batch).items()}
    logits = model(**inputs, logits_to_keep=1).logits[:, -1, :]
    return torch.nn.functional.cross_entropy(logits.float(), batch["answer_ids"].to(device))


def _ckpt_paths(run_dir: Path) -> dict[str, Path]:
    d = run_dir / "checkpoint"
    return {"dir": d, "weights": d / "model.safetensors", "optim": d / "optimizer.pt", "state": d / "state.json"}


def save_checkpoint(run_dir: Path, model, opt, state: dict) -> None:
    from safetensors.torch import save_model

    p = _ckpt_paths(run_dir)
    p["dir"].mkdir(parents=True, exist_ok=True)
    with atomic_path(p["weights"]) as tmp:
        save_model(model, str(tmp))  # handles tied (shared) weights
    with atomic_path(p["optim"]) as tmp:
        torch.save(opt.state_dict(), tmp)
    write_json_atomic(p["state"], state)  # written last: its presence marks a complete checkpoint


def load_checkpoint(run_dir: Path, model, opt, config_hash: str) -> dict | None:
    from safetensors.torch import load_model

    p = _ckpt_paths(run_dir)
    if not p["state"].exists():
        return None
    state = json.loads(p["state"].read_text())
    if state.get("config_hash") != config_hash:
        raise ValueError(f"checkpoint in {p['dir']} was made with a different config or data; "
                         f"use another --run-dir or delete that checkpoint (or pass --no-resume)")
    load_model(model, str(p["weights"]), strict=True)
    opt.load_state_dict(torch.load(p["optim"], weights_only=False))
    return state


def finetune(cfg: FinetuneConfig, train_items: Sequence[TaskItem], val_items: Sequence[TaskItem], run_dir: str | Path,
             resume: bool = True, model=None, tokenizer=None, save: bool = True, data_info: dict | None = None,
             progress: bool = True) -> dict:
    """Fine-tune ``cfg.base`` (or the given model) and save it as ``cfg.name``; returns the run record."""
    from ..models import registry

    if not train_items:
        raise ValueError("no training items")
    if not val_items:
        raise ValueError("no validation items")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if model is None:
        model, tokenizer = registry.load_model(cfg.base)
    train_items, val_items = list(train_items), list(val_items)[: cfg.eval_items]
    data_hash = sha256_json([[it.prompt, it.answer] for it in train_items] + [[it.prompt, it.answer] for it in val_items])
    config_hash = sha256_json({"config": cfg.model_dump(mode="json", exclude={"max_steps", "target", "threads"}),
                               "data": data_hash})
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = load_checkpoint(run_dir, model, opt, config_hash) if resume else None
    if state is None:
        state = {"config_hash": config_hash, "step": 0, "history": [], "train_seconds": 0.0, "eval_seconds": 0.0}
    history: list[dict] = state["history"]
    resumed_from = state["step"] if state["step"] else None

    def validate(step: int) -> float:
        t = time.perf_counter()
        res = evaluate(model, tokenizer, val_items, batch_size=cfg.eval_batch_size)
        s = res.summary()
        state["eval_seconds"] += time.perf_counter() - t
        row = {"step": step, "val_accuracy": s["accuracy"]["mean"], "val_candidate_accuracy": s["candidate_accuracy"]["mean"],
               "val_logprob": s["logprob"]["mean"]}
        history.append(row)
        return row["val_accuracy"]

    def reached(acc: float) -> bool:
        return cfg.target is not None and acc >= cfg.target

    stop_reason = None
    step = state["step"]
    if step == 0 and not any(h.get("step") == 0 and "val_accuracy" in h for h in history):
        acc = validate(0)
        if reached(acc):
            stop_reason = f"validation accuracy {acc:.3f} >= target {cfg.target} before training"
    elif history and "val_accuracy" in history[-1] and history[-1]["step"] == step and reached(history[-1]["val_accuracy"]):
        stop_reason = f"validation accuracy {history[-1]['val_accuracy']:.3f} >= target {cfg.target} (at resume)"

    model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"{cfg.mode} {cfg.name}", unit="step", disable=not progress)
    t_start = time.perf_counter()
    while stop_reason is None and step < cfg.max_steps:
        t = time.perf_counter()
        idx = batch_indices(len(train_items), cfg.batch_size, step, cfg.seed)
        batch = encode_items(tokenizer, [train_items[i] for i in idx])
        loss = final_position_loss(model, batch)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        state["train_seconds"] += time.perf_counter() - t
        history.append({"step": step, "loss": float(loss.item())})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            acc = validate(step)
            bar.set_postfix(loss=f"{loss.item():.3f}", val_acc=f"{acc:.3f}")
            model.train()
            if reached(acc):
                stop_reason = f"validation accuracy {acc:.3f} >= target {cfg.target} at step {step}"
        state["step"] = step
        if step % cfg.checkpoint_every == 0 or stop_reason is not None:
            save_checkpoint(run_dir, model, opt, state)
    bar.close()
    model.eval()
    if stop_reason is None:
        stop_reason = f"reached max_steps={cfg.max_steps}"
        if not history or history[-1].get("step") != step or "val_accuracy" not in history[-1]:
            validate(step)
        state["step"] = step
        save_checkpoint(run_dir, model, opt, state)
    evals = [h for h in history if "val_accuracy" in h]
    record = {
        "name": cfg.name, "mode": cfg.mode, "task": cfg.task, "base": cfg.base, "steps": step,
        "examples_seen": step * cfg.batch_size, "stop_reason": stop_reason,
        "final_val_accuracy": evals[-1]["val_accuracy"] if evals else None,
        "val_items": len(val_items), "train_items": len(train_items),
        "train_seconds": round(state["train_seconds"], 1), "eval_seconds": round(state["eval_seconds"], 1),
        "this_run_wall_seconds": round(time.perf_counter() - t_start, 1), "resumed_from_step": resumed_from,
        "history": history, "data": {**(data_info or {}), "sha256": data_hash},
        "provenance": provenance(cfg.seed, cfg),
        "description": f"{cfg.mode} fine-tune of {cfg.base} on {cfg.task}: {step} steps, val acc "
                       f"{evals[-1]['val_accuracy']:.3f}" if evals else "",
    }
    write_json_atomic(run_dir / "record.json", record)
    if save:
        record["saved_to"] = str(registry.save_derived(model, tokenizer, cfg.name, record))
        write_json_atomic(run_dir / "record.json", record)
    return record
