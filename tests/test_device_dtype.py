"""Device and dtype: sweeps put every tensor they build on the model's device, and the tiny experiment runs end to
end in bf16.

No second device exists on a CPU-only machine, so the placement test moves the model to PyTorch's ``meta`` device
(tensors with shapes but no data) and stops each forward pass in a pre-hook that records where its inputs are: an
input built on the CPU would show up as ``cpu`` there (and a real GPU run would fail with a device mismatch)."""
from __future__ import annotations

import json

import pytest
import torch

from circuitdistill.models.hooks import HookedLM
from circuitdistill.models.registry import resolve_device, resolve_dtype
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import make_items  # noqa: E402
from test_experiment_tiny import tiny_pair  # noqa: E402,F401  (the tiny llama teacher + qwen2 student fixture)


class _Stop(Exception):
    pass


def _meta_model_recording(devices: list):
    model = tiny_model("llama", seed=0, n_layers=2, n_heads=4, n_kv_heads=2, d_model=32).to("meta").eval()

    def pre(mod, args, kwargs):
        for v in list(args) + list(kwargs.values()):
            if isinstance(v, torch.Tensor):
                devices.append(v.device.type)
        raise _Stop

    model.register_forward_pre_hook(pre, with_kwargs=True)
    return model


@pytest.mark.parametrize("kind", ["prefix-cache", "layer-skip", "full-pass", "means", "attribution", "baseline"])
def test_sweeps_build_their_inputs_on_the_models_device(kind):
    from circuitdistill.circuits.ablation import baseline, head_sweep, mean_head_outputs
    from circuitdistill.circuits.attribution import attribution_patching

    devices: list[str] = []
    hooked = HookedLM(_meta_model_recording(devices), gpt2_tokenizer())
    items = make_items(4, seed=0)
    means = {f"blocks.{l}.attn.hook_z": torch.zeros(4, 8, device="meta") for l in range(2)}
    with pytest.raises(_Stop):
        if kind == "prefix-cache":
            head_sweep(hooked, items, mode="zero", progress=False)
        elif kind == "layer-skip":
            head_sweep(hooked, items, mode="mean", means=means, positions="all", progress=False)
        elif kind == "full-pass":
            head_sweep(hooked, items, mode="zero", positions="all", layer_skip=False, progress=False)
        elif kind == "means":
            mean_head_outputs(hooked, items)
        elif kind == "attribution":
            attribution_patching(hooked, items, metric="logprob", progress=False)
        else:
            baseline(hooked, items)
    assert devices and set(devices) == {"meta"}, devices


def test_device_and_dtype_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cuda", "mps", "cpu")
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("fp16") is torch.float16
    assert resolve_dtype("auto", torch.device("cpu")) is torch.float32


def test_tiny_experiment_in_bf16_on_cpu(tiny_pair, tmp_path, monkeypatch):
    from circuitdistill.experiment.config import preset
    from circuitdistill.experiment.runner import run_experiment

    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    paths = tiny_pair
    cfg = preset("tiny", "entity-tracking", str(tmp_path / "run"), teacher_base=paths["teacher"],
                 student_base=paths["student"], methods=["circuit"], device="cpu", dtype="bf16")
    run_experiment(cfg, log=lambda *_: None)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["format"] == "circuitdistill.experiment-results/v1"
    row = results["variants"]["warm"]["rows"]["circuit"]
    assert row  # the row trained and was evaluated
    model_dir = next((tmp_path / "run" / "stages").glob("train-*/model"))
    assert json.loads((model_dir / "config.json").read_text())["dtype"] == "bfloat16"
    log = [json.loads(l) for l in next((tmp_path / "run" / "stages").glob("train-*/log.jsonl")).read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log if "loss" in r)


def test_stage_keys_separate_dtypes_and_keep_float32_keys():
    from circuitdistill.experiment.config import preset
    from circuitdistill.experiment.runner import models_key

    fp32, bf16 = preset("tiny", dtype="fp32"), preset("tiny", dtype="bf16")
    assert models_key(bf16) != models_key(fp32)  # a bf16 run never reuses float32 stages
    assert "dtype" not in models_key(fp32)  # float32 keys are those of runs made before the dtype option
    assert models_key(preset("tiny", dtype="fp32", device="cpu")) == models_key(preset("tiny", dtype="auto", device="cpu"))
