"""Stage grounding: phrase grounding in the MS-CXR format (data.grounding) on the spatial
maps of every model under --models (A–E, the pretrained backbone), with random and
centre-prior floors, official-test and official-val images apart (lib/eval/phrase_grounding.py); one
metrics file and one figure per model, all models in one process."""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from lib.cli import run
from lib.config.loader import load_params
from lib.data.master import read_master
from lib.data.pack import Pack
from lib.data.qc import read_holdout
from lib.errors import DataError
from lib.eval import phrase_grounding as pg
from lib.eval.box_scores import match_phrases, read_boxes
from lib.eval.embed_model import load_trained
from lib.eval.plots import grounding_figure
from lib.headline import pointing_headline
from lib.io import atomic_path, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", type=Path, required=True, help="models/<variant> folders")
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
    unknown = pg.unknown_images(phrases)
    pack = Pack.open(args.pack) if args.pack else None
    model_dirs = sorted(d for d in args.models.iterdir() if (d / "config.json").is_file())
    if not model_dirs:
        raise DataError(f"{args.models}: no trained model (<variant>/config.json); run train@")
    with atomic_path(args.metrics) as metrics_dir, atomic_path(args.plots) as plots_dir:
        metrics_dir.mkdir()
        plots_dir.mkdir()
        truth: pg.Truth | None = None  # boxes and floors, shared by models of one input grid
        scored = {}
        for model_dir in model_dirs:
            trained = load_trained(model_dir, p.device)
            name, size = trained.variant.name, trained.backbone.image_size
            if len(phrases) == 0:
                why = f"none of the images of {args.boxes} is in the master file"
                write_json(
                    metrics_dir / f"{name}.json", {"variant": name, "skipped": why, **unknown}
                )
                _save(grounding_figure([], [], [], []), plots_dir / f"{name}.png")
                print(f"grounding@{name}: skipped: {why}")
                continue
            pixels_of = pg.phrase_pixels(phrases, pack, args.root, size, p.num_workers)
            result = pg.ground(trained, phrases, pixels_of, p, truth)
            truth = result.truth
            write_json(metrics_dir / f"{name}.json", {**result.metrics, **unknown})
            scored[name] = result.metrics
            _save(pg.figure(name, phrases, result, pixels_of, size), plots_dir / f"{name}.png")
            print(pg.summary_line(result.metrics))

    if args.headline is not None:
        write_json(args.headline, pointing_headline(scored))


def _save(fig: Figure, path: Path) -> None:
    # 60 dpi: a panel is ~130 px, above the models' 96-px input; the PNGs stay small in git.
    fig.savefig(path, format="png", dpi=60, metadata={"Software": None})
    plt.close(fig)


if __name__ == "__main__":
    run(main)
