"""Stage grounding: phrase grounding in the MS-CXR format (data.grounding) on the spatial
maps of every model under --models (A–E, the pretrained backbone), with random and
centre-prior floors; one metrics file and one figure per model. One process for all models
(the imports and the phrase table are paid once)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from lib.cli import run
from lib.config.loader import load_params
from lib.data.images import load_images
from lib.data.master import read_master
from lib.data.pack import Pack
from lib.data.qc import read_holdout
from lib.errors import DataError
from lib.eval.box_scores import Phrases, match_phrases, read_boxes, scale_box
from lib.eval.embed_model import load_trained
from lib.eval.phrase_grounding import Grounding, Truth, ground
from lib.eval.plots import grounding_figure
from lib.headline import pointing_headline
from lib.io import atomic_path, write_json

_UNKNOWN_LISTED = 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--models", type=Path, required=True, help="folder of models/<variant> (train@, pretrained)"
    )
    ap.add_argument("--boxes", type=Path, required=True, help="MS-CXR-format CSV")
    ap.add_argument("--master", type=Path, required=True)
    ap.add_argument("--root", type=Path, required=True, help="data.root (images)")
    ap.add_argument("--pack", type=Path, help="output of pack_images (else decode the JPEGs)")
    ap.add_argument("--metrics", type=Path, required=True, help="folder: <variant>.json")
    ap.add_argument("--plots", type=Path, required=True, help="folder: <variant>.png")
    ap.add_argument("--headline", type=Path, help="DVC metric: pointing by model (omitted: none)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = ap.parse_args()

    params = load_params(args.params)
    p, source = params.eval, params.data.holdout_patients_from
    holdout = read_holdout(Path(source)) if source else None
    phrases = match_phrases(read_boxes(args.boxes), read_master(args.master), holdout)
    unknown = {
        "unknown_dicom_ids": len(phrases.unknown_dicom),
        "unknown_dicom_examples": phrases.unknown_dicom[:_UNKNOWN_LISTED],
    }
    pack = Pack.open(args.pack) if args.pack else None
    model_dirs = sorted(d for d in args.models.iterdir() if (d / "config.json").is_file())
    if not model_dirs:
        raise DataError(
            f"{args.models}: no trained model (<variant>/config.json); run train@ first"
        )
    with atomic_path(args.metrics) as metrics_dir, atomic_path(args.plots) as plots_dir:
        metrics_dir.mkdir()
        plots_dir.mkdir()
        truth: Truth | None = None  # boxes and floors, shared by models of one input grid
        scored = {}
        for model_dir in model_dirs:
            trained = load_trained(model_dir, p.device)
            name = trained.variant.name
            if len(phrases) == 0:
                reason = f"none of the images of {args.boxes} is in the master file"
                write_json(
                    metrics_dir / f"{name}.json", {"variant": name, "skipped": reason, **unknown}
                )
                _save(grounding_figure([], [], [], []), plots_dir / f"{name}.png")
                print(f"grounding@{name}: skipped: {reason}")
                continue
            size = trained.backbone.image_size
            pixels_of = _reader(phrases, pack, args.pack, args.root, size, p.num_workers)
            result = ground(trained, phrases, pixels_of, p, truth)
            truth = result.truth
            write_json(metrics_dir / f"{name}.json", {**result.metrics, **unknown})
            scored[name] = result.metrics
            _save(_figure(name, phrases, result, pixels_of, size), plots_dir / f"{name}.png")
            test = result.metrics["official_test"]
            summary = ", ".join(
                f"{k} pointing {test[k]['pointing']['mean']} CNR {test[k]['cnr']['mean']}"
                for k in (*result.metrics["maps"], *result.metrics["floors"])
            )
            print(
                f"grounding@{name}: {len(phrases)} phrases, {test['phrases']} scorable of "
                f"official-test images: {summary}"
            )

    if args.headline is not None:
        write_json(args.headline, pointing_headline(scored))


def _reader(
    phrases: Phrases, pack: Pack | None, pack_path: Path | None, root: Path, size: int, threads: int
) -> Callable[[list[int]], torch.Tensor]:
    """The phrases' uint8 model inputs by phrase index: from the pack, or decoded."""

    def pixels_of(idx: list[int]) -> torch.Tensor:
        # Held-out patients' images are not in the master file, so not in the pack either:
        # decoded from data.root by the same function the pack used.
        if pack is None or any(phrases.split[i] == "holdout" for i in idx):
            return load_images(root, [phrases.image[i] for i in idx], size, threads)
        if pack.image_size != size:
            raise DataError(
                f"{pack_path}: images are packed at {pack.image_size} px but the model takes "
                f"{size} px; set data.image_size: {size} (the pack is rebuilt)"
            )
        rows = np.array([pack.row_of[phrases.dicom[i]] for i in idx], dtype=np.int64)
        bad = ~pack.ok[rows]
        if bad.any():
            raise DataError(
                f"{pack_path}: image {phrases.dicom[idx[int(np.flatnonzero(bad)[0])]]} could "
                "not be decoded; fix it under data.root and `dvc repro pack_images`"
            )
        return torch.from_numpy(np.ascontiguousarray(pack.images[rows]))

    return pixels_of


def _figure(
    name: str,
    phrases: Phrases,
    result: Grounding,
    pixels_of: Callable[[list[int]], torch.Tensor],
    size: int,
) -> Figure:
    rows = result.figure_rows
    images = list(pixels_of(rows).numpy()) if rows else []
    columns = [(kind, [result.maps[kind][i] for i in rows]) for kind in result.metrics["maps"]]
    captions = [f"{phrases.category[i]}\n{phrases.text[i][:40]}" for i in rows]
    boxes = [[scale_box(b, *phrases.image_wh[i], size) for b in phrases.boxes[i]] for i in rows]
    fig = grounding_figure(images, captions, columns, boxes)
    if rows:
        fig.axes[0].set_title(f"{name}: test X-ray, boxes", fontsize=8)
    return fig


def _save(fig: Figure, path: Path) -> None:
    # 60 dpi: a panel is ~130 px, above the models' 96-px input; the PNGs stay small in git.
    fig.savefig(path, format="png", dpi=60, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    run(main)
