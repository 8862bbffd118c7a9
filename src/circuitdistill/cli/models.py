"""`circuitdistill models list|prepare`."""
from __future__ import annotations

import json

import typer

from ..models import registry

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


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
