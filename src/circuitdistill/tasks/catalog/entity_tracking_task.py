"""Entity tracking (``tasks/entity_tracking.py``) as a registered task; its warm-up variant has fewer boxes."""
from __future__ import annotations

import random
import string
from typing import Sequence

from .. import entity_tracking as et
from ..registry import Splits, Task, register
from ..schema import TaskItem
from ..vocab import word_list


class EntityTracking(Task):
    name = et.TASK
    short = "et"
    description = "'The apple is in Box F, ... Box F contains the' -> ' apple'"
    corruptions = ("all", "query_box", "objects", "box_labels", "mixed")
    templates = tuple(et.TEMPLATES)
    warmup_template = "prakash"
    default_size = 7

    def generate(self, n, seed, tokenizers, *, size=None, corruption=None, template=None) -> list[TaskItem]:
        return et.generate(n, size or self.default_size, seed, list(tokenizers), corruption or self.corruptions[0],
                           template or self.templates[0])

    def make_splits(self, n_train, n_validation, n_test, seed, tokenizers, *, size=None, corruption=None,
                    template=None, disjoint_vocab=False) -> Splits:
        return et.make_splits(n_train, n_validation, n_test, size or self.default_size, seed, list(tokenizers),
                              corruption=corruption or self.corruptions[0], template=template or self.templates[0],
                              disjoint_objects=disjoint_vocab)

    def warmup_items(self, tokenizer, seed: int, n: int, avoid: set[str], sizes: Sequence[int], template: str):
        vocab = [w for w in et.object_vocab([tokenizer]) if w not in avoid]
        items = []
        for k, b in enumerate(sizes):
            items += et.generate(n // len(sizes), b, seed * 1000 + 500 + k, [tokenizer], corruption="all",
                                 template=template, objects=vocab, split="warmup", extra_meta={"variant": "warmup"})
        random.Random(seed).shuffle(items)
        return items, {"objects": len(vocab), "boxes": list(sizes), "template": template}

    def vocabularies(self, tokenizers):
        return {"objects": (word_list("nouns"), et.object_vocab(tokenizers)),
                "box labels": (string.ascii_uppercase, et.label_vocab(tokenizers))}


register(EntityTracking())
