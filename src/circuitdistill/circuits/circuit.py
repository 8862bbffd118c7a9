"""The circuit artifact: a scored set of attention heads with everything needed to reproduce it."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..utils import package_versions, read_json_file, write_json_atomic

FORMAT = "circuitdistill.circuit/v1"


class CircuitHead(BaseModel):
    model_config = ConfigDict(extra="forbid")

    layer: int = Field(ge=0)
    head: int = Field(ge=0)
    score: float = Field(description="signed effect; importance is |score|")


class CircuitGroup(BaseModel):
    """One group found by path patching: senders whose effect flows into ``receivers`` via ``component``."""

    model_config = ConfigDict(extra="forbid")

    level: int = Field(ge=0)
    component: str = Field(description="'logits' for level 0, else which receiver inputs: q, k, v or a mix")
    receivers: list[tuple[int, int]] = Field(default_factory=list)
    heads: list[CircuitHead] = Field(default_factory=list)


class Circuit(BaseModel):
    """Heads sorted by |score| (sign kept), plus method, metric, data hash, model identity, seed, versions."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    heads: list[CircuitHead]
    n_layers: int = Field(ge=1)
    n_heads_per_layer: int = Field(ge=1)
    method: str
    metric: str
    ablation: str | None = None
    positions: str | None = None
    selection: dict[str, Any] = Field(default_factory=dict, description="top_n or threshold used")
    data_sha256: str | None = None
    n_items: int | None = None
    model: dict[str, Any] = Field(default_factory=dict, description="name, model_type, shape, weights hash")
    seed: int | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=package_versions)
    baseline: dict[str, float] = Field(default_factory=dict, description="clean / corrupted metric values")
    scores: list[list[float | None]] | None = Field(None, description="full [n_layers][n_heads] score grid")
    groups: list[CircuitGroup] = Field(default_factory=list)
    timing_s: float | None = None

    @model_validator(mode="after")
    def _check(self) -> "Circuit":
        seen = set()
        for i, h in enumerate(self.heads):
            if h.layer >= self.n_layers or h.head >= self.n_heads_per_layer:
                raise ValueError(f"heads[{i}] = (layer {h.layer}, head {h.head}) is outside the model's "
                                 f"{self.n_layers} layers x {self.n_heads_per_layer} heads")
            if (h.layer, h.head) in seen:
                raise ValueError(f"heads[{i}] = (layer {h.layer}, head {h.head}) is listed twice")
            seen.add((h.layer, h.head))
        self.heads = sorted(self.heads, key=lambda h: (-abs(h.score), h.layer, h.head))
        if self.scores is not None and (len(self.scores) != self.n_layers
                                        or any(len(r) != self.n_heads_per_layer for r in self.scores)):
            raise ValueError(f"scores must be a {self.n_layers} x {self.n_heads_per_layer} grid")
        return self

    # ---- views ---------------------------------------------------------------------------------
    @property
    def n_heads(self) -> int:
        return len(self.heads)

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads_per_layer

    @property
    def share(self) -> float:
        """Fraction of all attention heads in the circuit."""
        return self.n_heads / self.n_total_heads

    def as_set(self) -> set[tuple[int, int]]:
        return {(h.layer, h.head) for h in self.heads}

    def as_list(self) -> list[tuple[int, int]]:
        return [(h.layer, h.head) for h in self.heads]

    def score_grid(self) -> torch.Tensor:
        """[n_layers, n_heads] scores (NaN where unknown); circuit heads always filled."""
        grid = torch.full((self.n_layers, self.n_heads_per_layer), float("nan"))
        if self.scores is not None:
            grid = torch.tensor([[float("nan") if v is None else v for v in r] for r in self.scores])
        for h in self.heads:
            grid[h.layer, h.head] = h.score
        return grid

    def mask(self) -> torch.Tensor:
        m = torch.zeros(self.n_layers, self.n_heads_per_layer, dtype=torch.bool)
        for h in self.heads:
            m[h.layer, h.head] = True
        return m

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_scores(cls, scores: torch.Tensor, top_n: int | None = None, threshold: float | None = None,
                    **fields: Any) -> "Circuit":
        """Select heads by |score|: the ``top_n`` largest, or every head with |score| >= ``threshold``."""
        if (top_n is None) == (threshold is None):
            raise ValueError("give exactly one of top_n or threshold")
        scores = torch.as_tensor(scores).double()
        L, H = scores.shape
        flat = [(l, h, float(scores[l, h])) for l in range(L) for h in range(H) if not torch.isnan(scores[l, h])]
        flat.sort(key=lambda t: (-abs(t[2]), t[0], t[1]))
        if top_n is not None:
            if not 1 <= top_n <= L * H:
                raise ValueError(f"top_n={top_n} out of range: valid values are 1..{L * H}")
            chosen = flat[:top_n]
        else:
            if threshold < 0:
                raise ValueError(f"threshold={threshold} must be >= 0 (it is compared with |score|)")
            chosen = [t for t in flat if abs(t[2]) >= threshold]
        grid = [[None if torch.isnan(scores[l, h]) else float(scores[l, h]) for h in range(H)] for l in range(L)]
        sel = {"top_n": top_n} if top_n is not None else {"threshold": threshold}
        return cls(heads=[CircuitHead(layer=l, head=h, score=s) for l, h, s in chosen], n_layers=L,
                   n_heads_per_layer=H, scores=grid, selection=sel, **fields)

    # ---- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write atomically as JSON."""
        return write_json_atomic(path, self.model_dump(mode="json"))

    @classmethod
    def load(cls, path: str | Path) -> "Circuit":
        path = Path(path)
        data = read_json_file(path, "circuit file", "; create one with `circuitdistill discover`")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors())
            raise ValueError(f"{path}: not a valid circuit file: {problems}") from None

    def summary(self, limit: int = 30) -> str:
        lines = [f"circuit: {self.n_heads} of {self.n_total_heads} heads ({100 * self.share:.1f}%)",
                 f"method: {self.method}  metric: {self.metric}  ablation: {self.ablation}  positions: {self.positions}",
                 f"model: {self.model.get('name', '?')}  items: {self.n_items}  data sha256: "
                 f"{(self.data_sha256 or '?')[:16]}  seed: {self.seed}"]
        if self.baseline:
            lines.append("baseline: " + ", ".join(f"{k}={v:.4f}" for k, v in self.baseline.items()))
        lines.append("heads (layer.head: score):")
        for h in self.heads[:limit]:
            lines.append(f"  L{h.layer}.H{h.head}: {h.score:+.4f}")
        if self.n_heads > limit:
            lines.append(f"  ... and {self.n_heads - limit} more")
        for g in self.groups:
            lines.append(f"group level {g.level} via {g.component}: "
                         + ", ".join(f"L{h.layer}.H{h.head}({h.score:+.3f})" for h in g.heads))
        return "\n".join(lines) + "\n"


def random_head_sets(n_layers: int, n_heads: int, size: int, n_sets: int, seed: int = 0,
                     exclude: Sequence[tuple[int, int]] = ()) -> list[set[tuple[int, int]]]:
    """``n_sets`` random head sets of ``size`` (seeded), optionally avoiding ``exclude``."""
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in set(exclude)]
    if size > len(pool):
        raise ValueError(f"cannot draw {size} heads from {len(pool)} available")
    gen = torch.Generator().manual_seed(seed)
    return [{pool[int(i)] for i in torch.randperm(len(pool), generator=gen)[:size]} for _ in range(n_sets)]
