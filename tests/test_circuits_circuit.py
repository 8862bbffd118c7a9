"""Circuit artifact: selection, JSON round trip, validation errors that name the file and field."""
import json

import pytest
import torch

from circuitdistill.circuits.circuit import Circuit, CircuitGroup, CircuitHead, random_head_sets


def make():
    scores = torch.tensor([[0.1, -0.9, 0.0], [0.5, float("nan"), -0.2]], dtype=torch.float64)
    return Circuit.from_scores(scores, top_n=3, method="activation", metric="logprob", seed=7, data_sha256="ab" * 32,
                               model={"name": "tiny"}, groups=[CircuitGroup(level=0, component="logits",
                                                                            heads=[CircuitHead(layer=0, head=1,
                                                                                               score=-0.9)])])


def test_selection_keeps_sign_and_sorts_by_magnitude():
    c = make()
    assert [(h.layer, h.head, h.score) for h in c.heads] == [(0, 1, -0.9), (1, 0, 0.5), (1, 2, pytest.approx(-0.2))]
    assert c.n_heads == 3 and c.share == pytest.approx(0.5) and c.as_set() == {(0, 1), (1, 0), (1, 2)}
    t = Circuit.from_scores(torch.tensor([[0.1, -0.9], [0.5, 0.3]]), threshold=0.3, method="m", metric="x")
    assert t.as_set() == {(0, 1), (1, 0), (1, 1)} and t.selection == {"threshold": 0.3}


def test_json_round_trip(tmp_path):
    c = make()
    p = c.save(tmp_path / "sub" / "circuit.json")
    back = Circuit.load(p)
    assert back == c
    assert back.model_dump() == json.loads(p.read_text())
    assert torch.isnan(back.score_grid()[1, 1]) and back.score_grid()[0, 1] == pytest.approx(-0.9)
    assert "versions" in json.loads(p.read_text()) and back.versions["torch"]


def test_load_errors_name_file_and_field(tmp_path):
    p = tmp_path / "c.json"
    d = make().model_dump(mode="json")
    d["heads"][0]["layer"] = 5
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"c\.json.*outside the model's 2 layers x 3 heads"):
        Circuit.load(p)
    p.write_text("{not json")
    with pytest.raises(ValueError, match=r"c\.json: not valid JSON \(line 1"):
        Circuit.load(p)
    d = make().model_dump(mode="json")
    del d["method"]
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="method"):
        Circuit.load(p)
    with pytest.raises(FileNotFoundError, match="circuitdistill discover"):
        Circuit.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="exactly one"):
        Circuit.from_scores(torch.zeros(2, 2), method="m", metric="x")


def test_random_sets_are_seeded_and_sized():
    a = random_head_sets(30, 9, 12, 5, seed=1)
    assert a == random_head_sets(30, 9, 12, 5, seed=1) and all(len(s) == 12 for s in a)
    assert a != random_head_sets(30, 9, 12, 5, seed=2)
