"""Side effects of distillation on the rest of the model: perplexity on a fixed general-text sample.

The sample ships with the package (resources/general_text.jsonl); scripts/make_general_text.py made it
from the base model and recorded its seed, decoding settings and command in the file's header row.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..models.general_text import perplexity  # noqa: F401  (re-exported: callers import it from here)


def general_text_path() -> Path:
    return Path(str(resources.files("circuitdistill") / "resources" / "general_text.jsonl"))


def load_general_text(path: str | Path | None = None) -> tuple[dict, list[str]]:
    """(header, texts): the first row is the provenance header, the rest {"text": ...}."""
    rows = [json.loads(l) for l in Path(path or general_text_path()).read_text().splitlines() if l.strip()]
    header = rows[0].get("header", {}) if rows and "header" in rows[0] else {}
    texts = [r["text"] for r in rows if "text" in r]
    return header, texts


