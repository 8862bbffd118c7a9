"""Theory of mind (``tasks/tom.py``) as a registered task; its warm-up variant is the 'alt' wording."""
from __future__ import annotations

from typing import Sequence

from .. import tom
from ..registry import Splits, Task, register
from ..schema import TaskItem
from ..vocab import word_list


class TheoryOfMind(Task):
    name = tom.TASK
    short = "tom"
    description = "CausalToM-style: what does a character believe a container holds?"
    corruptions = ("auto", "visibility", "states")
    templates = tuple(tom.TEMPLATES)
    warmup_template = "alt"

    def generate(self, n, seed, tokenizers, *, size=None, corruption=None, template=None) -> list[TaskItem]:
        return tom.generate(n, seed, list(tokenizers), corruption=corruption or self.corruptions[0],
                            template=template or self.templates[0])

    def make_splits(self, n_train, n_validation, n_test, seed, tokenizers, *, size=None, corruption=None,
                    template=None, disjoint_vocab=False) -> Splits:
        return tom.make_splits(n_train, n_validation, n_test, seed, list(tokenizers),
                               corruption=corruption or self.corruptions[0], template=template or self.templates[0],
                               disjoint_states=disjoint_vocab)

    def warmup_items(self, tokenizer, seed: int, n: int, avoid: set[str], sizes: Sequence[int], template: str):
        states = [w for w in tom.state_vocab([tokenizer]) if w not in avoid]
        items = tom.generate(n, seed * 1000 + 500, [tokenizer], template=template, states=states, split="warmup",
                             extra_meta={"variant": "warmup"})
        return items, {"states": len(states), "template": template}

    def vocabularies(self, tokenizers):
        return {name: (word_list(name), vocab(tokenizers)) for name, vocab in
                (("states", tom.state_vocab), ("containers", tom.container_vocab), ("names", tom.name_vocab))}


register(TheoryOfMind())
