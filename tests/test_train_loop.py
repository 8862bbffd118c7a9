"""The shared training loop on a tiny model: exact resume, stop conditions, log lines, evaluation placement."""
from __future__ import annotations

import json

import pytest
import torch

from circuitdistill.models.tiny import tiny_model
from circuitdistill.train_loop import TrainLoop, batch_indices, read_log, save_checkpoint_file

DATA = torch.randint(0, 200, (24, 12), generator=torch.Generator().manual_seed(0))


def _run(tmp_path, steps=6, resume=False, **kw):
    """A language-model loop on DATA whose checkpoint holds the model, the optimizer and the loop state."""
    torch.manual_seed(0)
    model = tiny_model("llama", seed=1)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ckpt = tmp_path / "ckpt.pt"
    state = {"step": 0, "history": []}
    if resume and ckpt.exists():
        ck = torch.load(ckpt, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        state = ck["state"]

    def loss(step):
        ids = DATA[batch_indices(len(DATA), 4, step, seed=3)]
        out = model(input_ids=ids, labels=ids).loss
        return out, lambda: {"loss": out.item()}

    def save():
        save_checkpoint_file(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(), "state": state})

    args = dict(steps=steps, loss=loss, optimizer=opt, params=list(model.parameters()), grad_clip=1.0, save=save,
                checkpoint_every=2, log_path=tmp_path / "log.jsonl", progress=False)
    loop = TrainLoop(**{**args, **kw})
    return model, state, loop.run(state)


def test_a_killed_run_resumes_to_the_same_weights_and_log(tmp_path):
    straight, s_state, s_out = _run(tmp_path / "a")
    assert s_out.stop_reason is None and not s_out.interrupted and s_state["step"] == 6
    _, _, cut = _run(tmp_path / "b", stop_after=3)
    assert cut.interrupted and [r["step"] for r in read_log(tmp_path / "b" / "log.jsonl")] == [1, 2, 3]
    resumed, r_state, _ = _run(tmp_path / "b", resume=True)  # the last checkpoint is at step 2
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert r_state["history"] == s_state["history"]
    assert read_log(tmp_path / "b" / "log.jsonl") == s_state["history"]  # step 3 of the cut run is rewritten


def test_a_target_stops_the_run_and_checkpoints_it(tmp_path):
    def evaluate(step):
        return {"metric": step}, "reached" if step >= 4 else None

    _, state, out = _run(tmp_path, steps=20, evaluate=evaluate, eval_key="metric", eval_every=2, eval_at_start=True)
    assert out.stop_reason == "reached" and state["step"] == 4
    rows = state["history"]
    assert [r["step"] for r in rows if "metric" in r] == [0, 2, 4]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert torch.load(tmp_path / "ckpt.pt", weights_only=False)["state"]["step"] == 4
    assert [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()] == rows


def test_a_time_budget_stops_after_a_step_with_an_evaluation(tmp_path):
    _, state, out = _run(tmp_path, evaluate=lambda s: ({"metric": 1.0}, None), eval_key="metric", eval_every=100,
                         max_minutes=1e-9)
    assert out.stop_reason.startswith("time budget") and state["step"] == 1
    assert state["history"][-1] == {"step": 1, "metric": 1.0}


@pytest.mark.parametrize("at_last", [True, False])
def test_evaluation_can_join_the_step_rows(tmp_path, at_last):
    _, state, _ = _run(tmp_path, steps=4, evaluate=lambda s: ({"eval": s}, None), eval_every=2,
                       eval_in_step_row=True, eval_at_last_step=at_last, log_step_times=True, log_grad_norm=True)
    rows = state["history"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["step"] for r in rows if "eval" in r] == ([2, 4] if at_last else [2])
    assert list(rows[1]) == ["step", "loss", "grad_norm", "step_time_s", "step_cpu_s", "eval"]


def test_batch_order_covers_each_epoch_and_depends_on_the_seed_scale():
    assert sorted(i for s in range(6) for i in batch_indices(24, 4, s, seed=3)) == list(range(24))
    assert batch_indices(24, 4, 0, 3) != batch_indices(24, 4, 0, 3, seed_scale=1_000_003)
