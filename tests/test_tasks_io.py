"""Task JSONL: round trip, the box-dataset format, and errors naming file, line and field."""
from __future__ import annotations

import json

import pytest

from circuitdistill.models.tiny import gpt2_tokenizer
from circuitdistill.tasks import entity_tracking as et
from circuitdistill.tasks.io import TaskFileError, check_single_token, load_items, save_items
from circuitdistill.tasks.schema import TaskItem


def test_round_trip(tmp_path):
    items = et.generate(20, 3, 0, [gpt2_tokenizer()])
    p = save_items(tmp_path / "sub" / "et.jsonl", items)
    assert [x.model_dump() for x in load_items(p)] == [x.model_dump() for x in items]
    assert not [f for f in p.parent.iterdir() if f.name.startswith(".")]  # no temp files left behind


def test_user_format_minimal_and_optional_fields(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_text(json.dumps({"prompt": "The capital of France is", "answer": " Paris"}) + "\n\n"
                 + json.dumps({"prompt": "A", "answer": " b", "corrupted_prompt": "C", "corrupted_answer": " d",
                               "candidates": [" b", " d"]}) + "\n")
    items = load_items(p)
    assert len(items) == 2 and items[0].corrupted_prompt is None and items[1].candidates == [" b", " d"]


def test_box_dataset_format(tmp_path):
    p = tmp_path / "boxes.jsonl"
    rows = [{"sentence": "The apple is in Box F, the pen is in Box Q. Box Q contains the pen.", "sample_id": 0,
             "numops": 0},
            {"sentence": "Box 0 contains the car, Box 1 contains the bell. Box 1 contains the bell", "sample_id": 1,
             "numops": 2}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_items(p)
    assert items[0].prompt == "The apple is in Box F, the pen is in Box Q. Box Q contains the"
    assert items[0].answer == " pen"
    assert items[1].answer == " bell" and items[1].meta["numops"] == 2 and items[1].meta["sample_id"] == 1


def test_malformed_jsonl_names_file_line_and_field(tmp_path):
    p = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"prompt": "ok", "answer": " fine"}),                      # 1 fine
        "{not json",                                                           # 2 bad JSON
        json.dumps({"prompt": "no answer"}),                                   # 3 missing field
        json.dumps({"prompt": "x", "answer": " y", "colour": "red"}),           # 4 unknown field
        json.dumps({"prompt": "", "answer": " y"}),                            # 5 empty prompt
        json.dumps({"sentence": "oneword", "sample_id": 3, "numops": 1}),      # 6 box format, no answer
        json.dumps(["a", "list"]),                                             # 7 not an object
        json.dumps({"prompt": "p", "answer": " a", "candidates": [" b"]}),     # 8 answer not among candidates
    ]
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(TaskFileError) as ei:
        load_items(p)
    msg = str(ei.value)
    got = {(ln, field) for ln, field, _ in ei.value.problems}
    assert got == {(2, "<json>"), (3, "answer"), (4, "colour"), (5, "prompt"), (6, "sentence"), (7, "<line>"),
                   (8, "candidates")}
    for ln in (2, 3, 4, 5, 6, 7, 8):
        assert f"{p}:{ln}:" in msg
    assert f"{p}:1:" not in msg


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_items(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskFileError, match="no items"):
        load_items(tmp_path / "empty.jsonl")


def test_check_single_token():
    tok = gpt2_tokenizer()
    check_single_token([TaskItem(prompt="p", answer=" apple")], tok)
    with pytest.raises(TaskFileError, match="answer"):
        check_single_token([TaskItem(prompt="p", answer=" syringe")], tok)
