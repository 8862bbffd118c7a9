"""Pair student heads with the teacher circuit's heads (SPEC §1 step 2); pairing.json I/O.

Filled in below: the pairing file format (used by training) and ``match()``.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Pair(BaseModel):
    model_config = ConfigDict(extra="allow")

    student: tuple[int, int] = Field(..., description="(layer, head) of the student head")
    teacher: tuple[int, int] = Field(..., description="(layer, head) of its teacher partner")
    distance: float | None = Field(None, description="matching distance (|dP_s - dP_t| or 1 - CKA)")


class Pairing(BaseModel):
    model_config = ConfigDict(extra="allow")

    pairs: list[Pair] = Field(..., min_length=1)
    student_model: str | None = None
    teacher_model: str | None = None

    @property
    def student_heads(self) -> list[tuple[int, int]]:
        return [p.student for p in self.pairs]

    @property
    def teacher_heads(self) -> list[tuple[int, int]]:
        return sorted({p.teacher for p in self.pairs})


def load_pairing(path: str | Path) -> Pairing:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"pairing file {p} does not exist; make one with: circuitdistill match ...")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}:{e.lineno}: not valid JSON ({e.msg})") from None
    try:
        pairing = Pairing(**raw)
    except ValidationError as e:
        lines = [f"  {'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"{p}: not a valid pairing file:\n" + "\n".join(lines)) from None
    seen = set()
    for i, pair in enumerate(pairing.pairs):
        if pair.student in seen:
            raise ValueError(f"{p}: pairs.{i}: student head L{pair.student[0]}.H{pair.student[1]} appears twice; "
                             "each student head has one teacher partner")
        seen.add(pair.student)
    return pairing
