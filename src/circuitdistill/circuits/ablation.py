"""Per-head ablation and patching sweeps, batched across heads.

The engine (:func:`head_sweep`) measures a per-item metric with ONE head's output (``attn.hook_z``)
replaced, for many heads. Several heads go through one forward pass: the item batch is repeated
once per head and every row gets its own head through the per-row bool head mask of
:class:`circuitdistill.models.hooks.Intervention`. Row ``r`` holds item ``r // k`` with head
``r % k`` replaced (k = heads in the pass).

When only the final position is replaced (``positions=[-1]`` / ``"final"``), every earlier position
is identical to the unablated run, so the prompt minus its last token is run ONCE per item batch with
the HF key/value cache, and each row then runs a single token on a copy of that cache. This is exact
(causal attention: nothing at earlier positions can see the final position) and it is what makes a
sweep over all heads cheap.

When every position is replaced, the unablated pass runs once per item batch with each decoder
layer's input kept (``models.resume``); a row that replaces a head of layer L then runs only layers
L..end, and the rows of one pass all start at the same layer. A head in layer L cannot change
anything before layer L, so this is exact too, and it skips half the layers on average.

Replacement modes: ``zero``; ``mean`` (``mean_head_outputs`` over a reference set); ``resample``
(the head's output on another, randomly drawn item of the same batch, seeded); ``corrupted`` (the
head's output on the item's corrupted prompt: activation patching, noising direction) and ``clean``
(run the corrupted prompt, patch in the clean output: denoising direction).
"""
from __future__ import annotations

import copy
from typing import Literal, Sequence

import torch
from tqdm.auto import tqdm

from ..models.arch import check_head
from ..models.hooks import HookedLM, Intervention, compute_means, hook_name, model_device, on_model_device
from ..models.resume import record_layer_calls, run_from_layer
from ..tasks.batching import batches, encode_items, model_inputs
from ..tasks.metrics import METRICS, per_item
from ..tasks.schema import TaskItem
from ..tasks.scoring import final_position_logits, forward_inputs

Mode = Literal["zero", "mean", "resample", "corrupted", "clean"]
MODES: tuple[str, ...] = ("zero", "mean", "resample", "corrupted", "clean")
ABLATION_MODES: tuple[str, ...] = ("mean", "zero", "resample")
Head = tuple[int, int]


def z_hook(layer: int) -> str:
    return hook_name(layer, "attn.hook_z")


def all_heads(hooked: HookedLM) -> list[Head]:
    s = hooked.shape
    return [(l, h) for l in range(s.n_layers) for h in range(s.n_heads)]


def check_heads(hooked: HookedLM, heads: Sequence[Sequence[int]] | None) -> list[Head]:
    """Validate a list of (layer, head); ``None`` means every head."""
    if heads is None:
        return all_heads(hooked)
    out = []
    for i, lh in enumerate(heads):
        if len(lh) != 2:
            raise ValueError(f"heads[{i}] = {lh!r}: expected a (layer, head) pair")
        l, h = int(lh[0]), int(lh[1])
        check_head(hooked.shape, l, h)
        out.append((l, h))
    return out


def parse_positions(positions) -> list[int] | None:
    """``None``/"all" -> every position; "final" -> [-1]; or a list of ints (negative from the end)."""
    if positions is None or positions == "all":
        return None
    if positions == "final":
        return [-1]
    if isinstance(positions, str):
        raise ValueError(f"positions={positions!r}: use 'final', 'all' or a list of ints")
    return [int(p) for p in positions]


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def _forward_final(hooked: HookedLM, inputs: dict, interventions: Sequence[Intervention] = ()) -> torch.Tensor:
    """Final-position logits [b, V] of one hooked forward pass."""
    with hooked.hooks(interventions=interventions):
        return final_position_logits(hooked.model, inputs)


@torch.no_grad()
def mean_head_outputs(hooked: HookedLM, items: Sequence[TaskItem], batch_size: int = 32,
                      per_position: bool = False) -> dict[str, torch.Tensor]:
    """Mean of every layer's ``attn.hook_z`` over ``items`` (padding ignored): hook -> [n_heads, d_head]."""
    if not items:
        raise ValueError("mean_head_outputs needs at least one reference item")
    hooks = [z_hook(l) for l in range(hooked.shape.n_layers)]
    return compute_means(hooked, (forward_inputs(b) for b in batches(hooked.tokenizer, items, batch_size)), hooks,
                         per_position=per_position)


@torch.no_grad()
def per_item_metric(hooked: HookedLM, items: Sequence[TaskItem], metric: str = "accuracy", batch_size: int = 32,
                    interventions: Sequence[Intervention] = (), corrupted: bool = False) -> torch.Tensor:
    """The metric for every item [n_items] under fixed (batch-independent) interventions."""
    check_metric(metric)
    vals = []
    for b in batches(hooked.tokenizer, items, batch_size, corrupted=corrupted):
        vals.append(per_item(metric, _forward_final(hooked, forward_inputs(b), interventions), b).float().cpu())
    return torch.cat(vals) if vals else torch.zeros(0)


def baseline(hooked: HookedLM, items: Sequence[TaskItem], metric: str = "accuracy", batch_size: int = 32,
             interventions: Sequence[Intervention] = (), corrupted: bool = False) -> float:
    """Mean metric over items with nothing (or only ``interventions``) changed."""
    if not items:
        raise ValueError("baseline needs at least one item")
    return float(per_item_metric(hooked, items, metric, batch_size, interventions, corrupted).mean())


def _source_z(hooked: HookedLM, run_batch: dict, items: Sequence[TaskItem], mode: str, run_corrupted: bool,
              gen: torch.Generator) -> dict[str, torch.Tensor] | None:
    """Per-row replacement values [b, p, n_heads, d_head] for resample / corrupted / clean modes."""
    L = hooked.shape.n_layers
    hooks = [z_hook(l) for l in range(L)]
    if mode == "resample":
        n = run_batch["input_ids"].shape[0]
        _, rec = hooked.run(forward_inputs(run_batch), record=hooks, detach=True, logits_to_keep=1)
        if n == 1:
            rows = torch.zeros(1, dtype=torch.long)
        else:  # another item of the batch for every row, never the row itself
            rows = (torch.arange(n) + torch.randint(1, n, (n,), generator=gen)) % n
        return {k: v[rows] for k, v in rec.items()}
    if mode in ("corrupted", "clean"):
        other = encode_items(hooked.tokenizer, items, corrupted=not run_corrupted)
        _, rec = hooked.run(forward_inputs(other), record=hooks, detach=True, logits_to_keep=1)
        return dict(rec)
    return None


def shared_pass(shared: dict | None, key: tuple, compute):
    """``compute()``, kept in ``shared`` under ``key`` when a dict is given, so two sweeps over the same item
    batches (attribution patching, then the exact re-scoring of its top heads) run an unchanged pass once."""
    if shared is None:
        return compute()
    if key not in shared:
        shared[key] = compute()
    return shared[key]


def head_sweep(hooked: HookedLM, items: Sequence[TaskItem], metric: str = "accuracy", mode: Mode = "mean",
               means: dict[str, torch.Tensor] | None = None, heads: Sequence[Sequence[int]] | None = None,
               batch_size: int = 32, positions=None, seed: int = 0, progress: bool = True,
               rows_per_pass: int | None = None, prefix_cache: bool = True, return_per_item: bool = False,
               layer_skip: bool = True, shared: dict | None = None):
    """Mean metric over ``items`` with each single head replaced; [n_layers, n_heads] (NaN where not swept).

    ``batch_size`` items are encoded together; ``rows_per_pass`` bounds the rows of one forward pass
    (default: ``default_rows_per_pass``). ``prefix_cache=False`` forces full
    forward passes for final-position sweeps; ``layer_skip=False`` runs every layer for the others.
    With ``return_per_item`` it also returns the per-item values [n_items, n_layers, n_heads].
    ``shared``: unchanged passes (corrupted head outputs, the clean prefix cache, the clean layer calls)
    per item batch, reused from and kept for another sweep (``shared_pass``).
    """
    check_metric(metric)
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if not items:
        raise ValueError("head_sweep needs at least one item")
    model = hooked.model
    if model.training:
        raise RuntimeError("call model.eval() first: sweeps must not run with dropout")
    tok = hooked.tokenizer
    s = hooked.shape
    head_list = check_heads(hooked, heads)
    pos = parse_positions(positions)
    run_corrupted = mode == "clean"
    if mode == "mean" and means is None:
        means = mean_head_outputs(hooked, items, batch_size)
    use_cache = prefix_cache and pos == [-1]
    skip = layer_skip and not use_cache
    gen = torch.Generator().manual_seed(seed)
    per_item_vals = torch.full((len(items), s.n_layers, s.n_heads), float("nan"))
    chunks = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    runs = [encode_items(tok, [items[i] for i in idx], corrupted=run_corrupted) for idx in chunks]
    rpps = [rows_per_pass or default_rows_per_pass(batch_size, r["input_ids"].shape[1], use_cache, skip,
                                                   model_device(model)) for r in runs]
    n_passes = sum(len(_head_groups(head_list, max(1, rpp // len(c)), skip)) for c, rpp in zip(chunks, rpps))
    bar = tqdm(total=n_passes, desc=f"head sweep ({mode}, {metric})", disable=not progress, leave=False)
    with torch.no_grad():
        for idx, run, rpp in zip(chunks, runs, rpps):
            chunk = [items[i] for i in idx]
            n = len(chunk)
            batch_key = (idx[0], n)
            if mode == "corrupted":
                src = shared_pass(shared, ("corrupted", *batch_key),
                                  lambda: _source_z(hooked, run, chunk, mode, run_corrupted, gen))
            else:
                src = _source_z(hooked, run, chunk, mode, run_corrupted, gen)
            p = run["input_ids"].shape[1]
            cached = use_cache and p > 1
            if cached:
                pid = forward_inputs(run)["position_ids"]
                prefix = shared_pass(shared, ("prefix", *batch_key), lambda: clean_prefix(model, forward_inputs(run)))
                if src is not None:
                    src = {k: v[:, -1:] for k, v in src.items()}
            if skip and not run_corrupted:
                calls = shared_pass(shared, ("calls", *batch_key),
                                    lambda: record_layer_calls(hooked, _on_device(forward_inputs(run), model)))
            elif skip:
                calls = record_layer_calls(hooked, _on_device(forward_inputs(run), model))
            for group in _head_groups(head_list, max(1, rpp // n), skip):
                g = len(group)
                ivs = []
                for layer in sorted({l for l, _ in group}):
                    mask = torch.zeros(g, s.n_heads, dtype=torch.bool)
                    for j, (l, h) in enumerate(group):
                        if l == layer:
                            mask[j, h] = True
                    mask = mask.repeat(n, 1)  # row r -> item r // g, head r % g
                    hk = z_hook(layer)
                    if mode == "zero":
                        ivs.append(Intervention(hk, "zero", mask, pos))
                    elif mode == "mean":
                        ivs.append(Intervention(hk, "mean", mask, pos, means[hk]))
                    else:
                        ivs.append(Intervention(hk, "patch", mask, pos, src[hk].repeat_interleave(g, 0)))
                rep = {key: val.repeat_interleave(g, 0) for key, val in run.items()}
                if skip:
                    with hooked.hooks(interventions=ivs):
                        final = run_from_layer(hooked, calls, group[0][0], times=g)
                elif cached:
                    cache = copy.deepcopy(prefix)
                    cache.batch_repeat_interleave(g)
                    final = _forward_final(hooked, {
                        "input_ids": rep["input_ids"][:, -1:], "attention_mask": rep["attention_mask"],
                        "position_ids": pid[:, -1:].repeat_interleave(g, 0), "past_key_values": cache,
                        "use_cache": True}, ivs)
                else:
                    final = _forward_final(hooked, forward_inputs(rep), ivs)
                vals = per_item(metric, final, rep).float().cpu().view(n, g)
                for j, (l, h) in enumerate(group):
                    per_item_vals[idx, l, h] = vals[:, j]
                bar.update(1)
    bar.close()
    out = per_item_vals.mean(0)
    return (out, per_item_vals) if return_per_item else out


@torch.no_grad()
def clean_prefix(model, inputs: dict):
    """The key/value cache of the prompt minus its last token (``inputs``: ``forward_inputs`` of a batch)."""
    return model(**on_model_device({k: inputs[k][:, :-1] for k in ("input_ids", "attention_mask", "position_ids")},
                                   model), use_cache=True, logits_to_keep=1).past_key_values


CPU_TOKENS_PER_PASS = 2048


def default_rows_per_pass(batch_size: int, n_tokens: int, one_token_rows: bool, layer_skip: bool,
                          device: torch.device) -> int:
    """Rows of one sweep pass when the caller gives none.

    One-token rows on the shared prefix are cheap: 8 item batches' worth. Full passes without layer skipping run one
    head per pass. Layer-skipping passes on an accelerator take 8 heads' rows; on a CPU they hold at most
    ``CPU_TOKENS_PER_PASS`` tokens (at least one head's rows): there a pass of one item batch already keeps the
    matrix units busy, so bigger passes save no arithmetic, while their activations outgrow what the C allocator
    keeps for reuse, and every pass then maps and faults in fresh pages.
    """
    if one_token_rows:
        return 8 * batch_size
    if not layer_skip:
        return batch_size
    if device.type == "cpu":
        return max(batch_size, CPU_TOKENS_PER_PASS // max(1, n_tokens))
    return 8 * batch_size


def _head_groups(heads: list[Head], k: int, by_layer: bool) -> list[list[Head]]:
    """Heads of one pass each, at most ``k`` per pass; with ``by_layer`` a pass never mixes layers."""
    if not by_layer:
        return [heads[i:i + k] for i in range(0, len(heads), k)]
    out = []
    for layer in sorted({l for l, _ in heads}):
        same = [lh for lh in heads if lh[0] == layer]
        out.extend(same[i:i + k] for i in range(0, len(same), k))
    return out


def _on_device(inputs: dict, model) -> dict:
    return on_model_device(inputs, model)


def head_ablation_sweep(hooked: HookedLM, items: Sequence[TaskItem], metric: str = "accuracy",
                        mode: Literal["mean", "zero", "resample"] = "mean", means: dict[str, torch.Tensor] | None = None,
                        heads: Sequence[Sequence[int]] | None = None, batch_size: int = 32, positions=None,
                        seed: int = 0, progress: bool = True, rows_per_pass: int | None = None) -> torch.Tensor:
    """Mean metric over ``items`` with each single head ablated: [n_layers, n_heads] (NaN for heads not swept).

    ``mode``: mean | zero | resample. ``means`` (from :func:`mean_head_outputs`) defaults to the means
    over ``items``. ``positions``: None/"all" (default), "final" or a list of ints.
    """
    if mode not in ABLATION_MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; choose from {', '.join(ABLATION_MODES)}")
    return head_sweep(hooked, items, metric, mode, means, heads, batch_size, positions, seed, progress,
                      rows_per_pass)


@torch.no_grad()
def head_sweep_naive(hooked: HookedLM, items: Sequence[TaskItem], metric: str = "accuracy", mode: Mode = "mean",
                     means: dict[str, torch.Tensor] | None = None, heads: Sequence[Sequence[int]] | None = None,
                     batch_size: int = 32, positions=None, progress: bool = True) -> torch.Tensor:
    """Reference loop: one head at a time, full forward passes (zero / mean / corrupted / clean modes).

    Slow on purpose; used by tests and ``bench/discovery.py`` as the thing the batched sweep must equal.
    """
    check_metric(metric)
    if mode == "resample":
        raise ValueError("the naive loop does not implement resample; compare with zero/mean/corrupted")
    head_list = check_heads(hooked, heads)
    pos = parse_positions(positions)
    if mode == "mean" and means is None:
        means = mean_head_outputs(hooked, items, batch_size)
    run_corrupted = mode == "clean"
    encoded = [encode_items(hooked.tokenizer, items[i:i + batch_size], corrupted=run_corrupted)
               for i in range(0, len(items), batch_size)]
    sources = [None] * len(encoded)
    if mode in ("corrupted", "clean"):
        hooks = [z_hook(l) for l in range(hooked.shape.n_layers)]
        for i in range(len(encoded)):
            other = encode_items(hooked.tokenizer, items[i * batch_size:(i + 1) * batch_size],
                                 corrupted=not run_corrupted)
            sources[i] = hooked.run(forward_inputs(other), record=hooks, detach=True, logits_to_keep=1)[1]
    out = torch.full((hooked.shape.n_layers, hooked.shape.n_heads), float("nan"))
    for l, h in tqdm(head_list, desc="naive head sweep", disable=not progress, leave=False):
        total = 0.0
        for b, src in zip(encoded, sources):
            hk = z_hook(l)
            if mode == "zero":
                iv = Intervention(hk, "zero", [h], pos)
            elif mode == "mean":
                iv = Intervention(hk, "mean", [h], pos, means[hk])
            else:
                iv = Intervention(hk, "patch", [h], pos, src[hk])
            total += float(per_item(metric, _forward_final(hooked, forward_inputs(b), [iv]), b).float().sum())
        out[l, h] = total / len(items)
    return out
