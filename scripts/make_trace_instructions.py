"""Write src/circuitdistill/resources/trace_instructions.jsonl: instructions for the teacher-tracing experiment.

Instructions are built from task templates x topics and sampled without replacement with a fixed seed, so
the set is diverse (explain / compare / list / advise / describe / define / opinion / story ...) and
reproducible. Every row records its template, topic and the seed. Re-run with the same seed to get the same
file byte for byte:

    python scripts/make_trace_instructions.py --seed 20250219 --n 360
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

TOPICS = [
    "photosynthesis", "volcanoes", "the water cycle", "black holes", "vaccines", "compound interest",
    "the French Revolution", "machine learning", "recycling plastic", "sleep", "coffee", "honeybees",
    "the moon landing", "electric cars", "solar panels", "chess", "the Roman Empire", "earthquakes",
    "inflation", "the human heart", "rainbows", "glaciers", "the printing press", "bread baking",
    "learning a new language", "public libraries", "city parks", "ocean tides", "thunderstorms", "bicycles",
    "the internet", "password security", "composting", "jazz music", "the Olympic Games", "tea ceremonies",
    "deserts", "coral reefs", "the immune system", "time zones", "credit scores", "remote work",
    "meditation", "octopuses", "the Great Wall of China", "wind turbines", "fermentation", "public speaking",
    "migrating birds", "antibiotics",
]

# (kind, template). Every template asks for a short answer so generations fit in ~64 new tokens.
TEMPLATES = [
    ("explain", "Explain {t} to a ten-year-old in two sentences."),
    ("explain", "In a short paragraph, explain how {t} works."),
    ("define", "What is {t}? Answer briefly."),
    ("define", "Give a one-sentence definition of {t}."),
    ("list", "List three interesting facts about {t}."),
    ("list", "Name three common misconceptions about {t}."),
    ("advise", "Give me two practical tips related to {t}."),
    ("advise", "I want to learn more about {t}. Where should I start?"),
    ("describe", "Describe {t} in a few sentences."),
    ("why", "Why does {t} matter to ordinary people?"),
    ("history", "Briefly summarize the history of {t}."),
    ("opinion", "What is the most surprising thing about {t}?"),
    ("story", "Write a two-sentence story that involves {t}."),
    ("compare", "Compare {t} with something from everyday life."),
    ("question", "Ask and answer one good question about {t}."),
    ("pros", "What are the advantages and disadvantages of {t}?"),
    ("teach", "How would a teacher introduce {t} in class?"),
    ("future", "How might {t} change in the next twenty years?"),
]


def build(n: int, seed: int) -> list[dict]:
    pairs = [(k, tpl, t) for (k, tpl) in TEMPLATES for t in TOPICS]
    if n > len(pairs):
        raise SystemExit(f"--n {n} is larger than templates x topics = {len(pairs)}")
    rng = random.Random(seed)
    rng.shuffle(pairs)
    rows = []
    for i, (kind, tpl, topic) in enumerate(pairs[:n]):
        rows.append({"id": f"ins{i:04d}", "instruction": tpl.format(t=topic), "kind": kind, "topic": topic,
                     "template": tpl, "seed": seed})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=20250219)
    ap.add_argument("--n", type=int, default=360)
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "src/circuitdistill/resources/trace_instructions.jsonl")
    a = ap.parse_args()
    rows = build(a.n, a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} instructions ({len(TEMPLATES)} templates x {len(TOPICS)} topics, seed {a.seed}) -> {a.out}")


if __name__ == "__main__":
    main()
