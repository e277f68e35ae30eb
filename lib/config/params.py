"""params.yaml → frozen, validated dataclasses, one per section (a leaf: read it through
``lib.config.loader.load_params``, which also resolves the variants and cross-checks).

params.yaml is the one place a value lives: these classes hold the types and the
constraints of its keys, and no defaults. A missing key, an unknown key, a wrong type, a
value outside its constraint (NaN and infinities included) or a bad combination is
rejected at load time with a message naming the file, the key, the bad value and the fix.

A single-field constraint is declared beside its field, ``Annotated[float, Positive]``
(the ``Check`` markers below); rules that span fields stay in the class's ``validate()``.
Every ``float`` must be finite unless its field carries ``AllowNonFinite``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

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
class Check:
    """A single-field constraint, put in a field's ``Annotated[...]``: ``test(value)`` must
    hold, else the error reads ``<file>: <key> = <value><need>`` (``need`` says the fix)."""

    test: Callable[[Any], bool]
    need: str


class AllowNonFinite:
    """Marker: this float field may be NaN or infinite (none is today)."""


Positive = Check(lambda v: v > 0, " must be > 0")
NonNegative = Check(lambda v: v >= 0, " must be >= 0")
Fraction = Check(lambda v: 0 <= v <= 1, " must be a fraction between 0 and 1")
Distinct = Check(lambda v: len(set(v)) == len(v), " repeats a value; list each once")


def AtLeast(lo: float, fix: str = "") -> Check:
    return Check(lambda v: v >= lo, f" must be >= {lo}{fix}")


def Between(lo: float, hi: float, fix: str = "", *, open_lo: bool = False) -> Check:
    """``lo <= value <= hi`` (``lo < value`` with ``open_lo``)."""
    left = "(" if open_lo else "["
    return Check(
        lambda v: (lo < v if open_lo else lo <= v) and v <= hi,
        f" must be in {left}{lo}, {hi}]{fix}",
    )


def MinMax(lo: float, hi: float, hint: str, *, above_lo: bool = False) -> Check:
    """A ``[min, max]`` pair with ``lo <= min <= max <= hi`` (``lo < min`` with ``above_lo``,
    for a scale or a ratio, which cannot be 0)."""
    bounds = f"{'(' if above_lo else '['}{lo}, {hi}]"
    return Check(
        lambda v: len(v) == 2 and lo <= v[0] <= v[1] <= hi and not (above_lo and v[0] == lo),
        f" must be [min, max] with min <= max, both in {bounds}; {hint}",
    )


def _device_ok(v: str) -> bool:
    return v in ("auto", "cpu", "cuda") or v.startswith("cuda:")


def _prompt_pair_ok(v: tuple[str, ...]) -> bool:
    return not v or (len(v) == 2 and all(p.strip() for p in v))


Device = Check(_device_ok, ": use auto, cpu, cuda or cuda:N")
PromptPair = Check(
    _prompt_pair_ok,
    " must be [positive prompt, negative prompt], both non-empty, or [] to use the "
    "templates for No Finding too",
)
HasSlot = Check(lambda v: "{}" in v, " needs a {} where the finding name goes")
# A negative template may be "" (score by the positive prompt alone).
HasSlotOrEmpty = Check(
    lambda v: not v or "{}" in v,
    ' needs a {} (or set it to "" to score by the positive prompt alone)',
)


class Section:
    """Base of the section classes. Each field's own constraints are checked as the section
    is built (``build_section``); ``validate()`` holds the rules that span its fields."""

    def validate(self) -> None:
        """No rule spans this section's fields."""


@dataclasses.dataclass(frozen=True)
class DemoParams(Section):
    """The synthetic corpus written by the ``demo_data`` stage (MIMIC-CXR-JPG layout)."""

    seed: int
    n_patients: Annotated[int, Positive]
    # Mean number of studies per patient (MIMIC: 227,835 / 65,379 = 3.5).
    studies_per_patient: Annotated[float, Positive]
    # Shorter image side in pixels; the longer side follows the image's aspect ratio.
    image_size: Annotated[
        int, Check(lambda v: v >= 32, " is too small; use at least 32 (e.g. 256)")
    ]
    # Patient-level split fractions; MIMIC's own are ~0.8 % / 1.5 %, far too small
    # for a corpus of a few thousand images to give stable validation/test metrics.
    validate_fraction: Annotated[float, Fraction]
    test_fraction: Annotated[float, Fraction]
    # Fraction of studies left out of the CheXpert file (as in the real data).
    missing_label_fraction: Annotated[float, Fraction]
    # Floor on each finding's positive rate over all studies; 0 keeps MIMIC-CXR's rates
    # (Pleural Other 0.5 %, Fracture 1.5 %, Lung Lesion 2.3 %). See docs/params.md.
    min_positive_rate: Annotated[
        float,
        Between(
            0,
            0.3,
            ": a floor on each finding's share of studies (0 = MIMIC-CXR's rates; the demo "
            "uses 0.08)",
        ),
    ]
    workers: Annotated[int, Positive]

    def validate(self) -> None:
        if self.validate_fraction + self.test_fraction >= 1:
            raise ParamsError(
                "demo.validate_fraction + demo.test_fraction must be < 1 "
                f"(got {self.validate_fraction} + {self.test_fraction}); lower one of them"
            )


@dataclasses.dataclass(frozen=True)
class DataParams(Section):
    """Where the raw MIMIC-CXR-JPG data is, and how it becomes the master file."""

    root: str
    reports: str
    views: Annotated[
        tuple[str, ...],
        Check(len, " is empty; list the ViewPosition values to keep, e.g. [PA, AP]"),
    ]
    sections: Annotated[
        tuple[ReportSection, ...],
        Check(len, " is empty; use [findings, impression]"),
        Distinct,
    ]
    # true: the synthetic corpus of stage demo_data; false: real data (no corpus drawn)
    demo: bool
    label_policy: LabelPolicy
    min_report_chars: Annotated[int, NonNegative]
    # Side of the square images the models take (pack_images decodes to it once); it must
    # equal the backbone's input size: the demo backbone's 96, BiomedCLIP's 224.
    image_size: Annotated[
        int,
        Check(lambda v: v >= 16, " is too small; use the backbone's input size (BiomedCLIP: 224)"),
    ]
    # Phrase grounding boxes in the MS-CXR v1.1.0 format (stages grounding@X): the demo's
    # own file, or on MIMIC-CXR, MS-CXR's MS_CXR_Local_Alignment_v1.1.0.csv.
    grounding: Annotated[
        str,
        Check(
            len,
            " is empty; give an MS-CXR-format CSV (the demo's: "
            "data/demo/ms-cxr/MS_CXR_Local_Alignment_v1.1.0.csv)",
        ),
    ]
    # Patients kept out of training and validation (stage qc): a file of subject ids, a CSV
    # with subject_id, or an MS-CXR-format CSV (its image paths name the patients). null = none.
    holdout_patients_from: str | None
    # Hash each packed image against data.root/SHA256SUMS.txt (mismatches fail, by reason).
    verify_checksums: bool
    # MIMIC-Ext-CXR-QBA-format directory (qa/ or qa.zip, scene_data/, metadata/) of the VQA
    # stages (docs/vqa.md); the demo's: data/demo/mimic-ext-cxr-qba. null = VQA skipped.
    vqa: str | None


@dataclasses.dataclass(frozen=True)
class QCParams(Section):
    """The quality gate in front of training."""

    max_missing_image_fraction: Annotated[float, Fraction]
    # "exists": the file is there and not empty; "header": it also starts with a JPEG marker.
    image_check: ImageCheck
    # Optional text file listing image paths relative to data.root (MIMIC-CXR-JPG ships one
    # as IMAGE_FILENAMES); when set, existence is checked against it, not the disk.
    image_listing: str | None
    # Threads for image checks: network file systems answer many small requests in parallel.
    io_threads: Annotated[int, Positive]
    # Above the demo (0.01 / 0) and MIMIC-CXR (a few % / ~0), far below a wrong file (1.0).
    max_missing_label_fraction: Annotated[float, Fraction]
    max_missing_report_fraction: Annotated[float, Fraction]


MaskMode = Literal["soft", "topk", "drop"]
LocalMode = Literal["all_pairs", "within_pair"]


@dataclasses.dataclass(frozen=True)
class BackboneParams(Section):
    """The demo backbone: BiomedCLIP in miniature (timm ViT + Hugging Face BERT)."""

    seed: int
    image_size: Annotated[int, Positive]
    patch_size: Annotated[int, Positive]
    vision_width: Annotated[int, Positive]
    vision_depth: Annotated[int, Positive]
    vision_heads: Annotated[int, Positive]
    text_width: Annotated[int, Positive]
    text_layers: Annotated[int, Positive]
    text_heads: Annotated[int, Positive]
    vocab_size: Annotated[int, Positive]  # WordPiece vocabulary trained on the pretraining reports
    context_length: Annotated[int, Positive]
    embed_dim: Annotated[int, Positive]
    # Pooling of each tower (BiomedCLIP: the ViT's CLS token, BERT's [CLS]). Pooling the
    # tokens learns far faster from scratch: CLS-pooled towers pretrained on the demo's budget
    # end with near rank-1 embeddings (docs/models.md). The ViT's options are
    # timm's: "avg" (mean of the patch tokens), "max" (per-feature maximum), "avgmax" (their
    # mean).
    vision_pool: Literal["token", "avg", "avgmax", "max"]
    text_pool: Literal["cls", "mean"]
    # How pixels become patch tokens: "linear", one patch-sized projection (BiomedCLIP's),
    # or "conv", a stem of stride-2 3x3 convolutions giving the same tokens (params.yaml).
    patch_embed: Literal["linear", "conv"]

    def validate(self) -> None:
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
class ConvirtBackboneParams(Section):
    """ConVIRT's demo backbone (stage convirt_backbone): a bottleneck ResNet in miniature
    (ResNet-50's blocks at 1/4 of its widths, ``depth`` blocks per stage), random from
    ``seed``, beside the text tower of the demo backbone."""

    seed: int
    # stage widths width·(1, 2, 4, 8), features 32·width (ResNet-50: 64)
    width: Annotated[int, Positive]
    depth: Annotated[int, Positive]  # bottleneck blocks per stage (ResNet-50: 3, 4, 6, 3)


TextSampling = Check(
    lambda v: v in ("report", "sentence"),
    ": use report (the whole report) or sentence (one random sentence of it per step, as ConVIRT)",
)


@dataclasses.dataclass(frozen=True)
class PretrainParams(Section):
    """CLIP pretraining of the demo backbone (stage demo_backbone) on a synthetic corpus of
    its own: the demo's stand-in for BiomedCLIP's PMC-15M pretraining. Its patients are
    disjoint from the demo corpus by construction (other subject and study id ranges)."""

    seed: int  # corpus and training seed (the demo corpus uses demo.seed)
    n_patients: Annotated[int, Positive]
    epochs: Annotated[int, Positive]
    batch_size: Annotated[int, AtLeast(2, ": contrastive loss needs >= 2")]
    lr: Annotated[float, Positive]
    warmup_steps: Annotated[int, NonNegative]
    weight_decay: Annotated[float, NonNegative]
    temperature: Annotated[float, Positive]  # initial InfoNCE temperature (learnable)
    # Of its patients, for choosing the best epoch.
    holdout_fraction: Annotated[float, Check(lambda v: 0 < v < 0.5, " must be in (0, 0.5)")]
    # Images whose text is a figure caption written from their labels instead of their report
    # (PMC-15M's texts are captions; lib/demo/captions.py). 0 = reports only.
    caption_fraction: Annotated[float, Fraction]
    # Training texts cut to this many tokens ([CLS] ... [SEP]); 0 = backbone.context_length.
    # Held-out validation, fine-tuning and evaluation always see whole texts.
    max_text_tokens: Annotated[
        int,
        Check(
            lambda v: v == 0 or v >= 8,
            ": give 0 (whole texts, up to backbone.context_length) or at least 8 tokens",
        ),
    ]
    # report | sentence: as train.text_sampling, for the pretraining corpus's texts.
    text_sampling: Annotated[str, TextSampling]


@dataclasses.dataclass(frozen=True)
class ModelParams(Section):
    """One variant's model and loss settings (``model:`` holds Model A's; ``models:`` the
    differences of the others)."""

    # open_clip model: "local-dir:<path>" or "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-..."
    backbone: Annotated[
        str,
        Check(
            lambda v: v.startswith(("local-dir:", "hf-hub:")),
            ": use 'local-dir:<path>' or 'hf-hub:<repo>'",
        ),
    ]
    use_local_alignment: bool
    use_masking: bool
    mask_mode: MaskMode  # soft (C) | topk: soft top-K (D) | drop: hard token drop (E)
    keep_ratio: Annotated[float, Between(0, 1, open_lo=True)]
    topk_temperature: Annotated[float, Positive]
    # ViT block after which E drops tokens (of backbone depth)
    drop_layer: Annotated[int, AtLeast(1)]
    # InfoNCE temperature: initial, or fixed if not learn_temperature
    temperature: Annotated[float, Positive]
    contrastive_weight_i2t: float
    contrastive_weight_t2i: float
    # all_pairs: GLoRIA's word→patch contrast over every (image, report) pair, O(B²·L·N);
    # within_pair: MGCA's token-level contrast inside each matching pair, O(B·L·N).
    local_mode: LocalMode
    local_weight: float
    local_temperature: Annotated[float, Positive]
    local_dim: Annotated[int, Positive]
    sparse_weight: float
    cons_weight: float
    # Masked-out patches are replaced by feature noise instead of being left out of a
    # weighted mean (lib/model/patch_ib.py, PatchIBModel._masked).
    mask_noise: bool
    # C–E: weight of the mask-guide term (lib/model/losses.py, mask_guide_loss), which
    # teaches the mask where its report's words attend; 0 = the specification's objective.
    # Read only by variants with both a mask and local alignment (the guide is the local
    # alignment's attention); a mask without local alignment trains without it.
    mask_guide_weight: Annotated[float, AtLeast(0, " (0 = off)")]
    # patch_ib: the PatchIBModel of A–E on a timm-ViT + HF-BERT CLIP (BiomedCLIP's layout);
    # convirt: ConVIRT (lib/model/convirt.py) on a CNN (timm ResNet) + HF-BERT backbone, its
    # towers followed by two-layer ReLU MLP heads in -> head_dim -> head_dim.
    architecture: Architecture
    learn_temperature: bool  # False: the InfoNCE temperature stays model.temperature
    # convirt: width of the MLP heads (ConVIRT: 2048->512->512, 768->...)
    head_dim: Annotated[int, Positive]
    # convirt: the text tower's embeddings and its lowest layers kept frozen throughout
    # (ConVIRT froze the embeddings and the first 6 of ClinicalBERT's 12 layers).
    frozen_text_layers: Annotated[int, AtLeast(0, " (0 = none)")]
    # convirt: pooling of the text tower's outputs. max: over the real tokens (ConVIRT's);
    # cls: the [CLS] token; mean: mean of the real tokens.
    text_pool: Literal["max", "cls", "mean"]

    def validate(self) -> None:
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


_RELATIVE = " must be in [0, 1): the largest relative change, e.g. 0.1 (0 = off)"


@dataclasses.dataclass(frozen=True)
class AugmentParams(Section):
    """Image augmentation of training batches (``train.augment``; lib/train/augment.py).

    Ranges are ``[min, max]``; a magnitude of 0 (or a range of ``[1, 1]`` / ``[0, 0]``) turns
    its op off, and ``enabled: false`` or every op off leaves the batch untouched, bit for bit.
    ConVIRT's recipe is crop_scale [0.6, 1], rotation_deg 20, hflip 0.5 and a Gaussian blur.
    """

    enabled: bool
    # Random resized crop: area fraction of the image and aspect ratio (width / height,
    # drawn log-uniformly) of the crop, which is then resized back to the full image.
    crop_scale: Annotated[
        tuple[float, ...], MinMax(0, 1, "e.g. [0.8, 1.0]; [1, 1] = no crop", above_lo=True)
    ]
    crop_ratio: Annotated[
        tuple[float, ...], MinMax(0, math.inf, "e.g. [0.75, 1.33]", above_lo=True)
    ]
    # |angle| <= this, uniform, counter-clockwise positive
    rotation_deg: Annotated[
        float,
        Between(0, 180, " (the largest |angle| in degrees, e.g. 5; 0 = no rotation)"),
    ]
    # zoom: > 1 enlarges the content
    scale: Annotated[
        tuple[float, ...], MinMax(0, math.inf, "e.g. [0.95, 1.05]; [1, 1] = no zoom", above_lo=True)
    ]
    brightness: Annotated[float, Check(lambda v: 0 <= v < 1, _RELATIVE)]  # × U[1 - b, 1 + b]
    # deviation from the image mean × U[1 - c, 1 + c]
    contrast: Annotated[float, Check(lambda v: 0 <= v < 1, _RELATIVE)]
    # Probability of a horizontal flip; 0 because laterality matters in chest X-rays (the
    # heart is on the left, and reports say "left" and "right").
    hflip: Annotated[float, Fraction]
    # Gaussian blur sigma in pixels; 0 = off
    blur_sigma: Annotated[
        tuple[float, ...], MinMax(0, 20, "in pixels, e.g. [0.1, 2.0]; [0, 0] = off")
    ]


@dataclasses.dataclass(frozen=True)
class TrainParams(Section):
    """The training schedule (the spec's "Training Strategy"); demo values in params.yaml."""

    seed: int
    epochs: Annotated[int, Positive]
    batch_size: Annotated[int, AtLeast(2, ": contrastive loss needs >= 2")]
    gradient_accumulation_steps: Annotated[int, Positive]
    staged_training: bool
    # phase 1: backbones frozen, heads + logit_scale at warmup_lr
    warmup_epochs: Annotated[int, NonNegative]
    warmup_lr: Annotated[float, Positive]
    lr: Annotated[float, Positive]  # phase 2 base learning rate (top of each tower)
    llrd_factor: Annotated[float, Positive]
    weight_decay: Annotated[float, NonNegative]
    # linear warm-up of phase 2's cosine schedule (optimizer steps)
    warmup_steps: Annotated[int, NonNegative]
    # combined metric = w * mean recall + (1 - w) * mean AUC
    recall_weight: Annotated[float, Fraction]
    patience: Annotated[int, Positive]
    use_amp: bool  # on CUDA only (bf16 where supported, else fp16 with a scaler)
    # torch.compile the training forward + loss (fewer, fused kernels; pays on a GPU, where
    # the step is launch-bound). The first steps of each phase compile (minutes at BiomedCLIP
    # size); results equal eager within float tolerance.
    compile: bool
    # Threads that decode the split's images once before training (the spec: 4 loader workers).
    num_workers: Annotated[int, Positive]
    eval_batch_size: Annotated[int, Positive]
    val_prompt_template: Annotated[str, HasSlot]
    # Zero-shot score = P(positive prompt) against this negative one; "" scores by the
    # positive prompt's cosine alone.
    val_negative_prompt_template: Annotated[str, HasSlotOrEmpty]
    # "No Finding" is a negation itself: its own (positive, negative) prompts, [] = templates.
    val_no_finding_prompts: Annotated[tuple[str, ...], PromptPair]
    device: Annotated[str, Device]  # auto | cpu | cuda | cuda:N
    # Processes (GPUs) of one machine: > 1 makes stage train@X launch itself under torchrun
    # with DistributedDataParallel; batch_size stays the global batch.
    nproc_per_node: Annotated[int, AtLeast(1)]
    # The text of a training pair: the whole report (the specification), or one sentence of
    # it drawn afresh each step from (seed, epoch, batch) (ConVIRT). Validation, embedding
    # and evaluation always use the whole report.
    text_sampling: Annotated[str, TextSampling]
    # Augmentation of training batches only (never validation or evaluation).
    augment: AugmentParams

    def validate(self) -> None:
        if self.batch_size % self.nproc_per_node:
            raise ParamsError(
                f"train.nproc_per_node = {self.nproc_per_node} must be >= 1 and divide "
                f"train.batch_size = {self.batch_size} (the global batch)"
            )
        if self.staged_training and self.warmup_epochs >= self.epochs:
            raise ParamsError(
                f"train.warmup_epochs = {self.warmup_epochs} must be >= 0 and < train.epochs = "
                f"{self.epochs} (or set train.staged_training: false)"
            )


@dataclasses.dataclass(frozen=True)
class PackParams(Section):
    """Stage pack_images: every image decoded once into a memory-mapped array."""

    # decoding (pillow) or file-reading (nvjpeg) threads; 0 = every core
    workers: Annotated[int, AtLeast(0, " (0 = every core)")]
    chunk_size: Annotated[int, Positive]  # images per resumable chunk
    # Share of images that may be unreadable (counted, listed, left out) before the stage
    # fails; MIMIC-CXR-JPG has none, so a larger share means a damaged copy.
    max_failed_fraction: Annotated[float, Fraction]
    # pillow: JPEG draft mode on the CPU cores, bit-identical to the direct path.
    # nvjpeg: batched decode on the GPU (lib/data/jpeg_batch.py); within 3 grey levels of it.
    decoder: Annotated[
        str,
        Check(
            lambda v: v in ("pillow", "nvjpeg"),
            " must be 'pillow' (CPU, draft mode) or 'nvjpeg' (batched decode on the GPU)",
        ),
    ]
    gpu_batch_size: Annotated[int, Positive]  # JPEGs per nvJPEG call


@dataclasses.dataclass(frozen=True)
class ReplicateParams(Section):
    """Training-seed replicates: stage replicate@<variant>-<seed> trains, embeds and scores
    each variant again with each of these seeds (besides its own ``train.seed``, whose run
    is train@/embed@/eval@), so that ``compare`` can put the seed spread beside the
    patient-bootstrap intervals. A separate section, not a train key, so that adding seeds
    leaves the variants' configs, and so their trained models, as they are."""

    seeds: Annotated[
        tuple[int, ...],
        Check(
            lambda v: all(s >= 0 for s in v) and len(set(v)) == len(v),
            ": give distinct seeds >= 0 (or [] for none)",
        ),
    ]


# Fractions of the train split's labelled images: distinct, each in (0, 1].
_FRACTIONS_OK = Check(
    lambda v: bool(v) and all(0 < f <= 1 for f in v) and len(set(v)) == len(v),
    ": distinct fractions in (0, 1], e.g. [0.01, 0.1, 1.0]",
)


@dataclasses.dataclass(frozen=True)
class EvalParams(Section):
    """Evaluation on the test split (stages embed@X, eval@X, compare); changing any of these
    re-runs evaluation only, never training."""

    # Zero-shot classification: one prompt per CheXpert label ("{}" = the label in lower case).
    prompt_template: Annotated[str, HasSlot]
    # "" = score by the positive prompt's cosine alone; a template = P(positive) of the
    # positive/negative prompt pair (what validation uses).
    negative_prompt_template: Annotated[str, HasSlotOrEmpty]
    # "No Finding" is a negation itself ("showing no no finding"): its own (positive,
    # negative) prompts; [] = the templates.
    no_finding_prompts: Annotated[tuple[str, ...], PromptPair]
    recall_ks: Annotated[
        tuple[int, ...],
        Check(lambda v: bool(v) and all(k >= 1 for k in v), ": give K >= 1, e.g. [1, 5, 10]"),
    ]
    recall_curve_max_k: int  # the Recall@K plot's last K
    # ConVIRT's linear-evaluation protocol: fractions of the train split's labelled images.
    probe_fractions: Annotated[
        tuple[float, ...],
        Check(
            lambda v: bool(v) and all(0 < f <= 1 for f in v),
            ": each must be in (0, 1], e.g. [0.01, 0.1, 1.0]",
        ),
        Distinct,
    ]
    probe_c: Annotated[float, Positive]  # inverse L2 strength of the logistic regressions
    # patient-level bootstrap rounds for every confidence interval
    bootstrap: Annotated[int, Positive]
    ci_level: Annotated[float, Check(lambda v: 0 < v < 1, " must be in (0, 1), e.g. 0.95")]
    seed: int  # probe subsamples and bootstrap resamples
    # test images in the Patch-IB explainability figure
    explain_images: Annotated[int, NonNegative]
    batch_size: Annotated[int, Positive]
    num_workers: Annotated[int, Positive]  # threads decoding images
    device: Annotated[str, Device]  # auto | cpu | cuda | cuda:N
    # The raw-pixel floor (stage pixel_probe): PCA to this many components, fitted on at most
    # this many train images (a seeded subsample; bounds memory and time at MIMIC scale).
    pixel_pca_dim: Annotated[int, Positive]
    pixel_pca_max_images: int
    # ConVIRT's fine-tuning evaluation (lib/eval/finetune.py, in embed@X): the image encoder
    # + a linear head trained on these fractions of the labelled train images (the probe's
    # nested rows, eval.seed), the epoch with the best val mean AUC scored on test.
    finetune: bool
    finetune_fractions: Annotated[tuple[float, ...], _FRACTIONS_OK]
    finetune_epochs: Annotated[int, Positive]
    finetune_lr: Annotated[float, Positive]
    finetune_batch_size: Annotated[int, Positive]

    def validate(self) -> None:
        if self.recall_curve_max_k < max(self.recall_ks):
            raise ParamsError(
                f"eval.recall_curve_max_k = {self.recall_curve_max_k} must be >= the largest of "
                f"eval.recall_ks ({max(self.recall_ks)})"
            )
        if self.pixel_pca_max_images < self.pixel_pca_dim:
            raise ParamsError(
                f"eval.pixel_pca_max_images = {self.pixel_pca_max_images} must be >= "
                f"eval.pixel_pca_dim = {self.pixel_pca_dim} (PCA needs at least as many images "
                "as components)"
            )


Grade = Literal["D", "C", "B", "A", "A+", "A++"]


@dataclasses.dataclass(frozen=True)
class VqaDataParams(Section):
    """How stage vqa_readiness reads a MIMIC-Ext-CXR-QBA-format directory (docs/vqa.md)."""

    # Lowest quality grade kept (D < C < B < A < A+ < A++): A fine-tuning, B pre-training.
    min_grade: Grade
    # ViewPosition values of the image each study's questions are asked on (frontal).
    views: Annotated[tuple[str, ...], Check(len, " is empty; e.g. [PA, AP]")]
    # Questions kept per study (a seeded subset; 0 = all).
    max_questions_per_study: Annotated[int, NonNegative]
    seed: int
    # Malformed questions (missing fields, empty answers, unknown image ids) allowed.
    max_malformed_fraction: Annotated[float, Fraction]
    # Fewer kept questions than this: not ready.
    min_questions: Annotated[int, Positive]
    # Question types (with or without prefix) each head answers; others are counted, left out.
    binary_types: tuple[str, ...]
    category_types: tuple[str, ...]
    region_types: tuple[str, ...]
    severity_types: tuple[str, ...]
    # Bias warnings: minority polarity share of binary answers below this; a region's share
    # of region answers below this; one question type's share above this.
    min_polarity_fraction: Annotated[float, Fraction]
    min_region_fraction: Annotated[float, Fraction]
    max_type_fraction: Annotated[float, Fraction]


@dataclasses.dataclass(frozen=True)
class DemoQbaParams(Section):
    """The demo's QA in MIMIC-Ext-CXR-QBA's format (stage demo_qba)."""

    seed: int
    # Questions written per study (a subset keeps the demo small).
    questions_per_study: Annotated[int, Positive]
    # Shares of grades B, C and D (the rest are A).
    fraction_b: Annotated[float, Fraction]
    fraction_c: Annotated[float, Fraction]
    fraction_d: Annotated[float, Fraction]

    def validate(self) -> None:
        if self.fraction_b + self.fraction_c + self.fraction_d > 1:
            raise ParamsError(
                "demo_qba.fraction_b + fraction_c + fraction_d must be <= 1; lower one of them"
            )


@dataclasses.dataclass(frozen=True)
class VQAParams(Section):
    """Stages vqa@X, vqa_pretrained and the floors (lib/vqa/): the scene-graph VQA head on a
    backbone's frozen (or fine-tuned) towers, trained on the train split's questions; the
    epoch with the best validation accuracy is scored on test."""

    seed: int  # head initialisation, question subsample, batch order, bootstrap
    epochs: Annotated[int, Positive]
    batch_size: Annotated[int, Positive]
    lr: Annotated[float, Positive]
    weight_decay: Annotated[float, NonNegative]
    hidden: Annotated[int, Positive]  # SIM width (768 in the seed)
    heads: Annotated[int, Positive]  # attention heads (12 in the seed)
    layers: Annotated[int, Positive]  # SIM cross-modal layers (2 in the seed)
    dropout: Annotated[float, Fraction]
    aux_weight: Annotated[float, NonNegative]  # CheXpert auxiliary head's loss weight (0.3)
    fine_tune: bool  # false = X's image tower frozen, its features computed once
    # questions sampled per split (seeded; 0 = all): the demo's budget
    max_train_questions: Annotated[int, NonNegative]
    max_eval_questions: Annotated[int, NonNegative]
    # scene nodes given to the model (lib/vqa/train.scene_nodes): "anatomy" = one node per
    # region, its mean box over the train scene graphs, the same for every study (nothing of
    # the study leaks into the input); "full" = the study's own observations (an oracle)
    scene_nodes: Annotated[
        str, Check(lambda v: v in ("anatomy", "full"), " must be 'anatomy' or 'full'")
    ]
    # BERTScore's text tower: a local Hugging Face BERT folder (model.safetensors), or an
    # open_clip local-dir folder whose text tower is a BERT (the demo backbone's); null = no
    # BERTScore. Never downloaded.
    bertscore_model: str | None
    # Test questions with reference boxes drawn with the model's attention (plots/vqa/X).
    attention_examples: Annotated[int, NonNegative]

    def validate(self) -> None:
        if self.hidden % self.heads:
            raise ParamsError(
                f"vqa.hidden = {self.hidden} must be a multiple of vqa.heads = {self.heads}"
            )


@dataclasses.dataclass(frozen=True)
class Params:
    demo: DemoParams
    data: DataParams
    qc: QCParams
    backbone: BackboneParams
    convirt_backbone: ConvirtBackboneParams
    pretrain: PretrainParams
    model: ModelParams
    train: TrainParams
    pack: PackParams
    eval: EvalParams
    replicates: ReplicateParams
    vqa: VQAParams
    vqa_data: VqaDataParams
    demo_qba: DemoQbaParams
    # variant name -> raw overrides of model / train (validated by lib.config.variants)
    models: dict[str, Any]


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
    "vqa": VQAParams,
    "vqa_data": VqaDataParams,
    "demo_qba": DemoQbaParams,
}


def parse_sections(raw: Mapping[str, Any], source: str = "params.yaml") -> Params:
    """Every section of params.yaml as its dataclass; ``models`` is kept raw here (the
    variants are resolved and cross-checked by ``lib.config.loader``, above this module)."""
    unknown = sorted(set(raw) - set(_SECTION_TYPES) - {"models"})
    if unknown:
        raise ParamsError(
            f"{source}: unknown section(s) {unknown}; valid sections: {sorted(_SECTION_TYPES)}"
        )
    missing = [name for name in (*_SECTION_TYPES, "models") if name not in raw]
    if missing:
        raise ParamsError(
            f"{source}: missing section(s) {missing}; every section is required (nothing "
            "falls back to a default): copy them from the committed params.yaml"
        )
    sections = {
        name: build_section(cls, raw[name], name, source) for name, cls in _SECTION_TYPES.items()
    }
    models = raw["models"] or {}
    if not isinstance(models, Mapping):
        raise ParamsError(f"{source}: 'models' must map variant names to overrides")
    return Params(**sections, models=dict(models))


def build_section(cls: type, raw: Any, name: str, source: str = "params.yaml") -> Any:
    """Build one section dataclass from its YAML mapping, checking keys, types and each
    field's constraints, then the section's cross-field rules (``validate()``)."""
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{source}: section '{name}' must be a mapping, got {raw!r}")
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(
            f"{source}: unknown key(s) {[f'{name}.{k}' for k in unknown]}; "
            f"valid keys of '{name}': {sorted(fields)}"
        )
    missing = [k for k in fields if k not in raw]
    if missing:
        raise ParamsError(
            f"{source}: missing key(s) {[f'{name}.{k}' for k in missing]}; every key is "
            f"required (nothing falls back to a default): add {_it(missing)} "
            f"under '{name}' (the committed params.yaml has each, with a comment)"
        )
    hints = typing.get_type_hints(cls, include_extras=True)
    values = {k: _coerce(hints[k], raw[k], f"{name}.{k}", source) for k in fields}
    obj = cls(**values)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def _it(keys: list[str]) -> str:
    return "it" if len(keys) == 1 else "them"


def field_checks(cls: type) -> dict[str, tuple[Check, ...]]:
    """Each field's single-field constraints (its ``Annotated`` markers), by field name."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {
        name: tuple(m for m in getattr(tp, "__metadata__", ()) if isinstance(m, Check))
        for name, tp in hints.items()
    }


def _coerce(tp: Any, value: Any, key: str, source: str, finite: bool = True) -> Any:
    if typing.get_origin(tp) is Annotated:
        base, *marks = typing.get_args(tp)
        out = _coerce(base, value, key, source, finite=AllowNonFinite not in marks)
        for check in (m for m in marks if isinstance(m, Check)):
            if out is not None and not check.test(out):
                raise ParamsError(f"{source}: {key} = {_show(out)}{check.need}")
        return out
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ParamsError(f"{source}: {key} = {value!r} is not a valid {_describe(tp)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key, source, finite)
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
        return tuple(
            _coerce(args[0], v, f"{key}[{i}]", source, finite) for i, v in enumerate(value)
        )
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
        if finite and not math.isfinite(value):
            raise ParamsError(
                f"{source}: {key} = {value!r} is not a finite number; give a real value "
                "(YAML's .nan and .inf are refused)"
            )
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if dataclasses.is_dataclass(tp):  # a nested section, e.g. train.augment
        return build_section(tp, value, key, source)
    raise ParamsError(f"{source}: {key}: unsupported parameter type {tp!r}")  # pragma: no cover


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return str(list(value))
    return repr(value) if isinstance(value, str) else str(value)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Annotated:
        return _describe(typing.get_args(tp)[0])
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"list of {_describe(typing.get_args(tp)[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


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
