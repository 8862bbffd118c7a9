"""`circuitdistill compare`: mechanistic teacher–student comparison (component influence, alignment score,
circuits by pruning, concentration of reliance). See docs/compare.md."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from ..analysis.compare import CompareConfig, run_compare, summary_line

from ..output_dirs import prepare_output_dir

from ..preflight import check_device

from ..tasks.io import load_items


def compare_cmd(
    teacher: str = typer.Option(..., help="teacher: built-in name, derived name or local model directory"),
    student: str = typer.Option(..., help="student: built-in name, derived name or local model directory"),
    data: Path = typer.Option(..., help="task items, JSONL"),
    out: Path = typer.Option(..., help="output directory (compare.json, compare.md, PNGs)"),
    n_items: int = typer.Option(64, help="items drawn (seeded) from --data; all if fewer"),
    metric: str = typer.Option("logit_diff", help="logit_diff | logprob | accuracy"),
    ablation: str = typer.Option("zero", help="zero | mean"),
    head_similarity: str = typer.Option("pattern", help="pattern (cosine of attention patterns) | cka (head outputs)"),
    matching: str = typer.Option("greedy", help="greedy (best match) | hungarian (one-to-one)"),
    k: int = typer.Option(3, help="principal directions per MLP"),
    threshold: float = typer.Option(20.0, help="pruning threshold T (percent)"),
    sweep: str = typer.Option("10,15,20,25,30", help="comma-separated pruning thresholds for the sweep"),
    prune: bool = typer.Option(True, help="find circuits by iterative pruning"),
    max_prune_rounds: int = typer.Option(10, help="stop pruning after this many rounds (reported as unstable)"),
    n_boot: int = typer.Option(1000, help="bootstrap resamples of the items"),
    batch_rows: int = typer.Option(64, help="rows per forward pass in ablation sweeps"),
    item_batch: int = typer.Option(16, help="items per tokenised batch"),
    pattern_len: int = typer.Option(32, help="crop attention patterns to at most this many final tokens"),
    seed: int = typer.Option(0),
    device: str = typer.Option("cpu"),
    threads: int = typer.Option(2, help="torch CPU threads"),
    cache: bool = typer.Option(True, help="reuse/store per-model sweeps under $CIRCUITDISTILL_HOME/compare"),
    progress: bool = typer.Option(True, help="progress bars"),
    config: Optional[Path] = typer.Option(None, help="JSON file with CompareConfig fields; its values override the flags"),
    overwrite: bool = typer.Option(False, help="replace an earlier comparison in --out (or write into a directory "
                                                "holding other files)"),
):
    """Compare a teacher's and a student's mechanisms on a task (Distilled Circuits)."""
    import json

    try:
        sweep_vals = [float(x) for x in sweep.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"--sweep takes comma-separated percentages, e.g. 10,15,20,25,30 (got {sweep!r})")
    fields = dict(teacher=teacher, student=student, data=data, out=out, n_items=n_items, metric=metric,
                  ablation=ablation, head_similarity=head_similarity, matching=matching, k=k, threshold=threshold,
                  sweep=sweep_vals, prune=prune, max_prune_rounds=max_prune_rounds, n_boot=n_boot, batch_rows=batch_rows, item_batch=item_batch,
                  pattern_len=pattern_len, seed=seed, device=device, threads=threads, cache=cache, progress=progress)
    if config is not None:
        fields.update(json.loads(config.read_text()))
    try:
        cfg = CompareConfig(**fields)
    except ValidationError as e:
        for err in e.errors():
            typer.echo(f"error: --{'-'.join(str(x) for x in err['loc']).replace('_', '-')}: {err['msg']}", err=True)
        raise typer.Exit(2)
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
    app.command("compare")(compare_cmd)
