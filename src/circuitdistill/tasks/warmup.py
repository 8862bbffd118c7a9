"""The warm student's recipe: a related but distinct task variant whose vocabulary avoids the real splits'.

The recipe reached the 0.5 target (docs/tasks.md); `circuitdistill warmup` and the experiment both use it.
"""
from __future__ import annotations

import random
from typing import Iterable

from . import entity_tracking as et
from . import tom
from .schema import TaskItem

WARMUP_LR = 2e-5
WARMUP_BOXES = (3, 4, 5)
WARMUP_TEMPLATE = {"entity-tracking": "prakash", "tom": "alt"}


def vocab_of(items: Iterable[TaskItem]) -> set[str]:
    """Every answer, corrupted answer and candidate word of ``items`` (stripped): what the warm-up must avoid."""
    out = set()
    for it in items:
        for w in [it.answer, it.corrupted_answer, *(it.candidates or [])]:
            if w:
                out.add(w.strip())
    return out


def warmup_items(task: str, tok, seed: int, n: int, avoid: set[str], boxes: list[int], template: str):
    """The related-but-distinct variant the warm student trains on (vocabulary disjoint from ``avoid``)."""
    if task == "entity-tracking":
        vocab = [w for w in et.object_vocab([tok]) if w not in avoid]
        items = []
        for k, b in enumerate(boxes):
            items += et.generate(n // len(boxes), b, seed * 1000 + 500 + k, [tok], corruption="all",
                                 template=template, objects=vocab, split="warmup",
                                 extra_meta={"variant": "warmup"})
        random.Random(seed).shuffle(items)
        return items, {"objects": len(vocab), "boxes": boxes, "template": template}
    states = [w for w in tom.state_vocab([tok]) if w not in avoid]
    items = tom.generate(n, seed * 1000 + 500, [tok], template=template, states=states, split="warmup",
                         extra_meta={"variant": "warmup"})
    return items, {"states": len(states), "template": template}
