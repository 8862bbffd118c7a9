"""Gradient checkpointing of full-model rows: the same step, less memory; refused where hooks would run twice."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from circuitdistill.distill.config import DistillConfig
from circuitdistill.distill.trainer import train
from circuitdistill.models.grad_checkpoint import enable_gradient_checkpointing
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import make_world  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    w = make_world(tmp_path_factory.mktemp("gc"), n_items=16)
    # a dropout the rows must keep off (they train in eval mode), checkpointed or not
    student = tiny_model("llama", seed=2)
    student.config.attention_dropout = 0.5
    student.save_pretrained(w["root"] / "student")
    gpt2_tokenizer().save_pretrained(w["root"] / "student")
    return w


def _run(world, out: Path, method: str = "full-kd", **kw) -> DistillConfig:
    return DistillConfig(method=method, student=world["student"], teacher=world["teacher"], data=world["data"],
                         out=str(out), steps=1, batch_size=8, lr=1e-3, threads=1, **kw)


@pytest.mark.parametrize("method", ["full-kd", "logit-kd"])
def test_a_checkpointed_step_equals_the_plain_one(world, tmp_path, method):
    plain = train(_run(world, tmp_path / "plain", method), progress=False)
    ckpt = train(_run(world, tmp_path / "ckpt", method, gradient_checkpointing=True), progress=False)
    assert ckpt["final"]["loss"] == pytest.approx(plain["final"]["loss"], rel=1e-6, abs=1e-7)
    a = load_file(str(tmp_path / "plain" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "ckpt" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    before = load_file(str(Path(world["student"]) / "model.safetensors"))
    assert any(not torch.equal(before[k], b[k]) for k in b)  # the step did update the weights
    assert json.loads((tmp_path / "ckpt" / "run_config.json").read_text())["config"]["gradient_checkpointing"]
    assert not json.loads((tmp_path / "plain" / "run_config.json").read_text())["config"]["gradient_checkpointing"]


def test_the_backward_pass_recomputes_the_layers():
    """A forward hook inside a decoder layer fires again in the backward pass: why head-hooked rows refuse it."""
    calls = []
    model = tiny_model("llama", seed=0)
    model.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))
    enable_gradient_checkpointing(model)
    model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    assert len(calls) == 2
    assert not model.model.layers[0].self_attn.training  # dropout-bearing modules stay in eval mode


@pytest.mark.parametrize("method", ["circuit", "circuit-ce", "circuit-iit"])
def test_head_only_rows_refuse_it(world, tmp_path, method):
    with pytest.raises(ValueError, match="gradient_checkpointing is for methods that train the full model"):
        _run(world, tmp_path, method, pairing=world["pairing"], gradient_checkpointing=True)
