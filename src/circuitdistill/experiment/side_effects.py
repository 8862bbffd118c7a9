"""Side effects of distillation on the rest of the model: perplexity on a fixed general-text sample.

The sample ships with the package (resources/general_text.jsonl); scripts/make_general_text.py made it
from the base model and recorded its seed, decoding settings and command in the file's header row.
"""
from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm


def general_text_path() -> Path:
    return Path(str(resources.files("circuitdistill") / "resources" / "general_text.jsonl"))


def load_general_text(path: str | Path | None = None) -> tuple[dict, list[str]]:
    """(header, texts): the first row is the provenance header, the rest {"text": ...}."""
    rows = [json.loads(l) for l in Path(path or general_text_path()).read_text().splitlines() if l.strip()]
    header = rows[0].get("header", {}) if rows and "header" in rows[0] else {}
    texts = [r["text"] for r in rows if "text" in r]
    return header, texts


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], batch_size: int = 8, max_length: int = 128,
               progress: bool = False) -> float:
    """Token-level perplexity, padding excluded (right padding here: loss is over real tokens only)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    nll, count = 0.0, 0
    try:
        for i in tqdm(range(0, len(texts), batch_size), desc="perplexity", disable=not progress, leave=False):
            enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            logits = model(**enc).logits[:, :-1].float()
            target = enc.input_ids[:, 1:]
            mask = enc.attention_mask[:, 1:].bool()
            lp = logits.log_softmax(-1).gather(-1, target[..., None]).squeeze(-1)
            nll -= lp[mask].sum().item()
            count += int(mask.sum())
    finally:
        tokenizer.padding_side = side
    return math.exp(nll / max(count, 1))
