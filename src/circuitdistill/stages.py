"""Content-hash cached stages: re-running an experiment skips every stage whose inputs did not change.

A stage's key hashes its name, the config fields it reads, the keys of the stages it depends on and the
content fingerprints of the files or directories (model weights, data) it is given as ``content``.
Its outputs live in ``OUT/stages/<name>-<key[:12]>/``; ``done.json`` (written last, atomically) marks
it finished and records the wall time. A stage that fails leaves no ``done.json`` and is re-run,
continuing from its own checkpoints where it keeps them.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .preflight import input_fingerprints
from .utils import sha256_json, write_json_atomic


@dataclass
class StageResult:
    name: str
    key: str
    dir: Path
    outputs: dict[str, Any]
    seconds: float
    cached: bool


@dataclass
class StageRunner:
    root: Path
    log: Callable[[str], None] = print
    results: dict[str, StageResult] = field(default_factory=dict)

    def run(self, name: str, inputs: Any, fn: Callable[[Path], dict], deps: tuple[str, ...] = (),
            content: dict[str, str | Path | None] | None = None) -> StageResult:
        """``content``: label -> file, directory or model name the stage reads (None entries are skipped); a
        change to what it holds re-runs the stage."""
        parts = {"stage": name, "inputs": inputs, "deps": [self.results[d].key for d in deps]}
        if content:
            parts["content"] = input_fingerprints(dict(sorted(content.items())))
        key = sha256_json(parts)
        d = self.root / "stages" / f"{name}-{key[:12]}"
        done = d / "done.json"
        if done.exists():
            rec = json.loads(done.read_text())
            res = StageResult(name, key, d, rec["outputs"], rec["seconds"], cached=True)
            self.log(f"[{name}] cached ({rec['seconds']:.0f}s when it ran) -> {d}")
        else:
            d.mkdir(parents=True, exist_ok=True)
            self.log(f"[{name}] running -> {d}")
            t0 = time.time()
            outputs = fn(d)
            seconds = time.time() - t0
            write_json_atomic(done, {"stage": name, "key": key, "inputs": inputs, "outputs": outputs,
                                     "seconds": seconds})
            res = StageResult(name, key, d, outputs, seconds, cached=False)
            self.log(f"[{name}] done in {seconds:.0f}s")
        self.results[name] = res
        return res

    def timings(self) -> dict[str, dict]:
        return {n: {"seconds": round(r.seconds, 1), "cached": r.cached} for n, r in self.results.items()}
