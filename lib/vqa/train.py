"""Training and prediction of the VQA head (stages vqa@X and the floors).

Questions come from data/vqa/questions.parquet (one head each: binary, category, region or
severity, its target the tag of that head); each question's image is its study's frontal
image (``dicom_id``), its scene the study's nodes in data/vqa/scene.parquet, its CheXpert
auxiliary target the image's 14 labels in the master file. Seeded throughout (``vqa.seed``):
the question subsample, the initialisation, the batch order. The epoch with the best
validation accuracy is kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lib.config.params import VQAParams
from lib.errors import DataError
from lib.vqa.model import HEADS, VQAModel, vqa_loss

N_CHEXPERT = 14


def subsample(questions: pd.DataFrame, max_per_split: Mapping[str, int], seed: int) -> pd.DataFrame:
    """A seeded subsample of each split's questions (0 = all), in the file's order."""
    parts = []
    for split, part in questions.groupby("split", sort=False):
        n = max_per_split.get(str(split), 0)
        if n and len(part) > n:
            part = part.sample(n=n, random_state=seed).sort_index()
        parts.append(part)
    return pd.concat(parts) if parts else questions.iloc[:0]


def targets(questions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(head index into HEADS, target class) per question; a question whose own head's
    target is missing (-1) raises, naming it."""
    head = questions["head"].map({h: i for i, h in enumerate(HEADS)})
    if head.isna().any():
        bad = questions.loc[head.isna(), "head"].iloc[0]
        raise DataError(f"questions.parquet: head {bad!r} is not one of {list(HEADS)}")
    head = head.to_numpy(np.int64)
    cols = np.stack([questions[h].to_numpy(np.int64) for h in HEADS], axis=1)
    target = cols[np.arange(len(head)), head]
    if (target < 0).any():
        qid = questions["question_id"].iloc[int(np.flatnonzero(target < 0)[0])]
        raise DataError(f"questions.parquet: question {qid} has no target for its head")
    return head, target


@dataclass
class Scene:
    """Padded scene nodes per study: boxes (T, S, 6), region / entity ids (T, S) with
    0 = unknown (ids are vocabulary index + 1), mask (T, S)."""

    boxes: np.ndarray
    region: np.ndarray
    entity: np.ndarray
    mask: np.ndarray
    row_of: dict[int, int]


def scene_nodes(
    scene: pd.DataFrame, studies: np.ndarray, mode: str, reference: np.ndarray
) -> Scene:
    """The scene nodes each study's questions see.

    ``anatomy``: the same nodes for every study, one per region of the scene graphs, its box
    the mean of that region's boxes over the ``reference`` studies (train). The demo's and
    the dataset's scene graphs list the observations of the report, so a study's own nodes
    would tell where (and whether) it has findings without looking at the image; a fixed
    anatomical atlas tells nothing about the study. ``full``: one node per observation of
    the study, region and entity included: the answers are in the input, an oracle upper
    bound, not a result (``positive`` is never an input).
    """
    if mode == "anatomy":
        ref = scene[scene["study_id"].isin(reference) & (scene["region"] >= 0)]
        atlas = ref.groupby("region", as_index=False)[["x1", "y1", "x2", "y2"]].mean()
        atlas = atlas.dropna()
        atlas["entity"] = -1
        groups = {int(s): atlas for s in studies}
    else:
        own = scene[scene["study_id"].isin(studies)]
        groups = {int(s): g for s, g in own.groupby("study_id")}
    width = max([len(g) for g in groups.values()] + [1])
    t = len(studies)
    out = Scene(
        np.zeros((t, width, 6), np.float32),
        np.zeros((t, width), np.int64),
        np.zeros((t, width), np.int64),
        np.zeros((t, width), bool),
        {int(s): i for i, s in enumerate(studies)},
    )
    out.mask[:, 0] = True  # a study without nodes keeps one empty node (attention needs one)
    for s, g in groups.items():
        i, n = out.row_of[s], len(g)
        xy = g[["x1", "y1", "x2", "y2"]].to_numpy(np.float32)
        out.boxes[i, :n] = np.concatenate([xy, xy[:, 2:] - xy[:, :2]], axis=1)
        out.region[i, :n] = g["region"].to_numpy(np.int64) + 1
        out.entity[i, :n] = g["entity"].to_numpy(np.int64) + 1
        out.mask[i, :n] = True
    return out


@dataclass
class Inputs:
    """Per-question row indices into the feature arrays, and the targets."""

    text_row: np.ndarray
    image_row: np.ndarray
    scene_row: np.ndarray
    head: np.ndarray
    target: np.ndarray
    chexpert: np.ndarray  # (Q, 14) int8 1/0/-1


def make_inputs(
    questions: pd.DataFrame,
    text_index: Mapping[str, int],
    image_index: Mapping[str, int],
    scene: Scene,
    labels: Mapping[str, np.ndarray],
) -> Inputs:
    head, target = targets(questions)
    dicom = questions["dicom_id"].astype(str).tolist()
    missing = [d for d in dicom if d not in labels]
    if missing:
        raise DataError(f"questions.parquet: image {missing[0]} is not in the master file")
    return Inputs(
        np.array([text_index[q] for q in questions["question"]], np.int64),
        np.array([image_index.get(d, -1) for d in dicom], np.int64),
        np.array([scene.row_of[int(s)] for s in questions["study_id"]], np.int64),
        head,
        target,
        np.stack([labels[d] for d in dicom]).astype(np.int8),
    )


@dataclass
class Features:
    """Everything a batch is cut from, as tensors."""

    tokens: torch.Tensor  # (Qt, L, Dt)
    token_mask: torch.Tensor  # (Qt, L)
    patches: torch.Tensor | None  # (I, N, Dv); None for the question-only model
    scene: Scene
    patch_boxes: torch.Tensor | None = None  # (N, 6): each patch's cell (grid_boxes)
    # fine-tuning: image rows -> (B, N, Dv) with gradients through the tower
    patch_fn: Callable[[np.ndarray], torch.Tensor] | None = None
    tower: torch.nn.Module | None = None


def batch_forward(model: VQAModel, feats: Features, inp: Inputs, rows: np.ndarray):
    q = feats.tokens[inp.text_row[rows]]
    m = feats.token_mask[inp.text_row[rows]]
    if not model.image:
        return model(q, m)
    img = inp.image_row[rows]
    patches = feats.patch_fn(img) if feats.patch_fn is not None else feats.patches[img]
    s = inp.scene_row[rows]
    sc = feats.scene
    return model(
        q,
        m,
        patches,
        torch.from_numpy(sc.boxes[s]),
        torch.from_numpy(sc.region[s]),
        torch.from_numpy(sc.entity[s]),
        torch.from_numpy(sc.mask[s]),
        patch_boxes=feats.patch_boxes,
    )


@dataclass
class Predictions:
    pred: np.ndarray  # (Q,) class of the question's own head
    score: np.ndarray  # (Q,) probability of that class; for binary heads P(yes)
    attention: np.ndarray | None  # (Q, N)


@torch.no_grad()
def predict(model: VQAModel, feats: Features, inp: Inputs, batch_size: int) -> Predictions:
    model.eval()
    preds, scores, atts = [], [], []
    for start in range(0, len(inp.head), batch_size):
        rows = np.arange(start, min(start + batch_size, len(inp.head)))
        out = batch_forward(model, feats, inp, rows)
        for j, r in enumerate(rows):
            p = out.logits[HEADS[inp.head[r]]][j].softmax(-1)
            preds.append(int(p.argmax()))
            scores.append(float(p[1]) if HEADS[inp.head[r]] == "binary" else float(p.max()))
        if out.patch_attention is not None:
            atts.append(out.patch_attention.numpy())
    att = np.concatenate(atts) if atts else None
    return Predictions(np.array(preds, np.int64), np.array(scores), att)


@dataclass
class TrainResult:
    model: VQAModel
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def train_vqa(
    model: VQAModel, feats: Features, train: Inputs, val: Inputs, params: VQAParams, aux: bool
) -> TrainResult:
    """AdamW over ``params.epochs``; after each epoch the validation accuracy; the best
    epoch's weights are returned (ties: the earlier)."""
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    trainable = list(model.parameters())
    if feats.tower is not None:
        trainable += [p for p in feats.tower.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    aux_weight = params.aux_weight if aux else 0.0
    chex = torch.from_numpy(train.chexpert.astype(np.int64))
    best, best_acc, best_state, history = 0, -1.0, None, []
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = rng.permutation(len(train.head))
        total = 0.0
        for start in range(0, len(order), params.batch_size):
            rows = order[start : start + params.batch_size]
            out = batch_forward(model, feats, train, rows)
            loss = vqa_loss(
                out,
                torch.from_numpy(train.head[rows]),
                torch.from_numpy(train.target[rows]),
                chex[rows],
                aux_weight,
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(rows)
        hit = predict(model, feats, val, params.batch_size).pred == val.target
        acc = float(hit.mean())
        by_head = {
            f"val_accuracy_{h}": float(hit[val.head == i].mean())
            for i, h in enumerate(HEADS)
            if (val.head == i).any()
        }
        history.append(
            {"epoch": epoch, "train_loss": total / len(order), "val_accuracy": acc, **by_head}
        )
        if acc > best_acc:
            best, best_acc, best_state = epoch, acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return TrainResult(model, best, history)


def frequent_answers(questions: pd.DataFrame) -> dict[str, int]:
    """The most frequent target of each question type on ``questions`` (train); ties: the
    smallest class."""
    _, target = targets(questions)
    frame = pd.DataFrame({"t": questions["question_type"].to_numpy(), "y": target})
    counts = frame.groupby(["t", "y"]).size().reset_index(name="n")
    counts = counts.sort_values(["t", "n", "y"], ascending=[True, False, True])
    return {str(t): int(y) for t, y in counts.drop_duplicates("t")[["t", "y"]].to_numpy()}


def predict_frequent(answers: Mapping[str, int], questions: pd.DataFrame) -> Predictions:
    """The floor: each question gets its type's most frequent train answer (a type unseen
    in train gets class 0)."""
    pred = np.array([answers.get(str(t), 0) for t in questions["question_type"]], np.int64)
    return Predictions(pred, pred.astype(np.float64), None)
