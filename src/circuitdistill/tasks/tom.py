"""Theory of mind in the CausalToM style (Prakash et al. 2025): who saw what went into which container.

    "Bob and Alice are working in a busy kitchen. Bob grabs an opaque cup and fills it with coffee.
     Then Alice grabs an opaque jar and fills it with beer. Bob cannot observe Alice's actions.
     Alice can observe Bob's actions. Question: What does Bob believe the jar contains? Answer:" -> " unknown"

Two characters each fill their own opaque container with a state. Visibility is stated for each
character ("X can / cannot observe Y's actions"): ``none`` (neither sees), ``one`` (only one sees the
other), ``both``. A character knows the content of their own container and of the other's container
only if they observed it; otherwise the answer is `` unknown``.

Balance: visibility conditions come in equal thirds and answer types (state / unknown) in equal halves
(exact for ``n`` a multiple of 12): none and one are 3/4 unknown, both is all state.

Corruption modes (``meta["corruption"]``), all keeping the token length identical:
* ``visibility``: flip whether the asked character sees the other (changes the answer iff the question is
  about the other's container);
* ``states``: fresh states in both containers (changes the answer iff it is a state);
* ``auto`` (default): ``visibility`` for questions about the other's container, ``states`` for own -- so the
  answer always changes.
"""
from __future__ import annotations

import random
from typing import Iterator, Sequence

from .entity_tracking import splits_without_repeats
from .schema import TaskItem
from .vocab import is_single_token, require, single_token_words, word_list

TASK = "tom"
UNKNOWN = "unknown"
CORRUPTIONS = ("visibility", "states", "auto")
VISIBILITY = ("none", "one", "both")

TEMPLATES: dict[str, dict[str, str]] = {
    "story": {
        "intro": "{a} and {b} are working in a busy kitchen. ",
        "act1": "{a} grabs an opaque {c1} and fills it with {s1}. ",
        "act2": "Then {b} grabs an opaque {c2} and fills it with {s2}. ",
        "see": "{x} {can} observe {y}'s actions. ",
        "question": "Question: What does {q} believe the {c} contains? Answer:",
    },
    # A related but distinct wording, used for the warm-up of the default student.
    "alt": {
        "intro": "",
        "act1": "{a} takes a sealed {c1} and puts {s1} in it. ",
        "act2": "Next, {b} takes a sealed {c2} and puts {s2} in it. ",
        "see": "{x} {can} see what {y} does. ",
        "question": "Q: According to {q}, what is in the {c}? A:",
    },
}

# (visibility, answer type) schedule of 12 slots: equal thirds of visibility, half unknown.
_SCHEDULE = ([("none", UNKNOWN)] * 3 + [("none", "state")] + [("one", UNKNOWN)] * 3 + [("one", "state")]
             + [("both", "state")] * 4)


def render(names: Sequence[str], containers: Sequence[str], states: Sequence[str], sees: Sequence[bool],
           asker: int, container: int, template: str = "story") -> str:
    t = TEMPLATES[template]
    a, b = names
    return (t["intro"].format(a=a, b=b) + t["act1"].format(a=a, c1=containers[0], s1=states[0])
            + t["act2"].format(b=b, c2=containers[1], s2=states[1])
            + t["see"].format(x=a, y=b, can="can" if sees[0] else "cannot")
            + t["see"].format(x=b, y=a, can="can" if sees[1] else "cannot")
            + t["question"].format(q=names[asker], c=containers[container]))


def answer_of(states: Sequence[str], sees: Sequence[bool], asker: int, container: int) -> str:
    """What ``asker`` believes ``container`` holds: their own one, or the other's if they saw it."""
    return states[container] if (container == asker or sees[asker]) else UNKNOWN


def state_vocab(tokenizers: Sequence, words: Sequence[str] | None = None) -> list[str]:
    return single_token_words(words if words is not None else word_list("states"), tokenizers, context="with")


def container_vocab(tokenizers: Sequence, words: Sequence[str] | None = None) -> list[str]:
    return single_token_words(words if words is not None else word_list("containers"), tokenizers, context="opaque")


def name_vocab(tokenizers: Sequence, words: Sequence[str] | None = None) -> list[str]:
    return single_token_words(words if words is not None else word_list("names"), tokenizers, context="Then")


def _check_unknown(tokenizers: Sequence) -> None:
    bad = [getattr(t, "name_or_path", "?") for t in tokenizers if not is_single_token(t, UNKNOWN, "Answer:")]
    if bad:
        raise ValueError(f"' {UNKNOWN}' is not a single token for tokenizer(s) {bad}; ToM answers must be single tokens")
    for w in ("can", "cannot"):
        if not all(is_single_token(t, w, "Bob") for t in tokenizers):
            raise ValueError(f"' {w}' is not a single token for every tokenizer; visibility corruption needs it")


def _item(rng: random.Random, cell: tuple[str, str], names_v, cont_v, states_v, corruption: str, template: str,
          seed: int, index: int, split: str | None, extra_meta: dict) -> TaskItem:
    vis, kind = cell
    names = rng.sample(list(names_v), 2)
    conts = rng.sample(list(cont_v), 2)
    states = rng.sample(list(states_v), 2)
    if vis == "none":
        sees = [False, False]
    elif vis == "both":
        sees = [True, True]
    else:
        observer = rng.randrange(2)
        sees = [observer == 0, observer == 1]
    if kind == UNKNOWN:  # asker cannot see, asked about the other's container
        asker = rng.choice([i for i in range(2) if not sees[i]])
        about = "other"
    elif vis == "none":
        asker, about = rng.randrange(2), "own"
    elif vis == "one":
        observer = sees.index(True)
        asker, about = rng.choice([(observer, "other"), (observer, "own"), (1 - observer, "own")])
    else:
        asker, about = rng.randrange(2), rng.choice(["own", "other"])
    container = asker if about == "own" else 1 - asker
    answer = answer_of(states, sees, asker, container)
    assert (answer == UNKNOWN) == (kind == UNKNOWN)
    prompt = render(names, conts, states, sees, asker, container, template)

    mode = corruption if corruption != "auto" else ("visibility" if about == "other" else "states")
    if mode == "visibility":
        sees2 = list(sees)
        sees2[asker] = not sees2[asker]
        c_states = states
    else:
        sees2 = sees
        c_states = rng.sample([s for s in states_v if s not in states], 2)
    c_prompt = render(names, conts, c_states, sees2, asker, container, template)
    c_answer = answer_of(c_states, sees2, asker, container)
    vis2 = {0: "none", 1: "one", 2: "both"}[sum(sees2)]
    meta = {"task": TASK, "visibility": vis, "sees": sees, "asker": names[asker], "question_about": about,
            "answer_type": "unknown" if answer == UNKNOWN else "state", "names": names, "containers": conts,
            "states": states, "corruption": mode, "corrupted_visibility": vis2, "answer_changes": c_answer != answer,
            "template": template, "seed": seed, "index": index, **extra_meta}
    return TaskItem(prompt=prompt, answer=" " + answer, corrupted_prompt=c_prompt, corrupted_answer=" " + c_answer,
                    candidates=[" " + states[0], " " + states[1], " " + UNKNOWN], split=split, meta=meta)


def iter_items(seed: int, tokenizers: Sequence, corruption: str = "auto", template: str = "story",
               names: Sequence[str] | None = None, containers: Sequence[str] | None = None,
               states: Sequence[str] | None = None, split: str | None = None, extra_meta: dict | None = None,
               exclude: set[str] | None = None) -> Iterator[TaskItem]:
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown ToM corruption {corruption!r}; choose from {', '.join(CORRUPTIONS)}")
    if template not in TEMPLATES:
        raise ValueError(f"unknown ToM template {template!r}; choose from {', '.join(TEMPLATES)}")
    _check_unknown(tokenizers)
    names_v = require(name_vocab(tokenizers, names), 2, "names", tokenizers)
    cont_v = require(container_vocab(tokenizers, containers), 2, "containers", tokenizers)
    states_v = require(state_vocab(tokenizers, states), 4, "states", tokenizers)
    rng = random.Random(f"{TASK}-{seed}")
    seen = set(exclude or ())
    index, misses = 0, 0
    while True:
        block = list(_SCHEDULE)
        rng.shuffle(block)
        for cell in block:
            while True:
                it = _item(rng, cell, names_v, cont_v, states_v, corruption, template, seed, index, split,
                           extra_meta or {})
                if it.prompt not in seen:
                    break
                misses += 1
                if misses > 10_000:
                    raise ValueError("cannot find new distinct ToM prompts; the vocabulary is too small")
            seen.add(it.prompt)
            index += 1
            yield it


def generate(n: int, seed: int, tokenizers: list, corruption: str = "auto", template: str = "story",
             names: Sequence[str] | None = None, containers: Sequence[str] | None = None,
             states: Sequence[str] | None = None, split: str | None = None, exclude: set[str] | None = None,
             extra_meta: dict | None = None) -> list[TaskItem]:
    """``n`` ToM items, deterministic per seed, balanced over visibility and answer type."""
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    stream = iter_items(seed, tokenizers, corruption, template, names, containers, states, split, extra_meta, exclude)
    return [next(stream) for _ in range(n)]


def make_splits(n_train: int, n_validation: int, n_test: int, seed: int, tokenizers: list, corruption: str = "auto",
                template: str = "story", disjoint_states: bool = False,
                states: Sequence[str] | None = None) -> dict[str, list[TaskItem]]:
    """train / validation / test with no prompt repeated across splits; optionally disjoint state vocabularies."""
    return splits_without_repeats(
        (n_train, n_validation, n_test), state_vocab(tokenizers, states), seed, disjoint_states,
        lambda n, k_seed, vocab, split, exclude, extra: generate(n, k_seed, tokenizers, corruption, template,
                                                                  states=vocab, split=split, exclude=exclude,
                                                                  extra_meta=extra))
