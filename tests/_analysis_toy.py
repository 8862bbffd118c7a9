"""Shared toy task and a briefly trained tiny model for the analysis tests (not a test module)."""
from __future__ import annotations

import functools

import numpy as np
import torch

from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks.schema import TaskItem

NAMES = ["Mary", "John", "Anna", "Paul", "Kate", "Mark", "Lisa", "Tom", "Sarah", "James"]


def toy_items(n: int = 16, seed: int = 0) -> list[TaskItem]:
    """IOI-style prompts: the answer is the name that is not repeated."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(NAMES, 2, replace=False)
        out.append(TaskItem(prompt=f"When {a} and {b} went to the store, {b} gave a drink to", answer=f" {a}",
                            corrupted_prompt=f"When {a} and {b} went to the store, {a} gave a drink to",
                            corrupted_answer=f" {b}"))
    return out


@functools.lru_cache(maxsize=None)
def trained_tiny(steps: int = 10, seed: int = 0):
    """A tiny llama trained for ``steps`` Adam steps on the toy task (fresh items each step); eval mode."""
    torch.manual_seed(seed)
    tok = gpt2_tokenizer()
    model = tiny_model("llama", seed=seed)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for step in range(steps):
        items = toy_items(16, seed=1000 + step)
        enc = tok([it.prompt + it.answer for it in items], return_tensors="pt", padding=True)
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
