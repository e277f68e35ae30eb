"""Training mechanics on a tiny backbone: phases, checkpoints, resume, NaN handling."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from lib.config.fixed import fixed_model, fixed_train
from lib.config.variants import Variant
from lib.data.master import read_master
from lib.data.reports import split_sentences
from lib.model.backbone import load_backbone
from lib.train.loop import Data, Trainer, TrainingError, fingerprint, phase_of


def make_variant(backbone_dir, **train) -> Variant:
    settings = dict(
        epochs=3,
        batch_size=8,
        gradient_accumulation_steps=2,
        warmup_epochs=1,
        warmup_lr=1e-3,
        lr=1e-3,
        warmup_steps=2,
        num_workers=1,
        eval_batch_size=64,
        device="cpu",
    )
    tp = fixed_train(**{**settings, **train})
    mp = fixed_model(
        backbone=f"local-dir:{backbone_dir}",
        use_local_alignment=True,
        use_masking=True,
        mask_mode="drop",
        drop_layer=1,
        local_dim=16,
    )
    return Variant("E", mp, tp)


@pytest.fixture(scope="module")
def setup(small_master, tiny_backbone):
    master, root = small_master
    splits = read_master(master)
    backbone = load_backbone(f"local-dir:{tiny_backbone}")
    return (
        master,
        Data.build(splits["train"], root, backbone),
        Data.build(splits["val"], root, backbone),
        backbone,
    )


def new_trainer(setup, variant, state_dir) -> Trainer:
    master, train, val, backbone = setup
    return Trainer(
        variant, train, val, backbone, state_dir, fingerprint(variant, master), torch.device("cpu")
    )


def test_phases():
    v = Variant("A", fixed_model(), fixed_train(epochs=4, warmup_epochs=2))
    assert [phase_of(e, v) for e in range(4)] == [1, 1, 2, 2]
    v2 = dataclasses.replace(v, train=fixed_train(epochs=4, staged_training=False))
    assert [phase_of(e, v2) for e in range(4)] == [2, 2, 2, 2]


def test_phase_one_freezes_the_backbone(setup, tiny_backbone, tmp_path):
    trainer = new_trainer(setup, make_variant(tiny_backbone), tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    opt, sched = trainer.make_optimizer(1)
    trainer.train_epoch(0, opt, sched)
    after = trainer.model.state_dict()
    trunk = [k for k in before if ".trunk.blocks." in k]
    heads = [k for k in before if k.startswith(("mask_head", "local_"))]
    assert trunk and heads
    assert all(torch.equal(before[k], after[k]) for k in trunk)
    assert any(not torch.equal(before[k], after[k]) for k in heads)


def test_resume_after_interruption_gives_the_same_result(setup, tiny_backbone, tmp_path):
    variant = make_variant(tiny_backbone)
    full = new_trainer(setup, variant, tmp_path / "full").run()

    interrupted = new_trainer(setup, variant, tmp_path / "int")
    original = interrupted.validate
    calls = {"n": 0}

    def crash_in_epoch_three():
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original()

    interrupted.validate = crash_in_epoch_three
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    resumed_trainer = new_trainer(setup, variant, tmp_path / "int")
    resumed = resumed_trainer.run()
    assert resumed.epoch == full.epoch == 3
    assert len(resumed.history) == 3
    for a, b in zip(full.history, resumed.history, strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    assert resumed.best_epoch == full.best_epoch


def test_checkpoint_of_another_config_is_not_resumed(setup, tiny_backbone, tmp_path):
    variant = make_variant(tiny_backbone, epochs=2)
    new_trainer(setup, variant, tmp_path).run()
    other = make_variant(tiny_backbone, epochs=2, seed=5)
    trainer = new_trainer(setup, other, tmp_path)
    assert trainer.try_resume() is None


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(
    setup, tiny_backbone, tmp_path, monkeypatch
):
    variant = make_variant(tiny_backbone, epochs=2, warmup_epochs=0, staged_training=False)
    trainer = new_trainer(setup, variant, tmp_path)
    import lib.train.loop as train_mod

    real = train_mod.compute_losses
    epoch_of = {"n": 0}

    def nan_in_second_epoch(img, txt, scale, params):
        out = real(img, txt, scale, params)
        if trainer.state.epoch == 1:
            out["total"] = out["total"] * math.nan
        epoch_of["n"] += 1
        return out

    monkeypatch.setattr(train_mod, "compute_losses", nan_in_second_epoch)
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 2"):
        trainer.run()
    payload = torch.load(trainer.last_path, weights_only=True)
    assert '"epoch": 1' in payload["state"]
    assert (tmp_path / "best.safetensors").is_file()


def test_loss_watch_names_the_first_bad_batch_when_read_late():
    """On a GPU the watch is read every 50 batches: it must still name the first bad one and
    its terms, not the last."""
    from lib.train.loop import LossWatch

    watch = LossWatch(torch.device("cpu"))
    watch.every = 50  # as on a GPU
    for i in range(6):
        total = torch.tensor(math.nan if i in (2, 4) else 1.0 + i)
        watch.update(i, {"clip": torch.tensor(float(i)), "total": total})
    with pytest.raises(TrainingError, match=r"loss became nan at epoch 3, batch 3 \(\{'clip': 2.0"):
        watch.check("model E", 2, Path("state"))
    clean = LossWatch(torch.device("cpu"))
    clean.update(0, {"total": torch.tensor(0.5)})
    clean.check("model E", 0, Path("state"))  # no error


@pytest.mark.slow  # inductor compiles C++ on the CPU: about a minute
def test_compiled_step_equals_eager(setup, tiny_backbone, tmp_path):
    """train.compile: the compiled forward + loss gives eager's losses and gradients."""
    train = setup[1]
    idx = list(range(8))
    results = []
    for compiled in (False, True):
        variant = make_variant(tiny_backbone, compile=compiled)
        trainer = new_trainer(setup, variant, tmp_path / str(compiled))
        trainer.model.set_backbone_frozen(False)
        trainer.model.train()
        torch.manual_seed(0)
        x, tok = trainer.batches(train, idx)
        total, losses = trainer.forward_loss(x, tok)
        total.backward()
        named = trainer.model.named_parameters()
        grads = {n: p.grad.clone() for n, p in named if p.grad is not None}
        results.append(({k: float(v.detach()) for k, v in losses.items()}, grads))
    (eager, eager_grads), (comp, comp_grads) = results
    assert comp == pytest.approx(eager, rel=1e-4, abs=1e-6)
    assert sorted(comp_grads) == sorted(eager_grads)
    for name, g in eager_grads.items():
        torch.testing.assert_close(comp_grads[name], g, rtol=1e-3, atol=1e-5, msg=name)


# --- train.text_sampling: sentence (ConVIRT) -----------------------------------------------


@pytest.fixture(scope="module")
def with_sentences(small_master, tiny_backbone):
    master, root = small_master
    backbone = load_backbone(f"local-dir:{tiny_backbone}")
    return Data.build(read_master(master)["train"], root, backbone, sentences=True), backbone


def test_sentence_tables_hold_each_reports_sentences_in_order(with_sentences):
    data, backbone = with_sentences
    texts = sorted(set(data.split.texts))
    for t in (0, len(texts) // 2, len(texts) - 1):
        start, count = data.sentence_span[t].tolist()
        expected = split_sentences(texts[t]) or [texts[t]]
        assert count == len(expected) >= 1
        rows = data.sentence_tokens[start : start + count]
        assert torch.equal(rows, backbone.tokenizer(expected)[:, : rows.shape[1]])
    assert int(data.sentence_span[:, 1].sum()) == len(data.sentence_tokens)


def test_training_batches_draw_one_sentence_per_report(setup, with_sentences, tmp_path):
    data, backbone = with_sentences
    variant = make_variant(tmp_path, text_sampling="sentence")
    trainer = Trainer(variant, data, setup[2], backbone, tmp_path, "run", torch.device("cpu"))
    idx = torch.arange(16).numpy()
    _, tok = trainer.batches(data, idx, train_at=(1, 2, 16))
    _, again = trainer.batches(data, idx, train_at=(1, 2, 16))
    assert torch.equal(tok, again)  # the same (seed, epoch, batch): the same sentences
    texts = sorted(set(data.split.texts))
    decode = backbone.tokenizer.tokenizer.decode
    for row, i in zip(tok, idx, strict=True):
        sentence = decode(row, skip_special_tokens=True)
        assert sentence.strip()  # never empty
        own = split_sentences(texts[int(data.text_of[i])])
        choices = {decode(t, skip_special_tokens=True) for t in backbone.tokenizer(own)}
        assert sentence in choices  # one sentence of this image's own report
    _, full = trainer.batches(data, idx)  # not a training batch: whole reports
    assert torch.equal(full, data.tokens[data.text_of[torch.as_tensor(idx)]][:, : full.shape[1]])
    pad = backbone.pad_id
    assert (tok != pad).sum() < (full != pad).sum()  # a sentence is shorter than its report


def test_sentence_sampling_needs_sentence_tables(setup, tmp_path):
    _, train, val, backbone = setup
    variant = make_variant(tmp_path, text_sampling="sentence")
    trainer = Trainer(variant, train, val, backbone, tmp_path, "run", torch.device("cpu"))
    with pytest.raises(ValueError, match="needs Data built with sentences"):
        trainer.batches(train, torch.arange(4).numpy(), train_at=(0, 0, 4))
