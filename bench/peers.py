"""Per-head activation patching, ours against TransformerLens 4.3, on the same model and items, in one run.

Both patch each head's output (``attn.hook_z``) from the corrupted prompt into the clean run and score the
mean log-prob of the answer at the final position:
  - all positions: TransformerLens' ``get_act_patch_attn_head_out_all_pos`` on a ``TransformerBridge``
    built around a copy of the same HF model, against our ``head_sweep`` (layer-skipping, batched);
  - final position: TransformerLens' ``generic_activation_patch`` with ``layer_pos_head_vector_patch_setter``
    and one (layer, final position, head) row per head, against our final-position sweep (shared prefix).
It prints each time, our time / TransformerLens' time, and the largest |difference| of the two grids.

TransformerLens runs tokens without an attention mask, so items are grouped by (clean, corrupted) token
length and it runs once per group (the grid is the item-weighted mean over groups); we run all items in
left-padded batches.

    nice -n 10 .venv/bin/python bench/peers.py --model runs/demo/stages/teacher-*/model \
        --data runs/demo/stages/data-*/validation.jsonl --max-items 16
"""
from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from collections import defaultdict

import torch

from circuitdistill.circuits.ablation import head_sweep
from circuitdistill.models.hooks import HookedLM
from circuitdistill.tasks.batching import encode_items


def bridge_around(model):
    """A TransformerBridge around a copy of ``model`` (the bridge rewires the module it wraps)."""
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = build_bridge_from_module(copy.deepcopy(model), model.config.architectures[0]
                                          if getattr(model.config, "architectures", None)
                                          else type(model).__name__, hf_config=model.config)
    return bridge.eval()


def length_groups(tok, items) -> list[list[int]]:
    groups = defaultdict(list)
    for i, it in enumerate(items):
        key = (len(tok(it.prompt).input_ids), len(tok(it.corrupted_prompt).input_ids))
        groups[key].append(i)
    return list(groups.values())


@torch.no_grad()
def transformer_lens_patching(bridge, tok, items, positions: str) -> torch.Tensor:
    """[n_layers, n_heads] mean answer log-prob with each head's output patched from the corrupted run."""
    import pandas as pd
    from transformer_lens.patching import (generic_activation_patch, get_act_patch_attn_head_out_all_pos,
                                           layer_pos_head_vector_patch_setter)

    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    total = torch.zeros(n_layers, n_heads, dtype=torch.float64)
    device = bridge.cfg.device
    for idx in length_groups(tok, items):
        group = [items[i] for i in idx]
        clean, corr = encode_items(tok, group), encode_items(tok, group, corrupted=True)
        clean_ids, corr_ids = clean["input_ids"].to(device), corr["input_ids"].to(device)
        answers = clean["answer_ids"].to(device)
        _, corr_cache = bridge.run_with_cache(corr_ids, names_filter=lambda n: n.endswith("attn.hook_z"))

        def metric(logits):
            return logits[:, -1].float().log_softmax(-1).gather(1, answers[:, None]).mean()

        if positions == "all":
            grid = get_act_patch_attn_head_out_all_pos(bridge, clean_ids, corr_cache, metric)
        else:
            rows = [(l, clean_ids.shape[1] - 1, h) for l in range(n_layers) for h in range(n_heads)]
            index = pd.DataFrame(rows, columns=["layer", "pos", "head_index"])
            grid = generic_activation_patch(bridge, clean_ids, corr_cache, metric, layer_pos_head_vector_patch_setter,
                                            "z", index_df=index).view(n_layers, n_heads)
        total += grid.double().cpu() * len(idx)
    return (total / len(items)).float()


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def compare(model, tok, items, positions: str, batch_size: int = 16, rows_per_pass: int | None = None,
            bridge=None, clock: str = "wall") -> dict:
    """Time both on ``positions`` ("all" or "final"); returns seconds, the ratio and the max |difference|.

    ``clock="cpu"`` times this process's CPU seconds (all threads) instead of wall seconds."""
    bridge = bridge if bridge is not None else bridge_around(model)
    now = CLOCK[clock]
    t0 = now()
    theirs = transformer_lens_patching(bridge, tok, items, positions)
    t_tl = now() - t0
    t0 = now()
    ours = head_sweep(HookedLM(model, tok), items, "logprob", "corrupted", batch_size=batch_size,
                      positions=positions, rows_per_pass=rows_per_pass, progress=False)
    t_ours = now() - t0
    return {"positions": positions, "t_transformer_lens_s": t_tl, "t_ours_s": t_ours, "ratio": t_ours / t_tl,
            "max_abs_diff": float((ours - theirs).abs().max()), "ours": ours, "theirs": theirs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="task JSONL with corrupted prompts")
    ap.add_argument("--max-items", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rows-per-pass", type=int, default=None)
    ap.add_argument("--positions", default="all,final", help="all, final or both (comma separated)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", default="wall", choices=list(CLOCK),
                    help="cpu: this process's CPU seconds (all threads), for a machine shared with other jobs")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from circuitdistill.models import registry
    from circuitdistill.tasks.io import load_items
    from circuitdistill.utils import package_versions, write_json_atomic

    model, tok = registry.load_model(args.model)
    model.eval()
    items = load_items(args.data)[: args.max_items]
    bridge = bridge_around(model)
    print(f"model {args.model}: {len(items)} items from {args.data}; threads={args.threads}; {args.clock} seconds; "
          f"{len(length_groups(tok, items))} length group(s) for TransformerLens")
    results = []
    for positions in args.positions.split(","):
        r = compare(model, tok, items, positions.strip(), args.batch_size, args.rows_per_pass, bridge, args.clock)
        results.append(r)
        print(f"{r['positions']:>5} positions: TransformerLens {r['t_transformer_lens_s']:8.1f} s   ours "
              f"{r['t_ours_s']:8.1f} s   ours / TL {r['ratio']:.3f}   max |ours - TL| {r['max_abs_diff']:.2e}"
              f"{'' if r['max_abs_diff'] <= 1e-4 else '   DISAGREE (> 1e-4)'}")
    summary = [{k: v for k, v in r.items() if k not in ("ours", "theirs")} for r in results]
    if args.json:
        write_json_atomic(args.json, {"args": vars(args), "results": summary, "versions": package_versions()})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
