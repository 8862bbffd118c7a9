"""Ablation-sweep speed: batched per-row sweep (+ starting at the first ablated layer) vs one component per pass.

    .venv/bin/python bench/compare_sweep.py [--model smollm2-135m] [--items 8] [--components 20]

Without --model it uses a tiny random Llama (6 layers). Prints wall times side by side and the ratio, and
checks that the three ways give the same per-item metric.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from circuitdistill.analysis import influence as I
from circuitdistill.models.hooks import HookedLM
from circuitdistill.tasks.schema import TaskItem

NAMES = ["Mary", "John", "Anna", "Paul", "Kate", "Mark", "Lisa", "Tom"]


def items(n: int) -> list[TaskItem]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        a, b = rng.choice(NAMES, 2, replace=False)
        out.append(TaskItem(prompt=f"When {a} and {b} went to the store, {b} gave a drink to", answer=f" {a}",
                            corrupted_answer=f" {b}"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--components", type=int, default=20, help="sweep the last N components of an even spread")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        from circuitdistill.models.registry import load_model

        model, tok = load_model(args.model)
    else:
        from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model

        model, tok = tiny_model("llama", n_layers=6, d_model=128, n_heads=4), gpt2_tokenizer()
    hm = HookedLM(model, tok)
    comps = I.all_components(hm)
    comps = [comps[i] for i in np.linspace(0, len(comps) - 1, min(args.components, len(comps))).astype(int)]
    batches = I.encode_batches(tok, items(args.items), args.items)
    groups = [[c] for c in comps]
    I.metric_under_ablation(hm, batches, groups[:1], metric="logit_diff")  # warm-up (lazy init, allocator)
    times, vals = {}, {}
    for label, kw in (("one per forward", dict(batch_rows=args.items, skip_prefix=False)),
                      ("batched", dict(batch_rows=64, skip_prefix=False)),
                      ("batched + skip", dict(batch_rows=64, skip_prefix=True))):
        t0 = time.perf_counter()
        vals[label] = I.metric_under_ablation(hm, batches, groups, metric="logit_diff", **kw)
        times[label] = time.perf_counter() - t0
    base = times["one per forward"]
    for label, t in times.items():
        err = np.abs(vals[label] - vals["one per forward"]).max()
        print(f"{label:<18} {t:8.2f} s   speed-up x{base / t:5.2f}   max |diff| {err:.2e}")


if __name__ == "__main__":
    main()
