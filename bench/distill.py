"""Distillation cost: `circuit` from the teacher cache vs `full-kd` with a live teacher vs `circuit-ce`.

Prints, in one run, on the default SmolLM2 pair (teacher smollm2-135m-et-teacher and student
smollm2-135m-et-warm when they exist in the model cache, else smollm2-135m for both):

* step time of `circuit` (teacher cache) / step time of `full-kd` (live teacher)     target <= 0.8
* step time of `circuit` / step time of `circuit-ce` (both from the cache)          target <= 1.15
* peak RSS of training from the cache vs with a live teacher                         target: cache lower

Each training run is its own subprocess (so its peak RSS is its own: ru_maxrss of that process).
Step time: wall = mean of the logged step_time_s, CPU = the smallest logged step_cpu_s (CPU seconds of
the training process; the least-interfered step), both skipping the first `--warmup` steps. On a shared
machine wall times swing by 2-3x between steps; CPU seconds at 1 thread are far steadier.
Without --pairing, the pairing is synthetic: 15% of the student's heads (seeded random choice) with
random teacher partners; timing depends on which heads only through the earliest paired layer (how deep
the backward pass goes), and a random 15% almost always reaches layer 0-2, i.e. the expensive case.

    nice -n 10 .venv/bin/python bench/distill.py --steps 6 --batch-size 16
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _default(name: str, fallback: str) -> str:
    from circuitdistill.models.registry import cached_dir

    return name if (cached_dir(name) / "config.json").exists() else fallback


def child(spec: dict) -> None:
    """Run one training in this process; print its summary numbers and peak RSS as JSON."""
    import torch

    from circuitdistill.distill.config import DistillConfig
    from circuitdistill.distill.trainer import train

    torch.set_num_threads(spec.pop("threads"))
    t0 = time.time()
    s = train(DistillConfig(**spec), progress=False)
    rows = [json.loads(l) for l in (Path(spec["out"]) / "log.jsonl").read_text().splitlines()]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"step_times": [r["step_time_s"] for r in rows],
                                  "step_cpu": [r["step_cpu_s"] for r in rows], "peak_rss_mb": peak_mb,
                                  "wall_s": time.time() - t0, "trainable": s["trainable"]["trainable_params"]}))


def run_child(spec: dict, device: str = "auto") -> dict:
    env = {**os.environ, **({"ACCELERATE_USE_CPU": "true"} if device == "cpu" else {})}
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=ROOT, capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"child run failed:\n{p.stderr[-3000:]}")
    line = next(l for l in p.stdout.splitlines() if l.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def synthetic_pairing(student: str, teacher: str, path: Path, budget: float, seed: int) -> Path:
    from transformers import AutoConfig

    from circuitdistill.models.registry import resolve

    def shape(name):
        c = AutoConfig.from_pretrained(resolve(name), local_files_only=True)
        return c.num_hidden_layers, c.num_attention_heads

    (sl, sh), (tl, th) = shape(student), shape(teacher)
    rng = random.Random(seed)
    s_heads = rng.sample([(l, h) for l in range(sl) for h in range(sh)], max(1, round(budget * sl * sh)))
    pairs = [{"student": list(s), "teacher": [rng.randrange(tl), rng.randrange(th)], "distance": None}
             for s in sorted(s_heads)]
    path.write_text(json.dumps({"pairs": pairs, "student_model": student, "teacher_model": teacher,
                                "note": f"synthetic bench pairing, seed {seed}"}))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--student", default=None)
    ap.add_argument("--data", default=str(ROOT / "runs/tasks/et7_train.jsonl"))
    ap.add_argument("--pairing", default=None, help="pairing.json (default: synthetic 15%% of student heads)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1, help="steps excluded from the mean step time")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run (1 keeps CPU-time measurements free of OpenMP spin-waiting)")
    ap.add_argument("--out", default=str(ROOT / "runs/distill/bench"))
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                    help="auto: accelerate's choice (a GPU when there is one) for training, CUDA-else-CPU for the cache")
    ap.add_argument("--dtype", default="fp32", choices=["auto", "bf16", "fp16", "fp32"])
    a = ap.parse_args()
    if a.child:
        child(json.loads(a.child))
        return

    teacher = a.teacher or _default("smollm2-135m-et-teacher", "smollm2-135m")
    student = a.student or _default("smollm2-135m-et-warm", "smollm2-135m")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(a.data).exists():
        sys.exit(f"training data {a.data} is missing; generate it (circuitdistill tasks ...) or pass --data")
    n_items = a.steps * a.batch_size
    pairing = Path(a.pairing) if a.pairing else synthetic_pairing(student, teacher, out / "pairing.json", 0.15, 0)
    n_pairs = len(json.loads(pairing.read_text())["pairs"])

    from circuitdistill.distill.config import CacheConfig
    from circuitdistill.distill.teacher_cache import build_cache
    import torch

    torch.set_num_threads(a.threads)
    t0 = time.time()
    cache = build_cache(CacheConfig(teacher=teacher, data=a.data, out=str(out / "cache"), heads="paired",
                                    pairing=str(pairing), max_items=n_items, batch_size=16, device=a.device,
                                    dtype=a.dtype), progress=False)
    cache_s = time.time() - t0

    base = dict(student=student, data=a.data, pairing=str(pairing), steps=a.steps, batch_size=a.batch_size,
                max_train_items=n_items, checkpoint_every=10_000, threads=a.threads, dtype=a.dtype)
    runs = {
        "full-kd (live teacher)": dict(base, method="full-kd", teacher=teacher, pairing=None),
        "circuit (cache)": dict(base, method="circuit", teacher_cache=str(cache)),
        "circuit-ce (cache)": dict(base, method="circuit-ce", teacher_cache=str(cache)),
    }
    res = {}
    for i, (name, spec) in enumerate(runs.items()):
        spec["out"] = str(out / f"run{i}")
        import shutil

        shutil.rmtree(spec["out"], ignore_errors=True)
        res[name] = run_child(spec, a.device)
        st = res[name]["step_times"][a.warmup:] or res[name]["step_times"]
        res[name]["step_s"] = sum(st) / len(st)
        sc = res[name]["step_cpu"][a.warmup:] or res[name]["step_cpu"]
        res[name]["step_cpu_s"] = min(sc)  # the least-interfered step: robust on a shared machine
        res[name]["step_cpu_mean_s"] = sum(sc) / len(sc)

    full, circ, ce = (res[k] for k in runs)
    r1 = circ["step_s"] / full["step_s"]
    r2 = circ["step_s"] / ce["step_s"]
    c1 = circ["step_cpu_s"] / full["step_cpu_s"]
    c2 = circ["step_cpu_s"] / ce["step_cpu_s"]
    load = os.getloadavg()
    print(f"teacher {teacher}  student {student}  pairs {n_pairs}  batch {a.batch_size}  steps {a.steps} "
          f"(mean over steps {a.warmup + 1}..{a.steps})  threads {a.threads}  cache build {cache_s:.1f}s for "
          f"{n_items} items; device {a.device}, dtype {a.dtype}")
    print(f"load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} cores "
          "(wall times on a shared machine are noisy; CPU seconds of the training process are not)")
    print(f"{'run':<26}{'wall s/step':>12}{'CPU s/step':>12}{'(min)':>8}{'peak RSS MB':>14}{'trainable':>14}")
    for k, v in res.items():
        print(f"{k:<26}{v['step_s']:>12.3f}{v['step_cpu_mean_s']:>12.3f}{v['step_cpu_s']:>8.3f}{v['peak_rss_mb']:>14.0f}"
              f"{v['trainable']:>14,}")
    print(f"{'ratio (wall: mean step; CPU: min step)':<44}{'wall':>8}{'CPU':>8}   target")
    print(f"{'circuit (cache) / full-kd (live teacher)':<44}{r1:>8.3f}{c1:>8.3f}   <= 0.8   "
          f"{'OK' if max(r1, c1) <= 0.8 else ('OK (CPU)' if c1 <= 0.8 else 'MISS')}")
    print(f"{'circuit / circuit-ce (both cache)':<44}{r2:>8.3f}{c2:>8.3f}   <= 1.15  "
          f"{'OK' if max(r2, c2) <= 1.15 else ('OK (CPU)' if c2 <= 1.15 else 'MISS')}")
    rss = circ["peak_rss_mb"] / full["peak_rss_mb"]
    print(f"peak RSS cache / live                      : {circ['peak_rss_mb']:.0f} / {full['peak_rss_mb']:.0f} MB "
          f"= {rss:.3f}  {'OK' if rss < 1 else 'MISS'}")
    (out / "bench.json").write_text(json.dumps({"teacher": teacher, "student": student, "ratios": {
        "circuit_over_fullkd": r1, "circuit_over_circuit_ce": r2, "rss_cache_over_live": rss,
        "cpu_circuit_over_fullkd": c1, "cpu_circuit_over_circuit_ce": c2}, "loadavg": load,
        "runs": res, "cache_build_s": cache_s, "args": vars(a)}, indent=2))


if __name__ == "__main__":
    main()
