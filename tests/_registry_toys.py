"""A task and a discovery method defined outside src/: registering them here is all it takes to use them."""
from __future__ import annotations

from circuitdistill.circuits.ablation import baseline, head_sweep
from circuitdistill.circuits.method_registry import DiscoveryMethod, HeadScores, register_method
from circuitdistill.circuits.patching import relative_scores
from circuitdistill.circuits.toy import box_items
from circuitdistill.tasks.registry import Task, register


class ToyBoxes(Task):
    """Boxes with lower-case labels (circuits/toy.py): a second, much smaller entity-tracking-like task."""

    name = "toy-boxes"
    short = "toy"
    corruptions = ("query",)
    templates = ("plain",)
    warmup_template = "plain"
    default_size = 3

    def generate(self, n, seed, tokenizers, *, size=None, corruption=None, template=None):
        return box_items(tokenizers[0], n, size or self.default_size, seed=seed)

    def make_splits(self, n_train, n_validation, n_test, seed, tokenizers, *, size=None, corruption=None,
                    template=None, disjoint_vocab=False):
        sizes = {"train": n_train, "validation": n_validation, "test": n_test}
        return {split: [it.model_copy(update={"split": split})
                        for it in self.generate(n, seed * 1000 + k, tokenizers, size=size)]
                for k, (split, n) in enumerate(sizes.items())}

    def warmup_items(self, tokenizer, seed, n, avoid, sizes, template):
        return box_items(tokenizer, n, max(2, sizes[0]), seed=seed + 500), {"boxes": list(sizes)}


class ZeroSweep(DiscoveryMethod):
    """Zero each head's output (whatever --ablation says) and score the relative change of the metric."""

    name = "toy-zero"
    ablations = ("zero",)

    def run(self, hooked, items, cfg, ablation, progress) -> HeadScores:
        clean = baseline(hooked, items, cfg.metric, cfg.batch_size)
        swept = head_sweep(hooked, items, cfg.metric, mode="zero", positions=cfg.positions,
                           batch_size=cfg.batch_size, progress=False)
        return HeadScores(relative_scores(swept, clean), {"clean": clean})


register(ToyBoxes())
register_method(ZeroSweep())
