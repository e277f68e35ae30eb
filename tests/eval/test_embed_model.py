"""Embedding a trained model (lib/eval/embed_model.py) and the Patch-IB maps
(lib/eval/explain.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from lib.config.fixed import fixed_model, fixed_train
from lib.config.params import EvalParams
from lib.config.variants import Variant
from lib.data.images import load_images, to_model_input
from lib.data.master import read_master
from lib.errors import DataError
from lib.eval.embed_model import (
    embed_images,
    embed_splits,
    embed_texts,
    load_trained,
    prompt_embeddings,
)
from lib.eval.embedding_files import Embeddings, check_aligned, study_reports
from lib.eval.explain import explain, find_mention, select_examples
from lib.model.backbone import load_backbone
from lib.model.patch_ib import PatchIBModel, num_kept
from tests.conftest import params_section

MODES = {
    "A": {},
    "B": {"use_local_alignment": True},
    "C": {"use_local_alignment": True, "use_masking": True},
    "E": {"use_local_alignment": True, "use_masking": True, "mask_mode": "drop", "drop_layer": 1},
}


@pytest.fixture(scope="module")
def model_dirs(tiny_backbone, tmp_path_factory):
    """models/<X> folders as train@X writes them (random weights, seeded per variant)."""
    base = tmp_path_factory.mktemp("models")
    out = {}
    for seed, (name, over) in enumerate(MODES.items()):
        mp = fixed_model(backbone=f"local-dir:{tiny_backbone}", local_dim=16, **over)
        variant = Variant(name, mp, fixed_train(device="cpu"))
        torch.manual_seed(seed)
        model = PatchIBModel(load_backbone(mp.backbone), mp)
        d = base / name
        d.mkdir()
        save_model(model, str(d / "model.safetensors"))
        cfg = {**variant.to_dict(), "best_epoch": 1, "epochs_run": 1}
        (d / "config.json").write_text(json.dumps(cfg))
        out[name] = (d, model.eval())
    return out


@pytest.fixture(scope="module")
def test_data(small_master, tiny_backbone):
    master, root = small_master
    test = read_master(master)["test"]
    return test, load_images(root, test.images, 32, threads=2)


def test_load_trained_restores_the_saved_weights(model_dirs):
    for d, model in model_dirs.values():
        trained = load_trained(d, "cpu")
        saved = model.state_dict()
        for key, value in trained.model.state_dict().items():
            assert torch.equal(value, saved[key]), key
        assert not trained.model.training


def test_load_trained_errors_name_the_fix(model_dirs, tmp_path):
    with pytest.raises(DataError, match=r"dvc repro train@X"):
        load_trained(tmp_path / "X", "cpu")
    # Weights of A under C's config: the mask head is missing.
    d = tmp_path / "C"
    d.mkdir()
    (d / "config.json").write_text((model_dirs["C"][0] / "config.json").read_text())
    (d / "model.safetensors").write_bytes((model_dirs["A"][0] / "model.safetensors").read_bytes())
    with pytest.raises(DataError, match="does not fit model C"):
        load_trained(d, "cpu")


def test_embed_images_equals_the_model_and_counts_kept_tokens(model_dirs, test_data):
    _test, pixels = test_data
    for name, (d, model) in model_dirs.items():
        trained = load_trained(d, "cpu")
        out = embed_images(trained, pixels, batch_size=16)
        bb = trained.backbone
        with torch.no_grad():
            ref = model.encode_image(to_model_input(pixels, bb.mean, bb.std))
        np.testing.assert_allclose(out.emb, ref.global_emb.numpy(), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(out.emb, axis=1), 1, atol=1e-5)
        n_patches = 4  # 32-px images, 16-px patches
        if name == "E":
            assert (out.tokens_kept == num_kept(n_patches, 0.5)).all()
        elif name == "C":
            assert (out.tokens_kept == (ref.mask >= 0.5).sum(1).numpy()).all()
            np.testing.assert_allclose(out.mask_mass, ref.mask.sum(1).numpy(), rtol=1e-5)
        else:
            assert (out.tokens_kept == n_patches).all() and np.isnan(out.mask_mass).all()
        assert out.images_timed == len(pixels) - 16  # the first batch is not timed


@pytest.mark.parametrize("negative", ["A chest x-ray showing no {}", ""])
def test_embed_splits_stores_the_prompts_so_eval_needs_no_model(
    model_dirs, small_master, tmp_path, negative
):
    master, root = small_master
    splits = read_master(master)
    trained = load_trained(model_dirs["A"][0], "cpu")
    params = params_section(
        EvalParams, probe_c=1.0, negative_prompt_template=negative, batch_size=16
    )
    run = embed_splits(
        trained, splits, lambda split: load_images(root, split.images, 32, threads=2), params
    )
    run.embeddings.save(tmp_path)
    back = Embeddings.load(tmp_path)
    pos, neg = back.prompts(str(tmp_path))
    ref_pos, ref_neg = prompt_embeddings(trained, params)
    np.testing.assert_allclose(pos, ref_pos, atol=1e-6)
    assert pos.shape == (14, ref_pos.shape[1])
    if negative:
        np.testing.assert_allclose(neg, ref_neg, atol=1e-6)
    else:
        assert neg is None and ref_neg is None
    stale = Embeddings.from_arrays({k: v for k, v in back.to_arrays().items() if "prompt" not in k})
    with pytest.raises(DataError, match="no prompt embeddings.*rerun"):
        stale.prompts("data/embeddings/A")


def test_embed_texts_in_order(model_dirs, test_data):
    test, _ = test_data
    trained = load_trained(model_dirs["B"][0], "cpu")
    study, texts = study_reports(test)
    assert len(study) == len(set(test.study.tolist())) == len(texts)
    emb = embed_texts(trained, texts, batch_size=7)
    one = embed_texts(trained, texts[3:4], batch_size=7)
    np.testing.assert_allclose(emb[3:4], one, atol=1e-5)  # batching and padding do not matter


def test_check_aligned():
    check_aligned(["a", "b"], ["a", "b"], "x")
    with pytest.raises(DataError, match="stale"):
        check_aligned(["a"], ["a", "b"], "x")


# ---------------------------------------------------------------- explainability


def test_find_mention_skips_negated_sentences():
    text = "No pleural effusion. Small left effusion is new."
    word, start, end = find_mention(text, ("effusion",))
    assert (word, text[start:end]) == ("effusion", "effusion") and start > 20
    assert find_mention("There is no pneumothorax.", ("pneumothorax",)) is None


def test_select_examples_is_deterministic_and_affirmed(test_data):
    test, _ = test_data
    ex = select_examples(test, 4)
    assert ex == select_examples(test, 4) and 0 < len(ex) <= 4
    from lib.data.mimic import LABELS

    studies = [int(test.study[e.row]) for e in ex]
    assert len(set(studies)) == len(studies)
    for e in ex:
        assert test.labels[e.row, LABELS.index(e.label)] == 1
        assert test.texts[e.row][e.start : e.end].lower() == e.keyword.lower()


def test_explain_maps(model_dirs, test_data):
    test, pixels = test_data
    ex = select_examples(test, 3)
    maps = {
        n: explain(load_trained(d, "cpu"), pixels, test, ex) for n, (d, _) in model_dirs.items()
    }
    assert maps["A"].grid == (2, 2)
    assert np.isnan(maps["A"].mask).all() and np.isnan(maps["A"].attention).all()
    # B: attention over the patches of the keyword, a distribution per image.
    np.testing.assert_allclose(maps["B"].attention.sum(axis=1), 1, atol=1e-5)
    assert np.isnan(maps["B"].mask).all()
    # C: a soft mask in (0, 1) everywhere; E: exactly K tokens kept, attention only there.
    assert ((maps["C"].mask > 0) & (maps["C"].mask < 1)).all()
    e = maps["E"]
    assert (e.kept.sum(axis=1) == num_kept(4, 0.5)).all()
    assert (e.attention[~e.kept] == 0).all()
    np.testing.assert_allclose(e.attention.sum(axis=1), 1, atol=1e-5)


def test_explain_with_no_examples(model_dirs, test_data):
    test, pixels = test_data
    maps = explain(load_trained(model_dirs["C"][0], "cpu"), pixels, test, [])
    assert maps.mask.shape == (0, 4)
