"""Patch-IB explainability: where each model looks on a fixed set of test images.

- Models with masking (C, D, E): the patch mask z over the ViT grid (E: also which tokens
  survived its drop layer).
- Models with local alignment (B–E): the word-to-patch attention of the report's key finding
  word (e.g. "effusion"), the same softmax over patches that the local alignment loss uses.

The images are chosen from the test split by a fixed rule (select_examples), so every model
is drawn on the same X-rays and the figure changes only when a model does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from lib.data.images import to_model_input
from lib.data.master import Split
from lib.data.mimic import LABELS
from lib.data.pack import PackedPixels
from lib.eval.embed_model import Trained
from lib.eval.embedding_files import ExplainMaps
from lib.eval.phrase_maps import word_patch_attention

# Words that name each finding in a report. Labels in the order they are picked: findings
# with a place on the image first.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "Pleural Effusion": ("effusion", "effusions"),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation",),
    "Cardiomegaly": ("cardiomegaly",),
    "Atelectasis": ("atelectasis",),
    "Lung Lesion": ("mass", "nodule", "nodules", "lesion"),
    "Edema": ("edema",),
    "Lung Opacity": ("opacity", "opacities", "opacification"),
    "Pneumonia": ("pneumonia",),
    "Support Devices": ("tube", "catheter", "pacemaker", "line"),
    "Fracture": ("fracture", "fractures"),
    "Enlarged Cardiomediastinum": ("cardiomediastinal", "mediastinum", "mediastinal"),
    "Pleural Other": ("scarring", "thickening"),
}
# A mention preceded in its sentence by one of these is negated ("No pleural effusion").
_NEGATION = re.compile(r"\b(no|not|without|negative for|free of|resolved|resolution)\b", re.I)


@dataclass(frozen=True)
class Example:
    row: int  # index in the test split
    label: str
    keyword: str
    start: int  # character span of the keyword in the report text
    end: int


def select_examples(split: Split, n: int) -> list[Example]:
    """Up to n test images, each with a positive finding affirmed in its report.

    Round-robin over the labels of KEYWORDS: for each, the first image (in master-file order)
    whose label is 1 and whose report mentions a keyword outside a negated sentence, one
    image per study. Deterministic: depends only on the master file.
    """
    out: list[Example] = []
    used_studies: set[int] = set()
    col = {name: LABELS.index(name) for name in KEYWORDS}
    cursor = dict.fromkeys(KEYWORDS, 0)
    while len(out) < n:
        added = False
        for label, words in KEYWORDS.items():
            if len(out) >= n:
                break
            i = cursor[label]
            while i < len(split):
                study = int(split.study[i])
                hit = None
                if split.labels[i, col[label]] == 1 and study not in used_studies:
                    hit = find_mention(split.texts[i], words)
                i += 1
                if hit is not None:
                    out.append(Example(i - 1, label, *hit))
                    used_studies.add(study)
                    added = True
                    break
            cursor[label] = i
        if not added:
            break
    return out


def find_mention(text: str, words: tuple[str, ...]) -> tuple[str, int, int] | None:
    """(word as written, start, end) of the first non-negated mention of any of words."""
    for sentence in re.finditer(r"[^.]+", text):
        s = sentence.group(0)
        for m in re.finditer(r"[A-Za-z]+", s):
            if m.group(0).lower() in words and not _NEGATION.search(s[: m.start()]):
                start = sentence.start() + m.start()
                return m.group(0), start, start + len(m.group(0))
    return None


@dataclass
class Maps:
    """Per-example maps over the ViT's patch grid (n, gh·gw); NaN where the model has none."""

    mask: np.ndarray  # patch mask z (C, D, E)
    kept: np.ndarray  # bool: token kept past the drop layer (E); all True otherwise
    attention: np.ndarray  # keyword-to-patch attention (models with local alignment)
    grid: tuple[int, int]


@torch.no_grad()
def explain(trained: Trained, pixels: torch.Tensor, split: Split, examples: list[Example]) -> Maps:
    """Masks and keyword attention of one model on the examples (pixels: the split's uint8)."""
    model, bb, device = trained.model, trained.backbone, trained.device
    gh, gw = model.grid
    n_patch = gh * gw
    n = len(examples)
    mask = np.full((n, n_patch), np.nan, dtype=np.float32)
    kept = np.ones((n, n_patch), dtype=bool)
    attention = np.full((n, n_patch), np.nan, dtype=np.float32)
    if n == 0:
        return Maps(mask, kept, attention, (gh, gw))
    rows = torch.tensor([e.row for e in examples])
    x = to_model_input(pixels[rows].to(device), bb.mean, bb.std)
    with trained.autocast():
        img = model.encode_image(x.to(trained.dtype))
    if img.mask is not None:
        mask[:] = img.mask.float().cpu().numpy()
    if img.kept_index is not None:
        kept[:] = False
        for i, idx in enumerate(img.kept_index.cpu().numpy()):
            kept[i, idx] = True
    if model.local_text_proj is None:
        return Maps(mask, kept, attention, (gh, gw))
    hf = bb.tokenizer.tokenizer  # the Hugging Face tokenizer inside open_clip's HFTokenizer
    for i, ex in enumerate(examples):
        text = split.texts[ex.row]
        enc = hf(
            text,
            max_length=bb.context_length,
            truncation=True,
            padding="max_length",
            return_offsets_mapping=True,
        )
        ids = torch.tensor([enc["input_ids"]], device=device)
        words = [
            t
            for t, (a, b) in enumerate(enc["offset_mapping"])
            if b > a and a < ex.end and b > ex.start
        ]
        if not words:  # the keyword lies past the context length
            continue
        with trained.autocast():
            txt = model.encode_text(ids)
        att = word_patch_attention(model, txt.word_emb[0, words], img, i, n_patch)
        attention[i] = att.cpu().numpy()
    return Maps(mask, kept, attention, (gh, gw))


def explain_maps(
    trained: Trained, pixels: torch.Tensor | PackedPixels, split: Split, n: int
) -> ExplainMaps:
    """The explainability figure's data for one model: up to ``n`` examples of ``split``
    (``select_examples``) with their maps."""
    examples = select_examples(split, n)
    maps = explain(trained, pixels, split, examples)
    return ExplainMaps(
        row=np.array([e.row for e in examples], dtype=np.int64),
        dicom=np.array([split.dicom[e.row] for e in examples]),
        image=np.array([split.images[e.row] for e in examples]),
        label=np.array([e.label for e in examples]),
        keyword=np.array([e.keyword for e in examples]),
        mask=maps.mask,
        kept=maps.kept,
        attention=maps.attention,
        grid=np.array(maps.grid),
    )
