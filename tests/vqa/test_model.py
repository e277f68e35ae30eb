"""Shapes of the VQA model, its question-only variant, and answer rendering."""

import pytest
import torch

from lib.vqa.answers import render
from lib.vqa.model import HEADS, VQAModel, vqa_loss

N_CLASSES = {"binary": 2, "category": 5, "region": 4, "severity": 3}


def _model(image: bool) -> VQAModel:
    return VQAModel(8, 6, N_CLASSES, 4, 5, hidden=16, heads=2, layers=2, dropout=0.0, image=image)


def test_shapes_and_loss() -> None:
    torch.manual_seed(0)
    m = _model(True)
    q, qm = torch.randn(3, 5, 8), torch.ones(3, 5, dtype=torch.bool)
    out = m(
        q,
        qm,
        torch.randn(3, 9, 6),
        torch.rand(3, 2, 6),
        torch.ones(3, 2, dtype=torch.long),
        torch.zeros(3, 2, dtype=torch.long),
        torch.ones(3, 2, dtype=torch.bool),
    )
    assert {h: out.logits[h].shape[1] for h in HEADS} == N_CLASSES
    assert out.chexpert.shape == (3, 14) and out.patch_attention.shape == (3, 9)
    assert torch.allclose(out.patch_attention.sum(-1), torch.ones(3))
    loss = vqa_loss(
        out, torch.tensor([0, 2, 1]), torch.tensor([1, 3, 4]), torch.full((3, 14), -1), 0.3
    )
    loss.backward()
    assert torch.isfinite(loss)


def test_question_only_sees_no_image() -> None:
    m = _model(False)
    out = m(torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool))
    assert out.patch_attention is None and out.logits["binary"].shape == (2, 2)


def test_render() -> None:
    vocab = {"categories": ["effusion"], "regions": ["left lung"], "severities": ["mild"]}
    row = {"category": 0, "region": -1, "severity": -1}
    assert (
        render("{answer}, there is {finding}.", "binary", 1, row, vocab)
        == "Yes, there is effusion."
    )
    assert render("The {finding} is in the {region}.", "region", 0, row, vocab) == (
        "The effusion is in the left lung."
    )


def test_grid_boxes_cover_the_image_row_major() -> None:
    from lib.vqa.model import grid_boxes

    b = grid_boxes(2, 3)
    assert b.shape == (6, 6)
    assert b[1].tolist() == pytest.approx([1 / 3, 0.0, 2 / 3, 0.5, 1 / 3, 0.5])
    assert b[:, 2].max() == pytest.approx(1.0) and b[:, 3].max() == pytest.approx(1.0)


def test_patch_positions_change_the_answer() -> None:
    """The patch cells enter the model: the same features at other places answer otherwise."""
    from lib.vqa.model import grid_boxes

    torch.manual_seed(0)
    m = _model(True).eval()
    q, qm = torch.randn(1, 5, 8), torch.ones(1, 5, dtype=torch.bool)
    p = torch.randn(1, 9, 6)
    scene = (torch.rand(1, 2, 6), torch.ones(1, 2, dtype=torch.long),
             torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.bool))  # fmt: skip
    boxes = grid_boxes(3, 3)
    a = m(q, qm, p, *scene, patch_boxes=boxes).logits["region"]
    b = m(q, qm, p, *scene, patch_boxes=boxes.flip(0)).logits["region"]
    assert not torch.allclose(a, b)
