"""Small deterministic prompt sets for tests, benches and demos of circuit discovery.

``box_items`` builds entity-tracking style prompts ("The apple is in box A, the key is in box B.
Box A contains the") with a corrupted counterpart that queries another box. Clean and corrupted
prompts have the same number of tokens for the tokenizers we ship (all words are single tokens
with a leading space), which TransformerLens-style patching needs.
"""
from __future__ import annotations

import random

from ..tasks.schema import TaskItem

OBJECTS = ("apple", "key", "book", "cup", "coin", "shoe", "bell", "map", "ring", "hat", "pen", "box", "fish", "car",
           "ball", "lamp", "door", "bag", "egg", "tree")
LABELS = tuple("ABCDEFGHJKLMNPQRSTVWXZ")


def _single(tok, word: str) -> bool:
    return len(tok(" " + word, add_special_tokens=False).input_ids) == 1


def box_items(tokenizer, n: int = 16, boxes: int = 3, seed: int = 0) -> list[TaskItem]:
    """``n`` prompts with ``boxes`` boxes; corrupted prompt = same assignment, another queried box."""
    objs = [w for w in OBJECTS if _single(tokenizer, w)]
    labs = [w for w in LABELS if _single(tokenizer, w)]
    if len(objs) < boxes or len(labs) < boxes:
        raise ValueError(f"the tokenizer has too few single-token words for {boxes} boxes")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        o = rng.sample(objs, boxes)
        lab = rng.sample(labs, boxes)
        q, c = rng.sample(range(boxes), 2)
        body = ", ".join(f"the {o[j]} is in box {lab[j]}" for j in range(boxes))
        body = body[0].upper() + body[1:] + "."
        out.append(TaskItem(prompt=f"{body} Box {lab[q]} contains the", answer=" " + o[q],
                            corrupted_prompt=f"{body} Box {lab[c]} contains the", corrupted_answer=" " + o[c],
                            candidates=[" " + w for w in o], split="test", meta={"task": "toy-boxes", "seed": seed,
                                                                                  "index": i}))
    return out
