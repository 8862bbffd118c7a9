"""Circuit discovery speed and AtP quality, side by side, in one run.

Prints, on one model and one item set (final-position activation patching, corrupted -> clean, metric
log-prob of the answer):
  1. naive loop: one head at a time, a full forward pass per head and item batch;
  2. batched exact sweep: many heads per pass (per-row head masks) on top of the shared key/value prefix;
  3. AtP: one clean forward/backward + one corrupted forward (at the final position the backward pass
     and every --ig-steps step run the final token alone on the shared prefix);
and the Spearman correlation of AtP with the exact scores over all heads and over the top 30 heads
(by |exact effect|), plus the largest |batched - naive| difference on the heads the naive loop ran.

The naive loop is slow on 2 CPU cores; by default it runs on --naive-heads evenly spaced heads and its
full-sweep time is extrapolated linearly (printed as such). --naive-heads 0 runs it on every head.

    nice -n 10 .venv/bin/python bench/discovery.py --model smollm2-135m-et-teacher \
        --data runs/tasks/et7_validation.jsonl --n-items 32
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from scipy.stats import spearmanr

from circuitdistill.circuits.ablation import all_heads, baseline, head_sweep, head_sweep_naive
from circuitdistill.circuits.attribution import attribution_patching
from circuitdistill.circuits.toy import box_items
from circuitdistill.models import registry
from circuitdistill.models.hooks import HookedLM
from circuitdistill.utils import package_versions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-et-teacher")
    ap.add_argument("--data", default="runs/tasks/et7_validation.jsonl",
                    help="task JSONL with corrupted prompts; 'toy' for generated 3-box prompts")
    ap.add_argument("--n-items", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rows-per-pass", type=int, default=None)
    ap.add_argument("--naive-heads", type=int, default=27, help="heads the naive loop runs (0 = all)")
    ap.add_argument("--positions", default="final", choices=["final", "all"])
    ap.add_argument("--ig-steps", type=int, default=0, help="AtP integrated-gradient steps")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = registry.load_model(args.model)
    hk = HookedLM(model, tok)
    if args.data == "toy":
        items = box_items(tok, args.n_items, 3)
    else:
        from circuitdistill.tasks.io import load_items

        items = load_items(args.data)[: args.n_items]
    heads = all_heads(hk)
    n_total = len(heads)
    print(f"model {args.model}: {hk.shape.n_layers} layers x {hk.shape.n_heads} heads = {n_total}; "
          f"{len(items)} items from {args.data}; positions={args.positions}; threads={args.threads}")

    t0 = time.perf_counter()
    exact = head_sweep(hk, items, "logprob", "corrupted", batch_size=args.batch_size, positions=args.positions,
                       rows_per_pass=args.rows_per_pass, progress=False)
    t_batched = time.perf_counter() - t0

    if args.naive_heads and args.naive_heads < n_total:
        step = n_total / args.naive_heads
        sub = [heads[int(i * step)] for i in range(args.naive_heads)]
    else:
        sub = heads
    t0 = time.perf_counter()
    naive = head_sweep_naive(hk, items, "logprob", "corrupted", heads=sub, batch_size=args.batch_size,
                             positions=args.positions, progress=False)
    t_naive_run = time.perf_counter() - t0
    t_naive = t_naive_run * n_total / len(sub)
    diff = max(abs(float(naive[l, h]) - float(exact[l, h])) for l, h in sub)

    t0 = time.perf_counter()
    atp = attribution_patching(hk, items, "logprob", "corrupted", positions=args.positions,
                               ig_steps=args.ig_steps, batch_size=args.batch_size, progress=False)
    t_atp = time.perf_counter() - t0

    clean = baseline(hk, items, "logprob", args.batch_size)
    eff = (exact - clean).flatten()
    est = atp.flatten()
    rho_all = float(spearmanr(eff, est)[0])
    top = eff.abs().argsort(descending=True)[:30]
    rho_top = float(spearmanr(eff[top], est[top])[0])
    sign_top = float((torch.sign(eff[top]) == torch.sign(est[top])).float().mean())

    naive_label = "measured" if len(sub) == n_total else f"extrapolated from {len(sub)} heads ({t_naive_run:.1f} s)"
    print()
    print(f"{'':38} {'seconds':>9} {'vs batched':>11}")
    print(f"{'naive loop (1 head/pass, full fwd)':38} {t_naive:9.1f} {t_naive / t_batched:10.1f}x   [{naive_label}]")
    print(f"{'batched exact sweep':38} {t_batched:9.1f} {1.0:10.1f}x")
    atp_label = f"AtP ({args.ig_steps} IG steps)" if args.ig_steps else "AtP (1 fwd+bwd clean, 1 fwd corr.)"
    print(f"{atp_label:38} {t_atp:9.1f} {t_atp / t_batched:10.3f}x")
    print()
    print(f"speed-up batched vs naive:   {t_naive / t_batched:6.1f}x   (target >= 3x)")
    print(f"speed-up AtP vs batched:     {t_batched / t_atp:6.1f}x   (target >= 20x)")
    print(f"Spearman AtP vs exact, all {n_total} heads: {rho_all:.3f}")
    print(f"Spearman AtP vs exact, top 30 heads:   {rho_top:.3f}   (target >= 0.7); sign agreement {sign_top:.2f}")
    print(f"max |batched - naive| on {len(sub)} heads: {diff:.2e}")
    print(f"clean mean log-prob {clean:.4f}")
    if args.json:
        from circuitdistill.utils import write_json_atomic

        write_json_atomic(args.json, {"args": vars(args), "t_naive_s": t_naive, "t_naive_measured_s": t_naive_run,
                                      "naive_heads": len(sub), "t_batched_s": t_batched, "t_atp_s": t_atp,
                                      "spearman_all": rho_all, "spearman_top30": rho_top, "sign_top30": sign_top,
                                      "max_abs_diff": diff, "clean_logprob": clean, "versions": package_versions()})
    print(json.dumps({"batched_vs_naive": round(t_naive / t_batched, 2), "atp_vs_batched": round(t_batched / t_atp, 2),
                      "spearman_top30": round(rho_top, 3)}))


if __name__ == "__main__":
    main()
