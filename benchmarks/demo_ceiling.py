"""Benchmark: what a model can learn from the demo's packed pixels, per CheXpert label.

Two supervised references on the pack at ``data.image_size`` (train split -> test split,
labels as the master file holds them after ``data.label_policy``):

(a) the raw-pixel probe: PCA(256) of the flattened pixels, then one logistic regression per
    label (the floor any learned representation must beat);
(b) a small CNN (four conv blocks, ~100k weights) trained on the 14 labels with multi-label
    BCE for a fixed number of epochs (a few minutes on one CPU thread); the epoch with the
    best val mean AUC is scored on test.

A label whose test AUC stays near 0.5 here is invisible at that image size (or too rare to
learn from the demo's train split): no image-text model can do better on it. Each AUC comes
with the number of test positives and a 95 % bootstrap interval over test images, since
the rare labels have only a handful of positives in the demo's test split.

(c) with ``--balanced N``: the same CNN trained on N frontal images rendered afresh by the
    demo's renderer (and reduced as the pack is), in which each of the demo's rarest
    findings (Fracture, Lung Lesion, Pneumothorax) is present in half. It separates "the
    pixels do not carry the finding" from "the demo has too few positives to learn it".

    python benchmarks/demo_ceiling.py                      # ~5 min on 2 cores
    python benchmarks/demo_ceiling.py --json /tmp/ceiling.json --epochs 8
    python benchmarks/demo_ceiling.py --balanced 1000   # + are the rare findings visible?
    python benchmarks/demo_ceiling.py --vit             # + the demo backbone's ViT, both stems

(d) with ``--vit``: the demo backbone's own ViT (``backbone.*``, random weights, average
    pooling) trained on the labels exactly as the CNN, once with each
    ``backbone.patch_embed`` (``linear``, BiomedCLIP's 16-px projection, and ``conv``, the
    stem of stride-2 convolutions): what that architecture can learn at the demo's size,
    before any text.

Reads ``data/packed`` (``dvc repro pack_images``) and the master file. Deterministic: the
same pack and seed give the same numbers on one machine and torch build.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.config.loader import load_params
from lib.config.params import BackboneParams
from lib.data.images import load_image
from lib.data.master import read_master
from lib.data.mimic import LABELS
from lib.data.pack import Pack
from lib.demo.corpus import GEOMETRIES, ImageTask, _demo_size, render_task
from lib.eval.metrics import IGNORE_LABEL
from lib.model.backbone import ensure_timm_model, timm_model_name

N_BOOT = 500
# The findings the balanced check renders (``--balanced``): the rare ones of the demo.
BALANCED = ("Fracture", "Lung Lesion", "Pneumothorax")


def split_arrays(pack: Pack, split, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S) uint8 pixels and (N, 14) int8 labels of the usable rows of a split."""
    split = pack.usable(split)
    pixels = pack.pixels(split, size)
    return pixels[np.arange(len(pixels))].numpy(), split.labels


def auc_or_none(y: np.ndarray, score: np.ndarray) -> float | None:
    keep = y != IGNORE_LABEL
    y, score = y[keep], score[keep]
    if y.min(initial=1) == y.max(initial=0):
        return None
    return float(roc_auc_score(y, score))


def boot_ci(y: np.ndarray, score: np.ndarray, seed: int) -> tuple[float, float] | None:
    """95 % percentile interval of the test AUC over images resampled with replacement."""
    keep = y != IGNORE_LABEL
    y, score = y[keep], score[keep]
    if y.min(initial=1) == y.max(initial=0):
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(N_BOOT):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            vals.append(roc_auc_score(y[i], score[i]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def pca_probe(xtr, ytr, xte, seed: int) -> np.ndarray:
    """(N_test, 14) scores of PCA(256) + per-label logistic regression on raw pixels."""
    ftr = xtr.reshape(len(xtr), -1).astype(np.float32) / 255
    fte = xte.reshape(len(xte), -1).astype(np.float32) / 255
    pca = PCA(n_components=min(256, len(ftr) - 1), random_state=seed).fit(ftr)
    ztr, zte = pca.transform(ftr), pca.transform(fte)
    sd = ztr.std(axis=0) + 1e-8
    ztr, zte = ztr / sd, zte / sd
    out = np.full((len(xte), len(LABELS)), np.nan)
    for j in range(len(LABELS)):
        keep = ytr[:, j] != IGNORE_LABEL
        y = (ytr[keep, j] == 1).astype(int)
        if y.min(initial=1) == y.max(initial=0):
            continue
        clf = LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
        out[:, j] = clf.fit(ztr[keep], y).decision_function(zte)
    return out


class SmallCNN(torch.nn.Module):
    """Four conv-BN-ReLU blocks with max pooling, global average pool, one linear layer."""

    def __init__(self, n_out: int, width: int = 16) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        c_in = 1
        for k, c in enumerate((width, 2 * width, 4 * width, 4 * width)):
            layers += [
                torch.nn.Conv2d(c_in, c, 3, padding=1, bias=False),
                torch.nn.BatchNorm2d(c),
                torch.nn.ReLU(inplace=True),
            ]
            if k < 3:
                layers.append(torch.nn.MaxPool2d(2))
            c_in = c
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(c_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        # Max and mean pooling: a small focal finding (a nodule, a callus) must not be
        # averaged away over the whole image.
        return self.head(f.amax(dim=(2, 3)) + f.mean(dim=(2, 3)))


def to_input(pixels: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(pixels).float().div_(255).unsqueeze(1)
    return (x - 0.5) / 0.25


class DemoViT(torch.nn.Module):
    """The demo backbone's timm ViT with a linear head on its pooled tokens (grey -> 3 ch)."""

    def __init__(self, n_out: int, backbone: BackboneParams) -> None:
        super().__init__()
        import timm

        name = timm_model_name(backbone)
        ensure_timm_model(name)
        pool = "token" if backbone.vision_pool == "token" else "avg"
        self.vit = timm.create_model(name, num_classes=n_out, global_pool=pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit(x.expand(-1, 3, -1, -1))


def cnn_scores(xtr, ytr, xva, yva, xte, *, epochs: int, seed: int, batch: int = 32,
               make=SmallCNN):  # fmt: skip
    """Train ``make(n_labels)`` (the CNN); (N_test, labels) logits of the epoch with the best
    val mean AUC."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = make(ytr.shape[1])
    ttr, tva, tte = to_input(xtr), to_input(xva), to_input(xte)
    y = torch.from_numpy((ytr == 1).astype(np.float32))
    mask = torch.from_numpy((ytr != IGNORE_LABEL).astype(np.float32))
    # Rare labels get more weight (square root of the imbalance, capped), so that a label
    # with a few dozen positives is not simply predicted absent.
    pos = (y * mask).sum(0)
    neg = ((1 - y) * mask).sum(0)
    pos_weight = torch.sqrt(neg / pos.clamp(min=1)).clamp(1, 10)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2e-3, total_steps=epochs * (-(-len(ttr) // batch))
    )
    lossf = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
    best, best_state, history = -1.0, None, []
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(ttr), generator=g)
        total = 0.0
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            xb = ttr[idx]
            # Light augmentation: shifts of up to 4 px (no flip: laterality matters).
            dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=g))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = (lossf(model(xb), y[idx]) * mask[idx]).sum() / mask[idx].sum().clamp(min=1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        val = predict(model, tva)
        aucs = [auc_or_none(yva[:, j], val[:, j]) for j in range(yva.shape[1])]
        mean = float(np.mean([a for a in aucs if a is not None]))
        history.append({"epoch": ep + 1, "train_loss": total / len(ttr), "val_mean_auc": mean})
        print(f"  epoch {ep + 1:2d}  loss {total / len(ttr):.4f}  val mean AUC {mean:.3f}",
              file=sys.stderr)  # fmt: skip
        if mean > best:
            best = mean
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    return predict(model, tte), history


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    model.eval()
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).numpy()


def balanced_set(n: int, size: int, short_side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n frontal images rendered as the demo corpus renders them, then reduced as the pack.

    Each finding of BALANCED is present in half the images, independently, at a positive
    label's severity; every other finding at 8 %, so the rest of the chest varies as in
    the corpus. Returns (n, size, size) uint8 pixels and (n, len(BALANCED)) labels.
    """
    rng = np.random.default_rng(seed)
    others = [lb for lb in LABELS if lb not in BALANCED and lb != "No Finding"]
    x = np.empty((n, size, size), dtype=np.uint8)
    y = (rng.random((n, len(BALANCED))) < 0.5).astype(np.int8)
    for i in range(n):
        sev = {lb: float(rng.uniform(0.6, 1.0)) for lb in others if rng.random() < 0.08}
        present = [lb for lb, on in zip(BALANCED, y[i], strict=True) if on]
        sev |= {lb: float(rng.uniform(0.6, 1.0)) for lb in present}
        rows, cols = GEOMETRIES[int(rng.integers(len(GEOMETRIES)))]
        height, width = _demo_size(rows, cols, short_side)
        task = ImageTask("", "AP" if rng.random() < 0.6 else "PA", height, width,
                         tuple(sorted(sev.items())), (seed, i, 0))  # fmt: skip
        x[i] = load_image(io.BytesIO(render_task(task)), size)
    return x, y


def evaluate(y: np.ndarray, scores: np.ndarray, seed: int, names=LABELS) -> dict:
    per = {}
    for j, name in enumerate(names):
        s = scores[:, j]
        auc = None if np.isnan(s).any() else auc_or_none(y[:, j], s)
        ci = None if auc is None else boot_ci(y[:, j], s, seed + j)
        per[name] = {"auc": auc, "ci95": ci, "n_pos": int((y[:, j] == 1).sum())}
    defined = [v["auc"] for v in per.values() if v["auc"] is not None]
    return {"per_label": per, "mean_auc": float(np.mean(defined)) if defined else None}


def fmt(entry: dict) -> str:
    if entry["auc"] is None:
        return "–"
    lo, hi = entry["ci95"]
    return f"{entry['auc']:.3f} ({lo:.2f}–{hi:.2f})"


TRAINED = {"cnn": "small CNN", "vit_linear": "ViT, linear patches", "vit_conv": "ViT, conv stem"}


def table(res: dict) -> str:
    cols = [k for k in TRAINED if k in res] or ["cnn"]
    lines = [
        "| label | test pos. | train pos. | PCA(256) + LR | "
        + " | ".join(TRAINED[k] for k in cols)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(cols),
    ]
    probe = res["pca_probe"]
    for name in LABELS:
        p = probe["per_label"][name]
        cells = [fmt(res[k]["per_label"][name]) if k in res else "not run" for k in cols]
        lines.append(
            f"| {name} | {p['n_pos']} | {res['n_train_pos'][name]} | {fmt(p)} | "
            + " | ".join(cells)
            + " |"
        )
    means = [f"**{res[k]['mean_auc']:.3f}**" if k in res else "not run" for k in cols]
    lines.append(f"| **mean** | | | **{probe['mean_auc']:.3f}** | " + " | ".join(means) + " |")
    return "\n".join(lines)


def measure_pack(args: argparse.Namespace, size: int, res: dict) -> None:
    """(a) and (b) on the pack: fills res["pca_probe"] and res["cnn"]."""
    splits = read_master(args.master)
    pack = Pack.open(args.pack)
    xtr, ytr = split_arrays(pack, splits["train"], size)
    xva, yva = split_arrays(pack, splits["val"], size)
    xte, yte = split_arrays(pack, splits["test"], size)
    print(f"{len(xtr)} train / {len(xva)} val / {len(xte)} test images at {size} px",
          file=sys.stderr)  # fmt: skip

    res["n_images"] = {"train": len(xtr), "val": len(xva), "test": len(xte)}
    res["n_train_pos"] = {n: int((ytr[:, j] == 1).sum()) for j, n in enumerate(LABELS)}
    t0 = time.perf_counter()
    with threadpool_limits(args.threads):
        res["pca_probe"] = evaluate(yte, pca_probe(xtr, ytr, xte, args.seed), args.seed)
    res["pca_probe"]["seconds"] = round(time.perf_counter() - t0, 1)
    if args.epochs > 0:
        t0 = time.perf_counter()
        with threadpool_limits(args.threads):
            scores, history = cnn_scores(xtr, ytr, xva, yva, xte, epochs=args.epochs,
                                         seed=args.seed)  # fmt: skip
        res["cnn"] = evaluate(yte, scores, args.seed)
        res["cnn"]["history"] = history
        res["cnn"]["seconds"] = round(time.perf_counter() - t0, 1)
    if args.vit and args.epochs > 0:
        backbone = load_params(args.params).backbone
        for stem in ("linear", "conv"):
            arch = dataclasses.replace(backbone, patch_embed=stem)
            t0 = time.perf_counter()
            with threadpool_limits(args.threads):
                scores, history = cnn_scores(xtr, ytr, xva, yva, xte, epochs=args.epochs,
                                             seed=args.seed,
                                             make=lambda n, a=arch: DemoViT(n, a))  # fmt: skip
            key = f"vit_{stem}"
            res[key] = evaluate(yte, scores, args.seed)
            res[key]["history"] = history
            res[key]["seconds"] = round(time.perf_counter() - t0, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--master", type=Path,
                    default=Path("data/processed/mimic_master_official_split.jsonl"))  # fmt: skip
    ap.add_argument("--pack", type=Path, default=Path("data/packed"))
    ap.add_argument("--epochs", type=int, default=12, help="CNN epochs (0 skips the CNN)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch and BLAS threads")
    ap.add_argument("--balanced", type=int, default=0, metavar="N",
                    help="also train the CNN on N freshly rendered frontal images in which "
                    f"each of {', '.join(BALANCED)} is present in half: whether the pixels "
                    "carry them, apart from how few positives the demo has (0: skip)")  # fmt: skip
    ap.add_argument("--vit", action="store_true",
                    help="also train the demo backbone's ViT on the labels, with each "
                    "backbone.patch_embed (linear, conv)")  # fmt: skip
    ap.add_argument("--skip-pack", action="store_true",
                    help="measure only the balanced check (no pack needed)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    size = load_params(args.params).data.image_size
    res: dict = {"image_size": size, "seed": args.seed}
    res["machine"] = f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)"
    if not args.skip_pack:
        measure_pack(args, size, res)
    if args.balanced > 0:
        t0 = time.perf_counter()
        params = load_params(args.params)
        x, y = balanced_set(args.balanced, size, params.demo.image_size, args.seed + 1)
        n_tr, n_va = int(0.6 * len(x)), int(0.2 * len(x))
        with threadpool_limits(args.threads):
            scores, _ = cnn_scores(x[:n_tr], y[:n_tr], x[n_tr : n_tr + n_va],
                                   y[n_tr : n_tr + n_va], x[n_tr + n_va :],
                                   epochs=args.epochs, seed=args.seed)  # fmt: skip
        res["balanced"] = evaluate(y[n_tr + n_va :], scores, args.seed, BALANCED)
        res["balanced"]["n_images"] = {"train": n_tr, "val": n_va, "test": len(x) - n_tr - n_va}
        res["balanced"]["seconds"] = round(time.perf_counter() - t0, 1)
    if "pca_probe" in res:
        print(table(res))
    if "balanced" in res:
        b = res["balanced"]
        print(f"\nBalanced check ({b['n_images']['train']} train / {b['n_images']['test']} "
              "test rendered images, each finding in half), small CNN test AUC:")  # fmt: skip
        for name, entry in b["per_label"].items():
            print(f"- {name}: {fmt(entry)} ({entry['n_pos']} test positives)")
    took = [f"{k} {res[k]['seconds']} s" for k in ("pca_probe", *TRAINED, "balanced") if k in res]
    print(f"\n{', '.join(took)} ({args.epochs} CNN epochs)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
