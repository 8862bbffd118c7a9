"""`circuitdistill models list|prepare`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from ..models import registry
from ..models.derive import DeriveConfig, derive, validate
from ..models.heal import HealConfig

models_app = typer.Typer(help="Offline models: list the built-ins and convert them once to safetensors.",
                         no_args_is_help=True)


@models_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table")):
    """Built-in and cached (derived) models, with install state."""
    rows = registry.list_models()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        state = "prepared" if r["prepared"] else ("installed" if r["installed"] else "missing")
        typer.echo(f"{r['name']:<28} {r['kind']:<9} {state:<9} {r['description']}")
        if r.get("derivation"):
            d = r["derivation"]
            typer.echo(f"{'':<28} from {d['source']}: dropped layers {d['dropped_layers']} of {d['source_layers']}, "
                       f"healed {d['healing_steps']} steps, seed {r.get('seed')}")
        if r["install"]:
            typer.echo(f"{'':<28} install: {r['install']}")


@models_app.command("prepare")
def prepare_cmd(name: str = typer.Argument(..., help=f"built-in name: {', '.join(registry.BUILTINS)}"),
                force: bool = typer.Option(False, help="convert again even if cached")):
    """Convert a built-in GGUF model once to float32 safetensors in the cache."""
    try:
        path = registry.prepare(name, force=force)
    except (KeyError, registry.ModelNotAvailable) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{name}: {path}")


@models_app.command("derive")
def derive_cmd(
    source: str = typer.Argument(..., help="model to prune: a built-in name, a cached name or a local HF directory"),
    name: str = typer.Option(..., "--name", help="registry name of the result"),
    drop_layers: Optional[str] = typer.Option(None, "--drop-layers", help="layers to drop, e.g. '20-29' or '3,5,7-9'"),
    keep: Optional[int] = typer.Option(None, "--keep", help="layers to keep; drops the contiguous block whose input "
                                                            "and output hidden states are closest in angle"),
    heal_steps: int = typer.Option(300, "--heal-steps", help="most healing steps; 0 skips healing"),
    ppl_target: Optional[float] = typer.Option(1.3, "--ppl-target", help="stop healing once held-out perplexity "
                                                                         "<= this x the source's (0: never)"),
    lr: float = typer.Option(1e-4, help="AdamW learning rate"),
    batch_size: int = typer.Option(8, help="chunks per step"),
    seq_len: int = typer.Option(128, help="tokens per chunk"),
    temperature: float = typer.Option(1.0, help="distillation temperature"),
    kd_weight: float = typer.Option(1.0, help="weight of the KL to the source's next-token distribution"),
    lm_weight: float = typer.Option(1.0, help="weight of the next-token cross-entropy"),
    loss_positions: int = typer.Option(32, help="evenly spaced positions per chunk the losses read (0: all)"),
    eval_every: int = typer.Option(25, help="steps between held-out perplexity checks"),
    checkpoint_every: int = typer.Option(25, help="steps between checkpoints"),
    max_minutes: Optional[float] = typer.Option(None, help="stop healing after this many minutes (wall) in this run"),
    seed: int = typer.Option(0),
    threads: int = typer.Option(2, help="torch CPU threads"),
    run_dir: Optional[Path] = typer.Option(None, help="checkpoint directory (default: under the cache)"),
    resume: bool = typer.Option(True, help="continue from a checkpoint of the same derivation, if any"),
    overwrite: bool = typer.Option(False, help="replace an earlier derived model of this name"),
):
    """Depth-prune a model, heal it by distillation from the original on general text, save it as NAME."""
    try:
        cfg = DeriveConfig(
            source=source, name=name, drop_layers=drop_layers, keep=keep, seed=seed, overwrite=overwrite,
            run_dir=str(run_dir) if run_dir else None,
            heal=HealConfig(steps=heal_steps, ppl_target_ratio=ppl_target or None, lr=lr, batch_size=batch_size,
                            seq_len=seq_len, temperature=temperature, kd_weight=kd_weight, lm_weight=lm_weight,
                            loss_positions=loss_positions or None,
                            eval_every=eval_every, checkpoint_every=checkpoint_every, threads=threads,
                            max_minutes=max_minutes))
        validate(cfg)
    except (ValidationError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    try:
        record = derive(cfg, resume=resume)
    except FileNotFoundError as e:  # the general text or a model is not installed
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{name}: {record['description']}")
    typer.echo(f"saved to {record['saved_to']}")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
