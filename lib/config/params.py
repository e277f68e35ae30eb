"""params.yaml → frozen, validated dataclasses, one per section (a leaf: read it through
``lib.config.loader.load_params``, which also resolves the variants and cross-checks).

Every section is a dataclass; unknown keys, wrong types and bad combinations
are rejected at load time with a message naming the key, the bad value and the
fix, so a typo in params.yaml never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from lib.errors import ParamsError

LabelPolicy = Literal["positive_only", "u_ones", "u_zeros", "u_ignore"]
ReportSection = Literal["findings", "impression"]
ImageCheck = Literal["exists", "header"]
Architecture = Literal["patch_ib", "convirt"]

LABEL_POLICIES: tuple[str, ...] = typing.get_args(LabelPolicy)
# The backbone that stage demo_backbone writes (dvc.yaml: vars paths.backbone).
DEMO_BACKBONE = "local-dir:data/backbone/demo"
# ConVIRT's demo backbone, written by stage convirt_backbone (vars paths.convirt_backbone).
CONVIRT_DEMO_BACKBONE = "local-dir:data/backbone/convirt_demo"
# Zero-shot prompts of "No Finding" (positive, negative): the impression of a normal study.
NO_FINDING_PROMPTS: tuple[str, ...] = (
    "A chest x-ray showing no acute cardiopulmonary process",
    "A chest x-ray showing an acute cardiopulmonary process",
)


@dataclasses.dataclass(frozen=True)
class DemoParams:
    """The synthetic corpus written by the ``demo_data`` stage (MIMIC-CXR-JPG layout)."""

    seed: int = 1234
    n_patients: int = 800
    # Mean number of studies per patient (MIMIC: 227,835 / 65,379 = 3.5).
    studies_per_patient: float = 2.5
    # Shorter image side in pixels; the longer side follows the image's aspect ratio.
    image_size: int = 256
    # Patient-level split fractions; MIMIC's own are ~0.8 % / 1.5 %, far too small
    # for a corpus of a few thousand images to give stable validation/test metrics.
    validate_fraction: float = 0.1
    test_fraction: float = 0.15
    # Fraction of studies left out of the CheXpert file (as in the real data).
    missing_label_fraction: float = 0.01
    # Floor on each finding's positive rate over all studies; 0 keeps MIMIC-CXR's rates
    # (Pleural Other 0.5 %, Fracture 1.5 %, Lung Lesion 2.3 %). See params.yaml.
    min_positive_rate: float = 0.0
    workers: int = 2

    def validate(self) -> None:
        _positive("demo.n_patients", self.n_patients)
        _positive("demo.studies_per_patient", self.studies_per_patient)
        if self.image_size < 32:
            raise ParamsError(
                f"demo.image_size = {self.image_size} is too small; use at least 32 (default 256)"
            )
        for key in ("validate_fraction", "test_fraction", "missing_label_fraction"):
            _fraction(f"demo.{key}", getattr(self, key))
        if not 0 <= self.min_positive_rate <= 0.3:
            raise ParamsError(
                f"demo.min_positive_rate = {self.min_positive_rate} must be in [0, 0.3]: a floor "
                "on each finding's share of studies (0 = MIMIC-CXR's rates; demo default 0.08)"
            )
        if self.validate_fraction + self.test_fraction >= 1:
            raise ParamsError(
                "demo.validate_fraction + demo.test_fraction must be < 1 "
                f"(got {self.validate_fraction} + {self.test_fraction}); lower one of them"
            )
        _positive("demo.workers", self.workers)


@dataclasses.dataclass(frozen=True)
class DataParams:
    """Where the raw MIMIC-CXR-JPG data is, and how it becomes the master file."""

    root: str = "data/demo/mimic-cxr-jpg"
    reports: str = "data/demo/mimic-cxr-jpg/mimic-cxr-reports.zip"
    views: tuple[str, ...] = ("PA", "AP")
    sections: tuple[ReportSection, ...] = ("findings", "impression")
    label_policy: LabelPolicy = "positive_only"
    min_report_chars: int = 30
    # Side of the square images the models take (pack_images decodes to it once); it must
    # equal the backbone's input size: the demo backbone's 96 by default, BiomedCLIP's 224.
    image_size: int = 96
    # Phrase grounding boxes in the MS-CXR v1.1.0 format (stages grounding@X): the demo's
    # own file by default; on MIMIC-CXR, MS-CXR's MS_CXR_Local_Alignment_v1.1.0.csv.
    grounding: str = "data/demo/ms-cxr/MS_CXR_Local_Alignment_v1.1.0.csv"
    # Patients kept out of training and validation (stage qc): a file of subject ids, a CSV
    # with subject_id, or an MS-CXR-format CSV (its image paths name the patients). null = none.
    holdout_patients_from: str | None = None
    # Hash each packed image against data.root/SHA256SUMS.txt (mismatches fail, by reason).  # h3
    verify_checksums: bool = False  # h3

    def validate(self) -> None:
        if not self.grounding:
            raise ParamsError(
                "data.grounding is empty; give an MS-CXR-format CSV (the demo's: "
                "data/demo/ms-cxr/MS_CXR_Local_Alignment_v1.1.0.csv)"
            )
        if self.image_size < 16:
            raise ParamsError(
                f"data.image_size = {self.image_size} is too small; use the backbone's input "
                "size (BiomedCLIP: 224)"
            )
        if not self.views:
            raise ParamsError(
                "data.views is empty; list the ViewPosition values to keep, e.g. [PA, AP]"
            )
        if not self.sections:
            raise ParamsError("data.sections is empty; use [findings, impression]")
        if len(set(self.sections)) != len(self.sections):
            raise ParamsError(f"data.sections = {list(self.sections)} repeats a section")
        if self.min_report_chars < 0:
            raise ParamsError(f"data.min_report_chars = {self.min_report_chars} must be >= 0")


@dataclasses.dataclass(frozen=True)
class QCParams:
    """The quality gate in front of training."""

    max_missing_image_fraction: float = 0.01
    # "exists": the file is there and not empty; "header": it also starts with a JPEG marker.
    image_check: ImageCheck = "header"
    # Optional text file listing image paths relative to data.root, one per line (MIMIC-CXR-JPG
    # ships one as IMAGE_FILENAMES); when set, existence is checked against it, not the disk.
    image_listing: str | None = None
    # Threads for image checks: network file systems answer many small requests in parallel.
    io_threads: int = 16
    # Above the demo (0.01 / 0) and MIMIC-CXR (a few % / ~0), far below a wrong file (1.0).  # h3
    max_missing_label_fraction: float = 0.1  # h3
    max_missing_report_fraction: float = 0.05  # h3

    def validate(self) -> None:
        _fraction("qc.max_missing_image_fraction", self.max_missing_image_fraction)
        _fraction("qc.max_missing_label_fraction", self.max_missing_label_fraction)  # h3
        _fraction("qc.max_missing_report_fraction", self.max_missing_report_fraction)  # h3
        _positive("qc.io_threads", self.io_threads)


MaskMode = Literal["soft", "topk", "drop"]
LocalMode = Literal["all_pairs", "within_pair"]


@dataclasses.dataclass(frozen=True)
class BackboneParams:
    """The demo backbone: BiomedCLIP in miniature (timm ViT + Hugging Face BERT)."""

    seed: int = 0
    image_size: int = 96
    patch_size: int = 16
    vision_width: int = 128
    vision_depth: int = 4
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 2
    vocab_size: int = 3000  # WordPiece vocabulary trained on the pretraining reports
    context_length: int = 128
    embed_dim: int = 512
    # Pooling of each tower (BiomedCLIP: the ViT's CLS token, BERT's [CLS]). Pooling the
    # tokens learns far faster from scratch: CLS-pooled towers pretrained on the demo's budget
    # end with near rank-1 embeddings (README, "The demo backbone"). The ViT's options are
    # timm's: "avg" (mean of the patch tokens), "max" (per-feature maximum), "avgmax" (their
    # mean).
    vision_pool: Literal["token", "avg", "avgmax", "max"] = "avg"
    text_pool: Literal["cls", "mean"] = "mean"
    # How pixels become patch tokens: "linear", one patch-sized projection (BiomedCLIP's),
    # or "conv", a stem of stride-2 3x3 convolutions giving the same tokens (params.yaml).
    patch_embed: Literal["linear", "conv"] = "linear"

    def validate(self) -> None:
        for key in (
            "image_size",
            "patch_size",
            "vision_width",
            "vision_depth",
            "vision_heads",
            "text_width",
            "text_layers",
            "text_heads",
            "vocab_size",
            "context_length",
            "embed_dim",
        ):
            _positive(f"backbone.{key}", getattr(self, key))
        if self.image_size % self.patch_size:
            raise ParamsError(
                f"backbone.image_size = {self.image_size} must be a multiple of "
                f"backbone.patch_size = {self.patch_size}"
            )
        if self.patch_embed == "conv" and self.patch_size & (self.patch_size - 1):
            raise ParamsError(
                f"backbone.patch_embed = conv needs a power-of-two backbone.patch_size (its "
                f"stride-2 convolutions), got {self.patch_size}; use 16, or patch_embed: linear"
            )
        for width, heads, tower in (
            (self.vision_width, self.vision_heads, "vision"),
            (self.text_width, self.text_heads, "text"),
        ):
            if width % heads:
                raise ParamsError(
                    f"backbone.{tower}_width = {width} must be divisible by "
                    f"backbone.{tower}_heads = {heads}"
                )


@dataclasses.dataclass(frozen=True)
class ConvirtBackboneParams:
    """ConVIRT's demo backbone (stage convirt_backbone): a bottleneck ResNet in miniature
    (ResNet-50's blocks at 1/4 of its widths, ``depth`` blocks per stage), random from
    ``seed``, beside the text tower of the demo backbone."""

    seed: int = 0
    width: int = 16  # stage widths width·(1, 2, 4, 8), features 32·width (ResNet-50: 64)
    depth: int = 1  # bottleneck blocks per stage (ResNet-50: 3, 4, 6, 3)

    def validate(self) -> None:
        _positive("convirt_backbone.width", self.width)
        _positive("convirt_backbone.depth", self.depth)


@dataclasses.dataclass(frozen=True)
class PretrainParams:
    """CLIP pretraining of the demo backbone (stage demo_backbone) on a synthetic corpus of
    its own: the demo's stand-in for BiomedCLIP's PMC-15M pretraining. Its patients are
    disjoint from the demo corpus by construction (other subject and study id ranges)."""

    seed: int = 4321  # corpus and training seed (the demo corpus uses demo.seed)
    n_patients: int = 2000
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1.0e-3
    warmup_steps: int = 100
    weight_decay: float = 0.05
    temperature: float = 0.07  # initial InfoNCE temperature (learnable; CLIP's 0.07)
    holdout_fraction: float = 0.05  # of its patients, for choosing the best epoch
    # Images whose text is a figure caption written from their labels instead of their report
    # (PMC-15M's texts are captions; lib/demo/captions.py). 0 = reports only.
    caption_fraction: float = 0.0
    # Training texts cut to this many tokens ([CLS] ... [SEP]); 0 = backbone.context_length.
    # Held-out validation, fine-tuning and evaluation always see whole texts.
    max_text_tokens: int = 0
    # report | sentence: as train.text_sampling, for the pretraining corpus's texts.
    text_sampling: str = "report"

    def validate(self) -> None:
        for key in ("n_patients", "epochs", "lr", "temperature"):
            _positive(f"pretrain.{key}", getattr(self, key))
        if self.text_sampling not in ("report", "sentence"):
            raise ParamsError(
                f"pretrain.text_sampling = {self.text_sampling!r}: use report or sentence"
            )
        _fraction("pretrain.caption_fraction", self.caption_fraction)
        if self.max_text_tokens != 0 and self.max_text_tokens < 8:
            raise ParamsError(
                f"pretrain.max_text_tokens = {self.max_text_tokens}: give 0 (whole texts, up "
                "to backbone.context_length) or at least 8 tokens"
            )
        if self.batch_size < 2:
            raise ParamsError(
                f"pretrain.batch_size = {self.batch_size}: contrastive loss needs >= 2"
            )
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ParamsError("pretrain.warmup_steps and pretrain.weight_decay must be >= 0")
        if not 0 < self.holdout_fraction < 0.5:
            raise ParamsError(
                f"pretrain.holdout_fraction = {self.holdout_fraction} must be in (0, 0.5)"
            )


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """One variant's model and loss settings (``model:`` holds Model A's; ``models:`` the
    differences of the others)."""

    # open_clip model: "local-dir:<path>" or "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-..."
    backbone: str = DEMO_BACKBONE
    use_local_alignment: bool = False
    use_masking: bool = False
    mask_mode: MaskMode = "soft"  # soft (C) | topk: soft top-K (D) | drop: hard token drop (E)
    keep_ratio: float = 0.5
    topk_temperature: float = 0.1
    drop_layer: int = 2  # ViT block after which E drops tokens (of backbone depth)
    temperature: float = 0.1  # InfoNCE temperature: initial, or fixed if not learn_temperature
    contrastive_weight_i2t: float = 0.5
    contrastive_weight_t2i: float = 0.5
    # all_pairs: GLoRIA's word→patch contrast over every (image, report) pair, O(B²·L·N);
    # within_pair: MGCA's token-level contrast inside each matching pair, O(B·L·N).
    local_mode: LocalMode = "all_pairs"
    local_weight: float = 1.0
    local_temperature: float = 0.1
    local_dim: int = 128
    sparse_weight: float = 1.0
    cons_weight: float = 0.5
    # Masked-out patches are replaced by feature noise instead of being left out of a
    # weighted mean (lib/model/patch_ib.py, PatchIBModel._masked).
    mask_noise: bool = False
    # C–E: weight of the mask-guide term (lib/model/losses.py, mask_guide_loss), which
    # teaches the mask where its report's words attend; 0 = the specification's objective.
    # Read only by variants with both a mask and local alignment (the guide is the local
    # alignment's attention); a mask without local alignment trains without it.
    mask_guide_weight: float = 0.0
    # patch_ib: the PatchIBModel of A–E on a timm-ViT + HF-BERT CLIP (BiomedCLIP's layout);
    # convirt: ConVIRT (lib/model/convirt.py) on a CNN (timm ResNet) + HF-BERT backbone, its
    # towers followed by two-layer ReLU MLP heads in -> head_dim -> head_dim.
    architecture: Architecture = "patch_ib"
    learn_temperature: bool = True  # False: the InfoNCE temperature stays model.temperature
    head_dim: int = 512  # convirt: width of the MLP heads (ConVIRT: 2048->512->512, 768->...)
    # convirt: the text tower's embeddings and its lowest layers kept frozen throughout
    # (ConVIRT froze the embeddings and the first 6 of ClinicalBERT's 12 layers).
    frozen_text_layers: int = 0
    # convirt: pooling of the text tower's outputs. max: over the real tokens (ConVIRT's);
    # cls: the [CLS] token; mean: mean of the real tokens.
    text_pool: Literal["max", "cls", "mean"] = "max"

    def validate(self) -> None:
        if not self.backbone.startswith(("local-dir:", "hf-hub:")):
            raise ParamsError(
                f"model.backbone = {self.backbone!r}: use 'local-dir:<path>' or 'hf-hub:<repo>'"
            )
        if not 0 < self.keep_ratio <= 1:
            raise ParamsError(f"model.keep_ratio = {self.keep_ratio} must be in (0, 1]")
        for key in ("topk_temperature", "temperature", "local_temperature", "local_dim"):
            _positive(f"model.{key}", getattr(self, key))
        if self.mask_guide_weight < 0:
            raise ParamsError(
                f"model.mask_guide_weight = {self.mask_guide_weight} must be >= 0 (0 = off)"
            )
        if self.drop_layer < 1:
            raise ParamsError(f"model.drop_layer = {self.drop_layer} must be >= 1")
        if self.local_mode not in ("all_pairs", "within_pair"):
            raise ParamsError(
                f"model.local_mode = {self.local_mode!r}: use all_pairs (GLoRIA, every pair of "
                "the batch) or within_pair (MGCA, token-level inside each matching pair)"
            )
        _positive("model.head_dim", self.head_dim)
        if self.frozen_text_layers < 0:
            raise ParamsError(
                f"model.frozen_text_layers = {self.frozen_text_layers} must be >= 0 (0 = none)"
            )
        if self.architecture == "convirt" and (self.use_local_alignment or self.use_masking):
            raise ParamsError(
                "model.architecture = 'convirt' has no patch tokens for local alignment or a "
                "mask (its image tower is a CNN): set use_local_alignment and use_masking to "
                "false for that variant, or architecture: patch_ib"
            )
        if self.architecture == "patch_ib" and self.frozen_text_layers:
            raise ParamsError(
                f"model.frozen_text_layers = {self.frozen_text_layers} is read by "
                "architecture: convirt only (A–E freeze whole towers in phase 1: "
                "train.staged_training); set it to 0"
            )
        if self.mask_mode != "soft" and not self.use_masking:
            raise ParamsError(
                f"model.mask_mode = {self.mask_mode!r} needs model.use_masking: true "
                "(or set mask_mode: soft)"
            )


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Image augmentation of training batches (``train.augment``; lib/train/augment.py).

    Ranges are ``[min, max]``; a magnitude of 0 (or a range of ``[1, 1]`` / ``[0, 0]``) turns
    its op off, and ``enabled: false`` or every op off leaves the batch untouched, bit for bit.
    The defaults are the demo's magnitudes, off; ConVIRT's recipe is crop_scale [0.6, 1],
    rotation_deg 20, hflip 0.5 and a Gaussian blur.
    """

    enabled: bool = False
    # Random resized crop: area fraction of the image and aspect ratio (width / height,
    # drawn log-uniformly) of the crop, which is then resized back to the full image.
    crop_scale: tuple[float, ...] = (0.8, 1.0)
    crop_ratio: tuple[float, ...] = (0.9, 1.1)
    rotation_deg: float = 5.0  # |angle| <= this, uniform, counter-clockwise positive
    scale: tuple[float, ...] = (0.95, 1.05)  # zoom: > 1 enlarges the content
    brightness: float = 0.1  # intensity × U[1 - b, 1 + b]
    contrast: float = 0.1  # deviation from the image mean × U[1 - c, 1 + c]
    # Probability of a horizontal flip; 0 because laterality matters in chest X-rays (the
    # heart is on the left, and reports say "left" and "right").
    hflip: float = 0.0
    blur_sigma: tuple[float, ...] = (0.0, 0.0)  # Gaussian blur sigma in pixels; 0 = off

    def validate(self) -> None:
        k = "train.augment"
        _range(f"{k}.crop_scale", self.crop_scale, 0, 1, "e.g. [0.8, 1.0]; [1, 1] = no crop", True)
        _range(f"{k}.crop_ratio", self.crop_ratio, 0, math.inf, "e.g. [0.75, 1.33]", True)
        if not 0 <= self.rotation_deg <= 180:
            raise ParamsError(
                f"{k}.rotation_deg = {self.rotation_deg} must be in [0, 180] (the largest "
                "|angle| in degrees, e.g. 5; 0 = no rotation)"
            )
        _range(f"{k}.scale", self.scale, 0, math.inf, "e.g. [0.95, 1.05]; [1, 1] = no zoom", True)
        for key in ("brightness", "contrast"):
            value = getattr(self, key)
            if not 0 <= value < 1:
                raise ParamsError(
                    f"{k}.{key} = {value} must be in [0, 1): the largest relative change, "
                    "e.g. 0.1 (0 = off)"
                )
        _fraction(f"{k}.hflip", self.hflip)
        _range(
            f"{k}.blur_sigma", self.blur_sigma, 0, 20, "in pixels, e.g. [0.1, 2.0]; [0, 0] = off"
        )


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """The training schedule (the spec's "Training Strategy"); demo values in params.yaml."""

    seed: int = 0
    epochs: int = 40
    batch_size: int = 64
    gradient_accumulation_steps: int = 2
    staged_training: bool = True
    warmup_epochs: int = 3  # phase 1: backbones frozen, heads + logit_scale at warmup_lr
    warmup_lr: float = 1.0e-4
    lr: float = 5.0e-6  # phase 2 base learning rate (top of each tower)
    llrd_factor: float = 0.85
    weight_decay: float = 0.05
    warmup_steps: int = 1000  # linear warm-up of phase 2's cosine schedule (optimizer steps)
    recall_weight: float = 0.7  # combined metric = w * mean recall + (1 - w) * mean AUC
    patience: int = 7
    use_amp: bool = True  # on CUDA only (bf16 where supported, else fp16 with a scaler)
    # torch.compile the training forward + loss (fewer, fused kernels; pays on a GPU, where
    # the step is launch-bound). The first steps of each phase compile (minutes at BiomedCLIP
    # size); results equal eager within float tolerance.
    compile: bool = False
    # Threads that decode the split's images once before training (the spec: 4 loader workers).
    num_workers: int = 4
    eval_batch_size: int = 128
    val_prompt_template: str = "A chest x-ray showing {}"
    # Zero-shot score = P(positive prompt) against this negative one; "" scores by the
    # positive prompt's cosine alone.
    val_negative_prompt_template: str = "A chest x-ray showing no {}"
    # "No Finding" is a negation itself: its own (positive, negative) prompts, [] = templates.
    val_no_finding_prompts: tuple[str, ...] = NO_FINDING_PROMPTS
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Processes (GPUs) of one machine: > 1 makes stage train@X launch itself under torchrun
    # with DistributedDataParallel; batch_size stays the global batch.
    nproc_per_node: int = 1
    # The text of a training pair: the whole report (the specification), or one sentence of
    # it drawn afresh each step from (seed, epoch, batch) (ConVIRT). Validation, embedding
    # and evaluation always use the whole report.
    text_sampling: str = "report"
    # Augmentation of training batches only (never validation or evaluation).
    augment: AugmentParams = dataclasses.field(default_factory=AugmentParams)

    def validate(self) -> None:
        if self.text_sampling not in ("report", "sentence"):
            raise ParamsError(
                f"train.text_sampling = {self.text_sampling!r}: use report (the whole report) "
                "or sentence (one random sentence of it per step, as ConVIRT)"
            )
        if self.nproc_per_node < 1 or self.batch_size % self.nproc_per_node:
            raise ParamsError(
                f"train.nproc_per_node = {self.nproc_per_node} must be >= 1 and divide "
                f"train.batch_size = {self.batch_size} (the global batch)"
            )
        for key in (
            "epochs",
            "batch_size",
            "gradient_accumulation_steps",
            "warmup_lr",
            "lr",
            "llrd_factor",
            "patience",
            "eval_batch_size",
        ):
            _positive(f"train.{key}", getattr(self, key))
        if self.batch_size < 2:
            raise ParamsError(f"train.batch_size = {self.batch_size}: contrastive loss needs >= 2")
        if self.warmup_epochs < 0 or (self.staged_training and self.warmup_epochs >= self.epochs):
            raise ParamsError(
                f"train.warmup_epochs = {self.warmup_epochs} must be >= 0 and < train.epochs = "
                f"{self.epochs} (or set train.staged_training: false)"
            )
        _fraction("train.recall_weight", self.recall_weight)
        _positive("train.num_workers", self.num_workers)
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ParamsError("train.warmup_steps and train.weight_decay must be >= 0")
        if "{}" not in self.val_prompt_template:
            raise ParamsError(
                f"train.val_prompt_template = {self.val_prompt_template!r} needs a {{}} "
                "where the finding name goes"
            )
        if self.val_negative_prompt_template and "{}" not in self.val_negative_prompt_template:
            raise ParamsError(
                f"train.val_negative_prompt_template = {self.val_negative_prompt_template!r} "
                'needs a {} (or set it to "" to score by the positive prompt alone)'
            )
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ParamsError(f"train.device = {self.device!r}: use auto, cpu, cuda or cuda:N")
        _prompt_pair("train.val_no_finding_prompts", self.val_no_finding_prompts)


@dataclasses.dataclass(frozen=True)
class PackParams:
    """Stage pack_images: every image decoded once into a memory-mapped array."""

    workers: int = 0  # decoding (pillow) or file-reading (nvjpeg) threads; 0 = every core
    chunk_size: int = 1024  # images per resumable chunk
    # Share of images that may be unreadable (counted, listed, left out) before the stage
    # fails; MIMIC-CXR-JPG has none, so a larger share means a damaged copy.
    max_failed_fraction: float = 0.001
    # pillow: JPEG draft mode on the CPU cores, bit-identical to the direct path.
    # nvjpeg: batched decode on the GPU (lib/data/jpeg_batch.py); within 3 grey levels of it.
    decoder: str = "pillow"
    gpu_batch_size: int = 64  # JPEGs per nvJPEG call

    def validate(self) -> None:
        if self.workers < 0:
            raise ParamsError(f"pack.workers = {self.workers} must be >= 0 (0 = every core)")
        _positive("pack.chunk_size", self.chunk_size)
        _fraction("pack.max_failed_fraction", self.max_failed_fraction)
        if self.decoder not in ("pillow", "nvjpeg"):
            raise ParamsError(
                f"pack.decoder = {self.decoder!r} must be 'pillow' (CPU, draft mode) or "
                "'nvjpeg' (batched decode on the GPU)"
            )
        _positive("pack.gpu_batch_size", self.gpu_batch_size)


@dataclasses.dataclass(frozen=True)
class ReplicateParams:
    """Training-seed replicates: stage replicate@<variant>-<seed> trains, embeds and scores
    each variant again with each of these seeds (besides its own ``train.seed``, whose run
    is train@/embed@/eval@), so that ``compare`` can put the seed spread beside the
    patient-bootstrap intervals. A separate section, not a train key, so that adding seeds
    leaves the variants' configs, and so their trained models, as they are."""

    seeds: tuple[int, ...] = ()

    def validate(self) -> None:
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ParamsError(
                f"replicates.seeds = {list(self.seeds)}: give distinct seeds >= 0 (or [] for none)"
            )


@dataclasses.dataclass(frozen=True)
class EvalParams:
    """Evaluation on the test split (stages embed@X, eval@X, compare); changing any of these
    re-runs evaluation only, never training."""

    # Zero-shot classification: one prompt per CheXpert label ("{}" = the label in lower case).
    prompt_template: str = "A chest x-ray showing {}"
    # "" = score by the positive prompt's cosine alone; a template = P(positive) of the
    # positive/negative prompt pair (what validation uses).
    negative_prompt_template: str = "A chest x-ray showing no {}"
    # "No Finding" is a negation itself ("showing no no finding"): its own (positive,
    # negative) prompts; [] = the templates.
    no_finding_prompts: tuple[str, ...] = NO_FINDING_PROMPTS
    recall_ks: tuple[int, ...] = (1, 5, 10)
    recall_curve_max_k: int = 50  # the Recall@K plot's last K
    # ConVIRT's linear-evaluation protocol: fractions of the train split's labelled images.
    probe_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    probe_c: float = 1.0  # inverse L2 strength of the logistic regressions
    bootstrap: int = 1000  # patient-level bootstrap rounds for every confidence interval
    ci_level: float = 0.95
    seed: int = 0  # probe subsamples and bootstrap resamples
    explain_images: int = 6  # test images in the Patch-IB explainability figure
    batch_size: int = 128
    num_workers: int = 2  # threads decoding images
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # The raw-pixel floor (stage pixel_probe): PCA to this many components, fitted on at most
    # this many train images (a seeded subsample; bounds memory and time at MIMIC scale).
    pixel_pca_dim: int = 256
    pixel_pca_max_images: int = 20000
    # ConVIRT's fine-tuning evaluation (lib/eval/finetune.py, in embed@X): the image encoder
    # + a linear head trained on these fractions of the labelled train images (the probe's
    # nested rows, eval.seed), the epoch with the best val mean AUC scored on test.
    finetune: bool = False
    finetune_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    finetune_epochs: int = 10
    finetune_lr: float = 3.0e-4
    finetune_batch_size: int = 32

    def validate(self) -> None:
        if "{}" not in self.prompt_template:
            raise ParamsError(
                f"eval.prompt_template = {self.prompt_template!r} needs a {{}} where the "
                "finding name goes"
            )
        if self.negative_prompt_template and "{}" not in self.negative_prompt_template:
            raise ParamsError(
                f"eval.negative_prompt_template = {self.negative_prompt_template!r} needs a {{}} "
                '(or set it to "" to score by the positive prompt alone)'
            )
        if not self.recall_ks or any(k < 1 for k in self.recall_ks):
            raise ParamsError(
                f"eval.recall_ks = {list(self.recall_ks)}: give K >= 1, e.g. [1, 5, 10]"
            )
        if self.recall_curve_max_k < max(self.recall_ks):
            raise ParamsError(
                f"eval.recall_curve_max_k = {self.recall_curve_max_k} must be >= the largest of "
                f"eval.recall_ks ({max(self.recall_ks)})"
            )
        if not self.probe_fractions or any(not 0 < f <= 1 for f in self.probe_fractions):
            raise ParamsError(
                f"eval.probe_fractions = {list(self.probe_fractions)}: each must be in (0, 1], "
                "e.g. [0.01, 0.1, 1.0]"
            )
        if len(set(self.probe_fractions)) != len(self.probe_fractions):
            raise ParamsError(f"eval.probe_fractions = {list(self.probe_fractions)} repeats one")
        ft = list(self.finetune_fractions)
        if not ft or any(not 0 < f <= 1 for f in ft) or len(set(ft)) != len(ft):
            raise ParamsError(
                f"eval.finetune_fractions = {ft}: distinct fractions in (0, 1], e.g. "
                "[0.01, 0.1, 1.0]"
            )
        for key in ("finetune_epochs", "finetune_lr", "finetune_batch_size"):
            _positive(f"eval.{key}", getattr(self, key))
        for key in ("probe_c", "bootstrap", "batch_size", "num_workers", "pixel_pca_dim"):
            _positive(f"eval.{key}", getattr(self, key))
        if self.pixel_pca_max_images < self.pixel_pca_dim:
            raise ParamsError(
                f"eval.pixel_pca_max_images = {self.pixel_pca_max_images} must be >= "
                f"eval.pixel_pca_dim = {self.pixel_pca_dim} (PCA needs at least as many images "
                "as components)"
            )
        if not 0 < self.ci_level < 1:
            raise ParamsError(f"eval.ci_level = {self.ci_level} must be in (0, 1), e.g. 0.95")
        if self.explain_images < 0:
            raise ParamsError(f"eval.explain_images = {self.explain_images} must be >= 0")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ParamsError(f"eval.device = {self.device!r}: use auto, cpu, cuda or cuda:N")
        _prompt_pair("eval.no_finding_prompts", self.no_finding_prompts)


@dataclasses.dataclass(frozen=True)
class Params:
    demo: DemoParams = dataclasses.field(default_factory=DemoParams)
    data: DataParams = dataclasses.field(default_factory=DataParams)
    qc: QCParams = dataclasses.field(default_factory=QCParams)
    backbone: BackboneParams = dataclasses.field(default_factory=BackboneParams)
    convirt_backbone: ConvirtBackboneParams = dataclasses.field(
        default_factory=ConvirtBackboneParams
    )
    pretrain: PretrainParams = dataclasses.field(default_factory=PretrainParams)
    model: ModelParams = dataclasses.field(default_factory=ModelParams)
    train: TrainParams = dataclasses.field(default_factory=TrainParams)
    pack: PackParams = dataclasses.field(default_factory=PackParams)
    eval: EvalParams = dataclasses.field(default_factory=EvalParams)
    replicates: ReplicateParams = dataclasses.field(default_factory=ReplicateParams)
    # variant name -> raw overrides of model / train (validated by lib.config.variants)
    models: dict[str, Any] = dataclasses.field(default_factory=dict)


_SECTION_TYPES: dict[str, type] = {
    "demo": DemoParams,
    "data": DataParams,
    "qc": QCParams,
    "backbone": BackboneParams,
    "convirt_backbone": ConvirtBackboneParams,
    "pretrain": PretrainParams,
    "model": ModelParams,
    "train": TrainParams,
    "pack": PackParams,
    "eval": EvalParams,
    "replicates": ReplicateParams,
}


def parse_sections(raw: Mapping[str, Any], source: str = "params.yaml") -> Params:
    """Every section of params.yaml as its dataclass; ``models`` is kept raw here (the
    variants are resolved and cross-checked by ``lib.config.loader``, above this module)."""
    unknown = sorted(set(raw) - set(_SECTION_TYPES) - {"models"})
    if unknown:
        raise ParamsError(
            f"{source}: unknown section(s) {unknown}; valid sections: {sorted(_SECTION_TYPES)}"
        )
    sections = {
        name: build_section(cls, raw.get(name) or {}, name, source)
        for name, cls in _SECTION_TYPES.items()
    }
    models = raw.get("models") or {}
    if not isinstance(models, Mapping):
        raise ParamsError(f"{source}: 'models' must map variant names to overrides")
    return Params(**sections, models=dict(models))


def build_section(cls: type, raw: Any, name: str, source: str = "params.yaml") -> Any:
    """Build one section dataclass from its YAML mapping, checking keys and types."""
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{source}: section '{name}' must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(
            f"{source}: unknown key(s) {[f'{name}.{k}' for k in unknown]}; "
            f"valid keys of '{name}': {sorted(fields)}"
        )
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(hints[k], v, f"{name}.{k}", source) for k, v in raw.items()}
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ParamsError(f"{source}: {key} = {value!r} is not a valid {_describe(tp)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key, source)
            except ParamsError:
                continue
        raise bad
    if origin is Literal:
        if value not in args:
            raise ParamsError(
                f"{source}: {key} = {value!r} is not one of {list(args)}; pick one of them"
            )
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad
        return tuple(_coerce(args[0], v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if dataclasses.is_dataclass(tp):  # a nested section, e.g. train.augment
        return build_section(tp, value, key, source)
    raise ParamsError(f"{source}: {key}: unsupported parameter type {tp!r}")  # pragma: no cover


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _prompt_pair(key: str, value: tuple[str, ...]) -> None:
    if value and (len(value) != 2 or not all(v.strip() for v in value)):
        raise ParamsError(
            f"{key} = {list(value)} must be [positive prompt, negative prompt], both "
            "non-empty, or [] to use the templates for No Finding too"
        )


def _range(
    key: str, value: tuple[float, ...], lo: float, hi: float, hint: str, above_lo: bool = False
) -> None:
    """A ``[min, max]`` pair with ``lo <= min <= max <= hi`` (``lo < min`` with ``above_lo``,
    for a scale or a ratio, which cannot be 0)."""
    ok = len(value) == 2 and lo <= value[0] <= value[1] <= hi
    if not ok or (above_lo and value[0] == lo):
        bounds = f"{'(' if above_lo else '['}{lo}, {hi}]"
        raise ParamsError(
            f"{key} = {list(value)} must be [min, max] with min <= max, both in {bounds}; {hint}"
        )


def _positive(key: str, value: float) -> None:
    if value <= 0:
        raise ParamsError(f"{key} = {value} must be > 0")


def _fraction(key: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ParamsError(f"{key} = {value} must be a fraction between 0 and 1")


def as_dict(obj: Any) -> dict[str, Any]:
    """Plain-JSON form of a params dataclass (tuples become lists), for saving beside outputs."""
    out = dataclasses.asdict(obj)
    return _jsonable(out)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x
