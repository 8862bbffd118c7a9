"""Bad inputs and faults a new user meets (docs/reliability.md): nothing we did not write is lost, nothing is
silently wrong, and every mistake is one line with exit code 2 before any compute."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

# imported before any test patches what they import, so they hold the real functions
import circuitdistill.circuits.discovery_methods.activation  # noqa: F401
import circuitdistill.distill.trainer  # noqa: F401
import circuitdistill.tasks.finetune  # noqa: F401
from circuitdistill.cli.main import app
from circuitdistill.models import registry
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.output_dirs import MARKER, prepare_output_dir, prepare_output_file
from circuitdistill.tasks.io import save_items
from circuitdistill.tasks.schema import TaskItem
from circuitdistill.utils import UserError, fingerprint_path

sys.path.insert(0, str(Path(__file__).parent))
from distill_fixtures import make_items, save_tiny  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reliability")
    model = save_tiny(root / "model", seed=1)
    save_items(root / "items.jsonl", make_items(24, seed=0))
    pairing = {"pairs": [{"student": [0, 1], "teacher": [1, 2]}]}
    (root / "pairing.json").write_text(json.dumps(pairing))
    return {"root": root, "model": model, "data": str(root / "items.jsonl"), "pairing": str(root / "pairing.json")}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CIRCUITDISTILL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def no_compute(monkeypatch):
    """Any model forward / training reached by a command fails the test: errors must come before compute."""
    def boom(*a, **k):
        raise AssertionError("compute started before the input was rejected")

    for target in ("circuitdistill.tasks.scoring.evaluate", "circuitdistill.circuits.patching.activation_patching",
                   "circuitdistill.circuits.discovery_methods.activation.activation_patching",
                   "circuitdistill.distill.trainer.train", "circuitdistill.tasks.finetune.finetune",
                   "circuitdistill.cli.train_task.finetune", "circuitdistill.cli.evaluate.evaluate",
                   "circuitdistill.models.registry.load_model", "circuitdistill.distill.trainer.load_model",
                   "circuitdistill.distill.teacher_cache.load_model", "circuitdistill.distill.matching.load_model"):
        monkeypatch.setattr(target, boom)


def _fails(args, *expected):
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    for text in expected:
        assert text in r.output, r.output
    return r


# ---- 1. names and --save-to never clobber a built-in or a user's directory -------------------------------------
def test_derived_names_cannot_shadow_a_builtin_or_be_a_path(world, home, tmp_path, no_compute):
    builtin = home / "models" / "smollm2-135m"
    builtin.mkdir(parents=True)
    (builtin / "circuitdistill.json").write_text("{}")
    base = ["teacher", "--base", world["model"], "--out", tmp_path / "run"]
    _fails([*base, "--name", "smollm2-135m"], "built-in")
    assert (builtin / "circuitdistill.json").read_text() == "{}"
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    _fails([*base, "--name", str(user_dir)], "plain name", "--save-to")
    _fails(["warmup", "--base", world["model"], "--name", "../x", "--out", tmp_path / "run2"], "plain name")
    _fails(["distill", "--method", "full-kd", "--student", world["model"], "--teacher", world["model"], "--data",
            world["data"], "--out", tmp_path / "d", "--save-as", "gemma3-270m"], "built-in")
    assert (user_dir / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="built-in"):
        registry.save_derived(tiny_model("llama"), gpt2_tokenizer(), "smollm2-135m", {})


def test_save_to_refuses_a_foreign_directory(world, tmp_path, no_compute):
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    _fails(["teacher", "--base", world["model"], "--save-to", user_dir, "--out", tmp_path / "run"],
           "not a model saved by circuitdistill", "--overwrite")
    with pytest.raises(UserError, match="not a model saved"):
        registry.save_model_dir(tiny_model("llama"), gpt2_tokenizer(), user_dir, {})
    assert (user_dir / "notes.txt").read_text() == "keep me"
    ours = registry.save_model_dir(tiny_model("llama"), gpt2_tokenizer(), tmp_path / "ours", {"n": 1})
    registry.save_model_dir(tiny_model("llama", seed=3), gpt2_tokenizer(), ours, {"n": 2})  # ours: replaced whole
    assert json.loads((ours / "circuitdistill.json").read_text())["n"] == 2
    assert not list(tmp_path.glob(".ours*"))


# ---- 2. output directories --------------------------------------------------------------------------------------
def test_output_dir_rules(tmp_path):
    out = prepare_output_dir(tmp_path / "new")
    assert (out / MARKER).exists()
    (out / "summary.json").write_text("{}")
    with pytest.raises(UserError, match="earlier run.*--resume"):
        prepare_output_dir(out, resume_flag="--resume")
    prepare_output_dir(out, resume=True)
    prepare_output_dir(out, overwrite=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text("mine")
    with pytest.raises(UserError, match="did not write.*config.json"):
        prepare_output_dir(foreign, resume=True)
    assert (foreign / "config.json").read_text() == "mine" and not (foreign / MARKER).exists()
    (tmp_path / "afile").write_text("")
    with pytest.raises(UserError, match="is a file"):
        prepare_output_dir(tmp_path / "afile")
    with pytest.raises(UserError, match="cannot write"):
        prepare_output_dir(tmp_path / "afile" / "sub")  # not writable: below a file
    with pytest.raises(UserError, match="is a directory"):
        prepare_output_file(out)
    # temp files of killed atomic writes are removed on the next start; our own files are not
    (out / ".heatmap.png.ab12cd34.png").write_bytes(b"half")
    (out / "stage").mkdir()
    (out / "stage" / ".checkpoint.pt.zz99yy88.pt").write_bytes(b"half")
    (out / ".hidden-note").write_text("x")
    prepare_output_dir(out, resume=True)
    assert not (out / ".heatmap.png.ab12cd34.png").exists()
    assert not (out / "stage" / ".checkpoint.pt.zz99yy88.pt").exists()
    assert (out / ".hidden-note").exists() and (out / "summary.json").exists()


def test_commands_refuse_foreign_or_earlier_outputs(world, tmp_path, no_compute):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("user's own")
    _fails(["discover", "--model", world["model"], "--data", world["data"], "--out", out, "--circuit-size", 2],
           "did not write", "config.json")
    _fails(["distill", "--method", "full-kd", "--student", world["model"], "--teacher", world["model"], "--data",
            world["data"], "--out", out, "--steps", 1, "--batch-size", 4], "did not write")
    assert (out / "config.json").read_text() == "user's own"
    earlier = prepare_output_dir(tmp_path / "earlier")
    (earlier / "circuit.json").write_text("{}")
    _fails(["discover", "--model", world["model"], "--data", world["data"], "--out", earlier, "--circuit-size", 2],
           "earlier run", "--overwrite")
    _fails(["distill", "--method", "full-kd", "--student", world["model"], "--teacher", world["model"], "--data",
            world["data"], "--out", earlier, "--steps", 1, "--batch-size", 4], "--resume", "--overwrite")
    _fails(["evaluate", "--model", world["model"], "--data", world["data"], "--out", earlier], "is a directory")
    (tmp_path / "afile").write_text("")
    _fails(["discover", "--model", world["model"], "--data", world["data"], "--out", tmp_path / "afile" / "x",
            "--circuit-size", 2], "cannot write")


def test_second_discover_to_the_same_out_needs_overwrite(world, tmp_path):
    args = ["discover", "--model", world["model"], "--data", world["data"], "--out", tmp_path / "c", "--circuit-size", 2,
            "--max-items", 4, "--batch-size", 4, "--threads", 1]
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    before = (tmp_path / "c" / "circuit.json").read_text()
    _fails(args, "earlier run")
    assert (tmp_path / "c" / "circuit.json").read_text() == before
    assert runner.invoke(app, [str(a) for a in [*args, "--overwrite"]]).exit_code == 0


# ---- 3. torn checkpoints ----------------------------------------------------------------------------------------
def test_checkpoint_killed_half_way_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    from circuitdistill.tasks import entity_tracking as et
    from circuitdistill.tasks import finetune as ft

    tok = gpt2_tokenizer()
    sp = et.make_splits(32, 8, 0, 2, 0, [tok])
    cfg = ft.FinetuneConfig(name="t", max_steps=4, eval_every=100, checkpoint_every=2, batch_size=4, eval_items=4,
                            lr=1e-3, seed=1)
    straight = tiny_model("llama", seed=5)
    ft.finetune(cfg, sp["train"], sp["validation"], tmp_path / "a", model=straight, tokenizer=tok, save=False,
                progress=False)

    real_save, calls = torch.save, []

    def dies_on_second_checkpoint(obj, f, *a, **k):  # the weights of step 4 are written, then the process dies
        calls.append(f)
        if len(calls) == 2:
            raise SystemExit("killed inside the checkpoint write")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", dies_on_second_checkpoint)
    with pytest.raises(SystemExit):
        ft.finetune(cfg, sp["train"], sp["validation"], tmp_path / "b", model=tiny_model("llama", seed=5),
                    tokenizer=tok, save=False, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    (tmp_path / "b" / ".checkpoint.new-abcd1234").mkdir()  # what a SIGKILL would leave
    resumed = tiny_model("llama", seed=5)
    rec = ft.finetune(cfg, sp["train"], sp["validation"], tmp_path / "b", model=resumed, tokenizer=tok, save=False,
                      progress=False)
    assert rec["resumed_from_step"] == 2
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert not list((tmp_path / "b").glob(".checkpoint*"))
    # a damaged checkpoint is refused, not silently used
    weights = tmp_path / "b" / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(UserError, match="damaged"):
        ft.finetune(cfg, sp["train"], sp["validation"], tmp_path / "b", model=tiny_model("llama", seed=5),
                    tokenizer=tok, save=False, progress=False)


# ---- 4. content-keyed caches and resume --------------------------------------------------------------------------
def test_fingerprint_follows_content(tmp_path):
    model = Path(save_tiny(tmp_path / "m", seed=1))
    first = fingerprint_path(model)
    assert fingerprint_path(model) == first and fingerprint_path(tmp_path / "nope") == "missing"
    tiny_model("llama", seed=2).save_pretrained(model, safe_serialization=True)  # same names and shapes
    assert fingerprint_path(model) != first
    data = tmp_path / "d.jsonl"
    data.write_text("a\n")
    fp = fingerprint_path(data)
    data.write_text("b\n")
    assert fingerprint_path(data) != fp


def test_stage_reruns_when_its_input_content_changes(tmp_path):
    from circuitdistill.stages import StageRunner

    data = tmp_path / "d.jsonl"
    data.write_text("one\n")
    ran = []

    def stage(d):
        ran.append(data.read_text())
        return {"n": len(ran)}

    StageRunner(tmp_path / "exp", log=lambda s: None).run("s", {"k": 1}, stage, content={"data": data})
    assert StageRunner(tmp_path / "exp", log=lambda s: None).run("s", {"k": 1}, stage, content={"data": data}).cached
    data.write_text("two\n")
    res = StageRunner(tmp_path / "exp", log=lambda s: None).run("s", {"k": 1}, stage, content={"data": data})
    assert not res.cached and ran == ["one\n", "two\n"]


def test_distill_resume_refuses_changed_data(world, tmp_path):
    data = tmp_path / "train.jsonl"
    save_items(data, make_items(8, seed=0))
    args = ["distill", "--method", "full-kd", "--student", world["model"], "--teacher", world["model"], "--data",
            data, "--out", tmp_path / "run", "--steps", 1, "--batch-size", 4, "--threads", 1]
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    save_items(data, make_items(8, seed=1))
    _fails([*args, "--steps", 2, "--resume"], "data changed")


# ---- 5. silently wrong inputs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("pair,where", [([[0, 1], [1, -1]], "pairs[0].teacher is L1.H-1"),
                                        ([[0, 9], [1, 0]], "pairs[0].student is L0.H9")])
def test_pairing_heads_outside_the_model(world, tmp_path, no_compute, pair, where):
    bad = tmp_path / "pairing.json"
    bad.write_text(json.dumps({"pairs": [{"student": pair[0], "teacher": pair[1]}]}))
    _fails(["distill", "--method", "circuit", "--student", world["model"], "--teacher", world["model"], "--data",
            world["data"], "--pairing", bad, "--out", tmp_path / "o"], str(bad), where)


def test_multi_token_answers_are_refused_by_every_scoring_command(world, tmp_path, no_compute):
    bad = tmp_path / "multi.jsonl"
    save_items(bad, [TaskItem(prompt="The box holds the", answer=" encyclopaedia")])
    m = world["model"]
    _fails(["evaluate", "--model", m, "--data", bad], "not a single token")
    _fails(["discover", "--model", m, "--data", bad, "--out", tmp_path / "c"], "not a single token")
    _fails(["distill", "--method", "full-kd", "--student", m, "--teacher", m, "--data", bad, "--out",
            tmp_path / "d", "--batch-size", 1], "not a single token")


def test_conflicting_or_empty_options(world, tmp_path, no_compute):
    m, d = world["model"], world["data"]
    _fails(["teacher", "--base", m, "--steps", 0, "--out", tmp_path / "r"], "--steps 0")
    _fails(["distill", "--method", "circuit", "--student", m, "--teacher", m, "--teacher-cache", tmp_path,
            "--data", d, "--pairing", world["pairing"]], "not both")
    _fails(["distill", "--method", "full-kd", "--student", m, "--teacher", m, "--data", d, "--pairing",
            world["pairing"]], "--pairing", "full-kd")
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"heads": [], "n_layers": 2, "n_heads_per_layer": 4, "method": "x", "metric": "y"}))
    _fails(["evaluate", "--model", m, "--data", d, "--circuit", empty], "no heads")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"heads": [{"layer": 5, "head": 0, "score": 1}], "n_layers": 6,
                                 "n_heads_per_layer": 4, "method": "x", "metric": "y"}))
    _fails(["evaluate", "--model", m, "--data", d, "--circuit", wrong], "6 layers", "2 x 4")
    _fails(["discover", "--model", m, "--data", d, "--out", tmp_path / "c", "--circuit-size", 9], "--circuit-size 9", "8 heads")
    _fails(["match", "--teacher", m, "--student", m, "--circuit", empty, "--data", d, "--budget", 9], "--budget 9")


def test_threshold_with_no_head_writes_no_circuit(world, tmp_path):
    _fails(["discover", "--model", world["model"], "--data", world["data"], "--out", tmp_path / "c", "--threshold",
            1e9, "--max-items", 4, "--batch-size", 4, "--threads", 1], "no head reached --threshold")
    assert not (tmp_path / "c" / "circuit.json").exists()


# ---- 6. one-line errors instead of tracebacks --------------------------------------------------------------------
def test_bad_files_and_models_are_one_line_errors(world, tmp_path, no_compute):
    m = world["model"]
    _fails(["data", "check", tmp_path], "is a directory")
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"prompt": "caf\u00e9 is", "answer": " x"}\n'.encode("latin-1"))
    _fails(["data", "check", latin], f"{latin}:1", "not UTF-8")
    _fails(["evaluate", "--model", m, "--data", latin], "not UTF-8")
    _fails(["evaluate", "--model", m, "--data", tmp_path], "is a directory")
    _fails(["distill", "--method", "full-kd", "--student", m, "--teacher", m, "--data", world["data"],
            "--position", -1000, "--out", tmp_path / "p"], "--position -1000")
    if not torch.cuda.is_available():
        _fails(["compare", "--teacher", m, "--student", m, "--data", world["data"], "--out", tmp_path / "cmp",
                "--device", "cuda"], "--device cuda", "CUDA")


def test_broken_model_directories(world, tmp_path, monkeypatch):
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "config.json").write_text((Path(world["model"]) / "config.json").read_text())
    with pytest.raises(registry.ModelNotAvailable, match="no weights"):
        registry.load_model(str(only_config))
    invalid = tmp_path / "invalid"
    invalid.mkdir()
    (invalid / "config.json").write_text("{not json")
    with pytest.raises(registry.ModelNotAvailable, match="not a valid model config"):
        registry.load_model(str(invalid))
    _fails(["evaluate", "--model", only_config, "--data", world["data"]], str(only_config))
    _fails(["evaluate", "--model", invalid, "--data", world["data"]], str(invalid))
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = tmp_path / "t5"
    T5ForConditionalGeneration(T5Config(vocab_size=50257, d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                        d_kv=8)).save_pretrained(t5)
    gpt2_tokenizer().save_pretrained(t5)
    _fails(["evaluate", "--model", t5, "--data", world["data"]], "not a causal")


def test_debug_shows_the_traceback_and_sigint_says_how_to_resume(world, tmp_path, monkeypatch):
    conflicting = ["distill", "--method", "full-kd", "--student", world["model"], "--teacher", world["model"],
                   "--teacher-cache", str(tmp_path), "--data", world["data"]]
    r = runner.invoke(app, ["--debug", *conflicting])
    assert r.exit_code != 0 and isinstance(r.exception, UserError)
    assert runner.invoke(app, conflicting).exit_code == 2

    def interrupted(cfg, resume=False, progress=True):
        raise KeyboardInterrupt

    monkeypatch.setattr("circuitdistill.distill.trainer.train", interrupted)
    r = runner.invoke(app, ["distill", "--method", "full-kd", "--student", world["model"], "--teacher",
                            world["model"], "--data", world["data"], "--out", str(tmp_path / "run")])
    assert r.exit_code == 130 and "interrupted after step 0" in r.output and "--overwrite" in r.output
    (tmp_path / "run" / "log.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)))
    r = runner.invoke(app, ["distill", "--method", "full-kd", "--student", world["model"], "--teacher",
                            world["model"], "--data", world["data"], "--out", str(tmp_path / "run"),
                            "--checkpoint-every", "2", "--resume"])
    assert r.exit_code == 130 and "last checkpoint (step 2)" in r.output and "--resume" in r.output
