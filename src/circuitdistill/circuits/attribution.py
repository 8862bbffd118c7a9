"""Attribution patching (AtP): a first-order estimate of every head's patching effect at once.

For head h with clean output z_h and replacement z'_h (corrupted run, mean or zero):

    effect(h) ~= sum over selected positions of (z'_h - z_h) . dM/dz_h

from ONE clean forward/backward pass (gradients of the summed per-item metric with respect to every
layer's ``attn.hook_z``, taken through an ``add`` intervention of a zero tensor so the unmodified HF
forward is used) plus ONE forward pass for the replacement activations.

``ig_steps > 0`` averages the gradient over points z + a (z' - z), a = (k + 0.5) / ig_steps, with every
head of every layer moved together along the straight line (integrated gradients in the joint head-
output space). That costs ``ig_steps`` more forward/backward passes and corrects much of the first-
order error for heads whose effect saturates.

Final-position AtP (``positions="final"``) shares the key/value prefix the way the exact sweep does:
the prompt minus its last token runs once without gradients, and the clean forward/backward (and every
IG step) runs the final token alone on a copy of that cache. A head's output at the final position can
only reach the logits through the final token, so the gradient is the same as through a full pass
(tested), and the backward pass and each IG step cost one token instead of the whole prompt.

``softmax_fix`` (``circuits.output_softmax``) computes the output log-softmax exactly instead: AtP of log p(answer)
carries the factor 1 - p(answer), which hides the heads that would flip a confident answer. It composes with the AtP*
fixes below: each entry of the softmax's input gets its own gradient, QK correction and GradDrop gradients, and every
estimate goes through the exact log-softmax.

``qk_fix`` and ``grad_drop`` are the two fixes of AtP* (``circuits.atp_star``): the exact attention
softmax downstream of each head instead of its linearisation, and the gradient-dropping magnitude that
exposes cancelling paths. Both together are AtP*. They run under eager attention (the QK fix reads the
patterns). At the final position they use the shared prefix too: a change at the final position moves only
the final query row of every later attention pattern (causal attention), so the QK fix replays each later
attention module on the final token alone against the clean prefix's keys and values.

The model is always put in eval mode for this (dropout would make the gradient noise).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Literal, Sequence

import torch
from tqdm.auto import tqdm

from ..models.hooks import HookedLM, Intervention, model_device, on_model_device
from ..tasks.batching import encode_items
from ..tasks.metrics import final_logits, per_item
from ..tasks.schema import TaskItem
from ..tasks.scoring import forward_inputs
from ..models.resume import record_layer_calls
from .ablation import check_metric, clean_prefix, mean_head_outputs, parse_positions, shared_pass, z_hook
from .atp_star import block_boundaries, dropped_grads, pattern_hook, pattern_input_grads, qk_correction
from .output_softmax import check_candidates, exact_logprob_change, softmax_terms

DIFFERENTIABLE = ("logprob", "logit_diff")


def _align(src: torch.Tensor, p: int) -> torch.Tensor:
    if src.shape[1] == p:
        return src
    if src.shape[1] > p:
        return src[:, -p:]
    return torch.cat([src.new_zeros(src.shape[0], p - src.shape[1], *src.shape[2:]), src], dim=1)


def attribution_patching(hooked: HookedLM, items: Sequence[TaskItem], metric: str = "logprob",
                         replacement: Literal["corrupted", "mean", "zero"] = "corrupted", positions=None,
                         ig_steps: int = 0, means: dict | None = None, batch_size: int = 32,
                         progress: bool = True, prefix_cache: bool = True, qk_fix: bool = False,
                         grad_drop: bool = False, rows_per_pass: int | None = None, shared: dict | None = None,
                         softmax_fix: bool = False) -> torch.Tensor:
    """Estimated mean change of ``metric`` when each head's output is replaced: [n_layers, n_heads].

    ``prefix_cache=False`` forces full forward/backward passes for final-position AtP (the reference the
    shared-prefix path is tested against). ``qk_fix`` / ``grad_drop``: AtP* (module docstring);
    ``rows_per_pass`` bounds the rows of the QK fix's attention passes (default ``8 * batch_size``, or every
    head of a layer at the final position). ``shared``: as in ``ablation.head_sweep``, whose unchanged passes
    (corrupted head outputs, clean prefix cache, clean layer calls) this reuses or keeps. ``softmax_fix``: the
    output log-softmax computed exactly (``circuits.output_softmax``; metric logprob, items with candidates)."""
    check_metric(metric)
    if metric not in DIFFERENTIABLE:
        raise ValueError(f"attribution patching needs a differentiable metric ({', '.join(DIFFERENTIABLE)}); "
                         f"got {metric!r}")
    if replacement not in ("corrupted", "mean", "zero"):
        raise ValueError(f"replacement must be corrupted, mean or zero (got {replacement!r})")
    if ig_steps < 0:
        raise ValueError(f"ig_steps must be >= 0 (got {ig_steps})")
    if ig_steps and (qk_fix or grad_drop):
        raise ValueError("integrated gradients and the AtP* fixes (qk_fix, grad_drop) are alternatives; pick one")
    if not items:
        raise ValueError("attribution_patching needs at least one item")
    if softmax_fix:
        if metric != "logprob":
            raise ValueError(f"the softmax fix is for metric logprob (got {metric!r}: it has no output softmax)")
        if ig_steps:
            raise ValueError("the softmax fix and integrated gradients are alternatives; pick one")
        check_candidates(items)
    model = hooked.model
    was_training = model.training
    model.eval()
    s = hooked.shape
    hooks = [z_hook(l) for l in range(s.n_layers)]
    pos = parse_positions(positions)
    if replacement == "mean" and means is None:
        means = mean_head_outputs(hooked, items, batch_size)
    total = torch.zeros(s.n_layers, s.n_heads, dtype=torch.float64)
    by_drop = torch.zeros(s.n_layers, s.n_layers, s.n_heads, dtype=torch.float64)  # [dropped layer, layer, head]
    rpp = rows_per_pass or 8 * batch_size
    patterns = [pattern_hook(l) for l in range(s.n_layers)] if qk_fix else []
    params_grad = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)  # gradients only with respect to head outputs
    try:
        for i in tqdm(range(0, len(items), batch_size), desc="attribution patching", disable=not progress,
                      leave=False):
            chunk = items[i:i + batch_size]
            clean = encode_items(hooked.tokenizer, chunk)
            inputs = on_model_device(forward_inputs(clean), model)
            dev = model_device(model)
            b, p = clean["input_ids"].shape
            # replacement activations
            batch_key = (i, len(chunk))
            if replacement == "corrupted":
                with torch.no_grad():
                    rec = shared_pass(shared, ("corrupted", *batch_key), lambda: hooked.run(
                        forward_inputs(encode_items(hooked.tokenizer, chunk, corrupted=True)), record=hooks,
                        detach=True, logits_to_keep=1)[1])
                rec = dict(rec)
                target = {h: _align(rec[h], p) for h in hooks}
            elif replacement == "mean":
                target = {h: means[h].to(torch.float32).expand(b, p, s.n_heads, s.d_head) for h in hooks}
            else:
                target = {h: torch.zeros(b, p, s.n_heads, s.d_head, device=dev) for h in hooks}
            cached = prefix_cache and pos == [-1] and p > 1
            q = 1 if cached else p  # positions each forward pass computes
            if cached:  # gradients at the final position only need the final token (module docstring)
                pid = inputs["position_ids"]
                prefix = shared_pass(shared, ("prefix", *batch_key), lambda: clean_prefix(model, inputs))
                target = {h: t[:, -1:] for h, t in target.items()}

            def step_inputs(use_cache=True):
                if not cached:
                    return inputs
                return {"input_ids": inputs["input_ids"][:, -1:], "attention_mask": inputs["attention_mask"],
                        "position_ids": pid[:, -1:], "past_key_values": copy.deepcopy(prefix),
                        **({"use_cache": True} if use_cache else {})}

            sel = torch.zeros(b, p, 1, 1)
            if pos is None:
                sel[:] = 1
            else:
                for at in pos:
                    sel[:, at % p] = 1
            sel = sel * clean["attention_mask"].view(b, p, 1, 1).float()  # padding never counts
            sel = sel[:, -q:].to(dev)  # the positions the passes computed (the final one alone on the shared prefix)

            # clean forward/backward: gradients at z (through add-zero leaves) and the clean z itself
            leaves = {h: torch.zeros(b, q, s.n_heads, s.d_head, device=dev, requires_grad=True) for h in hooks}
            ivs = [Intervention(h, "add", None, None, leaves[h]) for h in hooks]
            bounds = block_boundaries(hooked) if grad_drop else contextlib.nullcontext([])
            lin, pattern_grads, drop_lin = [], [], []  # per objective: first-order changes [b, n_layers, n_heads]
            with torch.enable_grad(), bounds as blocks, hooked.hooks(record=hooks + patterns, interventions=ivs) as rec:
                out = model(**step_inputs(), logits_to_keep=1)
                z = {h: rec[h].detach() for h in hooks}
                delta = {h: target[h] - z[h] for h in hooks}
                if softmax_fix:  # one objective per entry of v (candidate logits, the rest's logsumexp)
                    v, valid, answer = softmax_terms(final_logits(out.logits), clean)
                    objectives = [v[:, k].sum() for k in range(v.shape[1])]
                else:
                    objectives = [per_item(metric, final_logits(out.logits), clean).sum()]
                # layer 0's pattern depends on no head output: it is never downstream of a patched head
                wrt = [leaves[h] for h in hooks] + [rec[a] for a in patterns if rec[a].requires_grad]
                for e, obj in enumerate(objectives):
                    g = torch.autograd.grad(obj, wrt + [o for _, o in blocks],
                                            retain_graph=grad_drop or e + 1 < len(objectives))
                    g, out_g = g[:len(wrt)], g[len(wrt):]
                    lin.append(_linear(delta, g[:len(hooks)], sel, hooks))
                    if qk_fix:
                        known = [x.detach() for x in g[len(hooks):]]
                        pattern_grads.append([torch.zeros_like(rec[patterns[0]])] * (len(patterns) - len(known))
                                             + known)
                    if grad_drop:  # [dropped layer, b, n_layers, n_heads]
                        drop_lin.append(torch.stack([_linear(delta, dg, sel, hooks) for dg in
                                                     dropped_grads(blocks, out_g, wrt[:len(hooks)], g[:len(hooks)])]))
            if ig_steps:
                grads = [torch.zeros_like(leaf) for leaf in leaves.values()]
                for k in range(ig_steps):
                    a = (k + 0.5) / ig_steps
                    pts = {h: (z[h] + a * delta[h]).requires_grad_(True) for h in hooks}
                    ivs = [Intervention(h, "patch", None, None, pts[h]) for h in hooks]
                    with torch.enable_grad(), hooked.hooks(interventions=ivs):
                        out = model(**step_inputs(), logits_to_keep=1)
                        m = per_item(metric, final_logits(out.logits), clean).sum()
                        gs = torch.autograd.grad(m, [pts[h] for h in hooks])
                    for j, g in enumerate(gs):
                        grads[j] += g / ig_steps
                lin = [_linear(delta, grads, sel, hooks)]
            qk = 0.0  # per item and objective: [b, objectives, n_layers, n_heads]
            if qk_fix:
                resid = (record_layer_calls(hooked, step_inputs(use_cache=False)) if cached else
                         shared_pass(shared, ("calls", *batch_key), lambda: record_layer_calls(hooked, inputs))).hidden
                qk = _qk_term(hooked, step_inputs(use_cache=False), resid, z, {h: delta[h] * sel for h in hooks},
                              [rec[a].detach() for a in patterns], pattern_grads,
                              rows_per_pass or (b * s.n_heads if cached else rpp))

            if softmax_fix:  # the output log-softmax is applied exactly, in float64 on the CPU
                terms = (v.detach().cpu(), valid.cpu(), answer.cpu())

            def change(dv: torch.Tensor) -> torch.Tensor:
                """Summed over the batch: the metric's change from the objectives' changes dv [b, objectives, ...]."""
                dv = dv + qk
                return exact_logprob_change(*terms, dv) if softmax_fix else dv[:, 0].sum(0)

            total += change(torch.stack(lin, 1))
            for j in range(len(drop_lin[0]) if drop_lin else 0):  # the QK term does not go through dropped gradients
                by_drop[j] += change(torch.stack([d[j] for d in drop_lin], 1))
    finally:
        for prm, g in zip(model.parameters(), params_grad):
            prm.requires_grad_(g)
        if was_training:
            model.train()
    if grad_drop:  # magnitudes from the dropped passes, signs from the full estimate
        total = torch.sign(total) * by_drop.abs().sum(0) / max(1, s.n_layers - 1)
    return (total / len(items)).float()


def _linear(delta: dict, grads, sel: torch.Tensor, hooks: list[str]) -> torch.Tensor:
    """AtP's first-order estimate per item and head: [b, n_layers, n_heads], float64 on the CPU."""
    return torch.stack([(delta[h] * grads[l] * sel).sum(dim=(1, 3)) for l, h in enumerate(hooks)], 1).double().cpu()


def _qk_term(hooked: HookedLM, inputs: dict, resid: list, z: dict, delta: dict, patterns: list, pattern_grads,
             rows_per_pass: int) -> torch.Tensor:
    """The QK fix's correction for one batch per item and objective (``atp_star.qk_correction``). ``inputs``: the
    clean pass (the final token on a copy of the prefix cache, or the whole prompt); ``resid``: its layer inputs;
    ``pattern_grads``: per objective, every layer's gradient at the attention weights."""
    per_layer = [torch.stack(g) for g in zip(*pattern_grads)]  # [objectives, b, n_heads, q, k] per layer
    with hooked.hooks(record=[pattern_hook(0)]):  # eager attention, so the recorded masks are eager's
        attn_calls = record_layer_calls(hooked, inputs, part=hooked.table.attn)
    input_grads = pattern_input_grads(hooked, attn_calls, resid, per_layer)
    return qk_correction(hooked, attn_calls, resid, z, delta, patterns, per_layer, input_grads, rows_per_pass)
