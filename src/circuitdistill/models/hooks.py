"""Head-level hook points on unmodified Hugging Face causal LMs.

Hook vocabulary (TransformerLens-style names; ``L`` is the layer index):

======================================  ==========================================  ==============================
hook point                              tensor shape                                where (see ``arch.ARCH_TABLES``)
======================================  ==========================================  ==============================
``blocks.L.hook_resid_pre``             [batch, pos, d_model]                       input of decoder block L
``blocks.L.attn.hook_q``                [batch, pos, n_heads, d_head]               output of q_proj (pre-RoPE)
``blocks.L.attn.hook_k``                [batch, pos, n_kv_heads, d_head]            output of k_proj (pre-RoPE)
``blocks.L.attn.hook_v``                [batch, pos, n_kv_heads, d_head]            output of v_proj
``blocks.L.attn.hook_z``                [batch, pos, n_heads, d_head]               input of o_proj: head outputs
``blocks.L.attn.hook_pattern``          [batch, n_heads, q_pos, k_pos]              attention weights (record only;
                                                                                    eager attention while recorded)
``blocks.L.hook_attn_out``              [batch, pos, d_model]                       output of the attention module
``blocks.L.hook_mlp_out``               [batch, pos, d_model]                       output of the MLP
``blocks.L.hook_resid_post``            [batch, pos, d_model]                       output of decoder block L
======================================  ==========================================  ==============================

Positions index the (left-padded) sequence, so ``-1`` is every row's final token.
Recordings hold the value the model actually used (after interventions) and keep their
autograd graph unless ``detach=True``: training needs gradients through them.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Literal, Sequence

import torch
from torch import nn

from .arch import Shape, get_module, shape_of, table_for

HEAD_HOOKS = ("attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z")
BLOCK_HOOKS = (*HEAD_HOOKS, "attn.hook_pattern", "hook_attn_out", "hook_mlp_out", "hook_resid_pre", "hook_resid_post")
_NAME = re.compile(r"^blocks\.(\d+)\.(.+)$")

Heads = Sequence[int] | torch.Tensor | None  # None: all; ints; or bool mask [batch, n_heads] (per-row sweeps)
Positions = Sequence[int] | torch.Tensor | None  # None: all; ints (negative from the end); or long [batch]


def hook_name(layer: int, point: str) -> str:
    return f"blocks.{layer}.{point}"


@dataclass
class Intervention:
    """Replace (or add to) the activation at ``hook`` for the selected heads and positions.

    ``kind``: "zero" | "mean" | "patch" | "add". ``value`` for "mean" is [n_heads, d_head]
    (or [d_model]) or a right-aligned per-position mean [P, n_heads, d_head]; for "patch" it is a
    recording of the same hook from another run (same batch size, right-aligned on positions);
    for "add" it is a vector broadcast over the selection.
    """

    hook: str
    kind: Literal["zero", "mean", "patch", "add"]
    heads: Heads = None
    positions: Positions = None
    value: torch.Tensor | None = None
    rows: torch.Tensor | None = None  # optional bool [batch]: only these rows are touched (per-row sweeps
    #                                   on hooks without a head dimension, e.g. one MLP ablated per row)


def zero_ablate(hook: str, heads: Heads = None, positions: Positions = None,
                rows: torch.Tensor | None = None) -> Intervention:
    return Intervention(hook, "zero", heads, positions, rows=rows)


def mean_ablate(hook: str, means: torch.Tensor, heads: Heads = None, positions: Positions = None,
                rows: torch.Tensor | None = None) -> Intervention:
    return Intervention(hook, "mean", heads, positions, means, rows=rows)


def patch(hook: str, source: torch.Tensor, heads: Heads = None, positions: Positions = None) -> Intervention:
    return Intervention(hook, "patch", heads, positions, source)


def add_vector(hook: str, vector: torch.Tensor, heads: Heads = None, positions: Positions = None) -> Intervention:
    return Intervention(hook, "add", heads, positions, vector)


def resample_ablate(hook: str, reference: torch.Tensor, batch_size: int, heads: Heads = None,
                    positions: Positions = None, generator: torch.Generator | None = None) -> Intervention:
    """Replace with the activation of a randomly drawn reference example (seeded by ``generator``)."""
    rows = torch.randint(0, reference.shape[0], (batch_size,), generator=generator)
    return Intervention(hook, "patch", heads, positions, reference[rows.to(reference.device)])


class Recording(dict):
    """hook name -> tensor, filled while the ``hooks`` context is active."""


class HookedLM:
    """Wraps an unmodified HF causal LM; all hooks live only inside ``hooks()``."""

    def __init__(self, model: nn.Module, tokenizer=None):
        self.model = model
        self.tokenizer = tokenizer
        self.table = table_for(model)
        self.shape: Shape = shape_of(model)
        if tokenizer is not None:
            check_tokenizer(model, tokenizer)

    # ---- vocabulary -------------------------------------------------------------------------
    def hook_names(self) -> list[str]:
        return [hook_name(l, p) for l in range(self.shape.n_layers) for p in BLOCK_HOOKS]

    def parse(self, name: str) -> tuple[int, str]:
        m = _NAME.match(name)
        if not m or m.group(2) not in BLOCK_HOOKS:
            raise KeyError(f"unknown hook point {name!r}; valid points are blocks.<layer>.<point> with point in "
                           f"{', '.join(BLOCK_HOOKS)}")
        layer = int(m.group(1))
        if not 0 <= layer < self.shape.n_layers:
            raise IndexError(f"layer {layer} out of range in {name!r}: valid layers are 0..{self.shape.n_layers - 1}")
        return layer, m.group(2)

    def block(self, layer: int) -> nn.Module:
        return get_module(self.model, self.table.layers)[layer]

    def n_heads_at(self, point: str) -> int | None:
        if point in ("attn.hook_k", "attn.hook_v"):
            return self.shape.n_kv_heads
        if point in ("attn.hook_q", "attn.hook_z"):
            return self.shape.n_heads
        return None

    # ---- the context manager -----------------------------------------------------------------
    @contextlib.contextmanager
    def hooks(self, record: Iterable[str] = (), interventions: Iterable[Intervention] = (),
              detach: bool = False) -> Iterator[Recording]:
        """Install hooks for one or more forward passes; they are removed on exit, even on error."""
        record = list(record)
        interventions = list(interventions)
        by_point: dict[tuple[int, str], list[Intervention]] = {}
        for iv in interventions:
            layer, point = self.parse(iv.hook)
            if point == "attn.hook_pattern":
                raise ValueError("attn.hook_pattern is record-only; intervene on hook_q/hook_k or hook_z instead")
            self._validate_heads(iv.heads, point, iv.hook)
            by_point.setdefault((layer, point), []).append(iv)
        wanted = {self.parse(r) for r in record}
        rec = Recording()
        handles: list = []
        restore_attn = None
        try:
            if any(p == "attn.hook_pattern" for _, p in wanted):
                restore_attn = self._set_attn_impl("eager")
            for layer, point in sorted(wanted | set(by_point)):
                handles.extend(self._install(layer, point, by_point.get((layer, point), []),
                                             (layer, point) in wanted, rec, detach))
            yield rec
        finally:
            for h in handles:
                h.remove()
            if restore_attn is not None:
                self._set_attn_impl(restore_attn)

    def run(self, inputs: dict, record: Iterable[str] = (), interventions: Iterable[Intervention] = (),
            detach: bool = False, **forward_kwargs):
        """One forward pass under hooks; returns (model output, recording)."""
        with self.hooks(record, interventions, detach) as rec:
            out = self.model(**on_model_device(inputs, self.model), **forward_kwargs)
        return out, rec

    # ---- internals ---------------------------------------------------------------------------
    def _set_attn_impl(self, impl: str) -> str:
        old = self.model.config._attn_implementation
        for mod in self.model.modules():
            cfg = getattr(mod, "config", None)
            if cfg is not None and hasattr(cfg, "_attn_implementation"):
                cfg._attn_implementation = impl
        return old

    def _validate_heads(self, heads: Heads, point: str, name: str) -> None:
        n = self.n_heads_at(point)
        if heads is None:
            return
        if n is None:
            raise ValueError(f"{name} has no head dimension; pass heads=None")
        if isinstance(heads, torch.Tensor) and heads.dtype == torch.bool:
            if heads.shape[-1] != n:
                raise ValueError(f"head mask for {name} has {heads.shape[-1]} columns; expected {n}")
            return
        for h in heads:
            if not 0 <= int(h) < n:
                raise IndexError(f"head {int(h)} out of range for {name}: valid heads are 0..{n - 1}")

    def _install(self, layer: int, point: str, ivs: list[Intervention], want: bool, rec: Recording,
                 detach: bool) -> list:
        name = hook_name(layer, point)
        block = self.block(layer)
        t, s = self.table, self.shape

        def process(x: torch.Tensor, n_heads: int | None) -> torch.Tensor | None:
            """x is the flat activation [b, p, n*d] (head points) or [b, p, d_model]."""
            view = x.view(*x.shape[:-1], n_heads, s.d_head) if n_heads else x
            new = _apply(view, ivs) if ivs else view
            if want:
                rec[name] = new.detach() if detach else new
            if not ivs:
                return None
            return new.reshape(x.shape) if n_heads else new

        if point == "attn.hook_z":
            def pre(mod, args, kwargs):
                out = process(args[0], s.n_heads)
                return None if out is None else ((out, *args[1:]), kwargs)
            return [get_module(block, t.o_proj).register_forward_pre_hook(pre, with_kwargs=True)]

        if point in ("attn.hook_q", "attn.hook_k", "attn.hook_v"):
            comp = point[-1]
            n = s.n_heads if comp == "q" else s.n_kv_heads
            if t.qkv_fused:
                i = "qkv".index(comp)

                def fused(mod, args, output):
                    parts = list(output.split(t.qkv_widths(s), dim=-1))
                    new = process(parts[i], n)
                    if new is None:
                        return None
                    parts[i] = new
                    return torch.cat(parts, dim=-1)
                return [get_module(block, t.q).register_forward_hook(fused)]

            def proj(mod, args, output):
                return process(output, n)
            return [get_module(block, getattr(t, comp)).register_forward_hook(proj)]

        if point == "attn.hook_pattern":
            def pattern(mod, args, output):
                weights = output[1] if isinstance(output, tuple) else None
                if weights is None:
                    raise RuntimeError("attention weights were not returned; this architecture needs eager attention")
                rec[name] = weights.detach() if detach else weights
            return [get_module(block, t.attn).register_forward_hook(pattern)]

        if point in ("hook_attn_out", "hook_mlp_out", "hook_resid_post"):
            module = {"hook_attn_out": get_module(block, t.attn), "hook_mlp_out": get_module(block, t.mlp),
                      "hook_resid_post": block}[point]

            def post(mod, args, output):
                first = output[0] if isinstance(output, tuple) else output
                new = process(first, None)
                if new is None:
                    return None
                return (new, *output[1:]) if isinstance(output, tuple) else new
            return [module.register_forward_hook(post)]

        if point == "hook_resid_pre":
            def resid_pre(mod, args, kwargs):
                if args:
                    new = process(args[0], None)
                    return None if new is None else ((new, *args[1:]), kwargs)
                new = process(kwargs["hidden_states"], None)
                return None if new is None else (args, {**kwargs, "hidden_states": new})
            return [block.register_forward_pre_hook(resid_pre, with_kwargs=True)]
        raise KeyError(point)  # unreachable: parse() validated the name


def _selection_mask(act: torch.Tensor, heads: Heads, positions: Positions) -> torch.Tensor:
    """Bool mask broadcastable to ``act`` ([b, p, h, d] or [b, p, d])."""
    b, p = act.shape[:2]
    has_heads = act.dim() == 4
    pos_mask = torch.zeros(b, p, dtype=torch.bool, device=act.device)
    if positions is None:
        pos_mask[:] = True
    elif isinstance(positions, torch.Tensor):  # one position per row
        if positions.shape != (b,):
            raise ValueError(f"per-row positions must have shape [{b}], got {tuple(positions.shape)}")
        idx = positions.to(act.device).long() % p
        pos_mask[torch.arange(b, device=act.device), idx] = True
    else:
        for q in positions:
            pos_mask[:, int(q) % p] = True
    if not has_heads:
        return pos_mask[..., None]
    n = act.shape[2]
    if heads is None:
        head_mask = torch.ones(b, n, dtype=torch.bool, device=act.device)
    elif isinstance(heads, torch.Tensor) and heads.dtype == torch.bool:
        head_mask = heads.to(act.device).expand(b, n)
    else:
        head_mask = torch.zeros(b, n, dtype=torch.bool, device=act.device)
        head_mask[:, list(map(int, heads))] = True
    return (pos_mask[:, :, None] & head_mask[:, None, :])[..., None]


def _align_right(src: torch.Tensor, p: int) -> torch.Tensor:
    """Crop or left-pad a [b, P, ...] tensor on positions so its last token lines up with ours."""
    if src.shape[1] == p:
        return src
    if src.shape[1] > p:
        return src[:, -p:]
    pad = src.new_zeros(src.shape[0], p - src.shape[1], *src.shape[2:])
    return torch.cat([pad, src], dim=1)


def _apply(act: torch.Tensor, ivs: list[Intervention]) -> torch.Tensor:
    for iv in ivs:
        mask = _selection_mask(act, iv.heads, iv.positions)
        if iv.rows is not None:
            if iv.rows.dtype != torch.bool or iv.rows.shape != (act.shape[0],):
                raise ValueError(f"rows for {iv.hook} must be a bool tensor of shape [{act.shape[0]}], "
                                 f"got {iv.rows.dtype} {tuple(iv.rows.shape)}")
            mask = mask & iv.rows.to(act.device).view(-1, *([1] * (act.dim() - 1)))
        if iv.kind == "add":
            act = act + mask * iv.value.to(act)
            continue
        if iv.kind == "zero":
            value = torch.zeros((), dtype=act.dtype, device=act.device)
        elif iv.kind == "mean":
            value = iv.value.to(act)
            if value.dim() == act.dim() - 1:  # per-position mean [P, ...], right-aligned
                value = _align_right(value[None], act.shape[1])[0]
            elif value.dim() != act.dim() - 2:
                raise ValueError(f"mean for {iv.hook} has shape {tuple(value.shape)}; expected "
                                 f"{tuple(act.shape[2:])} or [P, {', '.join(map(str, act.shape[2:]))}]")
        elif iv.kind == "patch":
            value = iv.value.to(act)
            if value.shape[0] != act.shape[0]:
                raise ValueError(f"patch source for {iv.hook} has batch {value.shape[0]}, run has {act.shape[0]}")
            value = _align_right(value, act.shape[1])
        else:
            raise ValueError(f"unknown intervention kind {iv.kind!r}; use zero, mean, patch or add")
        act = torch.where(mask, value, act)
    return act


@torch.no_grad()
def model_device(model) -> torch.device:
    """Where the model's (first) parameters live: inputs a sweep builds go there."""
    return next(model.parameters()).device


def on_model_device(inputs: dict, model) -> dict:
    """``inputs`` with every tensor moved to the model's device (other values, e.g. a KV cache, as they are)."""
    device = model_device(model)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def compute_means(hooked: HookedLM, batches: Iterable[dict], hooks: Sequence[str], per_position: bool = False
                  ) -> dict[str, torch.Tensor]:
    """Mean activation of each hook over a reference dataset, ignoring padding.

    Returns [n_heads, d_head] (or [d_model]) per hook, or right-aligned per-position means
    [P, ...] when ``per_position`` (P = the longest sequence seen).
    """
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, torch.Tensor] = {}
    for batch in batches:
        with hooked.hooks(record=hooks, detach=True) as rec:
            hooked.model(**on_model_device(batch, hooked.model))
        mask = batch.get("attention_mask")
        for name in hooks:
            act = rec[name].double()
            m = (torch.ones(act.shape[:2], dtype=torch.bool) if mask is None else mask.bool()).to(act.device)
            m = m.view(*m.shape, *([1] * (act.dim() - 2)))
            if per_position:
                s = (act * m).sum(0)
                c = m.sum(0).reshape(-1).double()
                s, c = _right_add(sums.get(name), s), _right_add(counts.get(name), c)
            else:
                s = (act * m).sum((0, 1)) + (sums[name] if name in sums else 0)
                c = m.sum().double() + (counts[name] if name in counts else 0)
            sums[name], counts[name] = s, c
    out = {}
    for name in hooks:
        c = counts[name]
        if per_position:
            c = c.clamp_min(1).view(-1, *([1] * (sums[name].dim() - 1)))
        out[name] = (sums[name] / c).to(next(hooked.model.parameters()).dtype)
    return out


def _right_add(acc: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    if acc is None:
        return new
    p = max(acc.shape[0], new.shape[0])
    return _align_right(acc[None], p)[0] + _align_right(new[None], p)[0]


class TokenizerMismatch(ValueError):
    pass


def check_tokenizer(model: nn.Module, tokenizer) -> None:
    """Catch a tokenizer that does not belong to the model before it produces garbage."""
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise TokenizerMismatch(
            f"tokenizer has {len(tokenizer)} tokens but the model embeds only {n_embed}; "
            "load the tokenizer that was saved with this model")
    for attr in ("bos_token_id", "eos_token_id"):
        tid, mid = getattr(tokenizer, attr, None), getattr(model.config, attr, None)
        if isinstance(mid, list):
            mid = mid[0] if mid else None
        if tid is not None and mid is not None and tid != mid and attr == "bos_token_id":
            raise TokenizerMismatch(
                f"tokenizer {attr}={tid} but the model config says {mid}; this tokenizer does not belong to the model")
