"""Output directories: never mix with files we did not write, never replace an earlier run's results unasked.

Every command that writes a directory calls ``prepare_output_dir`` before any compute. It checks that the
directory can be written (by writing the marker file that says circuitdistill owns it), refuses a non-empty
directory without that marker (foreign files) unless ``overwrite``, refuses one holding an earlier run's
artifacts unless ``overwrite`` or ``resume``, and removes temp files a killed earlier run left behind.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Iterable

from .utils import UserError, write_json_atomic

MARKER = ".circuitdistill-output"
# what atomic writes leave behind when killed: .NAME.XXXXXXXX[.SUFFIX] (mkstemp / mkdtemp) and .NAME.new-XXXXXXXX
_TEMP = re.compile(r"^\.(?P<base>.+)\.(?:new-)?[a-z0-9_]{8}(?P<suffix>\.[^.]+)?$")


def is_main_process() -> bool:
    """False in the non-zero ranks of a multi-process launch (only rank 0 prepares and cleans directories)."""
    return int(os.environ.get("RANK", "0")) == 0


def _listing(entries: list[Path], limit: int = 4) -> str:
    names = sorted(p.name for p in entries)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")


def is_ours(path: Path, legacy_artifacts: Iterable[str] = ()) -> bool:
    """Whether circuitdistill wrote ``path``: our marker, or (directories from before the marker) one of the
    artifacts the command is known to write."""
    return (path / MARKER).exists() or any((path / name).exists() for name in legacy_artifacts)


def prepare_output_dir(path: str | Path, overwrite: bool = False, resume: bool = False,
                       resume_flag: str | None = None, legacy_artifacts: Iterable[str] = ()) -> Path:
    """Make ``path`` ready for a command's outputs or raise UserError saying why not and what to pass.

    ``resume``: the run continues what is there (allowed over our own artifacts); ``resume_flag``: the option
    that would do so, named in the refusal; ``legacy_artifacts``: names that mark an output of this command
    written before directories carried the marker.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"output directory {path} is a file; give a directory (new or written by circuitdistill)")
    if path.is_dir():
        entries = [p for p in path.iterdir() if p.name != MARKER]
        if entries and not overwrite:
            if not is_ours(path, legacy_artifacts):
                raise UserError(f"output directory {path} holds files circuitdistill did not write "
                                f"({_listing(entries)}); choose a new or empty directory, or pass --overwrite "
                                f"to write into it anyway")
            if not resume:
                how = f"pass {resume_flag} to continue it, --overwrite to replace it" if resume_flag else \
                    "pass --overwrite to replace it"
                raise UserError(f"output directory {path} holds an earlier run ({_listing(entries)}); {how}, "
                                f"or choose another directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path / MARKER, {"written_by": "circuitdistill", "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except OSError as e:
        raise UserError(f"cannot write to output directory {path}: {e.strerror or e}") from None
    remove_stale_temps(path)
    return path


def prepare_output_file(path: str | Path) -> Path:
    """A single output file: not a directory, and its directory writable (checked before compute)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--out {path} is a directory; give a file name, e.g. {path / 'result.json'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def remove_stale_temps(root: str | Path) -> list[Path]:
    """Delete, below a directory we own, the temp files/directories of atomic writes that a kill interrupted."""
    removed = []
    for p in sorted(Path(root).rglob(".*"), reverse=True):
        m = _TEMP.match(p.name)
        if not m or ((m["suffix"] or "") != Path(m["base"]).suffix and not p.is_dir()):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
