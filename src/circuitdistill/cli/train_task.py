"""`circuitdistill teacher` and `circuitdistill warmup`: fine-tune a base model on a task."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from ..tasks.warmup import WARMUP_BOXES, WARMUP_LR, WARMUP_TEMPLATE, vocab_of, warmup_items

TASKS = ("entity-tracking", "tom")
SHORT = {"entity-tracking": "et", "tom": "tom"}


def _task(task: str) -> str:
    if task not in TASKS:
        raise typer.BadParameter(f"--task must be one of {', '.join(TASKS)} (got {task!r})")
    return task


def _real_splits(task: str, tok, boxes: int, seed: int, n_train: int, n_val: int):
    """The real task's train/validation sets (held-out objects/states for validation)."""
    if task == "entity-tracking":
        from ..tasks import entity_tracking as et

        return et.make_splits(n_train, n_val, 0, boxes, seed, [tok], corruption="all", disjoint_objects=True)
    from ..tasks import tom

    return tom.make_splits(n_train, n_val, 0, seed, [tok], disjoint_states=True)


def _load_or_make(task, tok, boxes, seed, train: Path | None, validation: Path | None, run_dir: Path, need_train: bool):
    from ..tasks.io import load_items, save_items

    info = {}
    tr = load_items(train) if (train and need_train) else None
    va = load_items(validation) if validation else None
    if (need_train and tr is None) or va is None:
        gen = _real_splits(task, tok, boxes, seed, 2000 if need_train and tr is None else 0, 500 if va is None else 0)
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


def _common_cfg(**kw):
    from ..tasks.finetune import FinetuneConfig

    return FinetuneConfig(**kw)


def check_destinations(name: str, steps: int, run_dir: Path, resume: bool, save_to: Path | None,
                       overwrite: bool) -> None:
    """Before any compute: at least one step, a name that cannot clobber a built-in or a path (or a --save-to
    directory that is new, empty or a model we saved), and a run dir that is ours and writable."""
    from ..models.registry import check_derived_name, check_save_dir
    from ..output_dirs import prepare_output_dir
    from ..utils import UserError

    if steps < 1:
        raise UserError(f"--steps {steps}: training needs at least one step (the result would be the untrained base)")
    if save_to is None:
        check_derived_name(name)
    else:
        check_save_dir(save_to, overwrite=overwrite)
    prepare_output_dir(run_dir, overwrite=overwrite, resume=resume, resume_flag="--resume",
                       legacy_artifacts=("record.json", "checkpoint"))


def _check_user_files(tok, *paths: Path | None) -> None:
    from ..tasks.io import check_single_token, load_items

    for path in paths:
        if path is not None:
            check_single_token(load_items(path), tok, path)


def _run(cfg, tr, va, run_dir: Path, resume: bool, info: dict, save_to: Path | None = None, overwrite: bool = False):
    from ..models import registry
    from ..tasks.finetune import finetune

    import torch
    torch.set_num_threads(cfg.threads)
    model, tok = registry.load_model(cfg.base)
    rec = finetune(cfg, tr, va, run_dir, resume=resume, model=model, tokenizer=tok, data_info=info, save_to=save_to,
                   overwrite=overwrite)
    typer.echo(json.dumps({k: rec[k] for k in ("name", "steps", "stop_reason", "final_val_accuracy", "train_seconds",
                                               "eval_seconds", "saved_to")}, indent=2))


def teacher_cmd(
    base: str = typer.Option("smollm2-135m", help="model to fine-tune"),
    task: str = typer.Option("entity-tracking", help="entity-tracking | tom"),
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
    from ..tasks.io import TaskFileError
    from ..tasks.vocab import load_tokenizer

    task = _task(task)
    name = name or f"{Path(base).name}-{SHORT[task]}-teacher"
    run_dir = run_dir or Path("runs/tasks") / Path(name).name
    check_destinations(name, steps, run_dir, resume, save_to, overwrite)
    try:
        cfg = _common_cfg(base=base, name=name, task=task, mode="teacher", lr=lr, batch_size=batch_size,
                          max_steps=steps, eval_every=eval_every, eval_items=eval_items, target=target,
                          checkpoint_every=checkpoint_every, seed=seed, threads=threads)
        tok = load_tokenizer(base)
        _check_user_files(tok, train, validation)
        tr, va, info = _load_or_make(task, tok, boxes, seed, train, validation, run_dir, need_train=True)
    except (ValidationError, TaskFileError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    _run(cfg, tr, va, run_dir, resume, {**info, "boxes": boxes if task == "entity-tracking" else None}, save_to,
         overwrite)


def warmup_cmd(
    base: str = typer.Option("smollm2-135m", help="model to warm up (stays available untouched as the cold student)"),
    task: str = typer.Option("entity-tracking", help="entity-tracking | tom"),
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
    from ..tasks.io import TaskFileError, load_items
    from ..tasks.vocab import load_tokenizer

    task = _task(task)
    name = name or f"{Path(base).name}-{SHORT[task]}-warm"
    run_dir = run_dir or Path("runs/tasks") / Path(name).name
    check_destinations(name, steps, run_dir, resume, save_to, overwrite)
    template = warm_template or WARMUP_TEMPLATE[task]
    try:
        wb = [int(x) for x in warm_boxes.split(",") if x.strip()]
        cfg = _common_cfg(base=base, name=name, task=task, mode="warmup", lr=lr, batch_size=batch_size,
                          max_steps=steps, eval_every=eval_every, eval_items=eval_items, target=target,
                          checkpoint_every=checkpoint_every, seed=seed, threads=threads)
        tok = load_tokenizer(base)
        _check_user_files(tok, validation)
        _, va, info = _load_or_make(task, tok, boxes, seed, None, validation, run_dir, need_train=False)
        avoid_words = vocab_of(va)
        for p in avoid:
            avoid_words |= vocab_of(load_items(p))
        tr, variant = warmup_items(task, tok, seed, n_train, avoid_words, wb, template)
    except (ValidationError, TaskFileError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    from ..tasks.io import save_items

    save_items(run_dir / "data_warmup.jsonl", tr)
    info.update({"warmup_file": str(run_dir / "data_warmup.jsonl"), "variant": variant,
                 "avoided_words": len(avoid_words), "avoid_files": [str(p) for p in avoid],
                 "real_task_boxes": boxes if task == "entity-tracking" else None})
    _run(cfg, tr, va, run_dir, resume, info, save_to, overwrite)


def register(app: typer.Typer) -> None:
    app.command("teacher")(teacher_cmd)
    app.command("warmup")(warmup_cmd)
