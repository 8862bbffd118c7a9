"""`circuitdistill` command line. Every module in this package that defines ``register(app)`` adds its commands.

Every command runs inside ``user_errors``: a ``UserError`` (a bad option, file or name) prints one line and
exits 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil

import typer

import circuitdistill.cli as _pkg
from circuitdistill import __version__
from circuitdistill.utils import UserError

app = typer.Typer(help="Mechanism-level distillation of language models.", no_args_is_help=True, rich_markup_mode=None,
                  pretty_exceptions_show_locals=False)
_debug = {"on": False}


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"circuitdistill {__version__}")
        raise typer.Exit()


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show the full traceback of an error"),
             version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="print the version and exit")):
    """Mechanism-level distillation of language models."""
    _debug["on"] = debug


def user_errors(fn):
    """Turn a UserError raised by a command into one line on stderr and exit code 2 (traceback with --debug)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if _debug["on"]:
                raise
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
    return wrapper


def _guard_all(typer_app: typer.Typer) -> None:
    for cmd in typer_app.registered_commands:
        if cmd.callback is not None and not getattr(cmd.callback, "_guarded", False):
            cmd.callback = user_errors(cmd.callback)
            cmd.callback._guarded = True
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _guard_all(group.typer_instance)


for _info in sorted(pkgutil.iter_modules(_pkg.__path__), key=lambda m: m.name):
    if _info.name != "main":
        _mod = importlib.import_module(f"circuitdistill.cli.{_info.name}")
        if hasattr(_mod, "register"):
            _mod.register(app)
_guard_all(app)

if __name__ == "__main__":
    app()
