"""Segmentation scoring and inference (engine/segmentation.py): the scores against a confusion matrix computed by hand
(an absent class, a class predicted but absent from the labels, ignored pixels), and the sliding window against the
whole image for a model whose output at a pixel depends on that pixel only."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn as nn

from adaptformer.engine.segmentation import (
    IGNORE_INDEX,
    SegmentationInference,
    SegmentationScores,
    segment,
    segmentation_loss,
    slide_logits,
    whole_logits,
    window_starts,
)

LABELS = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]], [[0, 1, 1, 255], [2, 0, 0, 0]]])  # (2, 2, 4)
PREDICTED = torch.tensor([[[0, 1, 1, 1], [2, 3, 0, 3]], [[0, 1, 0, 2], [2, 0, 3, 0]]])


def _hand_scores() -> dict[str, object]:
    """The confusion matrix of LABELS x PREDICTED over the 4 classes, by counting, and the scores from it."""
    k = 5
    confusion = [[0] * k for _ in range(k)]
    for label, predicted in zip(LABELS.flatten().tolist(), PREDICTED.flatten().tolist(), strict=True):
        if label != IGNORE_INDEX:
            confusion[label][predicted] += 1
    ious, accs = [], []
    for c in range(k):
        tp = confusion[c][c]
        fn = sum(confusion[c]) - tp
        fp = sum(row[c] for row in confusion) - tp
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else math.nan)
        accs.append(tp / (tp + fn) if tp + fn else math.nan)
    pixels = sum(map(sum, confusion))
    mean = lambda v: 100 * sum(x for x in v if not math.isnan(x)) / sum(not math.isnan(x) for x in v)  # noqa: E731
    return {
        "miou": mean(ious),
        "macc": mean(accs),
        "aacc": 100 * sum(confusion[c][c] for c in range(k)) / pixels,
        "pixels": pixels,
        "iou": [None if math.isnan(v) else 100 * v for v in ious],
    }


def test_scores_equal_a_hand_computed_confusion_matrix() -> None:
    """Class 3 is predicted but never labelled (IoU 0, in the mean); class 4 is neither (left out of the means)."""
    scores = SegmentationScores(5)
    scores.update(PREDICTED[:1], LABELS[:1])
    scores.update(PREDICTED[1:], LABELS[1:])
    got = scores.compute(["a", "b", "c", "d", "e"])
    hand = _hand_scores()
    assert got["pixels"] == hand["pixels"] == 13 and got["n"] == 2
    for key in ("miou", "macc", "aacc"):
        assert got[key] == pytest.approx(hand[key], abs=1e-4), key
    assert list(got["iou"]) == ["a", "b", "c", "d", "e"]
    assert got["iou"]["d"] == 0.0 and got["iou"]["e"] is None
    assert [v if v is None else pytest.approx(v, abs=1e-4) for v in got["iou"].values()] == hand["iou"]


def test_labels_neither_a_class_nor_ignored_are_named() -> None:
    scores = SegmentationScores(3)
    with pytest.raises(ValueError, match=r"label values \[3, 7\] are neither a class \(0..2\) nor the ignore label"):
        scores.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 3], [7, 255]]]))


def test_every_pixel_ignored_is_an_error_not_a_nan() -> None:
    scores = SegmentationScores(3)
    scores.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255))
    with pytest.raises(ValueError, match="no labelled pixels"):
        scores.compute()


@pytest.mark.parametrize(("size", "crop", "stride"), [(10, 4, 3), (4, 4, 2), (3, 4, 2), (9, 4, 4), (100, 32, 21)])
def test_windows_cover_every_pixel_and_end_at_the_border(size: int, crop: int, stride: int) -> None:
    starts = window_starts(size, crop, stride)
    covered = {p for s in starts for p in range(s, s + crop)}
    assert covered >= set(range(size)) and starts[0] == 0
    assert max(starts) + crop == max(size, crop)
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))


class PixelModel(nn.Module):
    """Logits at a pixel from that pixel only (a 1x1 convolution): any window gives the same logits there."""

    def __init__(self, classes: int = 3, multiple: int = 1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.multiple = multiple
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        assert x.shape[-1] % self.multiple == 0 and x.shape[-2] % self.multiple == 0
        return self.conv(x)


@pytest.mark.parametrize(("height", "width"), [(13, 21), (8, 8), (5, 3)])
def test_the_sliding_window_equals_the_whole_image_for_a_per_pixel_model(height: int, width: int) -> None:
    model = PixelModel()
    image = torch.randn(2, 3, height, width)
    whole = model(image)
    slid = slide_logits(model, image, (8, 8), (5, 5), 3)
    assert slid.shape == (2, 3, height, width)
    torch.testing.assert_close(slid, whole, rtol=1e-5, atol=1e-6)
    assert all(size == (8, 8) for size in model.sizes[1:])  # every window the crop size, small images padded


def test_whole_image_inference_pads_to_the_models_multiple_and_cuts_back() -> None:
    model = PixelModel(multiple=8)
    image = torch.randn(1, 3, 13, 21)
    logits = whole_logits(model, image, multiple=8)
    assert model.sizes == [(16, 24)] and logits.shape == (1, 3, 13, 21)
    torch.testing.assert_close(logits, model.conv(image))


def test_segment_resizes_to_the_label_and_averages_flips_and_scales() -> None:
    model = PixelModel()
    image = torch.randn(1, 3, 16, 16)
    one = segment(model, image, SegmentationInference("whole"), (32, 32), input_size=(16, 16), num_classes=3)
    assert one.shape == (1, 3, 32, 32)
    torch.testing.assert_close(one.sum(dim=1), torch.ones(1, 32, 32))
    # a per-pixel model commutes with flipping: the flipped view adds nothing new
    flipped = segment(model, image, SegmentationInference("whole", flip=True), (32, 32), input_size=(16, 16),
                      num_classes=3)  # fmt: skip
    torch.testing.assert_close(flipped, one, rtol=1e-5, atol=1e-6)
    scaled = segment(model, image, SegmentationInference("slide", scales=(0.5, 1.0)), (16, 16), input_size=(8, 8),
                     num_classes=3)  # fmt: skip
    assert scaled.shape == (1, 3, 16, 16)


def test_inference_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="inference mode"):
        SegmentationInference("tiles")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crop must be two positive sizes"):
        SegmentationInference(crop=(0, 4))
    with pytest.raises(ValueError, match="scales must be positive"):
        SegmentationInference(scales=())
    assert SegmentationInference().windows((512, 512)) == ((512, 512), (341, 341))


def test_the_loss_ignores_255_and_resizes_logits_to_the_mask() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    masks = torch.randint(0, 3, (2, 8, 8))
    masks[:, :4] = IGNORE_INDEX
    loss = segmentation_loss(logits, masks)
    up = torch.nn.functional.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    expected = torch.nn.functional.cross_entropy(
        up[:, :, 4:].permute(0, 2, 3, 1).reshape(-1, 3), masks[:, 4:].reshape(-1)
    )
    torch.testing.assert_close(loss, expected)
