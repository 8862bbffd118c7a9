"""Circuit discovery speed and attribution quality, side by side, in one run.

Prints, on one model and one item set (activation patching, corrupted -> clean, metric log-prob of the
answer, at the final position or at all positions):
  1. naive loop: one head at a time, a full forward pass per head and item batch;
  2. batched exact sweep: many heads per pass (per-row head masks) on top of the shared key/value prefix
     (final position) or resumed at each head's layer from the recorded layer inputs (all positions);
  3. attribution variants (--variants): plain AtP (with --ig-steps), "qk" (AtP with the QK fix), "gd"
     (GradDrop), "star" (both: AtP*), "sm" (the softmax fix: the output log-softmax computed exactly), "smqk"
     (the QK fix with the softmax fix) and "smstar" (AtP* with the softmax fix), each with its Spearman
     correlation with the exact scores over all heads and over the top 30 heads (by |exact effect|);
  4. with --heldout N: faithfulness (circuit-only / full accuracy, other heads mean-ablated at
     --faithfulness-positions) on the N items after the first --max-items of the file, of the top
     --circuit-size heads by exact patching, by each variant, and by --verify K (--verify-with ranks every
     head, exact patching re-scores its top K, the circuit is the top --circuit-size of those); the verify
     time is the ranking time plus the exact re-scoring time;
  5. each variant's recall: the share of the exact top --circuit-size heads among its top --verify heads
     (verify finds exactly the exact circuit when this is 1);
plus the largest |batched - naive| difference on the heads the naive loop ran.

The naive loop is slow on 2 CPU cores; by default it runs on --naive-heads evenly spaced heads and its
full-sweep time is extrapolated linearly (printed as such). --naive-heads 0 runs it on every head. With --repeat N
the exact sweep and the naive loop are timed N times, alternated, and each one's minimum counts (the machine's
speed drifts between runs; the minimum is the least disturbed).

    nice -n 10 .venv/bin/python bench/discovery.py --model smollm2-135m-et-teacher \
        --data runs/tasks/et7_validation.jsonl --max-items 32 --positions all --heldout 64
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from scipy.stats import spearmanr

from circuitdistill.circuits.ablation import all_heads, baseline, head_sweep, head_sweep_naive
from circuitdistill.circuits.attribution import attribution_patching
from circuitdistill.circuits.faithfulness import faithfulness_report
from circuitdistill.circuits.toy import box_items
from circuitdistill.models import registry
from circuitdistill.models.hooks import HookedLM
from circuitdistill.utils import package_versions


STAR = {"qk_fix": True, "grad_drop": True}
VARIANTS = {"atp": {}, "qk": {"qk_fix": True}, "gd": {"grad_drop": True}, "star": STAR, "sm": {"softmax_fix": True},
            "smqk": {"softmax_fix": True, "qk_fix": True}, "smstar": {"softmax_fix": True, **STAR}}


def top_heads(grid: torch.Tensor, k: int) -> list[tuple[int, int]]:
    flat = grid.flatten().abs().nan_to_num(-1.0)
    n = grid.shape[1]
    return [(int(i) // n, int(i) % n) for i in flat.argsort(descending=True)[:k]]


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def timed(fn: Callable):
    t0 = clock()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()  # a GPU's queued kernels belong to this timing
    return out, clock() - t0


def recall(exact: torch.Tensor, est: torch.Tensor, k: int, n: int) -> float:
    """Share of the exact top ``k`` heads among the estimate's top ``n`` (verify re-scores those n)."""
    return len(set(top_heads(exact, k)) & set(top_heads(est, n))) / k


def spearman(eff: torch.Tensor, est: torch.Tensor) -> tuple[float, float, float]:
    """All heads, the top 30 by |exact effect|, and sign agreement on those 30."""
    eff, est = eff.flatten(), est.flatten()
    top = eff.abs().argsort(descending=True)[:30]
    return (float(spearmanr(eff, est)[0]), float(spearmanr(eff[top], est[top])[0]),
            float((torch.sign(eff[top]) == torch.sign(est[top])).float().mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-et-teacher")
    ap.add_argument("--data", default="runs/tasks/et7_validation.jsonl",
                    help="task JSONL with corrupted prompts; 'toy' for generated 3-box prompts")
    ap.add_argument("--max-items", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rows-per-pass", type=int, default=None)
    ap.add_argument("--naive-heads", type=int, default=27, help="heads the naive loop runs (0 = all)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="time the exact sweep and the naive loop this many times, alternated; the minimum counts")
    ap.add_argument("--positions", default="final", choices=["final", "all"])
    ap.add_argument("--ig-steps", type=int, default=0, help="integrated-gradient steps of the plain AtP variant")
    ap.add_argument("--variants", default="atp,qk,star", help=f"comma separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--heldout", type=int, default=0, help="items for circuit faithfulness (0: skip)")
    ap.add_argument("--circuit-size", type=int, default=27)
    ap.add_argument("--verify", type=int, default=60, help="heads the exact sweep re-scores (0: skip)")
    ap.add_argument("--verify-with", default="star", choices=list(VARIANTS))
    ap.add_argument("--faithfulness-positions", default="final", choices=["final", "all"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["auto", "cuda", "mps", "cpu"])
    ap.add_argument("--dtype", default="fp32", choices=["auto", "bf16", "fp16", "fp32"])
    ap.add_argument("--clock", default="wall", choices=list(CLOCK),
                    help="cpu: this process's CPU seconds (all threads), for a machine shared with other jobs")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global clock
    clock = CLOCK[args.clock]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.verify and args.verify_with not in variants:
        variants.append(args.verify_with)

    model, tok = registry.load_model(args.model, device=args.device, dtype=args.dtype)
    hk = HookedLM(model, tok)
    if args.data == "toy":
        pool = box_items(tok, args.max_items + args.heldout, 3)
    else:
        from circuitdistill.tasks.io import load_items

        pool = load_items(args.data)[: args.max_items + args.heldout]
    items, heldout = pool[: args.max_items], pool[args.max_items:]
    heads = all_heads(hk)
    n_total = len(heads)
    print(f"model {args.model}: {hk.shape.n_layers} layers x {hk.shape.n_heads} heads = {n_total}; "
          f"{len(items)} items from {args.data}; positions={args.positions}; threads={args.threads}; "
          f"{args.clock} seconds; {model.device} {model.dtype}")

    if args.naive_heads and args.naive_heads < n_total:
        step = n_total / args.naive_heads
        sub = [heads[int(i * step)] for i in range(args.naive_heads)]
    else:
        sub = heads
    t_batched_runs, t_naive_runs = [], []
    for _ in range(args.repeat):  # alternated, so a slow spell of the machine touches both
        exact, t = timed(lambda: head_sweep(hk, items, "logprob", "corrupted", batch_size=args.batch_size,
                                            positions=args.positions, rows_per_pass=args.rows_per_pass,
                                            progress=False))
        t_batched_runs.append(t)
        naive, t = timed(lambda: head_sweep_naive(hk, items, "logprob", "corrupted", heads=sub,
                                                  batch_size=args.batch_size, positions=args.positions,
                                                  progress=False))
        t_naive_runs.append(t)
    t_batched, t_naive_run = min(t_batched_runs), min(t_naive_runs)
    t_naive = t_naive_run * n_total / len(sub)
    diff = max(abs(float(naive[l, h]) - float(exact[l, h])) for l, h in sub)
    clean = baseline(hk, items, "logprob", args.batch_size)
    eff = exact - clean

    rows = {}
    shared = {}  # the verify ranker's unchanged passes, reused by the re-scoring as `discover --verify` does
    for v in variants:
        kw = dict(VARIANTS[v], ig_steps=args.ig_steps if v == "atp" else 0)
        kw["shared"] = shared if v == args.verify_with else None
        est, t = timed(lambda: attribution_patching(hk, items, "logprob", "corrupted", positions=args.positions,
                                                    batch_size=args.batch_size, progress=False,
                                                    rows_per_pass=args.rows_per_pass, **kw))
        rows[v] = {"est": est, "t": t, "rho": spearman(eff, est),
                   "recall": recall(eff, est, args.circuit_size, args.verify or args.circuit_size)}
    circuits = {"exact": top_heads(eff, args.circuit_size), **{v: top_heads(r["est"], args.circuit_size)
                                                                for v, r in rows.items()}}
    t_verify = None
    if args.verify:
        top = top_heads(rows[args.verify_with]["est"], args.verify)
        rescored, t_rescore = timed(lambda: head_sweep(hk, items, "logprob", "corrupted", heads=top,
                                                       batch_size=args.batch_size, positions=args.positions,
                                                       rows_per_pass=args.rows_per_pass, progress=False,
                                                       shared=shared))
        t_verify = rows[args.verify_with]["t"] + t_rescore
        circuits[f"verify {args.verify}"] = top_heads(rescored - clean, args.circuit_size)
    faith = {}
    if heldout:
        fpos = None if args.faithfulness_positions == "all" else "final"
        for name, hs in circuits.items():
            rep = faithfulness_report(model, tok, heldout, hs, n_random=0, batch_size=args.batch_size,
                                      positions=fpos)
            faith[name] = rep["faithfulness"]

    naive_label = "measured" if len(sub) == n_total else f"extrapolated from {len(sub)} heads ({t_naive_run:.1f} s)"
    if args.repeat > 1:
        naive_label += f"; min of {args.repeat}: " + ", ".join(f"{t * n_total / len(sub):.1f}" for t in t_naive_runs)
    print()
    n_rec = args.verify or args.circuit_size
    print(f"{'':34} {'seconds':>9} {'/ batched':>10} {'rho all':>8} {'rho top30':>9} {'sign30':>7} "
          f"{'faithful':>9} {f'recall@{n_rec}':>10}")
    print(f"{'naive loop (1 head/pass, full fwd)':34} {t_naive:9.1f} {t_naive / t_batched:10.2f}   [{naive_label}]")
    f_exact = f"{faith['exact']:9.3f}" if faith else ""
    runs = (f"   [min of {args.repeat}: " + ", ".join(f"{t:.1f}" for t in t_batched_runs) + "]"
            if args.repeat > 1 else "")
    print(f"{'batched exact sweep':34} {t_batched:9.1f} {1.0:10.2f} {'':8} {'':9} {'':7} {f_exact}{runs}")
    for v, r in rows.items():
        label = {"atp": f"AtP ({args.ig_steps} IG steps)" if args.ig_steps else "AtP", "qk": "AtP + QK fix",
                 "gd": "AtP + GradDrop", "star": "AtP* (QK fix + GradDrop)", "sm": "AtP + softmax fix",
                 "smqk": "AtP + QK fix + softmax fix", "smstar": "AtP* + softmax fix"}[v]
        f = f"{faith[v]:9.3f}" if faith else ""
        print(f"{label:34} {r['t']:9.1f} {r['t'] / t_batched:10.3f} {r['rho'][0]:8.3f} {r['rho'][1]:9.3f} "
              f"{r['rho'][2]:7.2f} {f:>9} {r['recall']:10.3f}")
    if t_verify is not None:
        name = f"verify {args.verify}"
        f = f"{faith[name]:9.3f}" if faith else ""
        print(f"{'--verify ' + str(args.verify) + ' (' + args.verify_with + ' + exact)':34} {t_verify:9.1f} "
              f"{t_verify / t_batched:10.3f} {'':8} {'':9} {'':7} {f}")
    print()
    print(f"batched / naive: {t_batched / t_naive:.3f}   (target <= 0.5 at all positions)")
    print(f"max |batched - naive| on {len(sub)} heads: {diff:.2e}")
    if faith:
        print(f"faithfulness of the {args.circuit_size}-head circuits on {len(heldout)} held-out items "
              f"(non-circuit heads mean-ablated at {args.faithfulness_positions} positions), relative to exact: "
              + ", ".join(f"{k} {faith[k] / faith['exact']:.3f}" for k in faith if k != "exact"))
    print(f"clean mean log-prob {clean:.4f}")
    summary = {"t_naive_s": t_naive, "t_naive_measured_s": t_naive_run, "naive_heads": len(sub),
               "t_batched_s": t_batched, "t_batched_runs_s": t_batched_runs, "t_naive_measured_runs_s": t_naive_runs,
               "batched_over_naive": t_batched / t_naive, "max_abs_diff": diff,
               "variants": {v: {"t_s": r["t"], "spearman_all": r["rho"][0], "spearman_top30": r["rho"][1],
                                "sign_top30": r["rho"][2], f"recall_top{args.circuit_size}_at_{n_rec}": r["recall"]}
                            for v, r in rows.items()},
               "t_verify_s": t_verify, "faithfulness": faith, "clean_logprob": clean}
    if args.json:
        from circuitdistill.utils import write_json_atomic

        write_json_atomic(args.json, {"args": vars(args), **summary, "versions": package_versions()})
    print(json.dumps({k: v for k, v in summary.items() if k != "variants"}))


if __name__ == "__main__":
    main()
