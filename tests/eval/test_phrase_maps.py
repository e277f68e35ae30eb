"""Phrase maps of a model (lib/eval/phrase_maps.py) and the grounding run
(lib/eval/phrase_grounding.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_model

from lib.config.fixed import fixed_model, fixed_train
from lib.config.params import DemoParams, EvalParams
from lib.config.variants import Variant
from lib.data.images import load_images, to_model_input
from lib.data.master import read_master
from lib.demo.corpus import build_tables, write_grounding
from lib.eval.box_scores import match_phrases, read_boxes
from lib.eval.embed_model import load_trained
from lib.eval.phrase_grounding import ground
from lib.eval.phrase_maps import map_kinds, phrase_maps
from lib.model.backbone import load_backbone
from lib.model.patch_ib import PatchIBModel, trim_padding
from tests.conftest import params_section

MODES = {
    "A": {},
    "B": {"use_local_alignment": True},
    "C": {"use_local_alignment": True, "use_masking": True},
    "E": {"use_local_alignment": True, "use_masking": True, "mask_mode": "drop", "drop_layer": 1},
}
KINDS = {
    "A": ("similarity",),
    "B": ("attention", "similarity"),
    "C": ("mask", "attention", "similarity"),
    "E": ("mask", "attention"),
}


@pytest.fixture(scope="module")
def trained(tiny_backbone, tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    out = {}
    for seed, (name, over) in enumerate(MODES.items()):
        mp = fixed_model(
            backbone=f"local-dir:{tiny_backbone}", local_dim=16, keep_ratio=0.5, **over
        )
        torch.manual_seed(seed)
        model = PatchIBModel(load_backbone(mp.backbone), mp)
        d = base / name
        d.mkdir()
        save_model(model, str(d / "model.safetensors"))
        cfg = {**Variant(name, mp, fixed_train(device="cpu")).to_dict(), "best_epoch": 1}
        (d / "config.json").write_text(json.dumps(cfg))
        out[name] = load_trained(d, "cpu")
    return out


@pytest.fixture(scope="module")
def phrases_and_pixels(small_master, tmp_path_factory):
    """The small corpus' own MS-CXR-format file (same DemoParams as conftest's corpus)."""
    master, root = small_master
    tables = build_tables(
        params_section(DemoParams, min_positive_rate=0.0, n_patients=120, seed=11, image_size=64)
    )
    csv = tmp_path_factory.mktemp("ms") / "ms.csv"
    write_grounding(tables["grounding"], csv, workers=1)
    phrases = match_phrases(read_boxes(csv), read_master(master))
    return phrases, load_images(root, phrases.image, 32, threads=2)


@pytest.mark.parametrize("name", list(MODES))
def test_each_variant_has_its_maps(trained, name):
    assert map_kinds(trained[name].model) == KINDS[name]


@pytest.mark.parametrize("name", list(MODES))
def test_maps_shapes_and_ranges(trained, phrases_and_pixels, name):
    phrases, pixels = phrases_and_pixels
    n = min(5, len(phrases))
    maps = phrase_maps(trained[name], pixels[:n], phrases.text[:n])
    assert set(maps) == set(KINDS[name])
    for m in maps.values():
        assert m.shape == (n, 2, 2) and torch.isfinite(m).all()
    if "attention" in maps:  # a distribution over the grid
        torch.testing.assert_close(maps["attention"].sum(dim=(1, 2)), torch.ones(n))
    if "mask" in maps:
        assert ((maps["mask"] > 0) & (maps["mask"] < 1)).all()
    if "similarity" in maps:
        assert (maps["similarity"].abs() <= 1 + 1e-5).all()


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _encoded(trained_model, pixels, phrases):
    """The model's own encoder outputs, the inputs of the NumPy maps below."""
    model, bb = trained_model.model, trained_model.backbone
    x = to_model_input(pixels, bb.mean, bb.std)
    ids = trim_padding(bb.tokenizer(phrases), bb.pad_id)
    with torch.no_grad():
        return model, x, model.encode_image(x), model.encode_text(ids)


@pytest.mark.parametrize("name", ["B", "C", "E"])
def test_attention_equals_a_numpy_softmax_over_patches(trained, phrases_and_pixels, name):
    """Word→patch attention recomputed by hand from the encoders' outputs: softmax over the
    patches of cos(word, patch) / local_temperature, times z and renormalised where the model
    masks, mean over the phrase's words, scattered onto the grid (E: kept patches only)."""
    phrases, pixels = phrases_and_pixels
    n = min(4, len(phrases))
    texts = list(phrases.text[:n])
    maps = phrase_maps(trained[name], pixels[:n], texts)["attention"].reshape(n, -1).numpy()
    model, _, img, txt = _encoded(trained[name], pixels[:n], texts)
    gh, gw = model.grid
    for i in range(n):
        w = _unit(txt.word_emb[i][txt.word_mask[i]].double().numpy())  # (t, l)
        p = _unit(img.patch_emb[i].double().numpy())  # (N', l)
        logits = w @ p.T / model.params.local_temperature
        att = np.exp(logits - logits.max(axis=1, keepdims=True))
        att /= att.sum(axis=1, keepdims=True)
        if img.patch_weight is not None:
            att *= img.patch_weight[i].double().numpy()[None, :]
            att /= att.sum(axis=1, keepdims=True)
        expected = np.zeros(gh * gw)
        where = img.kept_index[i].numpy() if img.kept_index is not None else np.arange(len(p))
        expected[where] = att.mean(axis=0)
        np.testing.assert_allclose(maps[i], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_similarity_equals_a_numpy_cosine_through_the_global_head(
    trained, phrases_and_pixels, name
):
    """Patch–phrase similarity recomputed by hand: each final patch token of the trunk times
    the visual head's projection matrix, L2-normalised, dotted with the phrase's unit global
    text embedding."""
    phrases, pixels = phrases_and_pixels
    n = min(4, len(phrases))
    texts = list(phrases.text[:n])
    maps = phrase_maps(trained[name], pixels[:n], texts)["similarity"].reshape(n, -1).numpy()
    model, x, _, txt = _encoded(trained[name], pixels[:n], texts)
    visual = model.clip.visual
    assert isinstance(visual.trunk.fc_norm, torch.nn.Identity)  # the tiny ViT's (CLS pooling)
    with torch.no_grad():
        tokens = visual.trunk.forward_features(x)[:, model.num_prefix :].double().numpy()
    head = visual.head.proj.weight.detach().double().numpy()  # (d, W), no bias
    assert visual.head.proj.bias is None
    patches = _unit(tokens @ head.T)  # (n, N, d)
    text = _unit(txt.global_emb.double().numpy())  # (n, d)
    expected = np.einsum("bnd,bd->bn", patches, text)
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-5)
    # and one cell by its definition, a cosine
    i, j = 0, 1
    cos = patches[i, j] @ text[i] / (np.linalg.norm(patches[i, j]) * np.linalg.norm(text[i]))
    assert maps[i, j] == pytest.approx(cos, abs=1e-5)


def test_e_attends_only_to_the_patches_it_kept(trained, phrases_and_pixels):
    phrases, pixels = phrases_and_pixels
    model = trained["E"]
    maps = phrase_maps(model, pixels[:4], phrases.text[:4])
    from lib.data.images import to_model_input

    bb = model.backbone
    with torch.no_grad():
        img = model.model.encode_image(to_model_input(pixels[:4], bb.mean, bb.std))
    att = maps["attention"].reshape(4, -1)
    for i in range(4):
        dropped = torch.ones(4, dtype=torch.bool)
        dropped[img.kept_index[i]] = False
        assert (att[i][dropped] == 0).all() and (att[i][~dropped] > 0).all()


def test_maps_depend_on_the_phrase(trained, phrases_and_pixels):
    _, pixels = phrases_and_pixels
    img = pixels[:1].repeat(2, 1, 1)
    maps = phrase_maps(trained["B"], img, ["left pleural effusion", "cardiomegaly"])
    assert not torch.allclose(maps["attention"][0], maps["attention"][1])
    assert not torch.allclose(maps["similarity"][0], maps["similarity"][1])


def test_ground_scores_every_phrase_with_floors(trained, phrases_and_pixels):
    phrases, pixels = phrases_and_pixels
    params = params_section(EvalParams, probe_c=1.0, bootstrap=50, batch_size=7)
    result = ground(trained["C"], phrases, lambda idx: pixels[idx], params)
    m = result.metrics
    assert m["maps"] == list(KINDS["C"]) and m["floors"] == ["random", "centre"]
    assert m["phrases"] == len(phrases) > 0
    test = m["official_test"]
    assert test["phrases"] + m["boxes_outside_crop"] >= 1
    for kind in (*KINDS["C"], "random", "centre"):
        for score in ("cnr", "pointing", "iou"):
            s = test[kind][score]
            assert s["low"] <= s["mean"] <= s["high"]
        assert 0 <= test[kind]["pointing"]["mean"] <= 1
    assert result.maps["mask"].shape == (len(phrases), 2, 2)
    # one figure row per category, each an official-test phrase
    cats = [phrases.category[i] for i in result.figure_rows]
    assert len(cats) == len(set(cats)) and all(
        phrases.split[i] == "test" for i in result.figure_rows
    )
    again = ground(trained["C"], phrases, lambda idx: pixels[idx], params)
    assert again.metrics == m  # deterministic


def test_the_stage_decodes_held_out_images_that_the_pack_lacks(small_master):
    """phrase_pixels: a batch holding a held-out patient's image (not in the master
    file, so not in the pack) is decoded from data.root like the pack's own images."""
    import dataclasses

    from lib.eval.phrase_grounding import phrase_pixels

    master, root = small_master
    test = read_master(master)["test"]

    class NoPack:  # any use of the pack would fail the test
        def __getattr__(self, name):
            raise AssertionError(f"pack.{name} used for a held-out image")

    phrases = dataclasses.make_dataclass("P", ["image", "split", "dicom"])(
        image=test.images[:2], split=["holdout", "test"], dicom=test.dicom[:2]
    )
    pixels = phrase_pixels(phrases, NoPack(), root, 32, 1)([0, 1])
    torch.testing.assert_close(pixels, load_images(root, test.images[:2], 32, threads=1))


def test_val_phrases_leave_the_other_phrases_floors_as_they_were():
    """truth_for: official-val phrases draw their random maps from their own stream, so a
    grounding file with val boxes added keeps the official-test floors."""
    import numpy as np
    import pandas as pd

    from lib.data.master import Split
    from lib.eval.box_scores import COLUMNS
    from lib.eval.phrase_grounding import truth_for

    def split(dicoms):
        n = len(dicoms)
        return Split([f"f/{d}.jpg" for d in dicoms], np.arange(n), np.arange(n), ["x"] * n,
                     np.zeros((n, 14), dtype=np.int8), list(dicoms))  # fmt: skip

    # val images "a0".."a5" sort before the test images "t0".."t5": phrases 0-5 are val's
    rows = [(f"{s}{i}", "Edema", "t", "p", i, 2, 9, 11, 32, 32, s) for s in "at" for i in range(6)]
    boxes = pd.DataFrame([dict(zip(COLUMNS, r, strict=True)) for r in rows])
    splits = {"test": split([f"t{i}" for i in range(6)]), "val": split([f"a{i}" for i in range(6)])}
    both = truth_for(match_phrases(boxes, splits), 32, (3, 3), seed=4)
    test = truth_for(match_phrases(boxes[boxes.split == "t"], splits), 32, (3, 3), seed=4)
    for score, values in test.floors["random"].items():
        np.testing.assert_array_equal(both.floors["random"][score][6:], values)
    assert not np.isnan(both.floors["random"]["cnr"]).any()


def test_phrase_pixels_gather_from_the_pack_through_its_checks(small_master, tmp_path):
    import dataclasses

    from lib.data.pack import Pack, pack_images, publish
    from lib.errors import DataError
    from lib.eval.phrase_grounding import phrase_pixels

    master, root = small_master
    test = read_master(master)["test"]
    pack_images(root, test.images[:3], test.dicom[:3], 32, tmp_path / "s", "r", 1)
    publish(tmp_path / "s", tmp_path / "p")
    pack = Pack.open(tmp_path / "p")
    phrases = dataclasses.make_dataclass("P", ["image", "split", "dicom", "subject", "text"])(
        image=test.images[:3], split=["test"] * 3, dicom=test.dicom[:3],
        subject=test.subject[:3], text=["t"] * 3,
    )  # fmt: skip
    pixels = phrase_pixels(phrases, pack, root, 32, 1)([2, 0])
    expected = load_images(root, [test.images[2], test.images[0]], 32, threads=1)
    torch.testing.assert_close(pixels, expected)
    with pytest.raises(DataError, match="data.image_size: 48"):
        phrase_pixels(phrases, pack, root, 48, 1)([0])
    pack.ok[pack.row_of[test.dicom[1]]] = False
    with pytest.raises(DataError, match=f"{test.dicom[1]}.*dvc repro pack_images"):
        phrase_pixels(phrases, pack, root, 32, 1)([0, 1])


def test_the_stage_writes_test_and_val_figures_per_model(small_master, tiny_backbone, tmp_path):
    """stages/grounding.py end to end on one model: metrics keep official_test and all, and
    add val; a figure per model."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    master, root = small_master
    write_grounding(
        build_tables(
            params_section(
                DemoParams, n_patients=120, seed=11, image_size=64, min_positive_rate=0.0
            )
        )["grounding"],
        tmp_path / "ms.csv",
        workers=1,
    )
    mp = fixed_model(backbone=f"local-dir:{tiny_backbone}", local_dim=16, keep_ratio=0.5,
                     use_local_alignment=True, use_masking=True)  # fmt: skip
    (tmp_path / "models" / "C").mkdir(parents=True)
    save_model(
        PatchIBModel(load_backbone(mp.backbone), mp), str(tmp_path / "models/C/model.safetensors")
    )
    cfg = {**Variant("C", mp, fixed_train(device="cpu")).to_dict(), "best_epoch": 1}
    (tmp_path / "models/C/config.json").write_text(json.dumps(cfg))
    repo = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval"].update(device="cpu", bootstrap=20)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    args = {"models": "models", "boxes": "ms.csv", "master": str(master), "root": str(root),
            "metrics": "m", "plots": "p", "params": "params.yaml"}  # fmt: skip
    cmd = [sys.executable, "-m", "stages.grounding", *(f"--{k}={v}" for k, v in args.items())]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    m = json.loads((tmp_path / "m/C.json").read_text())
    assert {"official_test", "val", "all", "unknown_dicom_ids"} <= set(m)
    assert m["val"]["phrases"] > 0 and m["official_test"]["phrases"] > 0
    assert m["all"]["phrases"] >= m["val"]["phrases"] + m["official_test"]["phrases"]
    assert (tmp_path / "p/C.png").is_file() and "val: " in proc.stdout
