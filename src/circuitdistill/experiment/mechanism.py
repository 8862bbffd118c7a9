"""Mechanism verification after training: does the student now compute the task the teacher's way?

Interchange agreement is the causal counterpart of CKA: for each clean/corrupted pair, patch the
corrupted run's head outputs (at the final position) into the student's matched heads and into the
teacher's paired heads, and ask how often the two patched models predict the same answer. Random
head pairs of the same size are the control. Works across tokenizers: only the final position is
patched and predictions are compared as decoded strings.
"""
from __future__ import annotations

import random
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..circuits.interchange import interchange_logits
from ..models.hooks import HookedLM, on_model_device
from ..tasks.batching import encode_items, model_inputs
from ..tasks.schema import TaskItem

Head = tuple[int, int]


@torch.no_grad()
def patched_predictions(hooked: HookedLM, items: Sequence[TaskItem], heads: Sequence[Head], batch_size: int = 16,
                        progress: bool = False) -> tuple[list[str], list[str]]:
    """(clean predictions, predictions with `heads` patched from the corrupted run at the final position)."""
    tok = hooked.tokenizer
    clean_pred, patched_pred = [], []
    for i in tqdm(range(0, len(items), batch_size), desc="interchange", disable=not progress, leave=False):
        chunk = items[i:i + batch_size]
        clean, corr = encode_items(tok, chunk), encode_items(tok, chunk, corrupted=True)
        base = hooked.model(**on_model_device(model_inputs(clean), hooked.model)).logits[:, -1]
        patched = interchange_logits(hooked, clean, corr, heads)
        clean_pred += [tok.decode(t).strip() for t in base.argmax(-1)]
        patched_pred += [tok.decode(t).strip() for t in patched.argmax(-1)]
    return clean_pred, patched_pred


def interchange_agreement(student: HookedLM, teacher: HookedLM, items: Sequence[TaskItem],
                          pairs: Sequence[tuple[Head, Head]], n_random: int = 5, seed: int = 0,
                          batch_size: int = 16) -> dict:
    """Agreement of patched predictions for the matched pairs vs random head pairs of the same size."""
    corrupted_answers = [(it.corrupted_answer or "").strip() for it in items]

    def measure(s_heads, t_heads):
        s_clean, s_patch = patched_predictions(student, items, s_heads, batch_size)
        t_clean, t_patch = patched_predictions(teacher, items, t_heads, batch_size)
        agree = np.mean([a == b for a, b in zip(s_patch, t_patch)])
        s_flip = [a != b for a, b in zip(s_patch, s_clean)]
        t_flip = [a != b for a, b in zip(t_patch, t_clean)]
        flip_agree = np.mean([a == b for a, b in zip(s_flip, t_flip)])
        # raw agreement rewards two models that both keep their (shared) clean answer; among the items where
        # both patched models changed their answer, agreement asks whether they changed it to the same thing
        both = [i for i, (a, b) in enumerate(zip(s_flip, t_flip)) if a and b]
        return {"agreement": float(agree), "flip_agreement": float(flip_agree),
                "student_flip_rate": float(np.mean(s_flip)), "teacher_flip_rate": float(np.mean(t_flip)),
                "n_both_flip": len(both),
                "agreement_when_both_flip": float(np.mean([s_patch[i] == t_patch[i] for i in both])) if both else None,
                # does the patch carry the corrupted prompt's answer into the model? (the binding moved, not noise)
                "student_takes_corrupted_answer": float(np.mean([a == c for a, c in zip(s_patch, corrupted_answers)])),
                "teacher_takes_corrupted_answer": float(np.mean([a == c for a, c in zip(t_patch, corrupted_answers)]))}

    s_heads = sorted({p[0] for p in pairs})
    t_heads = sorted({p[1] for p in pairs})
    matched = measure(s_heads, t_heads)
    rng = random.Random(seed)
    all_s = [(l, h) for l in range(student.shape.n_layers) for h in range(student.shape.n_heads)]
    all_t = [(l, h) for l in range(teacher.shape.n_layers) for h in range(teacher.shape.n_heads)]
    controls = [measure(rng.sample(all_s, len(s_heads)), rng.sample(all_t, len(t_heads))) for _ in range(n_random)]

    def stat(fn, k):
        vals = [c[k] for c in controls if c[k] is not None]
        return float(fn(vals)) if vals else None

    ctrl = {k: stat(np.mean, k) for k in matched}
    ctrl_std = {k: stat(np.std, k) for k in matched}
    return {"matched": matched, "random_mean": ctrl, "random_std": ctrl_std, "n_random": n_random, "seed": seed,
            "n_items": len(items), "student_heads": s_heads, "teacher_heads": t_heads}
