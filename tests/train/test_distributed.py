"""Distributed building blocks: two Gloo ranks on CPU against a single process.

The check that matters: DDP on 2 ranks, each encoding its shard and computing the loss on
the gathered outputs, gives the single-process loss of the global batch and, after DDP's
gradient averaging, the single-process gradient of every parameter, without rescaling.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lib.config.fixed import fixed_model, fixed_train
from lib.config.params import ModelParams
from lib.model.backbone import Backbone, load_backbone
from lib.model.losses import compute_losses
from lib.model.patch_ib import ImageOutput, PatchIBModel, TextOutput
from lib.train.distributed import (
    DistInfo,
    DistributedError,
    cleanup,
    gather_outputs,
    gather_padded,
    gather_with_grad,
    init_distributed,
    shard_batch,
)

# conftest's tiny backbone: 32-px images, 16-px patches (N = 4).
WORLD = 2
# Global batch of 8: rank 0's shard holds the short reports, rank 1's the long ones, so the
# two ranks trim their tokens to different lengths and word_emb / word_mask need padding.
TEXTS = [
    "no effusion.",
    "clear lungs.",
    "mild cardiomegaly.",
    "no pneumothorax.",
    "small left pleural effusion with bibasilar atelectasis and mild pulmonary edema.",
    "moderate cardiomegaly. the lungs are clear. no pleural effusion or pneumothorax.",
    "right lower lobe consolidation concerning for pneumonia. no pleural effusion.",
    "stable mild pulmonary edema, small bilateral effusions and bibasilar atelectasis.",
]
CONFIGS = {
    "A": {},
    "local+soft mask": dict(use_local_alignment=True, use_masking=True),
    "local+drop": dict(
        use_local_alignment=True, use_masking=True, mask_mode="drop", drop_layer=1, keep_ratio=0.5
    ),
}
# The two runs sum the same float32 terms in a different order (two half-batch matmuls and a
# cross-rank sum instead of one full-batch matmul; text trimmed to another length). Measured
# (x86-64, 2 cores) with CLS pooling: losses bit-identical, worst gradient difference ~3e-7
# relative. With the demo's mean pooling (backbone.text_pool: mean) every word token feeds the
# shared embedding tables, so their gradients sum B·L terms: worst 1.4e-5 relative (4.5e-6 on
# an entry of 0.32, BERT's token-type embedding, mode local+drop). rtol 1e-4 keeps a 7x margin
# and still fails on any wrong factor (2x, 1/2); atol 1e-6 covers gradients that are ~0
# (BERT's key bias: softmax ignores a shift, its gradient is ~1e-11 noise).
RTOL, ATOL = 1e-4, 1e-6
TIME_LIMIT_S = 120


def trim(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Drop the columns that are padding in every row, as training does per batch."""
    used = (tokens != pad_id).any(dim=0).nonzero()
    return tokens[:, : int(used.max()) + 1]


def inputs(backbone: Backbone) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(len(TEXTS), 3, 32, 32, generator=torch.Generator().manual_seed(7))
    return images, backbone.tokenizer(TEXTS)


def make_model(backbone_dir: Path, settings: dict) -> tuple[PatchIBModel, Backbone]:
    """The same model in every process: weights from the folder, new heads from seed 0."""
    backbone = load_backbone(f"local-dir:{backbone_dir}")  # a fresh one: the model owns it
    torch.manual_seed(0)
    model = PatchIBModel(backbone, fixed_model(local_dim=16, **settings)).train()
    # Train mode (nothing batch-dependent may hide behind eval), but deterministic: the demo
    # backbone has no dropout, and neither ViT drop-path nor dropout may be switched on.
    assert all(m.p == 0 for m in model.modules() if isinstance(m, nn.Dropout))
    assert not any(type(m).__name__ == "DropPath" for m in model.modules())
    return model, backbone


def single_process(backbone_dir: Path, settings: dict) -> tuple[dict, dict, dict]:
    """Losses, gradients and the integer / bool outputs of one process on the global batch."""
    model, backbone = make_model(backbone_dir, settings)
    images, tokens = inputs(backbone)
    img, txt = model(images, trim(tokens, backbone.pad_id))
    losses = compute_losses(img, txt, model.logit_scale, model.params)
    losses["total"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    outputs = {"word_mask": txt.word_mask, "kept_index": img.kept_index}
    return {k: v.detach() for k, v in losses.items()}, grads, outputs


def assert_close(actual: torch.Tensor, expected: torch.Tensor, where: str) -> None:
    torch.testing.assert_close(
        actual, expected, rtol=RTOL, atol=ATOL, msg=lambda m: f"{where}: {m}"
    )


def check_gather_padded(rank: int) -> dict:
    """gather_padded on rank-dependent lengths, its gradient, and its shape check."""
    x = torch.full((2, rank + 1), float(rank + 1), requires_grad=True)  # (b, L_r)
    gathered = gather_padded(x, dim=1, pad_value=-1.0)  # (W·b, max L_r)
    weights = torch.arange(gathered.numel(), dtype=torch.float32).view(gathered.shape)
    (gathered * weights).sum().backward()  # the same loss on both ranks
    try:
        gather_padded(torch.zeros(rank + 1, 3), dim=1)  # batch sizes differ
        error = ""
    except DistributedError as e:
        error = str(e)
    return {"padded": gathered.detach(), "padded_grad": x.grad, "padded_error": error}


def worker(rank: int, port: int, backbone_dir: Path, out_dir: Path) -> None:
    """One rank: DDP over the shard, loss on the gathered outputs; results to rank<r>.pt."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # two ranks on two cores
    info = init_distributed("cpu", timeout=timedelta(seconds=60))
    try:
        results: dict = {"info": dataclasses.astuple(info), **check_gather_padded(rank)}
        for name, settings in CONFIGS.items():
            model, backbone = make_model(backbone_dir, settings)
            ddp = DistributedDataParallel(model)
            images, tokens = inputs(backbone)
            idx = torch.as_tensor(shard_batch(np.arange(len(TEXTS)), rank, WORLD))
            x, tok = images[idx], trim(tokens[idx], backbone.pad_id)
            # Two steps: the second forward fails if the first left DDP's reduction unfinished
            # (a parameter without gradient); with no optimizer step both give the same grads.
            for _ in range(2):
                ddp.zero_grad(set_to_none=True)
                img, txt = ddp(x, tok)
                local = compute_losses(img, txt, model.logit_scale, model.params)["total"]
                g_img, g_txt = gather_outputs(img, txt)
                losses = compute_losses(g_img, g_txt, model.logit_scale, model.params)
                losses["total"].backward()
            results[name] = {
                "losses": {k: v.detach() for k, v in losses.items()},
                "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
                "local_total": local.detach(),
                "text_len": tok.shape[1],
                "word_mask": None if g_txt.word_mask is None else g_txt.word_mask.clone(),
                "kept_index": None if g_img.kept_index is None else g_img.kept_index.clone(),
                "shared_mask": g_img.patch_weight is g_img.mask,
            }
        torch.save(results, out_dir / f"rank{rank}.pt")
    finally:
        cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(backbone_dir: Path, out_dir: Path) -> list[dict]:
    context = mp.spawn(worker, args=(free_port(), backbone_dir, out_dir), nprocs=WORLD, join=False)
    deadline = time.monotonic() + TIME_LIMIT_S
    while not context.join(timeout=1):  # re-raises a rank's exception with its traceback
        if time.monotonic() > deadline:
            for proc in context.processes:
                proc.kill()
            pytest.fail(f"the {WORLD} ranks did not finish in {TIME_LIMIT_S} s (deadlock?)")
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.fixture(scope="module")
def backbone_dir(tiny_backbone: Path) -> Path:
    return tiny_backbone


# --- two ranks against one process --------------------------------------------------------


def test_ddp_matches_single_process(backbone_dir, tmp_path):
    ranks = run_ranks(backbone_dir, tmp_path)
    assert [DistInfo(*r["info"]) for r in ranks] == [DistInfo(r, WORLD, r) for r in range(WORLD)]
    expected = torch.tensor([[1.0, -1.0], [1.0, -1.0], [2.0, 2.0], [2.0, 2.0]])
    weights = torch.arange(8.0).view(4, 2)
    for rank, res in enumerate(ranks):
        assert torch.equal(res["padded"], expected)
        # Rank r's slice gets the sum of both ranks' (equal) gradients: W·∂L/∂x_r.
        assert torch.equal(res["padded_grad"], WORLD * weights[2 * rank : 2 * rank + 2, : rank + 1])
        assert "differ outside dim 1" in res["padded_error"]
    for name, settings in CONFIGS.items():
        ref_losses, ref_grads, ref_outputs = single_process(backbone_dir, settings)
        # The shards really differ in text length, so padding was exercised.
        lengths = [r[name]["text_len"] for r in ranks]
        assert lengths[0] < lengths[1], lengths
        # Gathering matters: a shard's own loss is not the global one.
        assert not torch.isclose(ranks[0][name]["local_total"], ref_losses["total"])
        # A wrong factor (DDP's 1/W not cancelled, or applied twice) fails the check in every
        # tensor but BERT's key bias, whose gradient is ~0.
        missed = [p for p, g in ref_grads.items() if torch.allclose(2 * g, g, RTOL, ATOL)]
        assert len(missed) <= 1, missed
        for rank, res in enumerate(ranks):
            got = res[name]
            assert set(got["losses"]) == set(ref_losses)
            for key, ref in ref_losses.items():
                assert_close(got["losses"][key], ref, f"{name} loss {key}, rank {rank}")
            assert set(got["grads"]) == set(ref_grads)
            for param, ref in ref_grads.items():
                assert_close(got["grads"][param], ref, f"{name} grad of {param}, rank {rank}")
            # Gathered without autograd: exactly the single process's, the word mask padded
            # with False where rank 0's shorter text ended.
            for key, ref in ref_outputs.items():
                assert (got[key] is None) == (ref is None), key
                assert ref is None or torch.equal(got[key], ref), key
            if settings.get("use_masking") and settings.get("mask_mode") != "drop":
                assert got["shared_mask"]  # patch_weight is mask, gathered once


# --- single process: identities and checks -----------------------------------------------


def test_gathers_are_identities_without_a_process_group():
    x = torch.randn(3, 5, requires_grad=True)
    assert gather_with_grad(x) is x
    assert gather_padded(x, dim=1, pad_value=0) is x
    img = ImageOutput(torch.randn(3, 4), None, None, None, None, None)
    txt = TextOutput(torch.randn(3, 4), torch.randn(3, 6, 2), torch.ones(3, 6, dtype=torch.bool))
    got_img, got_txt = gather_outputs(img, txt)
    assert got_img is img and got_txt is txt


def test_shard_batch_splits_contiguously_in_rank_order():
    batch = np.array([9, 4, 7, 1, 0, 3])
    shards = [shard_batch(batch, r, 3) for r in range(3)]
    assert [s.tolist() for s in shards] == [[9, 4], [7, 1], [0, 3]]
    np.testing.assert_array_equal(np.concatenate(shards), batch)
    shards[0][0] = -1  # a copy: the global batch is left alone
    assert batch[0] == 9
    np.testing.assert_array_equal(shard_batch(batch, 0, 1), batch)


def test_shard_batch_rejects_bad_input():
    with pytest.raises(DistributedError, match="multiple of 4"):
        shard_batch(np.arange(6), 0, 4)
    with pytest.raises(DistributedError, match="multiple of 2"):
        shard_batch(np.arange(0), 0, 2)
    with pytest.raises(DistributedError, match="0 <= rank < world_size"):
        shard_batch(np.arange(4), 2, 2)
    with pytest.raises(DistributedError, match="1-D"):
        shard_batch(np.zeros((2, 2), dtype=int), 0, 2)


def test_init_distributed_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") == DistInfo(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    info = init_distributed("cuda")  # no GPU needed: nothing is initialised
    assert info.is_main and not info.distributed
    assert not torch.distributed.is_initialized()


def test_init_distributed_rejects_bad_environment(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(DistributedError, match="RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"):
        init_distributed("cpu")
    with pytest.raises(DistributedError, match="'cuda' .* or 'cpu'"):
        init_distributed("mps")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DistributedError, match="WORLD_SIZE = 'two'"):
        init_distributed("cpu")


def test_dist_info_rejects_impossible_ranks():
    assert DistInfo(1, 2, 1).is_main is False
    with pytest.raises(DistributedError, match="torchrun"):
        DistInfo(2, 2, 0)


# ---------------------------------------------------------------- the train stage under torchrun


def _stage_command(config: Path, master: Path, root: Path, out: Path) -> tuple[list[str], dict]:
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    args = [
        "--config", str(config), "--master", str(master), "--root", str(root),
        "--out", str(out / "model"), "--metrics", str(out / "metrics.json"),
        "--efficiency", str(out / "eff.json"), "--plots", str(out / "plots"),
        "--state-dir", str(out / "state"),
    ]  # fmt: skip
    return [sys.executable, "-m", "stages.train", *args], env


def _train_stage(config: Path, master: Path, root: Path, out: Path) -> str:
    """Run the train stage to the end; its stdout and stderr."""
    import subprocess

    cmd, env = _stage_command(config, master, root, out)
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _write_config(out: Path, model: ModelParams, **train: object) -> Path:
    import json

    from lib.config.variants import Variant

    out.mkdir()
    config = out / "config.json"
    config.write_text(json.dumps(Variant("C", model, fixed_train(**train)).to_dict()))
    return config


@pytest.mark.slow  # torchrun: about a minute
def test_train_stage_under_torchrun_matches_one_process(small_master, tiny_backbone, tmp_path):
    """train.nproc_per_node = 2 relaunches the stage under torchrun (2 Gloo ranks on CPU).

    Two epochs over a phase change (DDP re-wrapped after unfreezing) with gradient
    accumulation (no_sync): the validation metrics and the weights equal those of one
    process on the same global batches, up to float reduction order; rank 0 alone writes.
    """
    import json

    from safetensors.torch import load_file

    master, root = small_master
    mp_ = fixed_model(
        backbone=f"local-dir:{tiny_backbone}", use_local_alignment=True, use_masking=True,
        local_dim=16,
    )  # fmt: skip
    runs = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        config = _write_config(
            out, mp_, epochs=2, batch_size=8, gradient_accumulation_steps=2, warmup_epochs=1,
            warmup_lr=1e-3, lr=1e-3, warmup_steps=2, num_workers=1, eval_batch_size=64,
            device="cpu", nproc_per_node=nproc,
        )  # fmt: skip
        _train_stage(config, master, root, out)
        runs[nproc] = out
    one = json.loads((runs[1] / "metrics.json").read_text())
    two = json.loads((runs[2] / "metrics.json").read_text())
    assert one.keys() == two.keys() and one["best_epoch"] == two["best_epoch"]
    for key in ("val_total", "val_clip", "val_local", "val_sparse"):
        assert two[key] == pytest.approx(one[key], abs=1e-4), key
    # Rank metrics: a float-level difference may swap one near-tied pair of scores, which
    # moves a label's AUC by 1 / (positives × negatives) of the small val split.
    assert two["val_mean_auc"] == pytest.approx(one["val_mean_auc"], abs=0.01)
    assert two["val_mean_recall"] == pytest.approx(one["val_mean_recall"], abs=0.01)
    w1 = load_file(str(runs[1] / "model/model.safetensors"))
    w2 = load_file(str(runs[2] / "model/model.safetensors"))
    assert w1.keys() == w2.keys()
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert worst < 1e-4
    assert not (runs[2] / "state").exists()  # rank 0 finished and cleaned up once


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.slow  # torchrun, killed and rerun: about two minutes
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_killed_torchrun_run_resumes_to_the_same_result(small_master, tiny_backbone, tmp_path):
    """SIGKILL to the stage's launcher (torchrun) after epoch 2's checkpoint: both ranks
    die with it. Then the same command again: it resumes after epoch 2 (rank 0 wrote the
    checkpoint, every rank loads it, with the optimizer and scheduler state of phase 2) and
    ends with the weights and metrics of an uninterrupted 2-rank run."""
    import json
    import signal
    import subprocess

    from safetensors.torch import load_file

    master, root = small_master
    mp_ = fixed_model(
        backbone=f"local-dir:{tiny_backbone}", use_local_alignment=True, use_masking=True,
        local_dim=16,
    )  # fmt: skip
    train = dict(
        epochs=3, batch_size=8, warmup_epochs=1, warmup_lr=1e-3, lr=1e-3, warmup_steps=2,
        num_workers=1, eval_batch_size=64, device="cpu", nproc_per_node=2, patience=10,
    )  # fmt: skip
    full = tmp_path / "full"
    _train_stage(_write_config(full, mp_, **train), master, root, full)

    out = tmp_path / "killed"
    config = _write_config(out, mp_, **train)
    cmd, env = _stage_command(config, master, root, out)
    repo = Path(__file__).resolve().parents[2]
    last = out / "state" / "last.pt"
    proc = subprocess.Popen(
        cmd, cwd=repo, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline, seen, epoch = time.monotonic() + 300, None, 0
    try:
        while epoch < 2:
            assert proc.poll() is None, "the run ended before its second checkpoint"
            assert time.monotonic() < deadline, "no second checkpoint in 300 s"
            stamp = last.stat().st_mtime_ns if last.is_file() else None
            if stamp is not None and stamp != seen:
                seen = stamp
                payload = torch.load(last, map_location="cpu", weights_only=True)
                epoch = json.loads(payload["state"])["epoch"]
            time.sleep(0.02)
        ranks = _children(proc.pid)
        assert len(ranks) == 2, ranks
        # The launcher alone, mid epoch 3: torchrun started the ranks in sessions of their
        # own, so they die only through lib.train.distributed.die_with_launcher.
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in ranks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in ranks if Path(f"/proc/{pid}").exists()], "orphaned ranks"
    assert epoch == 2
    assert not (out / "model").exists()  # killed before the end

    log = _train_stage(config, master, root, out)
    assert f"resuming after epoch 2 of 3 from {last}" in log
    assert json.loads((out / "metrics.json").read_text()) == json.loads(
        (full / "metrics.json").read_text()
    )
    w_full = load_file(str(full / "model/model.safetensors"))
    w_resumed = load_file(str(out / "model/model.safetensors"))
    assert w_full.keys() == w_resumed.keys()
    for k in w_full:
        assert torch.equal(w_full[k], w_resumed[k]), k
    assert not (out / "state").exists()
