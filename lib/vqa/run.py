"""One VQA run (stages vqa@X, vqa_pretrained, vqa_question_only, vqa_frequent): the data
read and subsampled, the features computed, the head trained and the test split scored.

Modes: ``model`` (X's image and text towers), ``question_only`` (X's text tower, no image,
no scene: the language prior) and ``frequent`` (each question type's most frequent train
answer). Questions whose image is missing from the pack, or was not decodable, are dropped
and counted by reason.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from lib.config.params import VQAParams
from lib.data.master import read_master
from lib.data.pack import Pack
from lib.errors import DataError
from lib.eval.embed_model import load_trained
from lib.vqa import features as F
from lib.vqa.model import HEADS, VQAModel, grid_boxes
from lib.vqa.readiness import require_ready
from lib.vqa.score import per_question, summarise
from lib.vqa.train import (
    Features,
    frequent_answers,
    make_inputs,
    predict,
    predict_frequent,
    scene_nodes,
    subsample,
    train_vqa,
)

QUESTION_FILE, SCENE_FILE, VOCAB_FILE = "questions.parquet", "scene.parquet", "vocab.json"
MODES = ("model", "question_only", "frequent")


def read_vqa(data_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    for name in (QUESTION_FILE, SCENE_FILE, VOCAB_FILE):
        if not (data_dir / name).is_file():
            raise DataError(f"{data_dir / name}: not found; run `dvc repro vqa_readiness` first")
    vocab = json.loads((data_dir / VOCAB_FILE).read_text(encoding="utf-8"))
    return pd.read_parquet(data_dir / QUESTION_FILE), pd.read_parquet(data_dir / SCENE_FILE), vocab


def run_vqa(
    mode: str,
    data_dir: Path,
    readiness: Path,
    master: Path,
    pack_dir: Path | None,
    model_dir: Path | None,
    params: VQAParams,
    eval_bootstrap: tuple[int, int, float],
    device: str = "cpu",
) -> tuple[dict[str, Any], pd.DataFrame, list[dict[str, Any]]]:
    """(metrics, per-question test table, attention examples) of one run."""
    if mode not in MODES:
        raise DataError(f"VQA mode {mode!r} is not one of {list(MODES)}")
    require_ready(readiness)
    bertscore_dir = Path(params.bertscore_model) if params.bertscore_model else None
    t0 = time.perf_counter()
    torch.manual_seed(params.seed)
    questions, scene, vocab = read_vqa(data_dir)
    n_in = len(questions)
    limits = {
        "train": params.max_train_questions,
        "val": params.max_eval_questions,
        "test": params.max_eval_questions,
    }
    questions = subsample(questions, limits, params.seed).reset_index(drop=True)
    dropped: dict[str, int] = {"not_sampled": n_in - len(questions)}
    split = {s: questions[questions["split"] == s] for s in ("train", "val", "test")}
    timings: dict[str, float] = {}
    grid, attention, history, best = None, None, [], None
    if mode == "frequent":
        preds = predict_frequent(frequent_answers(split["train"]), split["test"])
    else:
        trained = load_trained(model_dir, device)
        if mode == "model":
            pack = Pack.open(pack_dir)
            ok = questions["dicom_id"].map(
                lambda d: d in pack.row_of and bool(pack.ok[pack.row_of[d]])
            )
            dropped["image_not_in_pack"] = int((~ok).sum())
            questions = questions[ok.to_numpy()].reset_index(drop=True)
            split = {s: questions[questions["split"] == s] for s in split}
        labels = {
            d: lab
            for s in read_master(master).values()
            for d, lab in zip(s.dicom, s.labels, strict=True)
        }
        text = F.text_features(trained, questions["question"].tolist(), 256)
        studies = questions["study_id"].unique()
        train_studies = split["train"]["study_id"].unique()
        nodes = scene_nodes(scene, studies, params.scene_nodes, train_studies)
        image_index: dict[str, int] = {}
        patches = None
        timings["text_features_s"] = time.perf_counter() - t0
        if mode == "model":
            dicoms = sorted(questions["dicom_id"].astype(str).unique())
            image_index = {d: i for i, d in enumerate(dicoms)}
            pixels = torch.from_numpy(np.asarray(pack.images[[pack.row_of[d] for d in dicoms]]))
            if params.fine_tune:
                fn = F.patch_fn(trained.variant.model.architecture)
                trained.model.train()
                tower = trained.model
                patch_of = lambda rows: fn(tower, F.images_input(trained, pixels[rows])).float()  # noqa: E731
            else:
                patches = torch.from_numpy(F.image_features(trained, pixels, 64))
            grid = F.patch_grid(trained)
            timings["image_features_s"] = time.perf_counter() - t0 - timings["text_features_s"]
        feats = Features(torch.from_numpy(text.tokens), torch.from_numpy(text.mask), patches, nodes)
        if grid is not None:
            feats.patch_boxes = grid_boxes(*grid)
            n_patches = patches.shape[1] if patches is not None else None
            if n_patches is not None and n_patches != len(feats.patch_boxes):
                raise DataError(
                    f"{model_dir}: {n_patches} patch features against a {grid[0]} x {grid[1]} "
                    f"grid; the VQA head needs every patch (lib/vqa/features.patch_fn)"
                )
        if mode == "model" and params.fine_tune:
            feats.patch_fn, feats.tower = patch_of, tower
        inputs = {
            s: make_inputs(q, text.index, image_index, nodes, labels) for s, q in split.items()
        }
        image_dim = patches.shape[-1] if patches is not None else _patch_dim(feats, inputs["train"])
        n_classes = {
            "binary": 2,
            "category": len(vocab["categories"]),
            "region": len(vocab["regions"]),
            "severity": len(vocab["severities"]),
        }
        model = VQAModel(
            text.tokens.shape[-1],
            image_dim,
            n_classes,
            len(vocab["regions"]),
            len(vocab["categories"]),
            params.hidden,
            params.heads,
            params.layers,
            params.dropout,
            image=mode == "model",
        )
        t1 = time.perf_counter()
        result = train_vqa(model, feats, inputs["train"], inputs["val"], params, mode == "model")
        timings["train_s"] = time.perf_counter() - t1
        history, best = result.history, result.best_epoch
        preds = predict(result.model, feats, inputs["test"], params.batch_size)
        attention = preds.attention
    table = per_question(
        split["test"].reset_index(drop=True),
        preds.pred,
        preds.score,
        attention,
        grid,
        scene,
        vocab,
        bertscore_dir,
    )
    rounds, seed, level = eval_bootstrap
    metrics = summarise(table, rounds, seed, level)
    metrics.update(
        mode=mode,
        best_epoch=best,
        history=history,
        dropped=dropped,
        questions_per_split={s: len(q) for s, q in split.items()},
        bertscore_model=params.bertscore_model,
    )
    timings["total_s"] = time.perf_counter() - t0
    metrics["timings"] = {k: round(v, 2) for k, v in timings.items()}
    metrics["grid"] = list(grid) if grid is not None else None
    examples = attention_examples(table, split["test"], attention, params.attention_examples)
    return metrics, table, examples


def attention_examples(
    table: pd.DataFrame, questions: pd.DataFrame, attention: np.ndarray | None, k: int
) -> list[dict[str, Any]]:
    """Up to ``k`` test questions with reference boxes, for the attention figure: the first
    of each head in turn (by question id), with their attention (N,), boxes and answers."""
    if attention is None or k == 0:
        return []
    q = questions.reset_index(drop=True)
    has_box = q["boxes"].map(lambda b: b is not None and len(b) > 0).to_numpy()
    order = sorted(np.flatnonzero(has_box), key=lambda i: str(q.at[i, "question_id"]))
    by_head: dict[str, list[int]] = {}
    for i in order:
        by_head.setdefault(str(q.at[i, "head"]), []).append(i)
    picked: list[int] = []
    while len(picked) < k and any(by_head.values()):
        for h in sorted(by_head):
            if by_head[h] and len(picked) < k:
                picked.append(by_head[h].pop(0))
    return [
        {
            "dicom_id": str(q.at[i, "dicom_id"]),
            "question": str(q.at[i, "question"]),
            "reference": str(q.at[i, "answer_text"]),
            "answer": str(table.at[i, "answer"]),
            "correct": bool(table.at[i, "correct"]),
            "boxes": [list(map(float, b)) for b in q.at[i, "boxes"]],
            "width": int(q.at[i, "image_width"]),
            "height": int(q.at[i, "image_height"]),
            "attention": attention[i],
        }
        for i in picked
    ]


def _patch_dim(feats: Features, inp) -> int:
    if feats.patch_fn is None:
        return 1  # question-only: no image projection is used
    with torch.no_grad():
        return int(feats.patch_fn(inp.image_row[:1]).shape[-1])


def headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The one headline number of a run: overall test answer accuracy."""
    return {"vqa_accuracy": metrics["intervals"]["correct"]["point"]}


__all__ = ["HEADS", "attention_examples", "headline", "read_vqa", "run_vqa"]
