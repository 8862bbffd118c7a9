"""A trained student is a Hugging Face checkpoint: OUT/model loads with from_pretrained, a head-only row's
head_deltas.safetensors holds only the trained slices and `circuitdistill merge` rebuilds the same model."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from circuitdistill.cli.main import app
from circuitdistill.distill.config import CacheConfig
from circuitdistill.distill.head_params import apply_head_deltas
from circuitdistill.distill.teacher_cache import build_cache

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import make_world  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One head-only distill row through the CLI (3 steps, lr large enough that the heads really move)."""
    torch.set_num_threads(1)
    w = make_world(tmp_path_factory.mktemp("ckpt"), n_items=16)
    build_cache(CacheConfig(teacher=w["teacher"], data=w["data"], out=str(w["root"] / "cache")), progress=False)
    out = w["root"] / "row"
    res = CliRunner().invoke(app, ["distill", "--method", "circuit", "--student", w["student"], "--teacher-cache",
                                   str(w["root"] / "cache"), "--data", w["data"], "--pairing", w["pairing"],
                                   "--out", str(out), "--steps", "3", "--batch-size", "8", "--lr", "1e-2",
                                   "--checkpoint-every", "2", "--threads", "1"])
    assert res.exit_code == 0, res.output
    return {**w, "out": out}


def _logits(model, tok):
    enc = tok(["Box A contains the", "the apple is in Box B. Box B contains"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def test_output_dir_layout(run):
    out = run["out"]
    assert (out / "run_config.json").exists() and (out / "summary.json").exists()
    assert not (out / "config.json").exists() and not (out / "weights.safetensors").exists()
    assert not (out / "checkpoint.pt").exists()  # deleted once model/ was written (no --keep-checkpoints)
    assert (out / "model" / "config.json").exists() and (out / "model" / "tokenizer.json").exists()
    assert json.loads((out / "run_config.json").read_text())["config"]["method"] == "circuit"


def test_from_pretrained_equals_base_plus_merged_deltas(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    student = AutoModelForCausalLM.from_pretrained(run["out"] / "model").eval()
    tok = AutoTokenizer.from_pretrained(run["out"] / "model")
    tok.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(run["student"]).eval()
    before = _logits(base, tok)
    meta = apply_head_deltas(base, run["out"] / "head_deltas.safetensors")
    assert meta["base"] == run["student"]
    assert torch.equal(_logits(student, tok), _logits(base, tok))
    assert not torch.equal(before, _logits(student, tok))  # training moved something
    for (n, a), (_, b) in zip(student.state_dict().items(), base.state_dict().items()):
        assert torch.equal(a, b), n


def test_head_deltas_hold_only_the_trained_slices(run):
    summary = json.loads((run["out"] / "summary.json").read_text())
    with safe_open(str(run["out"] / "head_deltas.safetensors"), framework="pt") as f:
        n = sum(f.get_tensor(k).numel() for k in f.keys())
        assert json.loads(f.metadata()["heads"]) == [[0, 1], [1, 0], [1, 3]]
    assert n == summary["trainable"]["trainable_params"]
    assert n < summary["trainable"]["total_params"] / 20


def test_merge_command_rebuilds_the_model(run, tmp_path):
    from transformers import AutoModelForCausalLM

    res = CliRunner().invoke(app, ["merge", "--base", run["student"], "--deltas",
                                   str(run["out"] / "head_deltas.safetensors"), "--out", str(tmp_path / "merged")])
    assert res.exit_code == 0, res.output
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").state_dict()
    b = AutoModelForCausalLM.from_pretrained(run["out"] / "model").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_merge_refuses_a_base_of_another_shape(run, tmp_path):
    from distill_fixtures import save_tiny

    other = save_tiny(tmp_path / "wide", seed=3, d_model=128)
    res = CliRunner().invoke(app, ["merge", "--base", other, "--deltas", str(run["out"] / "head_deltas.safetensors"),
                                   "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "shape" in res.output and not (tmp_path / "m").exists()


def test_evaluate_accepts_a_distill_output_dir(run, tmp_path):
    res = CliRunner().invoke(app, ["evaluate", "--model", str(run["out"]), "--data", run["data"], "--max-items", "8",
                                   "--threads", "1", "--out", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "eval.json").read_text())["summary"]["n"] == 8
