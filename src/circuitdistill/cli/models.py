"""`circuitdistill models list|prepare|derive`."""
from __future__ import annotations

import json

import typer

from ..models import registry
from ..models.derive import DeriveConfig, derive, validate
from ..models.heal import HealConfig
from .config_command import config_command, switch

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


def derive_cmd(cfg: DeriveConfig, resume: bool = True):
    """Depth-prune a model, heal it by distillation from the original on general text, save it as NAME."""
    try:
        validate(cfg)
    except (ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    try:
        record = derive(cfg, resume=resume)
    except FileNotFoundError as e:  # the general text or a model is not installed
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{cfg.name}: {record['description']}")
    typer.echo(f"saved to {record['saved_to']}")


# healing's options keep the names they had before they were config fields: unprefixed, --heal-steps, --ppl-target
HEAL_OPTION_NAMES = {**{f"heal.{name}": ("--" + name.replace("_", "-"),) for name in HealConfig.model_fields},
                     "heal.steps": ("--heal-steps",), "heal.ppl_target_ratio": ("--ppl-target",)}
models_app.command("derive")(config_command(
    DeriveConfig, derive_cmd, positional=["source"], names=HEAL_OPTION_NAMES,
    extra=[switch("resume", "continue from a checkpoint of the same derivation, if any", default=True)]))


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
