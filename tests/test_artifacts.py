"""Artifacts: every JSON result says its format, and files/directories get 0666/0777 less the umask (0644/0755
under the usual 022), not tempfile's 0600/0700, so colleagues on a shared machine can read results."""
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from circuitdistill.utils import atomic_path, versioned, write_json_atomic

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import make_world  # noqa: E402


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask, want", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mask, want):
    umask(mask)
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"1")
    assert _mode(tmp_path / "a.json") == want and _mode(tmp_path / "b.bin") == want


def test_versioned_puts_the_format_first():
    doc = versioned("results", {"a": 1, "format": "old"})
    assert list(doc) == ["format", "a"] and doc["format"] == "circuitdistill.results/v1"


def test_saved_models_and_caches_are_readable_by_others_and_versioned(tmp_path, umask):
    from circuitdistill.distill.config import CacheConfig, MatchConfig
    from circuitdistill.distill.matching import match
    from circuitdistill.distill.teacher_cache import build_cache
    from circuitdistill.models.registry import load_model, save_model_dir

    umask(0o022)
    w = make_world(tmp_path / "w", n_items=8)
    model, tok = load_model(w["student"])
    out = save_model_dir(model, tok, tmp_path / "saved", {"name": "x"})
    cache = build_cache(CacheConfig(teacher=w["teacher"], data=w["data"], out=str(tmp_path / "cache")),
                        progress=False)
    from circuitdistill.circuits.circuit import Circuit, CircuitHead

    circuit = Circuit(heads=[CircuitHead(layer=0, head=1, score=1.0), CircuitHead(layer=1, head=2, score=0.5)],
                      n_layers=2, n_heads_per_layer=4, method="given", metric="logprob").save(tmp_path / "c.json")
    match(MatchConfig(teacher=w["teacher"], student=w["student"], circuit=str(circuit), data=w["data"], by="identity",
                      out=str(tmp_path / "match"), budget=2, max_items=8, batch_size=8))
    for d in (out, Path(cache), tmp_path / "match"):
        assert _mode(d) == 0o755, d
        for f in d.rglob("*"):
            assert _mode(f) == (0o755 if f.is_dir() else 0o644), f
    assert json.loads((out / "circuitdistill.json").read_text())["format"] == "circuitdistill.model/v1"
    assert json.loads((Path(cache) / "meta.json").read_text())["format"] == 2
    assert json.loads((tmp_path / "match" / "pairing.json").read_text())["format"] == 2
