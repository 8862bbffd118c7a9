"""`circuitdistill teacher` and `circuitdistill warmup`: fine-tune a base model on a task."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import typer

from ..models import registry
from ..models.registry import check_derived_name, check_save_dir
from ..output_dirs import prepare_output_dir
from ..tasks.finetune import finetune
from ..tasks.finetune_runs import TeacherRun, WarmupRun
from ..tasks.io import TaskFileError, check_single_token, load_items
from ..tasks.registry import get_task
from ..tasks.vocab import load_tokenizer
from ..tasks.warmup import real_task_data, warmup_data
from ..utils import UserError
from .config_command import config_command, switch

RESUME = switch("resume", "resume from the run dir's checkpoint if there is one", default=True)
OVERWRITE = switch("overwrite", "replace an earlier run dir / a non-empty --save-to directory")
NAMES = {"max_steps": ("--steps",)}  # the option's name before it was a config field


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
    model, tok = registry.load_model(cfg.base, device=cfg.device, dtype=cfg.dtype)  # before finetune seeds torch, as the experiment's stages do
    rec = finetune(cfg, tr, va, run_dir, resume=resume, model=model, tokenizer=tok, data_info=info, save_to=save_to,
                   overwrite=overwrite)
    typer.echo(json.dumps({k: rec[k] for k in ("name", "steps", "stop_reason", "final_val_accuracy", "train_seconds",
                                               "eval_seconds", "saved_to")}, indent=2))


def _fine_tune(run: TeacherRun | WarmupRun, suffix: str, resume: bool, overwrite: bool,
               user_files: tuple[Path | None, ...], make_data: Callable) -> None:
    """Check the destinations and the user's files, make the data (``make_data(tok, run_dir)``), train."""
    name = run.name or f"{Path(run.base).name}-{get_task(run.task).short}-{suffix}"
    run_dir = run.out or Path("runs/tasks") / Path(name).name
    check_destinations(name, run.max_steps, run_dir, resume, run.save_to, overwrite)
    try:
        tok = load_tokenizer(run.base)
        _check_user_files(tok, *user_files)
        tr, va, info = make_data(tok, run_dir)
    except (TaskFileError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    _run(run.finetune_config(name), tr, va, run_dir, resume, info, run.save_to, overwrite)


def _size(run: TeacherRun | WarmupRun) -> int | None:
    return run.boxes if get_task(run.task).default_size else None


def teacher_cmd(run: TeacherRun, resume: bool = True, overwrite: bool = False):
    """Fine-tune the full model on the real task: the default teacher."""
    def data(tok, run_dir: Path):
        tr, va, info = real_task_data(run.task, tok, run.boxes, run.seed, run.train, run.validation, run_dir,
                                      need_train=True)
        return tr, va, {**info, "boxes": _size(run)}

    _fine_tune(run, "teacher", resume, overwrite, (run.train, run.validation), data)


def warmup_cmd(run: WarmupRun, resume: bool = True, overwrite: bool = False):
    """Briefly fine-tune on a related but distinct variant until real-task validation accuracy reaches --target."""
    def data(tok, run_dir: Path):
        tr, va, info = warmup_data(run.task, tok, run.boxes, run.seed, run.validation, run.avoid, run.n_train,
                                   run.warm_boxes, run.warm_template, run_dir)
        return tr, va, {**info, "real_task_boxes": _size(run)}

    _fine_tune(run, "warm", resume, overwrite, (run.validation,), data)


def register(app: typer.Typer) -> None:
    extra = [RESUME, OVERWRITE]
    app.command("teacher")(config_command(TeacherRun, teacher_cmd, extra=extra, skip=["mode"], names=NAMES))
    app.command("warmup")(config_command(WarmupRun, warmup_cmd, extra=extra, skip=["mode"], names=NAMES))
