"""Features for teacher tracing.

* :class:`PosTemplateFeaturizer` - PoS n-gram "templates" (default n = 4). ``fit`` keeps the ``top_k`` (default
  50) most frequent templates over all the teachers' texts (frequency = number of occurrences; ties broken by the
  template's text, so the choice is deterministic); ``transform`` gives a binary presence matrix.
* :class:`NgramFeaturizer` - the baseline: word 1-3-gram counts, 10k most frequent features
  (scikit-learn ``CountVectorizer``).

Both serialize to plain JSON (``to_json`` / ``from_json``) so a fitted tracer is a readable JSON file.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

Template = tuple[str, ...]


def tag_ngrams(tags: Sequence[str], n: int) -> list[Template]:
    """All contiguous tag n-grams of one text, in order (a text shorter than n has none)."""
    return [tuple(tags[i:i + n]) for i in range(len(tags) - n + 1)]


def template_str(t: Template) -> str:
    return " ".join(t)


class PosTemplateFeaturizer:
    kind = "pos"

    def __init__(self, n: int = 4, top_k: int = 50):
        if n < 1:
            raise ValueError(f"template length n must be >= 1, got {n}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.n = n
        self.top_k = top_k
        self.templates: list[Template] = []
        self.frequencies: list[int] = []
        self.examples: dict[str, list[str]] = {}

    @staticmethod
    def _tags(tagged) -> list[str]:
        # accept [(token, tag), ...] or [tag, ...]
        return [x[1] if isinstance(x, (tuple, list)) else x for x in tagged]

    def fit(self, tagged_texts: Sequence, max_examples: int = 3) -> "PosTemplateFeaturizer":
        counts: Counter = Counter()
        for tagged in tagged_texts:
            counts.update(tag_ngrams(self._tags(tagged), self.n))
        if not counts:
            raise ValueError(f"no PoS {self.n}-grams found: every text is shorter than {self.n} tokens")
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top_k]
        self.templates = [t for t, _ in ranked]
        self.frequencies = [c for _, c in ranked]
        self.examples = {template_str(t): [] for t in self.templates}
        self._collect_examples(tagged_texts, max_examples)
        return self

    def _collect_examples(self, tagged_texts: Sequence, max_examples: int) -> None:
        wanted = set(self.templates)
        for tagged in tagged_texts:
            if not tagged or not isinstance(tagged[0], (tuple, list)):
                return  # tags only, no words to show
            words = [w for w, _ in tagged]
            for i, t in enumerate(tag_ngrams(self._tags(tagged), self.n)):
                if t in wanted:
                    ex = self.examples[template_str(t)]
                    span = " ".join(words[i:i + self.n])
                    if len(ex) < max_examples and span not in ex:
                        ex.append(span)

    @property
    def feature_names(self) -> list[str]:
        return [template_str(t) for t in self.templates]

    def transform(self, tagged_texts: Sequence) -> np.ndarray:
        if not self.templates:
            raise RuntimeError("PosTemplateFeaturizer is not fitted")
        index = {t: j for j, t in enumerate(self.templates)}
        X = np.zeros((len(tagged_texts), len(self.templates)), dtype=np.float64)
        for i, tagged in enumerate(tagged_texts):
            for t in set(tag_ngrams(self._tags(tagged), self.n)):
                j = index.get(t)
                if j is not None:
                    X[i, j] = 1.0
        return X

    def find_spans(self, tagged, template: Template) -> list[str]:
        words = [w for w, _ in tagged]
        return [" ".join(words[i:i + self.n]) for i, t in enumerate(tag_ngrams(self._tags(tagged), self.n))
                if t == template]

    def to_json(self) -> dict:
        return {"kind": self.kind, "n": self.n, "top_k": self.top_k, "templates": [list(t) for t in self.templates],
                "frequencies": self.frequencies, "examples": self.examples}

    @classmethod
    def from_json(cls, d: dict) -> "PosTemplateFeaturizer":
        f = cls(n=int(d["n"]), top_k=int(d["top_k"]))
        f.templates = [tuple(t) for t in d["templates"]]
        f.frequencies = list(d.get("frequencies", []))
        f.examples = dict(d.get("examples", {}))
        return f


class NgramFeaturizer:
    """Word 1..3-gram counts over the ``max_features`` most frequent n-grams (scikit-learn CountVectorizer)."""

    kind = "ngram"

    def __init__(self, ngram_range: tuple[int, int] = (1, 3), max_features: int = 10_000):
        from sklearn.feature_extraction.text import CountVectorizer

        self.ngram_range = tuple(ngram_range)
        self.max_features = max_features
        self.vec = CountVectorizer(ngram_range=self.ngram_range, max_features=max_features, lowercase=True,
                                   token_pattern=r"(?u)\b\w+\b|[^\w\s]")

    def fit(self, texts: Sequence[str]) -> "NgramFeaturizer":
        self.vec.fit(list(texts))
        return self

    @property
    def feature_names(self) -> list[str]:
        return list(self.vec.get_feature_names_out())

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return self.vec.transform(list(texts)).toarray().astype(np.float64)

    def to_json(self) -> dict:
        return {"kind": self.kind, "ngram_range": list(self.ngram_range), "max_features": self.max_features,
                "vocabulary": {k: int(v) for k, v in self.vec.vocabulary_.items()}}

    @classmethod
    def from_json(cls, d: dict) -> "NgramFeaturizer":
        f = cls(ngram_range=tuple(d["ngram_range"]), max_features=int(d["max_features"]))
        from sklearn.feature_extraction.text import CountVectorizer

        f.vec = CountVectorizer(ngram_range=f.ngram_range, lowercase=True, token_pattern=r"(?u)\b\w+\b|[^\w\s]",
                                vocabulary=dict(d["vocabulary"]))
        return f
