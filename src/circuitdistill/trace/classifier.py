"""The tracer: multinomial logistic regression (scikit-learn) over PoS templates or word n-grams.

Fit on the teachers' texts (labels = teacher), predict students' texts. The fitted model is saved as JSON
(coefficients, intercepts, classes, the featurizer's templates or vocabulary, config, provenance); no pickle.
Loading rebuilds a scikit-learn ``LogisticRegression`` with those coefficients, so prediction runs through
scikit-learn's own ``predict_proba``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..utils import provenance, write_json_atomic
from .features import NgramFeaturizer, PosTemplateFeaturizer
from .taggers import Tagger, get_tagger, tag_texts

FORMAT = "circuitdistill.trace.v1"


class TracerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: Literal["pos", "ngram"] = "pos"
    tagger: Literal["spacy", "hanta"] = "spacy"
    n: int = Field(4, ge=1, le=8, description="PoS template length")
    top_k: int = Field(50, ge=1, description="number of PoS templates kept (most frequent)")
    ngram_max_features: int = Field(10_000, ge=1)
    C: float = Field(1.0, gt=0, description="inverse L2 regularisation strength of the logistic regression")
    max_iter: int = Field(5000, ge=10)
    seed: int = 0


class Tracer:
    def __init__(self, config: TracerConfig | None = None, tagger: Tagger | None = None):
        self.config = config or TracerConfig()
        self._tagger = tagger
        self.featurizer: PosTemplateFeaturizer | NgramFeaturizer | None = None
        self.clf = None
        self.train_info: dict = {}

    # -- tagging is only needed for PoS features
    @property
    def tagger(self) -> Tagger:
        if self._tagger is None:
            self._tagger = get_tagger(self.config.tagger)
        return self._tagger

    def _inputs(self, texts: Sequence[str], tagged: Sequence | None):
        if self.config.features == "ngram":
            return list(texts)
        if tagged is not None:
            return list(tagged)
        return tag_texts(self.tagger, texts, progress=len(texts) > 500)

    def fit(self, texts: Sequence[str], labels: Sequence[str], tagged: Sequence | None = None) -> "Tracer":
        from sklearn.linear_model import LogisticRegression

        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise ValueError(f"need texts from at least 2 teachers to fit, got only {classes}")
        cfg = self.config
        inputs = self._inputs(texts, tagged)
        if cfg.features == "pos":
            self.featurizer = PosTemplateFeaturizer(n=cfg.n, top_k=cfg.top_k).fit(inputs)
        else:
            self.featurizer = NgramFeaturizer(max_features=cfg.ngram_max_features).fit(inputs)
        X = self.featurizer.transform(inputs)
        y = np.asarray(labels)
        self.clf = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed)
        self.clf.fit(X, y)
        self.train_info = {"n_texts": len(texts), "per_class": {c: int((y == c).sum()) for c in classes},
                           "n_features": int(X.shape[1]), "train_accuracy": float((self.clf.predict(X) == y).mean())}
        if cfg.features == "pos":
            self._class_examples(inputs, y)
        return self

    def _class_examples(self, tagged: Sequence, y: np.ndarray, per: int = 2) -> None:
        """Example spans of each template from each teacher's own texts (for the report)."""
        f = self.featurizer
        ex: dict[str, dict[str, list[str]]] = {c: {} for c in self.classes}
        for tg, c in zip(tagged, y):
            for t in f.templates:
                slot = ex[c].setdefault(" ".join(t), [])
                if len(slot) < per:
                    for s in f.find_spans(tg, t):
                        if s not in slot and len(slot) < per:
                            slot.append(s)
        self.train_info["examples_by_class"] = ex

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.clf.classes_]

    def class_weights(self) -> np.ndarray:
        """[n_classes, n_features]: evidence for each class (binary LR: -w for class 0, +w for class 1)."""
        W = np.asarray(self.clf.coef_)
        if W.shape[0] == 1 and len(self.classes) == 2:
            W = np.vstack([-W[0], W[0]])
        return W

    def predict_proba(self, texts: Sequence[str], tagged: Sequence | None = None) -> np.ndarray:
        if self.clf is None:
            raise RuntimeError("tracer is not fitted")
        X = self.featurizer.transform(self._inputs(texts, tagged))
        return self.clf.predict_proba(X)

    def predict(self, texts: Sequence[str], tagged: Sequence | None = None) -> list[str]:
        P = self.predict_proba(texts, tagged)
        return [self.classes[i] for i in P.argmax(1)]

    def top_features(self, k: int = 10) -> dict[str, list[dict]]:
        W = self.class_weights()
        names = self.featurizer.feature_names
        ex = self.train_info.get("examples_by_class", {})
        out = {}
        for ci, c in enumerate(self.classes):
            order = np.argsort(-W[ci], kind="stable")[:k]
            rows = []
            for j in order:
                row = {"feature": names[j], "weight": round(float(W[ci, j]), 4)}
                if self.config.features == "pos":
                    row["examples"] = ex.get(c, {}).get(names[j], [])
                rows.append(row)
            out[c] = rows
        return out

    # -- JSON persistence
    def to_json(self) -> dict:
        return {"format": FORMAT, "config": self.config.model_dump(), "classes": self.classes,
                "coef": np.asarray(self.clf.coef_).tolist(), "intercept": np.asarray(self.clf.intercept_).tolist(),
                "featurizer": self.featurizer.to_json(), "train": self.train_info,
                "tagger_id": self.tagger.id if self.config.features == "pos" else None,
                "provenance": provenance(self.config.seed, self.config)}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_json())

    @classmethod
    def from_json(cls, d: dict, tagger: Tagger | None = None) -> "Tracer":
        from sklearn.linear_model import LogisticRegression

        if d.get("format") != FORMAT:
            raise ValueError(f"not a tracer model (format {d.get('format')!r}, expected {FORMAT!r})")
        t = cls(TracerConfig(**d["config"]), tagger=tagger)
        fz = d["featurizer"]
        t.featurizer = PosTemplateFeaturizer.from_json(fz) if fz["kind"] == "pos" else NgramFeaturizer.from_json(fz)
        clf = LogisticRegression(C=t.config.C, max_iter=t.config.max_iter)
        clf.classes_ = np.asarray(d["classes"])
        clf.coef_ = np.asarray(d["coef"], dtype=np.float64)
        clf.intercept_ = np.asarray(d["intercept"], dtype=np.float64)
        clf.n_features_in_ = clf.coef_.shape[1]
        t.clf = clf
        t.train_info = d.get("train", {})
        return t

    @classmethod
    def load(cls, path: str | Path, tagger: Tagger | None = None) -> "Tracer":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not a JSON tracer model ({e.msg} at line {e.lineno})") from None
        try:
            return cls.from_json(d, tagger)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{p}: invalid tracer model: {e}") from None
