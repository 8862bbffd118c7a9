"""One option vocabulary: every command that loads a model takes --device, --dtype and --threads (the machine's
cores by default); retired option names are gone from the CLI but still load from earlier config files; discover and
teacher really run in bf16 on the CPU and record it."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from circuitdistill.circuits.circuit import Circuit
from circuitdistill.cli.main import app
from circuitdistill.experiment.config import ExperimentConfig, preset
from circuitdistill.experiment.runner import _pick, eval_key, models_key
from circuitdistill.models import placement
from circuitdistill.tasks.io import save_items

from _cli_tree import COMMANDS

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import make_items, save_tiny  # noqa: E402

runner = CliRunner()
LOADS_A_MODEL = ["discover", "teacher", "warmup", "models derive", "trace experiment", "compare", "evaluate", "match",
                 "cache-teacher", "experiment", "study"]
REQUIRED = {"discover": ["--model", "m", "--data", "d", "--out", "o"], "teacher": [], "warmup": [],
            "models derive": ["src", "--name", "n", "--keep", "2"], "trace experiment": [],
            "compare": ["--teacher", "t", "--student", "s", "--data", "d", "--out", "o"],
            "evaluate": ["--model", "m", "--data", "d"],
            "match": ["--teacher", "t", "--student", "s", "--circuit", "c", "--data", "d"],
            "cache-teacher": ["--teacher", "t", "--data", "d", "--out", "o"], "experiment": ["--preset", "tiny"],
            "study": ["--preset", "tiny"]}
RETIRED = {"--num-threads", "--n-items", "--limit", "--run-dir", "--top-n", "--top-k"}


def _print_config(command: str, *args) -> dict:
    r = runner.invoke(app, [*command.split(), *REQUIRED[command], "--print-config", *map(str, args)])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output)
    return {"threads": cfg.get("heal", {}).get("threads"), **cfg}  # models derive: healing's thread count


@pytest.mark.parametrize("command", LOADS_A_MODEL)
def test_every_model_loading_command_takes_device_dtype_and_threads(command):
    cfg = _print_config(command, "--device", "cpu", "--dtype", "bf16", "--threads", 3)
    assert (cfg["device"], cfg["dtype"], cfg["threads"]) == ("cpu", "bf16", 3)
    assert _print_config(command)["threads"] == placement.default_threads()


@pytest.mark.parametrize("command", ["discover", "teacher", "experiment"])
@pytest.mark.parametrize("option,value,choice", [("--dtype", "bf15", "'fp32'"), ("--device", "tpu", "'cpu'")])
def test_a_bad_device_or_dtype_exits_2_naming_the_option_and_its_choices(command, option, value, choice):
    r = runner.invoke(app, [*command.split(), *REQUIRED[command], option, value, "--print-config"])
    assert r.exit_code == 2
    assert f"error: {option}:" in r.output and choice in r.output


@pytest.mark.parametrize("command", ["discover", "experiment", "study"])
def test_a_gpu_index_is_a_device(command):
    assert _print_config(command, "--device", "cuda:1")["device"] == "cuda:1"
    r = runner.invoke(app, [*command.split(), *REQUIRED[command], "--device", "cuda:x", "--print-config"])
    assert r.exit_code == 2 and "error: --device:" in r.output and "'cuda:N'" in r.output


def test_no_command_has_a_retired_option_name():
    found = {f"{' '.join(path)} {opt}" for path, cmd in COMMANDS.items() for p in cmd.params
             for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", []) if opt in RETIRED}
    assert not found
    # `data` keeps --out (one file) beside --out-dir (the folder of three split files); nothing else has --out-dir
    assert {" ".join(path) for path, cmd in COMMANDS.items() for p in cmd.params if "--out-dir" in p.opts} == \
        {"data entity-tracking", "data task", "data tom"}


@pytest.mark.parametrize("command,old,new,value", [
    ("discover", "top_n", "circuit_size", 7), ("discover", "n_items", "max_items", 9),
    ("compare", "n_items", "max_items", 12), ("evaluate", "limit", "max_items", 5),
    ("match", "num_threads", "threads", 3), ("cache-teacher", "top_k", "top_k_logits", 8),
    ("teacher", "run_dir", "out", "runs/x"), ("models derive", "run_dir", "out", "runs/y"),
    ("trace experiment", "out_dir", "out", "runs/z")])
def test_earlier_config_files_with_the_old_field_names_still_load(command, old, new, value, tmp_path):
    f = tmp_path / "config.json"
    f.write_text(json.dumps({old: value}))
    cfg = _print_config(command, "--config", f)
    assert cfg[new] == value and old not in cfg


def test_distill_reads_num_threads_from_an_earlier_run_config():
    from circuitdistill.distill.config import DistillConfig

    cfg = DistillConfig.model_validate({"student": "s", "teacher": "t", "data": "d", "method": "full-kd",
                                          "num_threads": 3})
    assert cfg.threads == 3


def test_default_threads_follow_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert placement.default_threads() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert placement.default_threads() == 6


@pytest.mark.parametrize("n", [2, 5])
def test_default_threads_give_the_stage_keys_of_the_explicit_count(n, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    default, explicit = preset("tiny"), preset("tiny", threads=n)
    assert default.threads == n
    assert default.model_dump() == explicit.model_dump()
    for key in (("teacher_steps", "teacher_target", "threads"), ("warm_target", "warm_steps", "threads", "preset")):
        assert _pick(default, *key) == _pick(explicit, *key)
    assert models_key(default) == models_key(explicit) and eval_key(default) == eval_key(explicit)
    assert ExperimentConfig.model_validate(json.loads(default.model_dump_json())).threads == n


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    model = save_tiny(root / "model", seed=1)
    save_items(root / "items.jsonl", make_items(12, seed=0))
    return {"root": root, "model": model, "data": str(root / "items.jsonl")}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))


def test_discover_runs_in_bf16_on_the_cpu_and_records_it(world, tmp_path):
    r = runner.invoke(app, ["discover", "--model", world["model"], "--data", world["data"], "--out", tmp_path / "c",
                            "--max-items", 4, "--batch-size", 4, "--circuit-size", 2, "--dtype", "bf16",
                            "--device", "cpu", "--threads", 1])
    assert r.exit_code == 0, r.output
    c = Circuit.load(tmp_path / "c" / "circuit.json")
    assert c.config["dtype"] == "bf16" and c.config["device"] == "cpu" and c.config["threads"] == 1
    assert c.n_heads == 2


def test_teacher_trains_in_bf16_on_the_cpu_and_records_it(world, tmp_path):
    r = runner.invoke(app, ["teacher", "--base", world["model"], "--train", world["data"], "--validation",
                            world["data"], "--steps", 2, "--batch-size", 4, "--eval-items", 4, "--eval-every", 1,
                            "--out", tmp_path / "run", "--save-to", tmp_path / "saved", "--dtype", "bf16",
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["steps"] == 2
    assert record["provenance"]["config"]["dtype"] == "bf16"
    assert record["provenance"]["config"]["threads"] == placement.default_threads()
    hf = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert hf.get("dtype", hf.get("torch_dtype")) == "bfloat16"
