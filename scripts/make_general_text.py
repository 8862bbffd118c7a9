"""Make the shipped general-text sample used to measure side effects (perplexity before/after).

    python scripts/make_general_text.py --model smollm2-135m --n 48 --seed 0
Writes src/circuitdistill/resources/general_text.jsonl: a header row with the seed, decoding settings and
this command, then one {"text": ...} row per sample. The openings are neutral, varied topics.
"""
from __future__ import annotations

import argparse
import sys

import torch
from tqdm.auto import tqdm

from circuitdistill.experiment.side_effects import general_text_path
from circuitdistill.models.registry import load_model
from circuitdistill.utils import package_versions, seed_everything, write_jsonl_atomic

OPENINGS = [
    "The history of the printing press", "Photosynthesis is the process", "In a small village by the sea",
    "The main causes of inflation", "A good night's sleep", "The Roman Empire", "Volcanoes form when",
    "Learning a second language", "The human heart", "Cooking rice properly", "Electric cars",
    "The water cycle", "Shakespeare's plays", "The invention of the telephone", "Bees are important because",
    "A healthy breakfast", "The solar system", "Football became popular", "Climate change affects",
    "The first computers", "Mountains are formed", "Reading books helps", "The Great Wall of China",
    "Vaccines work by", "Jazz music", "The ocean covers", "Public libraries", "Gardening in spring",
    "The stock market", "Birds migrate", "Ancient Egypt", "Recycling plastic", "The moon affects",
    "Chess is a game", "Coffee was first", "Trains changed travel", "Rain forests", "Music education",
    "The speed of light", "Honey never spoils", "Bicycles are", "Earthquakes happen", "The internet began",
    "Penguins live", "Bread is made", "Democracy means", "Glaciers move", "Paper was invented",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    args = ap.parse_args()
    seed_everything(args.seed)
    model, tok = load_model(args.model)
    prompts = (OPENINGS * (args.n // len(OPENINGS) + 1))[: args.n]
    texts = []
    for i in tqdm(range(0, len(prompts), 8), desc="generate"):
        enc = tok(prompts[i:i + 8], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=args.temperature, top_p=args.top_p,
                                 max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)
        for row, p in zip(out, prompts[i:i + 8]):
            texts.append(p + tok.decode(row[enc.input_ids.shape[1]:], skip_special_tokens=True))
    header = {"model": args.model, "seed": args.seed, "n": args.n, "decoding": {
        "do_sample": True, "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens},
        "command": "python " + " ".join(sys.argv), "versions": package_versions()}
    write_jsonl_atomic(general_text_path(), [{"header": header}] + [{"text": t} for t in texts])
    print(f"wrote {len(texts)} texts to {general_text_path()}")


if __name__ == "__main__":
    main()
