"""Task items on disk: JSONL in, JSONL out (atomic), with errors that name file, line and field.

Accepted line formats:

* our own / user tasks: ``{"prompt": ..., "answer": ..., "corrupted_prompt"?, "corrupted_answer"?,
  "candidates"?, "split"?, "meta"?}``
* the published box-dataset format (Kim & Schuster 2023, as used by Prakash et al. 2024):
  ``{"sentence": "... Box F contains the apple.", "sample_id": 3, "numops": 0, ...}`` -- the final word
  of ``sentence`` (trailing punctuation removed) is the answer, everything before it is the prompt.
  Other keys of such a line go to ``meta``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from pydantic import ValidationError

from ..utils import MissingFile, UserError, write_jsonl_atomic
from .schema import TaskItem

BOX_FORMAT_KEYS = ("sentence", "sample_id", "numops")
_PUNCT = ".,;:!?\"'"


class TaskFileError(UserError):
    """Every problem found in a task file, one per line of the message: ``file:line: field: what is wrong``."""

    def __init__(self, path: str | Path, problems: list[tuple[int, str, str]]):
        self.path = str(path)
        self.problems = problems
        shown = problems[:20]
        lines = [f"{self.path}:{ln}: {field}: {msg}" for ln, field, msg in shown]
        more = f"\n... and {len(problems) - 20} more problems" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s) in task file {self.path}:\n" + "\n".join(lines) + more)


def from_box_sentence(row: dict) -> dict:
    """Convert one box-dataset row to TaskItem fields."""
    sentence = row["sentence"]
    if not isinstance(sentence, str) or not sentence.strip():
        raise ValueError("must be a non-empty string")
    text = sentence.rstrip()
    cut = text.rfind(" ")
    if cut <= 0:
        raise ValueError("needs at least two words (the final word is the answer)")
    prompt, last = text[:cut], text[cut + 1:].rstrip(_PUNCT)
    if not last:
        raise ValueError("its final word is only punctuation; cannot take an answer from it")
    meta = {k: v for k, v in row.items() if k != "sentence"}
    meta.setdefault("task", "boxes-dataset")
    return {"prompt": prompt, "answer": " " + last, "meta": meta}


def parse_row(row: object) -> TaskItem:
    """One decoded JSON value -> TaskItem (raises ValueError / ValidationError)."""
    if not isinstance(row, dict):
        raise TypeError(f"each line must be a JSON object, got {type(row).__name__}")
    if "sentence" in row and "prompt" not in row:
        return TaskItem(**from_box_sentence(row))
    return TaskItem(**row)


def load_items(path: str | Path) -> list[TaskItem]:
    """Read a JSONL task file; raise TaskFileError listing every bad line with its field."""
    path = Path(path)
    if not path.exists():
        raise MissingFile(f"task file {path} does not exist")
    if path.is_dir():
        raise TaskFileError(path, [(0, "<file>", "is a directory; give a JSONL file")])
    items: list[TaskItem] = []
    problems: list[tuple[int, str, str]] = []
    for ln, line in _numbered_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append((ln, "<json>", f"not valid JSON ({e.msg} at column {e.colno})"))
            continue
        try:
            items.append(parse_row(row))
        except ValidationError as e:
            for err in e.errors():
                field = ".".join(str(x) for x in err["loc"]) or "<line>"
                problems.append((ln, field, err["msg"] if err["type"] != "extra_forbidden" else
                                 "unknown field (allowed: prompt, answer, corrupted_prompt, corrupted_answer, "
                                 "candidates, split, meta; or the box format sentence, sample_id, numops)"))
        except TypeError as e:
            problems.append((ln, "<line>", str(e)))
        except ValueError as e:
            problems.append((ln, "sentence", str(e)))
        else:
            it = items[-1]
            if it.corrupted_answer is not None and it.corrupted_prompt is None:
                problems.append((ln, "corrupted_answer", "given without corrupted_prompt"))
            if it.candidates is not None and it.answer not in it.candidates:
                problems.append((ln, "candidates", f"does not contain the answer {it.answer!r}"))
    if problems:
        raise TaskFileError(path, problems)
    if not items:
        raise TaskFileError(path, [(0, "<file>", "holds no items")])
    return items


def _numbered_lines(path: Path):
    """(line number, text) of a UTF-8 file; bytes that are not UTF-8 raise TaskFileError naming the line."""
    with open(path, "rb") as f:
        for ln, raw in enumerate(f, start=1):
            try:
                yield ln, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TaskFileError(path, [(ln, "<bytes>", f"not UTF-8 text (byte {e.start} of the line); "
                                            f"save the file as UTF-8")]) from None


def save_items(path: str | Path, items: Iterable[TaskItem]) -> Path:
    """Write items as JSONL atomically (a crash never leaves a half-written file)."""
    return write_jsonl_atomic(path, (it.model_dump(mode="json", exclude_none=True) for it in items))


def single_token_problems(items: Iterable[TaskItem], tokenizer) -> list[tuple[int, str, str]]:
    """(item number from 1, field, what is wrong) for every answer/candidate that is not a single token."""
    problems = []
    for i, it in enumerate(items, start=1):
        for field in ("answer", "corrupted_answer"):
            v = getattr(it, field)
            if v is not None and len(tokenizer(v, add_special_tokens=False).input_ids) != 1:
                problems.append((i, field, f"{v!r} is not a single token for this tokenizer"))
        for c in it.candidates or []:
            if len(tokenizer(c, add_special_tokens=False).input_ids) != 1:
                problems.append((i, "candidates", f"{c!r} is not a single token for this tokenizer"))
    return problems


def check_single_token(items: Iterable[TaskItem], tokenizer, path: str | Path = "<items>") -> None:
    """Raise TaskFileError for answers/candidates that are not a single token for ``tokenizer``.

    Scoring reads the FIRST token of an answer; multi-token answers are scored on that token only,
    so commands warn or refuse with this check.
    """
    problems = single_token_problems(items, tokenizer)
    if problems:
        raise TaskFileError(path, problems)
