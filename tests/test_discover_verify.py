"""`discover --method attribution --verify K`: AtP(*) ranks every head, exact patching re-scores the top K, and the
circuit is chosen from the exact scores."""
import math

import pytest
import torch

from circuitdistill.circuits.attribution import attribution_patching
from circuitdistill.circuits.circuit import Circuit
from circuitdistill.circuits.patching import activation_patching
from circuitdistill.circuits.toy import box_items
from circuitdistill.circuits.discover import DiscoverConfig, run_discover
from circuitdistill.models.hooks import HookedLM
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model
from circuitdistill.utils import write_jsonl_atomic

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    tok = gpt2_tokenizer()
    model = tiny_model("llama", n_layers=3, seed=2)
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    items = box_items(tok, 6, 3, seed=4)
    write_jsonl_atomic(d / "items.jsonl", [it.model_dump() for it in items])
    return d, model, tok, items


@pytest.mark.parametrize("positions,fixes", [("all", {}), ("all", {"qk_fix": True, "grad_drop": True}),
                                             ("final", {"qk_fix": True}), ("final", {}),
                                             ("all", {"softmax_fix": True})])
def test_verify_rescores_the_top_k_exactly_and_selects_from_exact_scores(setup, positions, fixes):
    """The re-scoring reuses the ranking's unchanged passes (corrupted outputs, prefix cache, layer calls) and still
    equals a separate exact sweep."""
    d, model, tok, items = setup
    out = d / f"out{positions}{len(fixes)}"
    cfg = DiscoverConfig(model=str(d / "model"), data=d / "items.jsonl", method="attribution", positions=positions,
                         circuit_size=3, verify=5, max_items=6, batch_size=4, out=out, **fixes)
    circuit, _ = run_discover(cfg, progress=False)
    assert Circuit.load(out / "circuit.json").selection == {"top_n": 3, "verify": 5}
    hk = HookedLM(model, tok)
    est = attribution_patching(hk, items, "logprob", positions=positions, batch_size=4, progress=False, **fixes)
    top5 = {(int(i) // 4, int(i) % 4) for i in est.flatten().abs().argsort(descending=True)[:5]}
    grid = circuit.score_grid()
    assert {(l, h) for l in range(3) for h in range(4) if not math.isnan(grid[l, h])} == top5
    exact = activation_patching(hk, items, "logprob", positions=positions, batch_size=3, progress=False).scores
    for l, h in top5:
        assert abs(float(grid[l, h]) - float(exact[l, h])) < 1e-5
    best3 = sorted(top5, key=lambda lh: -abs(float(exact[lh])))[:3]
    assert circuit.as_set() == set(best3)


def test_verify_options_are_checked(setup):
    d = setup[0]
    with pytest.raises(ValueError, match="more than"):
        DiscoverConfig(model="m", data=d / "items.jsonl", method="attribution", circuit_size=6, verify=5, out=d / "x")
    with pytest.raises(ValueError, match="belong to --method attribution"):
        DiscoverConfig(model="m", data=d / "items.jsonl", method="activation", verify=5, out=d / "x")
    with pytest.raises(ValueError, match="belong to --method attribution"):
        DiscoverConfig(model="m", data=d / "items.jsonl", method="activation", softmax_fix=True, out=d / "x")
    with pytest.raises(ValueError, match="--softmax-fix is for --metric logprob"):
        DiscoverConfig(model="m", data=d / "items.jsonl", method="attribution", softmax_fix=True, metric="logit_diff",
                       out=d / "x")
    with pytest.raises(ValueError, match="alternatives"):
        DiscoverConfig(model="m", data=d / "items.jsonl", method="attribution", softmax_fix=True, ig_steps=2,
                       out=d / "x")
    DiscoverConfig(model="m", data=d / "items.jsonl", method="attribution", softmax_fix=True, qk_fix=True,
                   grad_drop=True, out=d / "x")  # the softmax fix composes with AtP*


def test_softmax_fix_refuses_items_without_candidates_before_loading_the_model(setup, tmp_path):
    items = setup[3]
    bare = [items[0].model_copy(update={"candidates": None}), *items[1:]]
    write_jsonl_atomic(tmp_path / "bare.jsonl", [it.model_dump() for it in bare])
    cfg = DiscoverConfig(model=str(tmp_path / "no-such-model"), data=tmp_path / "bare.jsonl", method="attribution",
                         softmax_fix=True, out=tmp_path / "out")
    with pytest.raises(ValueError, match=r"candidates that include the answer on every item; items \[0\]"):
        run_discover(cfg, progress=False)
    assert not (tmp_path / "out").exists()
