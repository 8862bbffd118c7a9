"""`circuitdistill data entity-tracking|tom|task|check`: generate task JSONL files (or validate one)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from ..tasks.datasets import DataConfig, make_data, write_data
from ..tasks.io import TaskFileError, check_single_token, load_items
from ..tasks.registry import get_task
from ..tasks.vocab import load_tokenizer

data_app = typer.Typer(help="Task data: generate entity-tracking / theory-of-mind / any registered task's JSONL, or check a user file.",
                       no_args_is_help=True)


# Unlike elsewhere, --out names a FILE here (one set); --splits writes three files and a manifest, so it takes a
# folder under its own name, --out-dir, rather than giving one option two kinds of value.
OUT_HELP = "output JSONL file (a single set)"
OUT_DIR_HELP = "output folder for the three split files and the manifest (with --splits)"


def _parse_splits(s: str | None) -> tuple[int, int, int] | None:
    if not s:
        return None
    try:
        parts = tuple(int(x) for x in s.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 0:
        raise typer.BadParameter(f"--splits takes three non-negative counts TRAIN,VALIDATION,TEST (got {s!r})")
    return parts  # type: ignore[return-value]


def _generate(cfg_kw: dict, splits: str | None, out: Path | None, out_dir: Path | None, prefix: str) -> None:
    """Validate the options into a DataConfig, make the items, write them and their manifest."""
    try:
        cfg = DataConfig(**cfg_kw, splits=_parse_splits(splits))
        result = make_data(cfg)
    except (ValueError, ValidationError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    written, manifest = write_data(cfg, result, out, out_dir, prefix)
    for k, v in written.items():
        typer.echo(f"{k}: {v['n']} items -> {v['path']}")
    for name, v in json.loads(manifest.read_text())["vocabulary"].items():
        typer.echo(f"{name}: {v['kept']} of {v['shipped']} words are single tokens for every tokenizer "
                   f"({len(v['rejected'])} rejected)")
    typer.echo(f"manifest: {manifest}")


@data_app.command("entity-tracking")
def entity_tracking_cmd(
    boxes: int = typer.Option(7, help="boxes per prompt (chance = 1/boxes)"),
    n: int = typer.Option(1000, help="number of items (ignored with --splits)"),
    seed: int = typer.Option(0),
    model: list[str] = typer.Option(["smollm2-135m"], "--model", "-m",
                                    help="every model whose tokenizer must see single-token objects/labels; repeat"),
    corruption: str = typer.Option("all", help="query_box | objects | box_labels | all | mixed"),
    template: str = typer.Option("prakash", help="prakash (the real task) | crate (warm-up wording)"),
    splits: Optional[str] = typer.Option(None, help="TRAIN,VALIDATION,TEST counts, e.g. 2000,500,1000"),
    disjoint_objects: bool = typer.Option(False, help="with --splits: train objects disjoint from validation/test"),
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    out_dir: Optional[Path] = typer.Option(None, help=OUT_DIR_HELP),
    prefix: str = typer.Option("et", help="file prefix with --splits: PREFIX_train.jsonl ..."),
):
    """Entity tracking: 'The apple is in Box F, ... Box F contains the' -> ' apple'."""
    _generate(dict(task="entity-tracking", n=n, seed=seed, models=model, corruption=corruption, template=template,
                   boxes=boxes, disjoint_vocab=disjoint_objects), splits, out, out_dir, prefix)


@data_app.command("tom")
def tom_cmd(
    n: int = typer.Option(1000, help="number of items (ignored with --splits)"),
    seed: int = typer.Option(0),
    model: list[str] = typer.Option(["smollm2-135m"], "--model", "-m",
                                    help="every model whose tokenizer must see single-token answers; repeat"),
    corruption: str = typer.Option("auto", help="auto | visibility | states"),
    template: str = typer.Option("story", help="story (the real task) | alt (warm-up wording)"),
    splits: Optional[str] = typer.Option(None, help="TRAIN,VALIDATION,TEST counts, e.g. 2000,500,1000"),
    disjoint_states: bool = typer.Option(False, help="with --splits: train states disjoint from validation/test"),
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    out_dir: Optional[Path] = typer.Option(None, help=OUT_DIR_HELP),
    prefix: str = typer.Option("tom", help="file prefix with --splits"),
):
    """Theory of mind (CausalToM style): what does a character believe a container holds?"""
    _generate(dict(task="tom", n=n, seed=seed, models=model, corruption=corruption, template=template,
                   disjoint_vocab=disjoint_states), splits, out, out_dir, prefix)


@data_app.command("task")
def task_cmd(
    name: str = typer.Argument(..., help="a registered task (tasks/registry.py), e.g. entity-tracking or tom"),
    n: int = typer.Option(1000, help="number of items (ignored with --splits)"),
    seed: int = typer.Option(0),
    model: list[str] = typer.Option(["smollm2-135m"], "--model", "-m",
                                    help="every model whose tokenizer must see single-token answers; repeat"),
    size: Optional[int] = typer.Option(None, help="the task's size, if it has one (entity tracking: boxes)"),
    corruption: Optional[str] = typer.Option(None, help="the task's corruption (default: its first)"),
    template: Optional[str] = typer.Option(None, help="the task's wording (default: the real task's)"),
    splits: Optional[str] = typer.Option(None, help="TRAIN,VALIDATION,TEST counts, e.g. 2000,500,1000"),
    disjoint_vocab: bool = typer.Option(False, help="with --splits: train answers disjoint from validation/test"),
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    out_dir: Optional[Path] = typer.Option(None, help=OUT_DIR_HELP),
    prefix: Optional[str] = typer.Option(None, help="file prefix with --splits (default: the task's short name)"),
):
    """Any registered task, by name."""
    try:
        short = get_task(name).short
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    _generate(dict(task=name, n=n, seed=seed, models=model, corruption=corruption, template=template, boxes=size,
                   disjoint_vocab=disjoint_vocab), splits, out, out_dir, prefix or short)


@data_app.command("check")
def check_cmd(path: Path = typer.Argument(..., help="JSONL task file"),
              model: Optional[str] = typer.Option(None, "--model", "-m", help="also check single-token answers")):
    """Validate a task file (our format or the box-dataset format); lists every bad line and field."""
    try:
        items = load_items(path)
        if model:
            check_single_token(items, load_tokenizer(model), path)
    except (TaskFileError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    tasks = sorted({str(it.meta.get("task", "user")) for it in items})
    typer.echo(json.dumps({"path": str(path), "n": len(items), "tasks": tasks,
                           "with_corrupted": sum(it.corrupted_prompt is not None for it in items),
                           "with_candidates": sum(it.candidates is not None for it in items)}))


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
