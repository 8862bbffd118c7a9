"""Shared builders for the distillation tests: tiny random HF models saved to disk and a tiny task file."""
from __future__ import annotations

import json
import random
from pathlib import Path

from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks.io import save_items
from circuitdistill.tasks.schema import TaskItem

OBJECTS = [" apple", " book", " car", " dog", " cat", " key", " pen", " cup", " hat", " map", " ball", " box"]
BOXES = [" A", " B", " C", " D", " E", " F", " G"]


def _prompt(rng, n_boxes):
    objs = rng.sample(OBJECTS, n_boxes)
    boxes = rng.sample(BOXES, n_boxes)
    q = rng.randrange(n_boxes)
    ctx = ", ".join(f"the{o} is in Box{b}" for o, b in zip(objs, boxes))
    pre = "Look." * rng.randrange(3)  # vary the length so batches really are left padded
    return f"{pre}{ctx[0].upper()}{ctx[1:]}. Box{boxes[q]} contains the", objs[q], objs


def make_items(n: int, seed: int = 0, n_boxes: int = 3) -> list[TaskItem]:
    """Tiny entity-tracking items, each with a corrupted counterpart (other objects, boxes and query)."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        prompt, answer, objs = _prompt(rng, n_boxes)
        corrupted, corrupted_answer, _ = _prompt(rng, n_boxes)
        items.append(TaskItem(prompt=prompt, answer=answer, candidates=objs, corrupted_prompt=corrupted,
                              corrupted_answer=corrupted_answer, split="train"))
    return items


def save_tiny(path: Path, seed: int, family: str = "llama", **kw) -> str:
    model = tiny_model(family, seed=seed, **kw)
    tok = gpt2_tokenizer()
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return str(path)


def make_world(root: Path, n_items: int = 48, pairs=(((0, 1), (1, 2)), ((1, 0), (0, 3)), ((1, 3), (1, 1)))) -> dict:
    """teacher + student dirs, train data, a pairing file."""
    root.mkdir(parents=True, exist_ok=True)
    teacher = save_tiny(root / "teacher", seed=1)
    student = save_tiny(root / "student", seed=2)
    data = root / "train.jsonl"
    save_items(data, make_items(n_items, seed=0))
    pairing = root / "pairing.json"
    pairing.write_text(json.dumps({"pairs": [{"student": list(s), "teacher": list(t), "distance": 0.0}
                                             for s, t in pairs], "student_model": student, "teacher_model": teacher}))
    return {"teacher": teacher, "student": student, "data": str(data), "pairing": str(pairing), "root": root}
