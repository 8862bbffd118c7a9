"""Overhead of recording every head's output (hook_z, all layers) vs a plain forward pass.

Prints the ratio measured side by side in one run (interleaved, median of repeats). Target: <= 1.10.
    python bench/hooks.py [--model smollm2-135m] [--batch 8] [--seq 64] [--repeats 15]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from circuitdistill.models.hooks import HookedLM, hook_name
from circuitdistill.models.registry import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_model(args.model)
    hm = HookedLM(model, tok)
    ids = torch.randint(100, len(tok) - 1, (args.batch, args.seq))
    names = [hook_name(l, "attn.hook_z") for l in range(hm.shape.n_layers)]

    def plain():
        model(input_ids=ids)

    def recorded():
        with hm.hooks(record=names, detach=True) as rec:
            model(input_ids=ids)
        assert len(rec) == len(names)

    times = {"plain": [], "record_all_heads": []}
    with torch.inference_mode():
        for _ in range(2):
            plain(), recorded()
        for i in range(args.repeats):
            for name, fn in (("plain", plain), ("record_all_heads", recorded))[:: 1 if i % 2 else -1]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"model={args.model} batch={args.batch} seq={args.seq} repeats={args.repeats} threads={torch.get_num_threads()}")
    print(f"plain forward           median {med['plain'] * 1000:8.1f} ms")
    print(f"record all {hm.shape.n_total_heads} heads   median {med['record_all_heads'] * 1000:8.1f} ms")
    ratio = med["record_all_heads"] / med["plain"]
    print(f"ratio record/plain = {ratio:.3f}  (target <= 1.10: {'PASS' if ratio <= 1.10 else 'FAIL'})")


if __name__ == "__main__":
    main()
