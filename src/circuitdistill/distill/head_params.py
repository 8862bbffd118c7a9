"""Train only selected attention heads: per-head DELTA parameters on q/k/v/o slices.

Design choice: delta parameters, not gradient masks
---------------------------------------------------
Each selected head gets small trainable tensors shaped like its slices of the q/k/v/o projections
(``circuitdistill.models.arch.head_param_slices``). The base weights are frozen (``requires_grad=False``) and
the projections are re-parametrised with ``torch.nn.utils.parametrize``: the effective weight is a copy of the
base weight in which only the selected slices are replaced by ``base[slice] + delta``. So

* gradients exist only for the deltas; the optimizer (AdamW, weight decay included) holds state only for
  what trains, and cannot move anything else: unselected entries are *copied*, never recomputed, so they stay
  bit-identical (no ``-0.0 + 0.0`` surprises);
* gradient masks would need optimizer state for whole projection matrices and would still let AdamW's
  decoupled weight decay move masked entries; that is why they were not used;
* weight decay (if configured) pulls the deltas toward 0, i.e. the trained heads toward their *initial*
  weights, not toward zero weights;
* ``merge()`` writes ``base + delta`` into the weights and removes the parametrisation, so the saved model is
  a plain HF model.

The o-projection bias is shared by all heads and never trains. q/k/v biases (Qwen2, GPT-2) train with their
head's slice.

Grouped-query attention (``gqa_policy``)
----------------------------------------
Under GQA one key/value head serves a group of query heads. What happens to the k/v slices of a selected
query head's group:

* ``"train"`` (default): the group's k/v slices train whenever any of its query heads is selected. This is
  the reading of "train the matched heads' q/k/v/o" closest to the paper (Llama-3 students use GQA). The
  other query heads of the group read the changed k/v, so their computation can change too; ``report()``
  lists them under ``collateral_heads``.
* ``"freeze"``: shared k/v slices never train (only q and o of selected heads do); no unselected head's
  computation changes.
* ``"whole-group"``: the group's k/v slices train only if every query head of the group is selected.

Without GQA (one k/v head per query head) every selected head trains its own k/v under all policies.
"""
from __future__ import annotations

import json
from typing import Iterable, Literal, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parametrize

from ..models.arch import check_head, head_param_slices, shape_of
from ..utils import UserError, atomic_path

GQAPolicy = Literal["train", "freeze", "whole-group"]
GQA_POLICIES = ("train", "freeze", "whole-group")


class SliceDelta(nn.Module):
    """Parametrisation ``W -> W`` with ``W[idx_i] + delta_i`` written into the selected slices only."""

    def __init__(self, base: torch.Tensor, indices: Sequence[tuple], names: Sequence[str]):
        super().__init__()
        self.indices = list(indices)
        self.names = list(names)
        self.deltas = nn.ParameterList(
            [nn.Parameter(torch.zeros_like(base[idx]), requires_grad=True) for idx in self.indices])

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        out = w.clone()
        for idx, d in zip(self.indices, self.deltas):
            out[idx] = w[idx] + d
        return out


def _resolve_kv(shape, heads: set[tuple[int, int]], policy: str) -> set[tuple[int, int]]:
    """(layer, kv_head) pairs whose k/v slices train under ``policy``."""
    if policy not in GQA_POLICIES:
        raise ValueError(f"gqa_policy must be one of {', '.join(GQA_POLICIES)}; got {policy!r}")
    kv: set[tuple[int, int]] = set()
    for layer, head in heads:
        g = shape.kv_head_of(head)
        if shape.group_size == 1 or policy == "train":
            kv.add((layer, g))
        elif policy == "whole-group" and all((layer, q) in heads for q in shape.query_heads_of(g)):
            kv.add((layer, g))
    return kv


class HeadDeltas:
    """Delta parameters for selected (layer, query head) pairs, attached to ``model`` until ``merge()``."""

    def __init__(self, model: nn.Module, heads: Iterable[tuple[int, int]], gqa_policy: GQAPolicy = "train"):
        self.model = model
        self.shape = shape_of(model)
        self.heads = sorted({(int(l), int(h)) for l, h in heads})
        if not self.heads:
            raise ValueError("no heads selected for head-only training; the pairing has no student heads")
        for l, h in self.heads:
            check_head(self.shape, l, h)
        self.gqa_policy = gqa_policy
        self.kv_heads = sorted(_resolve_kv(self.shape, set(self.heads), gqa_policy))
        for p in model.parameters():
            p.requires_grad_(False)
        # group slices by (module, tensor name): one parametrisation per projection weight/bias
        groups: dict[tuple[int, str], tuple[nn.Module, str, list, list]] = {}
        name_of = {id(p): n for n, p in model.named_parameters()}
        modules = {id(p): (m, pn) for m in model.modules() for pn, p in m.named_parameters(recurse=False)}
        wanted = [(l, h, c) for l, h in self.heads for c in ("q", "o")] + [(l, g, c) for l, g in self.kv_heads
                                                                            for c in ("k", "v")]
        for l, h, c in wanted:
            for param, idx in head_param_slices(model, l, h, c):
                mod, pname = modules[id(param)]
                key = (id(mod), pname)
                if key not in groups:
                    groups[key] = (mod, pname, [], [])
                groups[key][2].append(idx)
                groups[key][3].append(f"{name_of[id(param)]}[L{l}.{c}{h}]")
        self._params: list[nn.Parameter] = []
        self._names: list[str] = []
        self._slices: list[tuple[str, tuple]] = []  # (parameter name, index) of each delta, for export()
        self._parametrized: list[tuple[nn.Module, str]] = []
        for mod, pname, idxs, names in groups.values():
            full = name_of[id(getattr(mod, pname))]
            self._slices.extend((full, idx) for idx in idxs)
            base = getattr(mod, pname)
            sd = SliceDelta(base.detach(), idxs, names)
            parametrize.register_parametrization(mod, pname, sd, unsafe=True)
            getattr(mod.parametrizations, pname).original.requires_grad_(False)
            self._params.extend(sd.deltas)
            self._names.extend(names)
            self._parametrized.append((mod, pname))
        self.merged = False

    # ---- what trains ---------------------------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        return list(self._params)

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return list(zip(self._names, self._params))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in zip(self._names, self._params)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self._names if n not in state]
        if missing:
            raise KeyError(f"head-delta checkpoint lacks {missing[:3]}...; it was made for a different head set")
        for n, p in zip(self._names, self._params):
            p.copy_(state[n])

    def collateral_heads(self) -> list[tuple[int, int]]:
        """Unselected query heads that read a trained (shared) k/v slice."""
        sel = set(self.heads)
        return [(l, q) for l, g in self.kv_heads for q in self.shape.query_heads_of(g) if (l, q) not in sel]

    def report(self) -> dict:
        n_train = sum(p.numel() for p in self._params)
        n_total = sum(p.numel() for p in _base_parameters(self.model))
        return {
            "selected_heads": [list(h) for h in self.heads],
            "n_selected_heads": len(self.heads),
            "n_total_heads": self.shape.n_total_heads,
            "head_share": len(self.heads) / self.shape.n_total_heads,
            "gqa_policy": self.gqa_policy,
            "trained_kv_heads": [list(h) for h in self.kv_heads],
            "collateral_heads": [list(h) for h in self.collateral_heads()],
            "trainable_params": n_train,
            "total_params": n_total,
            "trainable_share": n_train / n_total,
        }

    def export(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The trained slices alone, as (tensors, metadata) for ``head_deltas.safetensors``: one tensor per delta
        (named like ``state_dict()``) and, in the metadata, which parameter and index each one adds to."""
        tensors = {n: p.detach().contiguous().clone() for n, p in zip(self._names, self._params)}
        slices = {n: {"param": pname, "index": [_slice_json(s) for s in idx]}
                  for n, (pname, idx) in zip(self._names, self._slices)}
        return tensors, {"format": HEAD_DELTAS_FORMAT, "slices": json.dumps(slices),
                         "heads": json.dumps([list(h) for h in self.heads]), "gqa_policy": self.gqa_policy}

    # ---- finishing ------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Write base + delta into the weights and drop the parametrisation (idempotent)."""
        if not self.merged:
            for mod, pname in self._parametrized:
                parametrize.remove_parametrizations(mod, pname, leave_parametrized=True)
            self.merged = True
        return self.model


HEAD_DELTAS_FORMAT = "circuitdistill.head_deltas/1"
HEAD_DELTAS_FILE = "head_deltas.safetensors"


def _slice_json(s: slice) -> list[int] | None:
    if s.step not in (None, 1):
        raise ValueError(f"head slices have no step; got {s}")
    return None if s.start is None and s.stop is None else [s.start, s.stop]


def save_head_deltas(deltas: HeadDeltas, path, base: str | None = None) -> None:
    """Write the trained slices (not the model) atomically: a few MB where the model is GB."""
    tensors, meta = deltas.export()
    if base is not None:
        meta["base"] = base
    with atomic_path(path) as tmp:
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp), metadata=meta)


@torch.no_grad()
def apply_head_deltas(model: nn.Module, path) -> dict:
    """Add the deltas of ``head_deltas.safetensors`` to ``model``'s weights in place (what training's merge did:
    ``base[slice] + delta`` in the model's dtype); returns the file's metadata. The model must be the base the
    deltas were trained on (same architecture and shapes)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != HEAD_DELTAS_FORMAT:
            raise UserError(f"{path} is not a head-deltas file (format {meta.get('format')!r}, expected "
                            f"{HEAD_DELTAS_FORMAT!r})")
        slices = json.loads(meta["slices"])
        params = dict(model.named_parameters())
        for name, where in slices.items():
            if where["param"] not in params:
                raise UserError(f"{path}: the model has no parameter {where['param']}; was it trained on another "
                                f"architecture?")
            param = params[where["param"]]
            idx = tuple(slice(None) if s is None else slice(*s) for s in where["index"])
            delta = f.get_tensor(name)
            if tuple(param[idx].shape) != tuple(delta.shape):
                raise UserError(f"{path}: delta {name} has shape {tuple(delta.shape)} but {where['param']}{list(idx)} "
                                f"is {tuple(param[idx].shape)}; the base model differs from the one trained")
            param[idx] = param[idx] + delta.to(device=param.device, dtype=param.dtype)
    return meta


def _base_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Model parameters without the delta tensors (parametrised originals and tied weights count once)."""
    out: dict[int, nn.Parameter] = {}
    for mod in model.modules():
        if isinstance(mod, SliceDelta):
            continue
        for n, p in mod.named_parameters(recurse=False):
            out.setdefault(id(p), p)
    deltas = {id(p) for m in model.modules() if isinstance(m, SliceDelta) for p in m.deltas}
    return [p for i, p in out.items() if i not in deltas]


def full_model_report(model: nn.Module) -> dict:
    n = sum(p.numel() for p in model.parameters())
    shape = shape_of(model)
    return {"selected_heads": "all", "n_selected_heads": shape.n_total_heads, "n_total_heads": shape.n_total_heads,
            "head_share": 1.0, "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total_params": n, "trainable_share": 1.0}
