"""Left-padded batches of task items: position -1 is every row's final prompt token."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from .schema import TaskItem


def first_token_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"answer {text!r} tokenizes to nothing")
    return ids[0]


def encode_items(tokenizer, items: Sequence[TaskItem], corrupted: bool = False) -> dict[str, torch.Tensor]:
    """Tokenise prompts (or corrupted prompts) with left padding.

    Returns input_ids, attention_mask, position_ids [b, p]; answer_ids, corrupted_answer_ids [b] (-1 if absent);
    candidate_ids [b, c] padded with -1 (absent: [b, 0]).
    """
    if tokenizer.padding_side != "left":
        raise ValueError("tokenizer must pad on the left (circuitdistill.models.registry.prepare_tokenizer)")
    prompts = []
    for i, it in enumerate(items):
        if corrupted and it.corrupted_prompt is None:
            raise ValueError(f"item {i} has no corrupted_prompt; patching needs one for every item")
        prompts.append(it.corrupted_prompt if corrupted else it.prompt)
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    answers = torch.tensor([first_token_id(tokenizer, it.answer) for it in items])
    corr = torch.tensor([first_token_id(tokenizer, it.corrupted_answer) if it.corrupted_answer else -1 for it in items])
    n_c = max((len(it.candidates or []) for it in items), default=0)
    cands = torch.full((len(items), n_c), -1, dtype=torch.long)
    for i, it in enumerate(items):
        for j, c in enumerate(it.candidates or []):
            cands[i, j] = first_token_id(tokenizer, c)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask,
            "position_ids": left_padded_position_ids(enc.attention_mask), "answer_ids": answers,
            "corrupted_answer_ids": corr, "candidate_ids": cands}


def left_padded_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded row sees the same positions as when unpadded
    (matters for absolute position embeddings such as GPT-2's; RoPE models are unaffected)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Just what the HF forward takes."""
    return {k: batch[k] for k in MODEL_KEYS}


def batches(tokenizer, items: Sequence[TaskItem], batch_size: int, corrupted: bool = False
            ) -> Iterator[dict[str, torch.Tensor]]:
    for i in range(0, len(items), batch_size):
        yield encode_items(tokenizer, items[i:i + batch_size], corrupted)
