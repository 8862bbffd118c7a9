"""`circuitdistill` command line. Every module in this package that defines ``register(app)`` adds its commands."""
from __future__ import annotations

import importlib
import pkgutil

import typer

import circuitdistill.cli as _pkg

app = typer.Typer(help="Mechanism-level distillation of language models.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)

for _info in sorted(pkgutil.iter_modules(_pkg.__path__), key=lambda m: m.name):
    if _info.name != "main":
        _mod = importlib.import_module(f"circuitdistill.cli.{_info.name}")
        if hasattr(_mod, "register"):
            _mod.register(app)

if __name__ == "__main__":
    app()
