"""Two CPU processes (gloo) with CKA over the gathered global batch == one process with the same global batch.

`accelerate launch --cpu --num_processes 2` alone starts ONE process unless MPI (mpirun) is installed; the
torchrun route of accelerate (`--multi_gpu` with ACCELERATE_USE_CPU=true) starts two gloo processes.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from circuitdistill.distill.config import CacheConfig, DistillConfig
from circuitdistill.distill.teacher_cache import build_cache
from circuitdistill.distill.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import make_world  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("method", ["circuit"])
def test_two_processes_match_one_process(tmp_path, method):
    torch.set_num_threads(1)
    w = make_world(tmp_path / "w", n_items=32)
    cache = tmp_path / "cache"
    build_cache(CacheConfig(teacher=w["teacher"], data=w["data"], out=str(cache)), progress=False)
    common = ["--method", method, "--student", w["student"], "--teacher-cache", str(cache), "--data", w["data"],
              "--pairing", w["pairing"], "--steps", "3", "--batch-size", "8", "--lr", "1e-3", "--threads", "1",
              "--estimator", "debiased"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           "-m", "circuitdistill.cli.main", "distill", *common, "--out", str(tmp_path / "two")]
    p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert p.returncode == 0, p.stderr[-3000:]
    meta = json.loads((tmp_path / "two" / "run_config.json").read_text())
    assert meta["world_size"] == 2 and meta["backend"] == "gloo"

    one = DistillConfig(method=method, student=w["student"], teacher_cache=str(cache), data=w["data"],
                        pairing=w["pairing"], steps=3, batch_size=8, lr=1e-3, threads=1, estimator="debiased",
                        out=str(tmp_path / "one"))
    train(one, progress=False)
    rows1 = [json.loads(l) for l in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    rows2 = [json.loads(l) for l in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert len(rows1) == len(rows2) == 3
    for a, b in zip(rows1, rows2):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["ce"] == pytest.approx(a["ce"], abs=1e-5)
        assert b["cka"] == pytest.approx(a["cka"], abs=1e-5)
    wa, wb = load_file(str(tmp_path / "one" / "model" / "model.safetensors")), \
        load_file(str(tmp_path / "two" / "model" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=0)  # Adam amplifies 1e-8 grad noise
    # the update is real (so matching weights is not trivially true)
    assert any(not torch.equal(wa[k], load_file(str(Path(w["student"]) / "model.safetensors"))[k]) for k in wa)
