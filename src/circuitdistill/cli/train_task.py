"""`circuitdistill teacher` and `circuitdistill warmup`: fine-tune a base model on a task."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
import typer
from pydantic import ValidationError

from ..models import registry
from ..models.registry import check_derived_name, check_save_dir
from ..output_dirs import prepare_output_dir
from ..tasks.finetune import FinetuneConfig, finetune
from ..tasks.io import TaskFileError, check_single_token, load_items
from ..tasks.registry import Task, get_task
from ..tasks.vocab import load_tokenizer
from ..tasks.warmup import WARMUP_BOXES, WARMUP_LR, real_task_data, warmup_data
from ..utils import UserError


def _task(task: str) -> Task:
    try:
        return get_task(task)
    except ValueError as e:
        raise typer.BadParameter(f"--task: {e}") from None


def check_destinations(name: str, steps: int, run_dir: Path, resume: bool, save_to: Path | None,
                       overwrite: bool) -> None:
    """Before any compute: at least one step, a name that cannot clobber a built-in or a path (or a --save-to
    directory that is new, empty or a model we saved), and a run dir that is ours and writable."""
    if steps < 1:
        raise UserError(f"--steps {steps}: training needs at least one step (the result would be the untrained base)")
    if save_to is None:
        check_derived_name(name)
    else:
        check_save_dir(save_to, overwrite=overwrite)
    prepare_output_dir(run_dir, overwrite=overwrite, resume=resume, resume_flag="--resume",
                       legacy_artifacts=("record.json", "checkpoint"))


def _check_user_files(tok, *paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            check_single_token(load_items(path), tok, path)


def _run(cfg, tr, va, run_dir: Path, resume: bool, info: dict, save_to: Path | None = None, overwrite: bool = False):
    torch.set_num_threads(cfg.threads)
    model, tok = registry.load_model(cfg.base)  # before finetune seeds torch, as the experiment's stages do
    rec = finetune(cfg, tr, va, run_dir, resume=resume, model=model, tokenizer=tok, data_info=info, save_to=save_to,
                   overwrite=overwrite)
    typer.echo(json.dumps({k: rec[k] for k in ("name", "steps", "stop_reason", "final_val_accuracy", "train_seconds",
                                               "eval_seconds", "saved_to")}, indent=2))


def teacher_cmd(
    base: str = typer.Option("smollm2-135m", help="model to fine-tune"),
    task: str = typer.Option("entity-tracking", help="a registered task: entity-tracking | tom | ..."),
    boxes: int = typer.Option(7, help="entity tracking: boxes per prompt"),
    train: Optional[Path] = typer.Option(None, help="training JSONL (default: generated, saved in the run dir)"),
    validation: Optional[Path] = typer.Option(None, help="validation JSONL (default: generated, held-out vocab)"),
    name: Optional[str] = typer.Option(None, help="cache name (default BASE-et-teacher / BASE-tom-teacher)"),
    steps: int = typer.Option(150, help="maximum optimizer steps"),
    target: Optional[float] = typer.Option(0.97, help="stop early once validation accuracy reaches this"),
    lr: float = typer.Option(3e-5),
    batch_size: int = typer.Option(16),
    eval_every: int = typer.Option(10),
    eval_items: int = typer.Option(200, help="validation items used for the stopping decision"),
    checkpoint_every: int = typer.Option(25),
    seed: int = typer.Option(0),
    threads: int = typer.Option(2),
    run_dir: Optional[Path] = typer.Option(None, help="checkpoints + record (default runs/tasks/NAME)"),
    resume: bool = typer.Option(True, help="resume from the run dir's checkpoint if there is one"),
    save_to: Optional[Path] = typer.Option(None, help="save the model into this directory instead of under --name "
                                                      "in the model cache"),
    overwrite: bool = typer.Option(False, help="replace an earlier run dir / a non-empty --save-to directory"),
):
    """Fine-tune the full model on the real task: the default teacher."""
    spec = _task(task)
    name = name or f"{Path(base).name}-{spec.short}-teacher"
    run_dir = run_dir or Path("runs/tasks") / Path(name).name
    check_destinations(name, steps, run_dir, resume, save_to, overwrite)
    try:
        cfg = FinetuneConfig(base=base, name=name, task=task, mode="teacher", lr=lr, batch_size=batch_size,
                             max_steps=steps, eval_every=eval_every, eval_items=eval_items, target=target,
                             checkpoint_every=checkpoint_every, seed=seed, threads=threads)
        tok = load_tokenizer(base)
        _check_user_files(tok, train, validation)
        tr, va, info = real_task_data(task, tok, boxes, seed, train, validation, run_dir, need_train=True)
    except (ValidationError, TaskFileError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    _run(cfg, tr, va, run_dir, resume, {**info, "boxes": boxes if spec.default_size else None}, save_to, overwrite)


def warmup_cmd(
    base: str = typer.Option("smollm2-135m", help="model to warm up (stays available untouched as the cold student)"),
    task: str = typer.Option("entity-tracking", help="a registered task: entity-tracking | tom | ..."),
    target: float = typer.Option(0.5, help="stop once VALIDATION accuracy on the real task reaches this"),
    boxes: int = typer.Option(7, help="entity tracking: boxes of the REAL task (validation)"),
    warm_boxes: str = typer.Option(",".join(map(str, WARMUP_BOXES)), help="entity tracking: box counts of the warm-up variant"),
    warm_template: Optional[str] = typer.Option(None, help="wording of the variant (default: prakash for ET -- fewer boxes and disjoint objects make it distinct; crate transferred too slowly -- and alt for ToM)"),
    validation: Optional[Path] = typer.Option(None, help="real-task validation JSONL (default: generated)"),
    avoid: list[Path] = typer.Option([], help="more JSONL files (e.g. the test set) whose vocabulary the warm-up must not use"),
    n_train: int = typer.Option(2000, help="warm-up items generated"),
    name: Optional[str] = typer.Option(None, help="cache name (default BASE-et-warm / BASE-tom-warm)"),
    steps: int = typer.Option(200, help="maximum optimizer steps"),
    lr: float = typer.Option(WARMUP_LR),
    batch_size: int = typer.Option(16),
    eval_every: int = typer.Option(5),
    eval_items: int = typer.Option(100),
    checkpoint_every: int = typer.Option(25),
    seed: int = typer.Option(0),
    threads: int = typer.Option(2),
    run_dir: Optional[Path] = typer.Option(None, help="checkpoints + record (default runs/tasks/NAME)"),
    resume: bool = typer.Option(True),
    save_to: Optional[Path] = typer.Option(None, help="save the model into this directory instead of under --name "
                                                      "in the model cache"),
    overwrite: bool = typer.Option(False, help="replace an earlier run dir / a non-empty --save-to directory"),
):
    """Briefly fine-tune on a related but distinct variant until real-task validation accuracy reaches --target."""
    spec = _task(task)
    name = name or f"{Path(base).name}-{spec.short}-warm"
    run_dir = run_dir or Path("runs/tasks") / Path(name).name
    check_destinations(name, steps, run_dir, resume, save_to, overwrite)
    try:
        wb = [int(x) for x in warm_boxes.split(",") if x.strip()]
        cfg = FinetuneConfig(base=base, name=name, task=task, mode="warmup", lr=lr, batch_size=batch_size,
                             max_steps=steps, eval_every=eval_every, eval_items=eval_items, target=target,
                             checkpoint_every=checkpoint_every, seed=seed, threads=threads)
        tok = load_tokenizer(base)
        _check_user_files(tok, validation)
        tr, va, info = warmup_data(task, tok, boxes, seed, validation, avoid, n_train, wb, warm_template, run_dir)
    except (ValidationError, TaskFileError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    info["real_task_boxes"] = boxes if spec.default_size else None
    _run(cfg, tr, va, run_dir, resume, info, save_to, overwrite)


def register(app: typer.Typer) -> None:
    app.command("teacher")(teacher_cmd)
    app.command("warmup")(warmup_cmd)
