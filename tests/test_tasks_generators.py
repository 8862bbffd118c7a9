"""Entity-tracking and ToM generators: determinism, recoverable answers, corruption, single tokens."""
from __future__ import annotations

import collections
import re

import pytest

from circuitdistill.models.tiny import gpt2_tokenizer
from circuitdistill.tasks import entity_tracking as et
from circuitdistill.tasks import tom


@pytest.fixture(scope="module")
def gpt2():
    return gpt2_tokenizer()


def _n(tok, s):
    return len(tok(s, add_special_tokens=False).input_ids)


@pytest.mark.parametrize("mode", et.CORRUPTIONS)
def test_et_deterministic_per_seed(gpt2, mode):
    a = et.generate(30, 5, 7, [gpt2], corruption=mode)
    b = et.generate(30, 5, 7, [gpt2], corruption=mode)
    c = et.generate(30, 5, 8, [gpt2], corruption=mode)
    assert [x.model_dump() for x in a] == [x.model_dump() for x in b]
    assert [x.prompt for x in a] != [x.prompt for x in c]


@pytest.mark.parametrize("mode", et.CORRUPTIONS)
@pytest.mark.parametrize("template", list(et.TEMPLATES))
def test_et_answer_recoverable_and_corruption_changes_answer(gpt2, mode, template):
    for it in et.generate(50, 4, 1, [gpt2], corruption=mode, template=template):
        mapping, q = et.parse_prompt(it.prompt, template)
        assert len(mapping) == 4
        assert " " + mapping[q] == it.answer
        assert sorted(" " + o for o in mapping.values()) == sorted(it.candidates)
        cmap, cq = et.parse_prompt(it.corrupted_prompt, template)
        assert " " + cmap[cq] == it.corrupted_answer
        assert it.corrupted_answer != it.answer  # every mode changes the answer
        assert it.meta["corruption"] == mode and it.meta["boxes"] == 4 and it.meta["answer_changes"]
        if mode == "query_box":
            assert cmap == mapping and cq != q
        if mode == "objects":
            assert set(cmap) == set(mapping) and cq == q and not set(cmap.values()) & set(mapping.values())
        if mode == "box_labels":
            assert sorted(cmap.values()) == sorted(mapping.values()) and cq == q
            assert set(cmap) == set(mapping) and all(cmap[k] != v for k, v in mapping.items())


@pytest.mark.slow
def test_single_token_guarantee_two_tokenizers(gpt2):
    from circuitdistill.tasks.vocab import load_tokenizer

    smol = load_tokenizer("smollm2-135m")
    toks = [gpt2, smol]
    assert smol.vocab_size != gpt2.vocab_size  # genuinely different tokenizers
    items = et.generate(100, 7, 3, toks, corruption="all")
    items += tom.generate(48, 3, toks)
    for it in items:
        for tok in toks:
            for w in [it.answer, it.corrupted_answer, *it.candidates]:
                assert _n(tok, w) == 1, (w, tok.name_or_path)
            # same template + single-token fillers: clean and corrupted align position by position
            assert _n(tok, it.prompt) == _n(tok, it.corrupted_prompt)
    for it in items[:100]:  # labels are single tokens too
        for tok in toks:
            for lab in it.meta["labels"]:
                assert _n(tok, " " + lab) == 1


def test_et_single_token_filter_drops_multi_token_words(gpt2):
    words = ["apple", "melon", "syringe", "computer", "pen", "lamp", "cup", "key", "map", "book"]
    vocab = et.object_vocab([gpt2], words)
    assert "melon" not in vocab and "syringe" not in vocab  # two GPT-2 tokens each
    assert "apple" in vocab
    with pytest.raises(ValueError, match="single tokens"):
        et.generate(3, 7, 0, [gpt2], objects=words)  # 8 usable words < 2 * 7


def test_et_splits_disjoint_prompts_and_vocab(gpt2):
    sp = et.make_splits(200, 50, 100, 3, 0, [gpt2], disjoint_objects=True)
    prompts = [set(it.prompt for it in sp[s]) for s in ("train", "validation", "test")]
    assert sum(map(len, prompts)) == 350  # no duplicates within or across splits
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])
    train_objs = {c for it in sp["train"] for c in it.candidates}
    held_objs = {c for s in ("validation", "test") for it in sp[s] for c in it.candidates}
    assert not train_objs & held_objs
    assert {it.split for it in sp["test"]} == {"test"}


def test_et_invalid_arguments(gpt2):
    with pytest.raises(ValueError, match="corruption"):
        et.generate(2, 3, 0, [gpt2], corruption="bogus")
    with pytest.raises(ValueError, match="boxes"):
        et.generate(2, 1, 0, [gpt2])


def test_tom_deterministic_and_balanced(gpt2):
    a = tom.generate(120, 5, [gpt2])
    assert [x.model_dump() for x in a] == [x.model_dump() for x in tom.generate(120, 5, [gpt2])]
    assert [x.prompt for x in a] != [x.prompt for x in tom.generate(120, 6, [gpt2])]
    vis = collections.Counter(it.meta["visibility"] for it in a)
    kinds = collections.Counter(it.meta["answer_type"] for it in a)
    assert vis == {"none": 40, "one": 40, "both": 40}
    assert kinds == {"state": 60, "unknown": 60}


_SEE = re.compile(r"(\w+) (can|cannot) observe (\w+)'s actions")
_FILL = re.compile(r"(\w+) grabs an opaque (\w+) and fills it with (\w+)")
_Q = re.compile(r"What does (\w+) believe the (\w+) contains\? Answer:$")


def _solve(prompt: str) -> str:
    fills = {c: (who, s) for who, c, s in _FILL.findall(prompt)}
    sees = {x: can == "can" for x, can, _ in _SEE.findall(prompt)}
    asker, cont = _Q.search(prompt).groups()
    owner, state = fills[cont]
    return " " + (state if owner == asker or sees[asker] else tom.UNKNOWN)


@pytest.mark.parametrize("mode", tom.CORRUPTIONS)
def test_tom_answers_follow_the_story_and_corruption(gpt2, mode):
    for it in tom.generate(60, 2, [gpt2], corruption=mode):
        assert _solve(it.prompt) == it.answer
        assert _solve(it.corrupted_prompt) == it.corrupted_answer
        assert it.answer in it.candidates
        assert it.meta["answer_changes"] == (it.answer != it.corrupted_answer)
        if mode == "auto":
            assert it.answer != it.corrupted_answer
        if mode == "visibility":
            assert it.meta["answer_changes"] == (it.meta["question_about"] == "other")


def test_tom_splits_disjoint(gpt2):
    sp = tom.make_splits(60, 24, 24, 0, [gpt2], disjoint_states=True)
    assert not {it.prompt for it in sp["train"]} & {it.prompt for it in sp["test"]}
    tr = {s for it in sp["train"] for s in it.meta["states"]}
    te = {s for it in sp["test"] for s in it.meta["states"]}
    assert not tr & te
