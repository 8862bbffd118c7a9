"""Every command of the CLI, found by walking click's command tree (a new command is covered automatically)."""
from __future__ import annotations

from typer.main import get_command

from circuitdistill.cli.main import app


def _commands(cmd, path=()):
    if hasattr(cmd, "commands"):
        for name, sub in sorted(cmd.commands.items()):
            yield from _commands(sub, (*path, name))
    else:
        yield path, cmd


COMMANDS = dict(_commands(get_command(app)))
