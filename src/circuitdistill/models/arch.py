"""One table per architecture: abstract components -> module paths and reshapes (pyvene style).

Supporting a new model family means adding a row to ``ARCH_TABLES``; no other code path changes.

Paths in a table are relative to one decoder block (``layers`` is relative to the model root).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class ArchTable:
    family: str
    layers: str  # ModuleList of decoder blocks, from the CausalLM root
    attn: str  # attention module; returns (attn_output, attn_weights)
    o_proj: str  # its INPUT is the concatenation of the per-head outputs ("head output", hook_z)
    q: str  # its OUTPUT holds the flattened query heads (for fused layouts: [q | k | v])
    k: str
    v: str
    mlp: str
    attn_norm: str  # the norm whose output is the attention module's input
    final_norm: str  # from the CausalLM root: the norm between the last block and the unembedding
    qkv_fused: bool = False  # GPT-2's c_attn emits q, k and v in one tensor
    weight_layout: Literal["linear", "conv1d"] = "linear"  # nn.Linear W[out,in]; HF Conv1D W[in,out]
    logit_softcap: str | None = None  # config attribute of a final tanh soft-cap on the logits, if any
    notes: str = ""

    def qkv_widths(self, shape: Shape) -> tuple[int, int, int]:
        """Widths of the q, k and v projection outputs (k and v are narrower under grouped-query attention);
        with ``qkv_fused`` the fused output is their concatenation in this order."""
        return shape.n_heads * shape.d_head, shape.n_kv_heads * shape.d_head, shape.n_kv_heads * shape.d_head

    def qkv_offset(self, component: str, shape: Shape) -> int:
        """Where ``component``'s ("q", "k" or "v") columns start in the output of its projection."""
        if not self.qkv_fused:
            return 0
        return sum(self.qkv_widths(shape)[:"qkv".index(component)])


ARCH_TABLES: dict[str, ArchTable] = {
    "llama": ArchTable("llama", "model.layers", "self_attn", "self_attn.o_proj", "self_attn.q_proj",
                       "self_attn.k_proj", "self_attn.v_proj", "mlp", "input_layernorm", "model.norm",
                       notes="q/k recorded before RoPE"),
    "mistral": ArchTable("mistral", "model.layers", "self_attn", "self_attn.o_proj", "self_attn.q_proj",
                         "self_attn.k_proj", "self_attn.v_proj", "mlp", "input_layernorm", "model.norm",
                         notes="q/k recorded before RoPE"),
    "qwen2": ArchTable("qwen2", "model.layers", "self_attn", "self_attn.o_proj", "self_attn.q_proj",
                       "self_attn.k_proj", "self_attn.v_proj", "mlp", "input_layernorm", "model.norm",
                       notes="q/k/v carry biases; q/k before RoPE"),
    "gemma3_text": ArchTable("gemma3_text", "model.layers", "self_attn", "self_attn.o_proj", "self_attn.q_proj",
                             "self_attn.k_proj", "self_attn.v_proj", "mlp", "input_layernorm", "model.norm",
                             logit_softcap="final_logit_softcapping",
                             notes="q/k recorded before q_norm/k_norm and RoPE"),
    "gpt2": ArchTable("gpt2", "transformer.h", "attn", "attn.c_proj", "attn.c_attn", "attn.c_attn", "attn.c_attn",
                      "mlp", "ln_1", "transformer.ln_f", qkv_fused=True, weight_layout="conv1d",
                      notes="c_attn is fused [q|k|v]; Conv1D weights"),
}
ARCH_TABLES["gemma3"] = ARCH_TABLES["gemma3_text"]

SUPPORTED = sorted(ARCH_TABLES)
FAMILIES = tuple(name for name, table in ARCH_TABLES.items() if table.family == name)  # one per row, no aliases


class UnsupportedArchitecture(ValueError):
    pass


def table_for(model: nn.Module) -> ArchTable:
    family = getattr(model.config, "model_type", None)
    if family not in ARCH_TABLES:
        raise UnsupportedArchitecture(
            f"model_type {family!r} is not supported; supported model types: {', '.join(SUPPORTED)}. "
            "Add a row to circuitdistill.models.arch.ARCH_TABLES to support a new family."
        )
    return ARCH_TABLES[family]


def get_module(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        mod = mod[int(part)] if part.isdigit() else getattr(mod, part)
    return mod


@dataclass(frozen=True)
class Shape:
    """Shape facts every hook point is defined in terms of."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int

    @property
    def group_size(self) -> int:
        """Query heads per key/value head under grouped-query attention."""
        return self.n_heads // self.n_kv_heads

    def kv_head_of(self, head: int) -> int:
        """The key/value head that query `head` reads (HF repeat_kv repeats each kv head contiguously)."""
        return head // self.group_size

    def query_heads_of(self, kv_head: int) -> list[int]:
        g = self.group_size
        return list(range(kv_head * g, (kv_head + 1) * g))

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads


def shape_of(model: nn.Module) -> Shape:
    cfg = model.config
    n_heads = cfg.num_attention_heads
    d_model = cfg.hidden_size
    d_head = getattr(cfg, "head_dim", None) or d_model // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    return Shape(cfg.num_hidden_layers, n_heads, n_kv, d_head, d_model)


HeadComponent = Literal["q", "k", "v", "o"]


def head_param_slices(model: nn.Module, layer: int, head: int, component: HeadComponent
                      ) -> list[tuple[nn.Parameter, tuple]]:
    """Parameter slices owned by one head: list of (parameter, index) with ``param[index]`` the slice.

    ``head`` indexes query heads for "q"/"o" and key/value heads for "k"/"v".
    """
    table, shape = table_for(model), shape_of(model)
    block = get_module(model, table.layers)[layer]
    d = shape.d_head
    rows = slice(head * d, (head + 1) * d)
    if component == "o":
        proj = get_module(block, table.o_proj)
        idx = (slice(None), rows) if table.weight_layout == "linear" else (rows, slice(None))
        return [(proj.weight, idx)]  # the o bias is shared by all heads, never a head's own
    proj = get_module(block, getattr(table, component))
    offset = table.qkv_offset(component, shape)
    rows = slice(offset + head * d, offset + (head + 1) * d)
    w_idx = (rows, slice(None)) if table.weight_layout == "linear" else (slice(None), rows)
    out = [(proj.weight, w_idx)]
    if getattr(proj, "bias", None) is not None:
        out.append((proj.bias, (rows,)))
    return out


def check_head(shape: Shape, layer: int, head: int, kv: bool = False) -> None:
    if not 0 <= layer < shape.n_layers:
        raise IndexError(f"layer {layer} out of range: valid layers are 0..{shape.n_layers - 1}")
    n = shape.n_kv_heads if kv else shape.n_heads
    if not 0 <= head < n:
        kind = "key/value head" if kv else "head"
        raise IndexError(f"{kind} {head} out of range in layer {layer}: valid {kind}s are 0..{n - 1}")


def tensor_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype
