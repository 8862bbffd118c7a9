"""Entity tracking in the format of Prakash et al. (2024), boxes after Kim & Schuster (2023).

    "The apple is in Box F, the computer is in Box Q, the document is in Box X. Box F contains the" -> " apple"

Objects come from the shipped noun list, box labels are capital letters; both are filtered so that each
is a single token (leading space) for EVERY tokenizer passed, so clean and corrupted prompts also have
the same token length for each of them (positions line up for patching).

Corruption modes (``meta["corruption"]``); every mode changes the answer:

* ``query_box``  same context, the query names another box          -> that box's object
* ``objects``    same labels and query, all objects replaced by fresh ones -> the fresh object in the queried box
* ``box_labels`` same objects, the labels are deranged (no label stays in place), same query label
                 -> the object now in that box
* ``all``        objects, labels and query all resampled (objects disjoint from the clean ones)
"""
from __future__ import annotations

import random
import string
from typing import Iterator, Sequence

from .schema import TaskItem
from .vocab import require, single_token_words, word_list

TASK = "entity-tracking"
CORRUPTIONS = ("query_box", "objects", "box_labels", "all")


# Templates: the context clause for each box, how clauses are joined, and the query.
TEMPLATES: dict[str, dict[str, str]] = {
    # Prakash et al. 2024 wording: the real task.
    "prakash": {"first": "The {obj} is in Box {box}", "clause": "the {obj} is in Box {box}", "sep": ", ",
                "query": ". Box {box} contains the"},
    # A related but distinct wording used for the warm-up of the default student.
    "crate": {"first": "Crate {box} holds the {obj}", "clause": "Crate {box} holds the {obj}", "sep": "; ",
              "query": ". What does Crate {box} hold? It holds the"},
}


def render(objects: Sequence[str], labels: Sequence[str], query: str, template: str = "prakash") -> str:
    t = TEMPLATES[template]
    parts = [(t["first"] if i == 0 else t["clause"]).format(obj=o, box=b) for i, (o, b) in enumerate(zip(objects, labels))]
    return t["sep"].join(parts) + t["query"].format(box=query)


def object_vocab(tokenizers: Sequence, words: Sequence[str] | None = None) -> list[str]:
    """Nouns that are single tokens for every tokenizer (the shipped list unless ``words`` is given)."""
    return single_token_words(words if words is not None else word_list("nouns"), tokenizers, context="The")


def label_vocab(tokenizers: Sequence, labels: Sequence[str] | None = None) -> list[str]:
    return single_token_words(labels if labels is not None else string.ascii_uppercase, tokenizers, context="Box")


def split_vocab(vocab: Sequence[str], seed: int, fractions: Sequence[float] = (0.5, 0.5)) -> list[list[str]]:
    """Seeded disjoint partition of a vocabulary (e.g. train objects vs held-out objects)."""
    words = list(vocab)
    random.Random(f"vocab-split-{seed}").shuffle(words)
    out, start = [], 0
    for i, f in enumerate(fractions):
        end = len(words) if i == len(fractions) - 1 else start + int(round(f * len(words)))
        out.append(sorted(words[start:end]))
        start = end
    return out


def _derangement(rng: random.Random, n: int) -> list[int]:
    while True:
        p = list(range(n))
        rng.shuffle(p)
        if all(p[i] != i for i in range(n)):
            return p


def _item(rng: random.Random, boxes: int, objs_v: Sequence[str], labs_v: Sequence[str], corruption: str,
          template: str, seed: int, index: int, split: str | None, extra_meta: dict) -> TaskItem:
    objs = rng.sample(list(objs_v), boxes)
    labs = rng.sample(list(labs_v), boxes)
    q = rng.randrange(boxes)
    prompt = render(objs, labs, labs[q], template)
    mode = corruption if corruption != "mixed" else rng.choice(CORRUPTIONS)
    if mode == "query_box":
        q2 = rng.choice([i for i in range(boxes) if i != q])
        c_prompt, c_ans = render(objs, labs, labs[q2], template), objs[q2]
    elif mode == "objects":
        fresh = rng.sample([o for o in objs_v if o not in objs], boxes)
        c_prompt, c_ans = render(fresh, labs, labs[q], template), fresh[q]
    elif mode == "box_labels":
        perm = _derangement(rng, boxes)
        labs2 = [labs[perm[i]] for i in range(boxes)]
        j = labs2.index(labs[q])
        c_prompt, c_ans = render(objs, labs2, labs[q], template), objs[j]
    else:  # all
        fresh = rng.sample([o for o in objs_v if o not in objs], boxes)
        labs2 = rng.sample(list(labs_v), boxes)
        q2 = rng.randrange(boxes)
        c_prompt, c_ans = render(fresh, labs2, labs2[q2], template), fresh[q2]
    meta = {"task": TASK, "boxes": boxes, "corruption": mode, "seed": seed, "index": index, "template": template,
            "objects": objs, "labels": labs, "query_box": labs[q], "query_index": q, "answer_changes": True,
            **extra_meta}
    return TaskItem(prompt=prompt, answer=" " + objs[q], corrupted_prompt=c_prompt, corrupted_answer=" " + c_ans,
                    candidates=[" " + o for o in objs], split=split, meta=meta)


def _check(boxes: int, corruption: str, template: str) -> None:
    if boxes < 2:
        raise ValueError(f"boxes must be >= 2 (got {boxes})")
    if corruption not in (*CORRUPTIONS, "mixed"):
        raise ValueError(f"unknown corruption {corruption!r}; choose from {', '.join(CORRUPTIONS)} or mixed")
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")


def iter_items(boxes: int, seed: int, tokenizers: Sequence, corruption: str = "all", template: str = "prakash",
               objects: Sequence[str] | None = None, labels: Sequence[str] | None = None,
               split: str | None = None, extra_meta: dict | None = None, exclude: set[str] | None = None,
               ) -> Iterator[TaskItem]:
    """Endless deterministic stream of items with distinct prompts (also distinct from ``exclude``)."""
    _check(boxes, corruption, template)
    objs_v = require(object_vocab(tokenizers, objects), 2 * boxes, "objects", tokenizers)
    labs_v = require(label_vocab(tokenizers, labels), boxes, "box labels", tokenizers)
    rng = random.Random(f"{TASK}-{seed}")
    seen = set(exclude or ())
    index = 0
    misses = 0
    while True:
        it = _item(rng, boxes, objs_v, labs_v, corruption, template, seed, index, split, extra_meta or {})
        if it.prompt in seen:
            misses += 1
            if misses > 10_000:
                raise ValueError("cannot find new distinct prompts; the vocabulary is too small for this many items")
            continue
        seen.add(it.prompt)
        index += 1
        yield it


def generate(n: int, boxes: int, seed: int, tokenizers: list, corruption: str = "all", template: str = "prakash",
             objects: Sequence[str] | None = None, labels: Sequence[str] | None = None, split: str | None = None,
             exclude: set[str] | None = None, extra_meta: dict | None = None) -> list[TaskItem]:
    """``n`` items with ``boxes`` boxes, deterministic per seed; single-token objects/labels for all tokenizers.

    ``objects``/``labels`` override the shipped vocabularies (still filtered); ``exclude`` lists prompts
    that must not be produced (other splits).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    stream = iter_items(boxes, seed, tokenizers, corruption, template, objects, labels, split, extra_meta, exclude)
    return [next(stream) for _ in range(n)]


def splits_without_repeats(sizes: Sequence[int], vocab: Sequence[str], seed: int, disjoint: bool, make
                           ) -> dict[str, list[TaskItem]]:
    """train / validation / test from ``make(n, seed, vocab, split, exclude, extra_meta)``, no prompt repeated.

    Split k is generated with seed ``seed * 1000 + k``. With ``disjoint`` the vocabulary is split in two seeded
    halves: train uses one, validation and test the other (recorded in ``meta["vocab"]``).
    """
    if disjoint:
        train_v, held_v = split_vocab(vocab, seed)
        vocabs = {"train": train_v, "validation": held_v, "test": held_v}
    else:
        vocabs = {"train": vocab, "validation": vocab, "test": vocab}
    out: dict[str, list[TaskItem]] = {}
    seen: set[str] = set()
    for k, (split, n) in enumerate(zip(("train", "validation", "test"), sizes)):
        extra = {"vocab": ("train" if split == "train" else "heldout") if disjoint else "shared", "base_seed": seed}
        items = make(n, seed * 1000 + k, vocabs[split], split, seen, extra)
        seen.update(it.prompt for it in items)
        out[split] = items
    return out


def make_splits(n_train: int, n_validation: int, n_test: int, boxes: int, seed: int, tokenizers: list,
                corruption: str = "all", template: str = "prakash", disjoint_objects: bool = False,
                objects: Sequence[str] | None = None) -> dict[str, list[TaskItem]]:
    """train / validation / test with no prompt repeated across splits.

    With ``disjoint_objects`` the object vocabulary is split in two seeded halves: train uses one,
    validation and test the other (recorded in ``meta["vocab"]``).
    """
    return splits_without_repeats(
        (n_train, n_validation, n_test), object_vocab(tokenizers, objects), seed, disjoint_objects,
        lambda n, k_seed, vocab, split, exclude, extra: generate(n, boxes, k_seed, tokenizers, corruption, template,
                                                                  vocab, None, split, exclude=exclude,
                                                                  extra_meta=extra))


def parse_prompt(prompt: str, template: str = "prakash") -> tuple[dict[str, str], str]:
    """Inverse of ``render``: ({box label: object}, queried label). Used to check answers are recoverable."""
    import re

    t = TEMPLATES[template]
    body, _, query = prompt.partition(t["query"].split("{box}")[0])
    q = query[: -len(t["query"].split("{box}")[1])] if t["query"].split("{box}")[1] else query
    pat = {"prakash": r"[Tt]he (\w+) is in Box (\w+)", "crate": r"Crate (\w+) holds the (\w+)"}[template]
    mapping = {}
    for m in re.finditer(pat, body):
        obj, box = (m.group(1), m.group(2)) if template == "prakash" else (m.group(2), m.group(1))
        mapping[box] = obj
    return mapping, q
