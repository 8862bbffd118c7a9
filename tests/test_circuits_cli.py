"""`circuitdistill discover` end to end on a tiny saved model; heatmap PNG; CLI errors."""
import json

import pytest
import torch
from typer.testing import CliRunner

from circuitdistill.circuits.circuit import Circuit
from circuitdistill.circuits.toy import box_items
from circuitdistill.cli.main import app
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.utils import write_jsonl_atomic

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("disc")
    tok = gpt2_tokenizer()
    model = tiny_model("llama", n_layers=3)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    write_jsonl_atomic(d / "items.jsonl", [it.model_dump() for it in box_items(tok, 8, 3)])
    return d


@pytest.mark.parametrize("method,extra", [("activation", ["--circuit-size", "3", "--random-sets", "2"]),
                                          ("attribution", ["--threshold", "0", "--positions", "all"]),
                                          ("path", ["--levels", "2", "--per-level", "2"])])
def test_discover_writes_circuit_heatmap_summary(setup, method, extra):
    out = setup / f"out-{method}"
    r = CliRunner().invoke(app, ["discover", "--model", str(setup / "model"), "--data", str(setup / "items.jsonl"),
                                 "--method", method, "--out", str(out), "--max-items", "6", "--batch-size", "3",
                                 *extra])
    assert r.exit_code == 0, r.output
    c = Circuit.load(out / "circuit.json")
    assert c.method == method and c.n_layers == 3 and c.n_heads_per_layer == 4 and c.n_items == 6
    assert c.ablation == "corrupted" and len(c.data_sha256) == 64 and c.versions["torch"]
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "circuit:" in (out / "summary.txt").read_text()
    if method == "activation":
        assert c.n_heads == 3
        rep = json.loads((out / "faithfulness.json").read_text())
        assert rep["random"]["n_sets"] == 2 and 0 <= rep["full_accuracy"] <= 1
    if method == "attribution":
        assert c.n_heads == 12
    if method == "path":
        assert c.groups[0].component == "logits" and c.as_set() == {(h.layer, h.head) for g in c.groups for h in g.heads}


def test_discover_errors_name_the_option(setup):
    base = ["discover", "--model", str(setup / "model"), "--data", str(setup / "items.jsonl"), "--out",
            str(setup / "x")]
    r = CliRunner().invoke(app, [*base, "--method", "magic"])
    assert r.exit_code == 2 and "--method" in r.output
    r = CliRunner().invoke(app, [*base, "--circuit-size", "3", "--threshold", "0.1"])
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(app, [*base, "--method", "attribution", "--metric", "accuracy"])
    assert r.exit_code == 2 and "differentiable" in r.output
    r = CliRunner().invoke(app, [*base[:3], "--data", str(setup / "nope.jsonl"), "--out", str(setup / "x")])
    assert r.exit_code == 2 and "nope.jsonl does not exist" in r.output
