"""Benchmark: training throughput (images/s) and peak memory of models A–E, phase 1 and 2.

    python benchmarks/train_throughput.py --size biomedclip --device cuda   # ViT-B/16 + BERT-base
    python benchmarks/train_throughput.py --size demo --device cpu          # the demo backbone

Random weights (a BiomedCLIP-shaped backbone written by the demo-backbone code: timm
ViT-B/16 at 224 px, a 12-layer 768-wide BERT, context 256), synthetic batches: it measures
the model and the optimizer step, not the input pipeline. AMP on CUDA as in training
(bf16 where supported). Phase 1 freezes both backbones; phase 2 trains everything.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.config.loader import load_params
from lib.config.params import BackboneParams, ModelParams
from lib.config.variants import resolve_all
from lib.device import autocast_and_scaler, peak_memory
from lib.model.backbone import load_backbone, write_demo_backbone
from lib.model.losses import compute_losses
from lib.model.patch_ib import PatchIBModel
from lib.train.optim import param_groups

SIZES = {
    "demo": None,  # params.yaml's backbone section
    "biomedclip": BackboneParams(
        image_size=224,
        patch_size=16,
        vision_width=768,
        vision_depth=12,
        vision_heads=12,
        text_width=768,
        text_layers=12,
        text_heads=12,
        vocab_size=30522,
        context_length=256,
        embed_dim=512,
    ),
}
WORDS = [
    "heart",
    "size",
    "is",
    "normal",
    "no",
    "pleural",
    "effusion",
    "or",
    "pneumothorax",
    "moderate",
    "cardiomegaly",
    "small",
    "left",
    "effusion",
    "endotracheal",
    "tube",
    "terminates",
    "above",
    "the",
    "carina",
]


def fake_texts(n: int, words: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    return [
        " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (words,), generator=g))
        for _ in range(n)
    ]


def measure(
    model: PatchIBModel,
    params: ModelParams,
    phase: int,
    x: torch.Tensor,
    tok: torch.Tensor,
    steps: int,
    device: torch.device,
) -> tuple[float, float]:
    model.set_backbone_frozen(phase == 1)
    opt = torch.optim.AdamW(param_groups(model, 1e-4, 0.05, 1.0 if phase == 1 else 0.85))
    autocast, scaler = autocast_and_scaler(device, use_amp=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(steps + 3):  # 3 warm-up steps
        if i == 3:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        with autocast():
            img, txt = model(x, tok)
            loss = compute_losses(img, txt, model.logit_scale, params)["total"]
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    (peak,) = peak_memory(device).values()  # MiB: CUDA allocator's peak, else peak RSS
    return steps * len(x) / (time.perf_counter() - start), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="demo")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--words", type=int, default=60, help="words per synthetic report")
    ap.add_argument("--variants", default="ABCDE")
    args = ap.parse_args()

    params = load_params()
    device = torch.device(args.device)
    bparams = SIZES[args.size] or params.backbone
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "backbone"
        write_demo_backbone(folder, fake_texts(200, args.words), bparams)
        backbone = load_backbone(f"local-dir:{folder}", device=device)
        x = torch.randn(args.batch, 3, bparams.image_size, bparams.image_size, device=device)
        tok = backbone.tokenizer(fake_texts(args.batch, args.words)).to(device)
        variants = resolve_all(params)
        kind = "CUDA max allocated" if device.type == "cuda" else "process peak RSS"
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        print(
            f"\n{args.size} backbone on {name}, batch {args.batch}, {args.words}-word "
            f"reports, {args.steps} steps\n"
        )
        print(f"| model | phase | images/s | {kind} (MiB) |\n|---|---|---:|---:|")
        for v in args.variants:
            mp = variants[v].model
            if mp.mask_mode == "drop":
                mp = type(mp)(**{**mp.__dict__, "drop_layer": bparams.vision_depth // 2})
            fresh = load_backbone(f"local-dir:{folder}", device=device)
            model = PatchIBModel(fresh, mp).to(device)
            for phase in (1, 2):
                rate, peak = measure(model, mp, phase, x, tok, args.steps, device)
                print(f"| {v} | {phase} | {rate:,.1f} | {peak:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
