"""Benchmark: the spread of the demo's headline numbers over seeds of the whole chain.

The demo's numbers come from a chain: random init -> CLIP pretraining (stage demo_backbone)
-> fine-tuning of A-E and ConVIRT -> evaluation. Another CPU type rounds float sums
differently, and training amplifies that into a different trajectory, as a different seed
would. So the spread that bounds "same numbers on another machine" is the spread over seeds
of the whole chain, pretraining included, not over fine-tuning seeds alone.

Each replicate is a git copy of this checkout that shares its DVC cache (the data stages
come from the run cache), with the chain's seeds set to ``s``:

- ``backbone.seed`` (the demo backbone's random init, before pretraining),
- ``convirt_backbone.seed`` (ConVIRT's ResNet init),
- ``train.seed`` (fine-tuning: init of the new heads, batch order, augmentation),

and the corpora unchanged (``demo.seed``, ``pretrain.seed`` draw the images and texts).
With ``--include-checkout``, this checkout's own chain (seed 0: run ``dvc repro`` first) is
one more replicate. ``--compare-rev`` records how far this checkout's numbers lie from those
committed at another revision (made on another machine: the cross-machine difference).

    python benchmarks/chain_spread.py --seeds 1 2 3 --compare-rev 4ba7e5f
    python benchmarks/chain_spread.py --from-log run.log   # re-summarise a run's printed seeds

``benchmarks/chain_spread.json`` then holds every value, the per-model sd, the sd pooled
over models, and the tolerance that tests/test_pipeline.py allows between a fresh
``dvc repro`` and the committed metrics: 3 x sqrt(2) x the pooled sd (the difference of two
independent chains has sd sqrt(2) x sd; 3 of those are exceeded by chance about 3 times in
1,000 under a normal model).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SEED_KEYS = (("backbone", "seed"), ("convirt_backbone", "seed"), ("train", "seed"))
# The figures the end-to-end test compares with the committed metrics, and recall.
KEYS = ("zero_shot_mean_auc", "probe_100pct_mean_auc", "i2t_R@10", "t2i_R@10")
TOLERANCE_KEYS = ("zero_shot_mean_auc", "probe_100pct_mean_auc")
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": ""}


def sh(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}")


def models(repo: Path) -> list[str]:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    return [*params["models"], "pretrained"]


def read_metrics(repo: Path, names: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for name in names:
        m = json.loads((repo / f"metrics/eval/{name}.json").read_text())
        out[name] = {k: float(m[k]) for k in KEYS if k in m}
    return out


def copy_checkout(dest: Path) -> None:
    """Tracked and untracked-not-ignored files of ROOT, as a new git repo at ``dest``."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    sh(["git", "init", "-q"], dest)
    sh([*git, "add", "-A"], dest)
    sh([*git, "commit", "-qm", "copy"], dest)


def run_chain(seed: int, names: list[str], work: Path) -> tuple[dict, float]:
    repo = work / f"seed{seed}"
    copy_checkout(repo)
    sh(["dvc", "cache", "dir", "--local", str(ROOT / ".dvc" / "cache")], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, key in SEED_KEYS:
        params[section][key] = seed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    start = time.perf_counter()
    sh(["dvc", "repro", "eval", "eval_pretrained"], repo)
    seconds = time.perf_counter() - start
    values = read_metrics(repo, names)
    shutil.rmtree(repo)
    return values, seconds


def summarise(runs: dict[int, dict[str, dict[str, float]]], names: list[str]) -> dict:
    per_model: dict[str, dict[str, dict[str, float]]] = {}
    pooled: dict[str, float] = {}
    for key in KEYS:
        variances = []
        for name in names:
            xs = [runs[s][name][key] for s in runs if key in runs[s][name]]
            if len(xs) < 2:
                continue
            mean = sum(xs) / len(xs)
            var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
            per_model.setdefault(name, {})[key] = {
                "mean": round(mean, 6),
                "sd": round(math.sqrt(var), 6),
                "min": min(xs),
                "max": max(xs),
            }
            variances.append(var)
        pooled[key] = round(math.sqrt(sum(variances) / len(variances)), 6)
    tolerance = {k: round(3 * math.sqrt(2) * pooled[k], 4) for k in TOLERANCE_KEYS}
    return {"per_model": per_model, "pooled_sd": pooled, "tolerance": tolerance}


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line
        )
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    import torch

    return f"{name}, {os.cpu_count()} vCPU, torch {torch.__version__}"


SEED_LINE = re.compile(r"^seed (\d+): (\d+) s (\{.*\})$")


def parse_log(path: Path) -> tuple[dict[int, dict], dict[int, float]]:
    """The seeds a run printed (``seed <s>: <seconds> s <metrics json>``)."""
    runs, seconds = {}, {}
    for line in path.read_text().splitlines():
        if m := SEED_LINE.match(line.strip()):
            runs[int(m[1])], seconds[int(m[1])] = json.loads(m[3]), float(m[2])
    if not runs:
        raise SystemExit(f"{path}: no 'seed <s>: <seconds> s <json>' line")
    return runs, seconds


def cross_machine(rev: str, names: list[str]) -> dict:
    """|this checkout - rev| for each model's zero-shot mean AUC and R@10 (the keys whose
    definition the revisions share), from the committed metrics files."""
    out = {}
    for name in names:
        here = json.loads((ROOT / f"metrics/eval/{name}.json").read_text())
        show = ["git", "show", f"{rev}:metrics/eval/{name}.json"]
        there = json.loads(subprocess.run(show, cwd=ROOT, capture_output=True, check=True).stdout)
        out[name] = {
            k: round(abs(here[k] - there[k]), 6)
            for k in ("zero_shot_mean_auc", "i2t_R@10", "t2i_R@10")
            if k in here and k in there
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--jobs", type=int, default=1, help="chains run at once")
    ap.add_argument("--include-checkout", action="store_true", help="this checkout as seed 0")
    ap.add_argument("--compare-rev", help="a revision whose metrics another machine made")
    ap.add_argument("--compare-machine", default="", help="that machine, in words")
    ap.add_argument("--from-log", type=Path, help="summarise the seeds a run printed")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/chain_spread.json")
    args = ap.parse_args()
    names = models(ROOT)
    if args.from_log:
        runs, seconds = parse_log(args.from_log)
    else:
        runs, seconds = {}, {}
        with (
            tempfile.TemporaryDirectory(prefix="chain_spread_") as tmp,
            ThreadPoolExecutor(max_workers=args.jobs) as pool,
        ):
            futures = {s: pool.submit(run_chain, s, names, Path(tmp)) for s in args.seeds}
            for seed, future in futures.items():
                runs[seed], seconds[seed] = future.result()
                print(f"seed {seed}: {seconds[seed]:.0f} s", json.dumps(runs[seed]), flush=True)
    if args.include_checkout:
        status = ["dvc", "status", "-q", "eval", "eval_pretrained"]
        if subprocess.run(status, cwd=ROOT, env=ENV).returncode != 0:
            raise SystemExit("this checkout's eval stages are not up to date: `dvc repro` first")
        runs[0] = read_metrics(ROOT, names)
    result = {
        "what": "headline metrics of the demo over seeds of the whole chain "
        "(backbone.seed, convirt_backbone.seed, train.seed = s; corpora fixed)",
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "seeds": sorted(runs),
        "jobs": args.jobs,
        "runs": {str(s): runs[s] for s in sorted(runs)},
        "chain_seconds": {str(s): round(t) for s, t in seconds.items()},
        **summarise(runs, names),
    }
    if args.compare_rev:
        result["cross_machine"] = {
            "rev": args.compare_rev,
            "machine": args.compare_machine,
            "abs_difference": cross_machine(args.compare_rev, names),
        }
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(result, indent=2) + "\n")
    tmp_out.replace(args.out)
    print(json.dumps(result["pooled_sd"]), json.dumps(result["tolerance"]))


if __name__ == "__main__":
    sys.exit(main())
