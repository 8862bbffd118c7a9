"""The README's quick tour runs as written on a fresh clone: every command and option it uses exists, and every
file a line reads lies under a path that an earlier line writes (--out / --out-dir)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

from typer.main import get_command

from circuitdistill.cli.main import app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
WRITES = {"--out", "--out-dir", "--save-to"}


def _tour_lines() -> list[list[str]]:
    section = README[README.index("## Quick tour (CLI)"):]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [words for words in lines if words and words[0] == "circuitdistill"]


def _command(words: list[str]):
    cmd, i = get_command(app), 1
    while hasattr(cmd, "commands") and i < len(words) and words[i] in cmd.commands:
        cmd, i = cmd.commands[words[i]], i + 1
    return cmd, words[i:]


def _options(args: list[str]) -> list[tuple[str, str | None]]:
    pairs, i = [], 0
    while i < len(args):
        if args[i].startswith("--"):
            value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
            pairs.append((args[i], value))
            i += 2 if value is not None else 1
        else:
            i += 1
    return pairs


def _is_path(value: str | None) -> bool:
    return value is not None and ("/" in value or value.endswith((".json", ".jsonl")))


def test_the_tour_covers_the_pipeline():
    used = {" ".join(w[1:3]) if w[1] in ("models", "trace", "data") else w[1] for w in _tour_lines()}
    assert {"teacher", "warmup", "discover", "evaluate", "match", "cache-teacher", "distill", "compare",
            "experiment", "study", "data entity-tracking", "models derive", "trace experiment"} <= used


def test_every_command_and_option_of_the_tour_exists():
    for words in _tour_lines():
        cmd, args = _command(words)
        assert not hasattr(cmd, "commands"), f"not a command: {' '.join(words)}"
        known = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
        for option, _ in _options(args):
            assert option in known, f"{' '.join(words[:3])}: no option {option}"


def test_every_file_the_tour_reads_is_written_by_an_earlier_line():
    written: list[str] = []
    for words in _tour_lines():
        _, args = _command(words)
        options = _options(args)
        for option, value in options:
            if option not in WRITES and _is_path(value):
                assert any(value == w or value.startswith(w.rstrip("/") + "/") for w in written), (
                    f"{' '.join(words[:2])} reads {value}, which no earlier line writes")
        written += [value for option, value in options if option in WRITES and value]
