"""Every command's --help shows each option's default (and the choices of a choice option): the help is printed
without rich markup, which used to swallow the `[default: ...]` and `[choices: ...]` brackets."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from circuitdistill.cli.main import app

from _cli_tree import COMMANDS


def _shows_a_default(opt) -> bool:
    """Options that must show a default: all but 'not given' (None, or an empty repeatable option) and plain
    on-switches that default to off (their absence is the default; click prints none for them)."""
    if opt.default is None or opt.default == () or opt.default == [] or opt.name == "help":
        return False
    return not (opt.is_flag and not opt.secondary_opts and opt.default is False)


@pytest.mark.parametrize("path", list(COMMANDS), ids=[" ".join(p) for p in COMMANDS])
def test_help_shows_defaults_and_choices(path):
    res = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    options = [p for p in COMMANDS[path].params if p.param_type_name == "option" and p.name != "help"]
    starts = []
    pos = text.index("Options:")
    for opt in options:
        pos = text.index(sorted(opt.opts, key=len)[-1], pos)
        starts.append(pos)
    for opt, a, b in zip(options, starts, starts[1:] + [len(text)]):
        row = text[a:b]
        if _shows_a_default(opt):
            assert "[default:" in row, f"{' '.join(path)} {opt.opts}: no default shown in {row!r}"
        choices = getattr(getattr(opt, "type", None), "choices", None)
        if choices:
            assert all(str(c) in row for c in choices), f"{' '.join(path)} {opt.opts}: choices missing"


def test_pydantic_built_commands_show_choices():
    res = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "200"})
    text = " ".join(res.output.split())
    assert "[choices: biased, debiased]" in text and '[default: "biased"]' in text
    assert "[default: 0.1]" in text  # lambda
