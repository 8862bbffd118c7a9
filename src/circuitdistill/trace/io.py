"""Reading texts for the tracer: one JSONL of ``{text, source}`` rows, or a folder with one JSONL per teacher.

Every malformed row is reported with its file and line number (all of them, up to a limit), so a bad file is
fixed in one go rather than one error at a time.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..utils import write_jsonl_atomic


class TraceInputError(ValueError):
    """Bad tracer input; the message names every offending file:line and what to fix."""


class TextRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str = Field(..., description="the generated text")
    source: str | None = Field(None, description="the teacher (or the student's true teacher) that produced it")
    id: str | None = None

    @field_validator("text")
    @classmethod
    def _text_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text is empty")
        return v

    @field_validator("source")
    @classmethod
    def _source_nonempty(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("source is empty")
        return v


MAX_REPORTED = 20


def _read_one(path: Path, default_source: str | None, require_source: bool, errors: list[str]) -> list[TextRecord]:
    out: list[TextRecord] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                errors.append(f"{path}:{lineno}: expected a JSON object with a 'text' field, got {type(obj).__name__}")
                continue
            if obj.get("source") is None and default_source is not None:
                obj["source"] = default_source
            try:
                rec = TextRecord.model_validate(obj)
            except ValidationError as e:
                for err in e.errors():
                    field = ".".join(str(x) for x in err["loc"]) or "row"
                    errors.append(f"{path}:{lineno}: field '{field}': {err['msg']}")
                continue
            if require_source and rec.source is None:
                errors.append(f"{path}:{lineno}: field 'source' is missing (needed to fit: which teacher wrote this text)")
                continue
            out.append(rec)
    return out


def read_texts(path: str | os.PathLike, require_source: bool = True) -> list[TextRecord]:
    """Read records from a JSONL file or from every ``*.jsonl`` in a folder (source defaults to the file stem)."""
    p = Path(path)
    if not p.exists():
        raise TraceInputError(f"{p}: no such file or folder (expected a .jsonl file or a folder of .jsonl files)")
    errors: list[str] = []
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if not files:
            raise TraceInputError(f"{p}: folder holds no *.jsonl files (one JSONL per teacher expected)")
        records = [r for f in files for r in _read_one(f, f.stem, require_source, errors)]
    else:
        records = _read_one(p, None, require_source, errors)
    if errors:
        shown = "\n  ".join(errors[:MAX_REPORTED])
        more = f"\n  ... and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise TraceInputError(f"{len(errors)} malformed row(s); each row must be a JSON object like "
                              f'{{"text": "...", "source": "teacher-name"}}:\n  {shown}{more}')
    if not records:
        raise TraceInputError(f"{p}: no records found")
    return records


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Plain JSONL reader with file:line errors (for our own intermediate files)."""
    rows = []
    p = Path(path)
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise TraceInputError(f"{p}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    return rows


def read_done(path: str | os.PathLike, key: str = "id") -> dict[str, dict]:
    """Rows already written to an append-only JSONL (for resuming). A torn last line is ignored."""
    p = Path(path)
    done: dict[str, dict] = {}
    if not p.exists():
        return done
    with open(p, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run; it is regenerated
            if isinstance(row, dict) and key in row:
                done[row[key]] = row
    return done


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows and fsync, so a killed run loses at most the batch in flight."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())


def compact_jsonl(path: str | os.PathLike, key: str = "id") -> list[dict]:
    """Rewrite an append-only JSONL keeping one row per key (drops torn lines); return the rows."""
    rows = list(read_done(path, key).values())
    write_jsonl_atomic(path, rows)
    return rows
