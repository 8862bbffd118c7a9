"""`circuitdistill discover`: options -> ``DiscoverConfig`` -> ``run_discover``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from .. import preflight
from ..circuits.discover import DiscoverConfig, run_discover
from ..models.registry import ModelNotAvailable
from ..output_dirs import prepare_output_dir
from ..tasks.io import TaskFileError, load_items
from ..utils import UserError


def discover_cmd(
    model: str = typer.Option(..., help="model name (built-in, derived, or a local HF directory)"),
    data: Path = typer.Option(..., help="task items, JSONL (circuitdistill data ...)"),
    method: str = typer.Option("activation", help="a registered discovery method: activation | path | attribution"),
    ablation: Optional[str] = typer.Option(None, help="mean | zero | resample | corrupted (default: corrupted when "
                                                       "every item has a corrupted_prompt, else mean)"),
    positions: str = typer.Option("final", help="final | all: where a head's output is replaced"),
    metric: str = typer.Option("logprob", help="logprob | logit_diff | accuracy | candidate_accuracy"),
    top_n: Optional[int] = typer.Option(None, help="keep the K heads with the largest |score| (default: 10% of heads)"),
    threshold: Optional[float] = typer.Option(None, help="keep heads with |score| >= X instead"),
    n_items: int = typer.Option(64, help="use the first N items of the file"),
    batch_size: int = typer.Option(32),
    rows_per_pass: Optional[int] = typer.Option(None, help="rows of one batched forward pass"),
    seed: int = typer.Option(0),
    levels: int = typer.Option(2, help="path: receiver levels"),
    per_level: int = typer.Option(5, help="path: heads kept per group"),
    components: str = typer.Option("qkv", help="path: receiver inputs, comma separated groups, e.g. qkv or q,k,v"),
    ig_steps: int = typer.Option(0, help="attribution: integrated-gradient steps (0 = plain AtP)"),
    qk_fix: bool = typer.Option(False, help="attribution: recompute downstream attention softmaxes exactly (AtP*)"),
    grad_drop: bool = typer.Option(False, help="attribution: GradDrop magnitudes against cancelling paths (AtP*)"),
    verify: Optional[int] = typer.Option(None, help="attribution: re-score the top K heads by exact patching and "
                                                    "choose the circuit among them"),
    random_sets: int = typer.Option(0, help="also report circuit-only faithfulness with N random head sets"),
    faithfulness_positions: str = typer.Option("all", help="with --random-sets: ablate non-circuit heads at all "
                                                            "positions or only at the final one"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    out: Path = typer.Option(..., help="output directory"),
    overwrite: bool = typer.Option(False, help="replace an earlier run's files in --out (or write into a directory "
                                                "holding other files)"),
):
    """Find the attention heads that implement a task: writes circuit.json, heatmap.png and summary.txt."""
    try:
        cfg = DiscoverConfig(model=model, data=data, method=method, ablation=ablation, positions=positions,
                             metric=metric, top_n=top_n, threshold=threshold, n_items=n_items, batch_size=batch_size,
                             rows_per_pass=rows_per_pass, seed=seed, levels=levels, per_level=per_level,
                             components=[c.strip() for c in components.split(",") if c.strip()], ig_steps=ig_steps,
                             qk_fix=qk_fix, grad_drop=grad_drop, verify=verify,
                             random_sets=random_sets, faithfulness_positions=faithfulness_positions, threads=threads,
                             out=out)
    except ValidationError as e:
        for err in e.errors():
            field = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "options"
            typer.echo(f"error: {field}: {err['msg']}", err=True)
        raise typer.Exit(2)
    if not cfg.data.exists():
        typer.echo(f"error: --data {cfg.data} does not exist", err=True)
        raise typer.Exit(2)
    check_discover_inputs(cfg, overwrite)
    try:
        circuit, summary = run_discover(cfg)
    except (ValueError, IndexError, TaskFileError, ModelNotAvailable, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(summary)
    typer.echo(f"wrote {cfg.out / 'circuit.json'}, {cfg.out / 'heatmap.png'}, {cfg.out / 'summary.txt'}")


def check_discover_inputs(cfg: DiscoverConfig, overwrite: bool) -> None:
    """Items scorable by the model, --top-n within its heads, --out ours (or new) and writable."""
    preflight.check_scorable(load_items(cfg.data)[: cfg.n_items], cfg.model, cfg.data)
    n_layers, n_heads = preflight.model_shape(cfg.model)
    if cfg.top_n is not None and cfg.top_n > n_layers * n_heads:
        raise UserError(f"--top-n {cfg.top_n} is more than the {n_layers * n_heads} heads of {cfg.model} "
                        f"({n_layers} layers x {n_heads})")
    prepare_output_dir(cfg.out, overwrite=overwrite,
                       legacy_artifacts=("circuit.json", "summary.txt", "heatmap.png"))


def register(app: typer.Typer) -> None:
    app.command("discover")(discover_cmd)
