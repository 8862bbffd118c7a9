"""`circuitdistill data entity-tracking|tom|check`: generate task JSONL files (or validate one)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..utils import provenance, sha256_file, versioned, write_json_atomic

data_app = typer.Typer(help="Task data: generate entity-tracking / theory-of-mind JSONL, or check a user file.",
                       no_args_is_help=True)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal["entity-tracking", "tom"]
    n: int = Field(1000, ge=1, le=10_000_000)
    seed: int = 0
    models: list[str] = Field(default_factory=lambda: ["smollm2-135m"], min_length=1)
    corruption: str = "all"
    template: str = "prakash"
    boxes: int = Field(7, ge=2, le=26)
    splits: Optional[tuple[int, int, int]] = None
    disjoint_vocab: bool = False


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


def _write(cfg: DataConfig, out: Path | None, out_dir: Path | None, prefix: str, result) -> None:
    from ..tasks.io import save_items

    from ..output_dirs import prepare_output_file

    written = {}
    if isinstance(result, dict):
        if out_dir is None:
            raise typer.BadParameter("--splits writes three files; give --out-dir (and optionally --prefix)")
        if out_dir.exists() and not out_dir.is_dir():
            raise typer.BadParameter(f"--out-dir {out_dir} is a file")
        for split in result:
            prepare_output_file(out_dir / f"{prefix}_{split}.jsonl")
        for split, items in result.items():
            path = out_dir / f"{prefix}_{split}.jsonl"
            save_items(path, items)
            written[split] = {"path": str(path), "n": len(items), "sha256": sha256_file(path)}
        manifest = out_dir / f"{prefix}_manifest.json"
    else:
        if out is None:
            raise typer.BadParameter("give --out F.jsonl")
        prepare_output_file(out)
        save_items(out, result)
        written["all"] = {"path": str(out), "n": len(result), "sha256": sha256_file(out)}
        manifest = out.with_suffix(".manifest.json")
    write_json_atomic(manifest, versioned("data-manifest", {"files": written, **provenance(cfg.seed, cfg)}))
    for k, v in written.items():
        typer.echo(f"{k}: {v['n']} items -> {v['path']}")
    typer.echo(f"manifest: {manifest}")


def _tokenizers(models: list[str]):
    from ..tasks.vocab import load_tokenizer

    return [load_tokenizer(m) for m in models]


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
    out: Optional[Path] = typer.Option(None, help="output JSONL (single set)"),
    out_dir: Optional[Path] = typer.Option(None, help="output folder (with --splits)"),
    prefix: str = typer.Option("et", help="file prefix with --splits: PREFIX_train.jsonl ..."),
):
    """Entity tracking: 'The apple is in Box F, ... Box F contains the' -> ' apple'."""
    from ..tasks import entity_tracking as et

    try:
        cfg = DataConfig(task="entity-tracking", n=n, seed=seed, models=model, corruption=corruption,
                         template=template, boxes=boxes, splits=_parse_splits(splits), disjoint_vocab=disjoint_objects)
        toks = _tokenizers(cfg.models)
        if cfg.splits:
            result = et.make_splits(*cfg.splits, boxes=cfg.boxes, seed=cfg.seed, tokenizers=toks,
                                    corruption=cfg.corruption, template=cfg.template,
                                    disjoint_objects=cfg.disjoint_vocab)
        else:
            result = et.generate(cfg.n, cfg.boxes, cfg.seed, toks, cfg.corruption, cfg.template)
    except (ValueError, ValidationError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    _write(cfg, out, out_dir, prefix, result)


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
    out: Optional[Path] = typer.Option(None, help="output JSONL (single set)"),
    out_dir: Optional[Path] = typer.Option(None, help="output folder (with --splits)"),
    prefix: str = typer.Option("tom", help="file prefix with --splits"),
):
    """Theory of mind (CausalToM style): what does a character believe a container holds?"""
    from ..tasks import tom

    try:
        cfg = DataConfig(task="tom", n=n, seed=seed, models=model, corruption=corruption, template=template,
                         splits=_parse_splits(splits), disjoint_vocab=disjoint_states)
        toks = _tokenizers(cfg.models)
        if cfg.splits:
            result = tom.make_splits(*cfg.splits, seed=cfg.seed, tokenizers=toks, corruption=cfg.corruption,
                                     template=cfg.template, disjoint_states=cfg.disjoint_vocab)
        else:
            result = tom.generate(cfg.n, cfg.seed, toks, corruption=cfg.corruption, template=cfg.template)
    except (ValueError, ValidationError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    _write(cfg, out, out_dir, prefix, result)


@data_app.command("check")
def check_cmd(path: Path = typer.Argument(..., help="JSONL task file"),
              model: Optional[str] = typer.Option(None, "--model", "-m", help="also check single-token answers")):
    """Validate a task file (our format or the box-dataset format); lists every bad line and field."""
    from ..tasks.io import TaskFileError, check_single_token, load_items

    try:
        items = load_items(path)
        if model:
            from ..tasks.vocab import load_tokenizer

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
