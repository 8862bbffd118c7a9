"""`--config FILE.json` and `--print-config` on every command that has them: options given on the command line
override the file, a field only in the file keeps the file's value, and an unknown key or a bad value exits 2
naming it. Nothing here runs a model: `--print-config` stops before any work."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from circuitdistill.cli.main import app

from _cli_tree import COMMANDS

runner = CliRunner()
CONFIGURABLE = {path: cmd for path, cmd in COMMANDS.items() if any(p.name == "config" for p in cmd.params)}
IDS = [" ".join(p) for p in CONFIGURABLE]
# values for the fields a config cannot do without (by field name; only those the command has are used)
SAMPLE = {"model": "m", "student": "s", "teacher": "t", "base": "b", "source": "src", "name": "n", "data": "d.jsonl",
          "out": "o", "deltas": "d.safetensors", "circuit": "c.json", "pairing": "p.json", "keep": 2}


def _print_config(path, tmp_path, data: dict, *args):
    f = tmp_path / "config.json"
    f.write_text(json.dumps(data))
    return runner.invoke(app, [*path, "--config", str(f), "--print-config", *map(str, args)])


def _base(path) -> dict:
    names = {p.name for p in CONFIGURABLE[path].params}
    return {k: v for k, v in SAMPLE.items() if k in names}


def _options(path) -> dict:
    return {p.name: p for p in CONFIGURABLE[path].params if p.param_type_name == "option"}


def _variants(value) -> list:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, (int, float)):
        return [value + 1, value - 1]
    return [value + "x"] if isinstance(value, str) else []


def _field_to_vary(path, tmp_path, resolved: dict, need_option: bool, exclude=()) -> tuple:
    """(field, a value the file may hold instead of the resolved one), trying numbers first."""
    fields = [k for k in resolved if k not in exclude and (not need_option or k in _options(path))]
    fields.sort(key=lambda k: not isinstance(resolved[k], (int, float)))
    for key in fields:
        for value in _variants(resolved[key]):
            if _print_config(path, tmp_path, {**_base(path), key: value}).exit_code == 0:
                return key, value
    raise AssertionError(f"{' '.join(path)}: no field to vary in {resolved}")


def test_the_commands_with_a_config_file():
    expected = {"distill", "cache-teacher", "match", "merge", "discover", "compare", "evaluate", "trace experiment",
                "teacher", "warmup", "models derive", "experiment", "study"}
    assert expected <= set(IDS)


@pytest.mark.parametrize("path", list(CONFIGURABLE), ids=IDS)
def test_options_override_the_file(path, tmp_path):
    r = _print_config(path, tmp_path, _base(path))
    assert r.exit_code == 0, r.output
    resolved = json.loads(r.stdout)
    flagged, in_file = _field_to_vary(path, tmp_path, resolved, need_option=True)
    only_in_file, file_value = _field_to_vary(path, tmp_path, resolved, need_option=False, exclude=(flagged,))
    option = max(_options(path)[flagged].opts, key=len)
    r = _print_config(path, tmp_path, {**_base(path), flagged: in_file, only_in_file: file_value},
                      option, resolved[flagged])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out[flagged] == resolved[flagged]  # the option's value, though the file holds another
    assert out[only_in_file] == file_value


@pytest.mark.parametrize("path", list(CONFIGURABLE), ids=IDS)
def test_printed_config_reads_back_as_the_same_config(path, tmp_path):
    first = _print_config(path, tmp_path, _base(path))
    again = _print_config(path, tmp_path, json.loads(first.stdout))
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == json.loads(first.stdout)


@pytest.mark.parametrize("path", list(CONFIGURABLE), ids=IDS)
def test_unknown_key_and_bad_value_in_the_file_exit_2_naming_them(path, tmp_path):
    r = _print_config(path, tmp_path, {**_base(path), "no_such_key": 1})
    assert r.exit_code == 2 and "no_such_key" in r.output, r.output
    resolved = json.loads(_print_config(path, tmp_path, _base(path)).stdout)
    key, _ = _field_to_vary(path, tmp_path, resolved, need_option=True)
    r = _print_config(path, tmp_path, {**_base(path), key: "abc" if not isinstance(resolved[key], str) else [1]})
    assert r.exit_code == 2, r.output
    assert any(f"error: {opt}:" in r.output for opt in _options(path)[key].opts), r.output
    assert "Traceback" not in r.output


@pytest.mark.parametrize("path", list(CONFIGURABLE), ids=IDS)
def test_every_option_has_a_description(path):
    for opt in CONFIGURABLE[path].params:
        if opt.param_type_name == "option" and opt.name != "help":
            assert opt.help and not opt.help.startswith((" [", "None [")), f"{' '.join(path)} {opt.opts}"


def test_bad_option_value_names_the_option(tmp_path):
    r = runner.invoke(app, ["discover", "--model", "m", "--data", "d", "--out", "o", "--max-items", "0",
                            "--print-config"])
    assert r.exit_code == 2 and "error: --max-items:" in r.output
    r = runner.invoke(app, ["trace", "experiment", "--student-layers=-1", "--print-config"])
    assert r.exit_code == 2 and "error: --student-layers:" in r.output
    r = _print_config(("trace", "experiment"), tmp_path, {"decoding": {"nope": 1}})
    assert r.exit_code == 2 and "decoding.nope" in r.output


def test_nested_fields_keep_their_option_names(tmp_path):
    r = _print_config(("trace", "experiment"), tmp_path, {"decoding": {"temperature": 0.5, "max_new_tokens": 8}},
                      "--teacher", "a", "--teacher", "b,c", "--greedy", "--max-new-tokens", 16)
    cfg = json.loads(r.stdout)
    assert cfg["teachers"] == ["a", "b", "c"]
    assert cfg["decoding"] == {**cfg["decoding"], "temperature": 0.5, "max_new_tokens": 16, "do_sample": False}
    r = _print_config(("models", "derive"), tmp_path, {"source": "a", "name": "n", "keep": 2,
                                                       "heal": {"steps": 7, "lr": 0.5}},
                      "b", "--lr", 0.25, "--ppl-target", 0)
    cfg = json.loads(r.stdout)
    assert cfg["source"] == "b" and cfg["heal"]["steps"] == 7 and cfg["heal"]["lr"] == 0.25
    assert cfg["heal"]["ppl_target_ratio"] is None


def test_an_earlier_runs_config_artifact_is_a_config_file(tmp_path):
    config = {"method": "full-kd", "student": "s", "teacher": "t", "data": "d.jsonl", "steps": 7}
    r = _print_config(("distill",), tmp_path, {"format": "circuitdistill.distill-run-config/v1", "seed": 0,
                                               "config": config}, "--lr", 0.5)
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.stdout)
    assert cfg["steps"] == 7 and cfg["lr"] == 0.5 and cfg["method"] == "full-kd"


def test_experiment_layers_preset_file_options_and_set(tmp_path):
    r = _print_config(("experiment",), tmp_path, {"task": "tom", "steps": 5, "compare_items": 9},
                      "--preset", "tiny", "--steps", 6, "--seeds", "1,2")
    cfg = json.loads(r.stdout)
    assert (cfg["steps"], cfg["compare_items"], cfg["seeds"]) == (6, 9, [1, 2])
    assert cfg["n_train"] == 64 and cfg["out"] == "runs/tiny-tom"  # the tiny preset, the file's task
    r = _print_config(("experiment",), tmp_path, {"steps": 5}, "--steps", 6, "--set", "steps=7")
    assert json.loads(r.stdout)["steps"] == 7
