"""bench/peers.py: our per-head patching grids equal TransformerLens' on the same tiny model and items."""
import importlib.util
from pathlib import Path

import pytest
import torch

from circuitdistill.circuits.toy import box_items
from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model

torch.set_num_threads(2)


def load_bench():
    path = Path(__file__).resolve().parents[1] / "bench" / "peers.py"
    spec = importlib.util.spec_from_file_location("bench_peers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_peers_bench_agrees_with_transformer_lens(family):
    pytest.importorskip("transformer_lens")
    peers = load_bench()
    tok = gpt2_tokenizer()
    items = box_items(tok, 5, 3, seed=2)
    items[4] = items[4].model_copy(update={"prompt": "Short. " + items[4].prompt,
                                           "corrupted_prompt": "Short. " + items[4].corrupted_prompt})
    assert len(peers.length_groups(tok, items)) == 2  # TransformerLens runs two unpadded groups; we pad
    model = tiny_model(family, n_layers=3, seed=3)
    bridge = peers.bridge_around(model)
    for positions in ("all", "final"):
        r = peers.compare(model, tok, items, positions, batch_size=3, bridge=bridge)
        assert r["ours"].std() > 0  # not vacuous
        assert r["max_abs_diff"] <= 1e-4, (positions, r["max_abs_diff"])
        assert r["t_ours_s"] > 0 and r["t_transformer_lens_s"] > 0
