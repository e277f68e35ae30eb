"""Embeddings of a trained model (stage embed@X): every image of every split, the test
reports, the Patch-IB token statistics, and the inference efficiency.

Evaluation (lib/eval/evaluate.py) works on the saved arrays alone (lib/eval/embedding_files.py),
the prompts' embeddings included, so changing a bootstrap or probe setting re-runs seconds of
NumPy and loads no model; changing a prompt re-embeds (embed@X reads the prompt params).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model

from lib.config.params import EvalParams
from lib.config.variants import Variant
from lib.data.images import load_images, to_model_input
from lib.data.master import Split
from lib.data.pack import Pack, PackedPixels
from lib.data.splits import SPLITS
from lib.device import autocast_and_scaler, inference_dtype, peak_memory, resolve_device
from lib.errors import DataError
from lib.eval.embedding_files import Embeddings, study_reports
from lib.eval.metrics import label_prompts
from lib.model.backbone import Backbone, load_backbone
from lib.model.build import Model, build_model
from lib.model.patch_ib import trim_padding


@dataclass
class Trained:
    """A trained variant, ready for inference (eval mode, on its device)."""

    model: Model
    backbone: Backbone
    variant: Variant
    device: torch.device
    dtype: torch.dtype = torch.float32  # of the weights (lib.device.inference_dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for float32 weights on a GPU with AMP (fp16-only GPUs); none for bf16
        weights or on the CPU."""
        if self.dtype != torch.float32:
            return contextlib.nullcontext()
        return autocast_and_scaler(self.device, self.variant.train.use_amp)[0]()


def load_trained(
    model_dir: Path, device_name: str = "auto", dtype: torch.dtype | None = None
) -> Trained:
    """The best checkpoint written by train@X (model.safetensors + config.json), on the
    inference dtype of its device (lib.device.inference_dtype) unless ``dtype`` is given."""
    config, weights = model_dir / "config.json", model_dir / "model.safetensors"
    for path in (config, weights):
        if not path.is_file():
            raise DataError(f"{path}: not found; run `dvc repro train@{model_dir.name}` first")
    variant = Variant.from_dict(json.loads(config.read_text(encoding="utf-8")), str(config))
    device = resolve_device(device_name, "eval.device")
    backbone = load_backbone(variant.model.backbone, device=device)
    model = build_model(backbone, variant.model)
    missing, unexpected = load_model(model, str(weights), strict=False)
    if missing or unexpected:
        raise DataError(
            f"{weights}: does not fit model {variant.name} built from {config} (missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}); retrain with "
            f"`dvc repro -f train@{variant.name}`"
        )
    dtype = dtype or inference_dtype(device, variant.train.use_amp)
    return Trained(model.to(device=device, dtype=dtype).eval(), backbone, variant, device, dtype)


@dataclass
class ImageEmbeddings:
    emb: np.ndarray  # (N, d) float32, L2-normalised global embeddings
    tokens_kept: np.ndarray  # (N,) patch tokens the image path kept (all N without masking)
    mask_mass: np.ndarray  # (N,) sum of the mask z over the patches (NaN without masking)
    seconds: float  # model time after the first (warm-up) batch
    images_timed: int


@torch.no_grad()
def embed_images(trained: Trained, pixels: torch.Tensor, batch_size: int) -> ImageEmbeddings:
    """Global embeddings of uint8 (N, S, S) images, batch by batch.

    Tokens kept per image: E (drop) keeps exactly K tokens past its drop layer; C and D
    weight patches by a soft mask z, and count as kept the patches with z >= 0.5; A and B
    use every patch.
    """
    model, bb, device = trained.model, trained.backbone, trained.device
    n = len(pixels)
    embs, kept, mass = [], [], []
    seconds, timed = 0.0, 0
    for b, start in enumerate(range(0, n, batch_size)):
        batch = pixels[start : start + batch_size]
        _sync(device)
        t0 = time.perf_counter()
        x = to_model_input(batch.to(device, non_blocking=True), bb.mean, bb.std)
        with trained.autocast():
            out = model.encode_image(x.to(trained.dtype))
        emb = out.global_emb.float()
        _sync(device)
        if b > 0:  # the first batch pays for allocation and kernel selection
            seconds += time.perf_counter() - t0
            timed += len(batch)
        embs.append(emb.cpu())
        if out.kept_index is not None:
            kept.append(torch.full((len(batch),), out.kept_index.shape[1], dtype=torch.float32))
        elif out.mask is not None:
            kept.append((out.mask >= 0.5).sum(dim=1).float().cpu())
        else:
            kept.append(torch.full((len(batch),), float(_n_patches(model)), dtype=torch.float32))
        if out.mask is not None:
            mass.append(out.mask.float().sum(dim=1).cpu())
        else:
            mass.append(torch.full((len(batch),), float("nan")))
    if not embs:
        raise DataError("no images to embed: the split is empty")
    return ImageEmbeddings(
        emb=torch.cat(embs).numpy(),
        tokens_kept=torch.cat(kept).numpy(),
        mask_mass=torch.cat(mass).numpy(),
        seconds=seconds,
        images_timed=timed,
    )


@torch.no_grad()
def embed_texts(trained: Trained, texts: list[str], batch_size: int) -> np.ndarray:
    """(T, d) float32 L2-normalised text embeddings, in the order of ``texts``."""
    model, bb, device = trained.model, trained.backbone, trained.device
    out = []
    for start in range(0, len(texts), batch_size):
        tok = trim_padding(bb.tokenizer(texts[start : start + batch_size]), bb.pad_id)
        with trained.autocast():
            out.append(model.encode_text(tok.to(device)).global_emb.float().cpu())
    if not out:
        raise DataError("no texts to embed")
    return torch.cat(out).numpy()


def prompt_embeddings(trained: Trained, params: EvalParams) -> tuple[np.ndarray, np.ndarray | None]:
    """(positive, negative or None) prompt embeddings of the 14 labels from ``eval.*``'s
    templates (lib.eval.metrics.label_prompts)."""
    positive, negative = label_prompts(
        params.prompt_template, params.negative_prompt_template, params.no_finding_prompts
    )
    pos = embed_texts(trained, positive, params.batch_size)
    neg = None if negative is None else embed_texts(trained, negative, params.batch_size)
    return pos, neg


def split_pixels(
    splits: Mapping[str, Split], pack: Pack | None, root: Path, size: int, threads: int
) -> tuple[dict[str, Split], Callable[[Split], torch.Tensor | PackedPixels]]:
    """The splits to embed and a reader of a split's uint8 images at ``size``: from the
    pack (its undecodable images left out of the splits, and listed there) or, without
    one, by decoding the JPEGs under ``root`` with ``threads`` threads."""
    if pack is not None:
        usable = {name: pack.usable(split) for name, split in splits.items()}
        return usable, lambda split: pack.pixels(split, size)
    return dict(splits), lambda split: load_images(root, split.images, size, threads)


def efficiency(trained: Trained, images: int, seconds: float) -> dict[str, float | str]:
    """Inference throughput (model only, decoded images in memory) and peak memory."""
    return {
        "inference_images_per_second": round(images / max(seconds, 1e-9), 1),
        "inference_images_timed": images,
        **peak_memory(trained.device),
        "device": str(trained.device),
        "torch_threads": torch.get_num_threads(),
    }


@dataclass
class EmbedRun:
    embeddings: Embeddings
    test_pixels: torch.Tensor | PackedPixels  # for the explain maps
    efficiency: dict[str, float | str]


def embed_splits(
    trained: Trained,
    splits: Mapping[str, Split],
    pixels_of: Callable[[Split], torch.Tensor | PackedPixels],
    params: EvalParams,
) -> EmbedRun:
    """Every split's images (``pixels_of`` reads a split's uint8 images), the test reports
    (one per study) and the zero-shot prompts of ``params``, ``params.batch_size`` at a
    time."""
    batch_size = params.batch_size
    images, dicom = {}, {}
    seconds, timed = 0.0, 0
    for name in SPLITS:
        pixels = pixels_of(splits[name])
        emb = embed_images(trained, pixels, batch_size)
        images[name], dicom[name] = emb.emb, np.array(splits[name].dicom)
        seconds, timed = seconds + emb.seconds, timed + emb.images_timed
    study, texts = study_reports(splits["test"])
    positive, negative = prompt_embeddings(trained, params)
    embeddings = Embeddings(
        images=images,
        dicom=dicom,
        test_tokens_kept=emb.tokens_kept,  # "test" is the last of SPLITS
        test_mask_mass=emb.mask_mass,
        report_study=study,
        report_emb=embed_texts(trained, texts, batch_size),
        inverse_temperature=trained.model.logit_scale.exp().item(),
        prompt_emb=positive,
        negative_prompt_emb=negative,
    )
    return EmbedRun(embeddings, pixels, efficiency(trained, timed, seconds))


def _n_patches(model: Model) -> int:
    return int(np.prod(model.grid))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
