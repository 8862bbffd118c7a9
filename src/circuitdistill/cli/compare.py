"""`circuitdistill compare`: mechanistic teacher–student comparison (component influence, alignment score,
circuits by pruning, concentration of reliance). See docs/compare.md."""
from __future__ import annotations

import typer

from ..analysis.compare import CompareConfig, run_compare, summary_line
from ..output_dirs import prepare_output_dir
from ..preflight import check_device
from ..tasks.io import load_items
from .config_command import OVERWRITE, config_command


def compare_cmd(cfg: CompareConfig, overwrite: bool = False):
    """Compare a teacher's and a student's mechanisms on a task (Distilled Circuits)."""
    check_device(cfg.device)
    if cfg.data.exists():
        load_items(cfg.data)
    prepare_output_dir(cfg.out, overwrite=overwrite, legacy_artifacts=("compare.json",))
    try:
        result = run_compare(cfg)
    except (FileNotFoundError, ValueError, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(summary_line(result))
    typer.echo(f"wrote {cfg.out / 'compare.json'}, {cfg.out / 'compare.md'} and 3 PNGs")


def register(app: typer.Typer) -> None:
    app.command("compare")(config_command(CompareConfig, compare_cmd, extra=[OVERWRITE]))
