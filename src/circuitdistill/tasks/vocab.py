"""Shipped word lists and the single-token filter every generator applies.

A word qualifies for a set of tokenizers when, with a leading space, it is exactly one token for
EVERY tokenizer: alone, and also right after a typical left context (BPE merges can differ there).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

from ..models import registry

from ..models.tiny import gpt2_tokenizer

RESOURCE_LISTS = ("nouns", "names", "containers", "states")


@lru_cache(maxsize=None)
def word_list(name: str) -> tuple[str, ...]:
    """The shipped list ``resources/<name>.txt`` (one word per line, ``#`` comments), order kept, no duplicates."""
    if name not in RESOURCE_LISTS:
        raise ValueError(f"unknown word list {name!r}; choose from {', '.join(RESOURCE_LISTS)}")
    text = resources.files("circuitdistill").joinpath("resources", f"{name}.txt").read_text()
    out: list[str] = []
    for line in text.splitlines():
        w = line.split("#", 1)[0].strip()
        if w and w not in out:
            out.append(w)
    return tuple(out)


def _n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False).input_ids)


def is_single_token(tok, word: str, context: str = "The") -> bool:
    """True if ``" " + word`` is one token alone and adds exactly one token after ``context``."""
    piece = " " + word
    if _n_tokens(tok, piece) != 1:
        return False
    return _n_tokens(tok, context + piece) - _n_tokens(tok, context) == 1


def single_token_words(words: Iterable[str], tokenizers: Sequence, context: str = "The") -> list[str]:
    """Keep the words that are single tokens (leading space) for every tokenizer; order kept."""
    words = list(words)
    keep = []
    for w in words:
        if all(is_single_token(t, w, context) for t in tokenizers):
            keep.append(w)
    return keep


def require(words: Sequence[str], need: int, what: str, tokenizers: Sequence) -> list[str]:
    """``words`` if there are at least ``need`` of them, else a clear error."""
    if len(words) < need:
        names = ", ".join(getattr(t, "name_or_path", type(t).__name__) or type(t).__name__ for t in tokenizers)
        raise ValueError(f"only {len(words)} {what} are single tokens for every tokenizer ({names}); "
                         f"need at least {need}. Use fewer boxes or pass a longer word list.")
    return list(words)


def load_tokenizer(name: str):
    """Tokenizer only (no weights) for a model name: registry names/dirs, or ``gpt2`` for the offline GPT-2 BPE."""
    if name in ("gpt2", "gpt2-tokenizer"):
        return gpt2_tokenizer()
    from transformers import AutoTokenizer

    path = registry.resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as e:
        raise registry.ModelNotAvailable(f"cannot load the tokenizer of {name} from {path} "
                                         f"({str(e).strip().splitlines()[0]})") from None
    registry.prepare_tokenizer(tok)
    return tok
