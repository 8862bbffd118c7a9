"""Fine-tuning: loss falls, target stops training, checkpoints resume exactly, records what ran."""
from __future__ import annotations

import pytest
import torch

from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.tasks import entity_tracking as et
from circuitdistill.tasks.finetune import FinetuneConfig, batch_indices, finetune


@pytest.fixture(scope="module")
def data():
    tok = gpt2_tokenizer()
    return tok, et.make_splits(64, 16, 0, 2, 0, [tok])


def test_batch_indices_cover_each_epoch_once():
    seen = [i for s in range(5) for i in batch_indices(20, 4, s, seed=3)]
    assert sorted(seen) == list(range(20))
    assert batch_indices(20, 4, 2, 3) == batch_indices(20, 4, 2, 3)
    assert len(batch_indices(5, 8, 0, 0)) == 8  # wraps into the next epoch


def test_loss_falls_and_record(tmp_path, data):
    tok, sp = data
    cfg = FinetuneConfig(name="t", max_steps=12, eval_every=6, batch_size=8, eval_items=8, lr=3e-3, seed=0)
    rec = finetune(cfg, sp["train"], sp["validation"], tmp_path, model=tiny_model("llama"), tokenizer=tok,
                   save=False, progress=False)
    losses = [h["loss"] for h in rec["history"] if "loss" in h]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    assert rec["steps"] == 12 and rec["stop_reason"].startswith("reached max_steps")
    assert [h["step"] for h in rec["history"] if "val_accuracy" in h] == [0, 6, 12]
    assert rec["provenance"]["config"]["lr"] == 3e-3 and (tmp_path / "record.json").exists()


def test_target_stops_training(tmp_path, data):
    tok, sp = data
    cfg = FinetuneConfig(name="t", max_steps=50, eval_every=2, batch_size=4, eval_items=8, target=0.0)
    rec = finetune(cfg, sp["train"], sp["validation"], tmp_path, model=tiny_model("llama"), tokenizer=tok,
                   save=False, progress=False)
    assert rec["steps"] == 0 and "before training" in rec["stop_reason"]


def test_resume_matches_uninterrupted(tmp_path, data):
    tok, sp = data
    cfg = FinetuneConfig(name="t", max_steps=6, eval_every=100, checkpoint_every=3, batch_size=4, eval_items=4,
                         lr=1e-3, seed=1)
    straight = tiny_model("llama", seed=5)
    finetune(cfg, sp["train"], sp["validation"], tmp_path / "a", model=straight, tokenizer=tok, save=False,
             progress=False)
    first = tiny_model("llama", seed=5)
    finetune(cfg.model_copy(update={"max_steps": 3}), sp["train"], sp["validation"], tmp_path / "b", model=first,
             tokenizer=tok, save=False, progress=False)
    second = tiny_model("llama", seed=5)  # a fresh process would start from the base weights again
    rec = finetune(cfg, sp["train"], sp["validation"], tmp_path / "b", model=second, tokenizer=tok, save=False,
                   progress=False)
    assert rec["resumed_from_step"] == 3 and rec["steps"] == 6
    for (k, a), b in zip(straight.state_dict().items(), second.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5), k
    with pytest.raises(ValueError, match="different config"):
        finetune(cfg.model_copy(update={"lr": 5e-4}), sp["train"], sp["validation"], tmp_path / "b",
                 model=tiny_model("llama"), tokenizer=tok, save=False, progress=False)


def test_save_derived_round_trip(tmp_path, data, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    from circuitdistill.models import registry

    tok, sp = data
    cfg = FinetuneConfig(name="tiny-et-teacher", max_steps=2, eval_every=1, batch_size=4, eval_items=4)
    model = tiny_model("gpt2")
    rec = finetune(cfg, sp["train"], sp["validation"], tmp_path / "run", model=model, tokenizer=tok, progress=False)
    loaded, ltok = registry.load_model("tiny-et-teacher")
    assert rec["saved_to"].endswith("tiny-et-teacher")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b)
