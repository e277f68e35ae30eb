"""Benchmark: training and inference throughput, model FLOPs utilisation and peak memory of
models A–E and ConVIRT, phase 1 (towers frozen) and phase 2 (everything trains).

    python benchmarks/train_throughput.py --size biomedclip --batches 64,256   # on a GPU
    python benchmarks/train_throughput.py --size demo --device cpu             # the demo backbone
    python benchmarks/train_throughput.py --size biomedclip --variants A --phases 2 --compile
    python benchmarks/train_throughput.py --variants BE --local-mode both      # GLoRIA vs MGCA
    python benchmarks/train_throughput.py --variants AE --profile out/          # kernel tables
    python benchmarks/train_throughput.py --variants A,ConVIRT --phases 2      # vs ConVIRT

Random weights (a BiomedCLIP-shaped backbone written by the demo-backbone code: timm
ViT-B/16 at 224 px, a 12-layer 768-wide BERT, context 256; for ConVIRT, timm's ResNet-50
beside the same BERT, at ``--size demo`` the demo's ResNet) and synthetic batches: it
measures the model and the optimizer step, not the input pipeline (the pack and loader serve
tens of thousands of images/s, benchmarks/README.md). Each step is the training loop's: AMP
on CUDA (bf16 where supported), ``lib.train.optim.adamw`` over the LLRD groups (fused on a
GPU), the logit-scale clamp, loss terms summed on the device with no host read per step.

Columns: images/s over ``--steps`` timed steps after 3 warm-up steps (compiled: after the
compiling steps); the step's model FLOPs counted by ``torch.utils.flop_counter`` (matrix
products and attention, forward and backward as executed: a frozen tower has no weight
gradients); achieved TFLOP/s; MFU against ``--peak-tflops`` (the GPU's dense bf16 peak,
known for H100/H200); the CUDA allocator's peak (or the process's peak RSS on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
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
from lib.model.build import Model, build_model
from lib.model.convirt import write_convirt_backbone
from lib.model.losses import MAX_LOGIT_SCALE, compute_losses
from lib.model.patch_ib import trim_padding
from lib.train.optim import adamw, param_groups

SIZES = {
    "demo": None,  # params.yaml's backbone section
    "biomedclip": BackboneParams(
        seed=0,
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
        vision_pool="avg",
        text_pool="mean",
        patch_embed="linear",
    ),
}
# Dense bf16 tensor-core peak (TFLOP/s, no sparsity) by device-name fragment.
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
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


@dataclasses.dataclass
class Result:
    rate: float  # images/s
    step_ms: float
    peak_mib: float
    flops: float | None = None  # model FLOPs of one step


class Stepper:
    """One training step as lib/train/loop.py takes it, optionally compiled."""

    def __init__(self, model: Model, params: ModelParams, device: torch.device,
                 phase: int, compile_: bool) -> None:  # fmt: skip
        self.model, self.params = model, params
        model.set_backbone_frozen(phase == 1)
        model.train()
        llrd = 1.0 if phase == 1 or params.architecture == "convirt" else 0.85
        self.opt = adamw(param_groups(model, 1e-5, 0.05, llrd), 1e-5, device)
        self.autocast, self.scaler = autocast_and_scaler(device, use_amp=True)
        self.losses = torch.compile(self._losses) if compile_ else self._losses
        self.sums: torch.Tensor | None = None

    def _losses(self, x: torch.Tensor, tok: torch.Tensor) -> dict[str, torch.Tensor]:
        img, txt = self.model(x, tok)
        return compute_losses(img, txt, self.model.logit_scale, self.params)

    def __call__(self, x: torch.Tensor, tok: torch.Tensor) -> None:
        with self.autocast():
            total = self.losses(x, tok)["total"]
        (self.scaler.scale(total) if self.scaler else total).backward()
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        loss = total.detach().float()
        self.sums = loss if self.sums is None else self.sums + loss


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(step: Stepper, x: torch.Tensor, tok: torch.Tensor) -> float:
    """Model FLOPs of one eager step (forward and backward as executed)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    losses, step.losses = step.losses, step._losses  # count the eager graph
    with counter:
        step(x, tok)
    step.losses = losses
    return float(counter.get_total_flops())


def measure(step: Stepper, x: torch.Tensor, tok: torch.Tensor, steps: int,
            device: torch.device, warmup: int) -> Result:  # fmt: skip
    for _ in range(warmup):
        step(x, tok)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(x, tok)
    float(step.sums)  # the one host read, as at an epoch's end
    sync(device)
    seconds = time.perf_counter() - start
    (peak,) = peak_memory(device).values()  # MiB
    return Result(steps * len(x) / seconds, 1000 * seconds / steps, peak)


@torch.no_grad()
def inference(model: Model, x: torch.Tensor, steps: int, device: torch.device,
              bf16_weights: bool) -> tuple[float, torch.Tensor]:  # fmt: skip
    """(image embeddings per second, the embeddings of x), as embed@X computes them: bf16
    weights (lib.device.inference_dtype) or float32 weights under autocast."""
    model.eval()
    if bf16_weights:
        model = copy.deepcopy(model).to(torch.bfloat16)
        x, ctx = x.to(torch.bfloat16), contextlib.nullcontext
    else:
        ctx = autocast_and_scaler(device, use_amp=True)[0]
    for _ in range(3):
        with ctx():
            emb = model.encode_image(x).global_emb.float()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        with ctx():
            model.encode_image(x).global_emb.float()
    sync(device)
    return steps * len(x) / (time.perf_counter() - start), emb


def profile(step: Stepper, x: torch.Tensor, tok: torch.Tensor, device: torch.device,
            out: Path, name: str) -> None:  # fmt: skip
    """Kernel and operator tables of 5 steps (after 3 warm-up) into ``out``."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(3):
        step(x, tok)
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for _ in range(5):
            step(x, tok)
        sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=70)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"profile_{name}.txt").write_text(table)
    trace = out / f"trace_{name}.json"
    prof.export_chrome_trace(str(trace))
    print(f"(profile of {name}: {out / f'profile_{name}.txt'}, {trace})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="biomedclip")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="64", help="comma-separated batch sizes")
    ap.add_argument("--phases", default="1,2")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--words", type=int, default=60, help="words per synthetic report")
    ap.add_argument("--variants", default="A,B,C,D,E,ConVIRT", help="comma-separated (or ABCDE)")
    ap.add_argument("--local-mode", choices=["all_pairs", "within_pair", "both"],
                    default="all_pairs", help="model.local_mode of B–E")  # fmt: skip
    ap.add_argument("--compile", action="store_true", help="torch.compile the step")
    ap.add_argument("--inference", action="store_true", help="also image-embedding speed")
    ap.add_argument("--profile", type=Path, help="write per-variant kernel tables here")
    ap.add_argument("--peak-tflops", type=float, help="for MFU (default: known GPUs)")
    args = ap.parse_args()

    device = torch.device(args.device)
    bparams = SIZES[args.size] or load_params().backbone
    variants = resolve_all(load_params())
    names = (
        args.variants.split(",")
        if "," in args.variants or args.variants in variants
        else list(args.variants)
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    batches = [int(b) for b in args.batches.split(",")]
    phases = [int(p) for p in args.phases.split(",")]
    modes = ["all_pairs", "within_pair"] if args.local_mode == "both" else [args.local_mode]
    kind = "CUDA max allocated" if device.type == "cuda" else "process peak RSS"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "backbone"
        write_demo_backbone(folder, fake_texts(200, args.words), bparams)
        # ConVIRT: the same BERT beside a ResNet (timm's ResNet-50 at real size).
        convirt = Path(tmp) / "convirt"
        resnet = None if args.size == "demo" else "resnet50"
        write_convirt_backbone(convirt, folder, load_params().convirt_backbone, timm_name=resnet)
        loaded = load_backbone(f"local-dir:{folder}")
        tokenizer, pad_id = loaded.tokenizer, loaded.pad_id
        print(
            f"\n{args.size} backbone on {name}, torch {torch.__version__}, {args.words}-word "
            f"reports, {args.steps} timed steps{', compiled' if args.compile else ''}\n"
        )
        print(
            f"| model | local mode | batch | phase | images/s | step ms | GFLOP/step | "
            f"TFLOP/s | MFU | {kind} (GiB) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        )
        inference_rows = []
        for v in names:
            mp = variants[v].model
            if mp.mask_mode == "drop":
                mp = dataclasses.replace(mp, drop_layer=bparams.vision_depth // 2)
            for mode in modes if mp.use_local_alignment else ["none"]:
                if mp.use_local_alignment:
                    mp = dataclasses.replace(mp, local_mode=mode)
                torch.manual_seed(0)
                where = convirt if mp.architecture == "convirt" else folder
                model = build_model(load_backbone(f"local-dir:{where}"), mp).to(device)
                for batch in batches:
                    x = torch.randn(batch, 3, bparams.image_size, bparams.image_size,
                                    device=device)  # fmt: skip
                    tok = trim_padding(tokenizer(fake_texts(batch, args.words)), pad_id)
                    tok = tok.to(device)
                    for phase in phases:
                        if phase == 1 and not variants[v].train.staged_training:
                            continue  # ConVIRT trains everything from the first step
                        row = f"| {v} | {mode} | {batch} | {phase} |"
                        try:
                            step = Stepper(model, mp, device, phase, args.compile)
                            flops = count_flops(step, x, tok)
                            res = measure(step, x, tok, args.steps, device,
                                          warmup=5 if args.compile else 3)  # fmt: skip
                        except torch.OutOfMemoryError:
                            print(f"{row} out of memory | | | | | |", flush=True)
                            torch.cuda.empty_cache()
                            continue
                        tflops = flops / 1e12 / (res.step_ms / 1000)
                        mfu = f"{100 * tflops / peak:.1f} %" if peak else "—"
                        print(
                            f"{row} {res.rate:,.0f} | {res.step_ms:.1f} | {flops / 1e9:,.0f} | "
                            f"{tflops:.1f} | {mfu} | {res.peak_mib / 1024:.1f} |",
                            flush=True,
                        )
                        if args.profile and phase == phases[-1] and batch == batches[-1]:
                            profile(step, x, tok, device, args.profile, f"{v}_{mode}_{batch}")
                        del step
                    if args.inference and batch == batches[-1] and mode in (modes[0], "none"):
                        bf16, emb16 = inference(model, x, args.steps, device, True)
                        amp, emb32 = inference(model, x, args.steps, device, False)
                        cos = float((emb16 * emb32).sum(-1).min())
                        inference_rows.append((v, batch, bf16, amp, cos))
                del model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if inference_rows:
            print(
                "\n| model | batch | bf16 weights img/s | fp32 weights + autocast img/s | "
                "lowest cosine between the two embeddings |\n|---|---:|---:|---:|---:|"
            )
            for v, batch, bf16, amp, cos in inference_rows:
                print(f"| {v} | {batch} | {bf16:,.0f} | {amp:,.0f} | {cos:.4f} |")


if __name__ == "__main__":
    main()
