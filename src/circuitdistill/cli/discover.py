"""`circuitdistill discover`: options (fields of ``DiscoverConfig``) -> ``run_discover``."""
from __future__ import annotations

import typer

from .. import preflight
from ..circuits.discover import DiscoverConfig, run_discover
from ..models.registry import ModelNotAvailable
from ..output_dirs import prepare_output_dir
from ..tasks.io import TaskFileError, load_items
from ..utils import UserError
from .config_command import OVERWRITE, config_command


def discover_cmd(cfg: DiscoverConfig, overwrite: bool = False):
    """Find the attention heads that implement a task: writes circuit.json, heatmap.png and summary.txt."""
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
    """Items scorable by the model, --circuit-size within its heads, --out ours (or new) and writable."""
    preflight.check_scorable(load_items(cfg.data)[: cfg.max_items], cfg.model, cfg.data)
    n_layers, n_heads = preflight.model_shape(cfg.model)
    if cfg.circuit_size is not None and cfg.circuit_size > n_layers * n_heads:
        raise UserError(f"--circuit-size {cfg.circuit_size} is more than the {n_layers * n_heads} heads of {cfg.model} "
                        f"({n_layers} layers x {n_heads})")
    prepare_output_dir(cfg.out, overwrite=overwrite,
                       legacy_artifacts=("circuit.json", "summary.txt", "heatmap.png"))


def register(app: typer.Typer) -> None:
    app.command("discover")(config_command(DiscoverConfig, discover_cmd, extra=[OVERWRITE]))
