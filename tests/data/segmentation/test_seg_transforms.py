"""The joint transforms keep image and mask aligned through random scale, crop and flip, pad a small image's mask
with the ignore index, leave masks out of the colour jitter, and at eval keep the mask at its own resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from adaptformer.data.segmentation import (
    IGNORE_INDEX,
    SegmentationAugment,
    build_segmentation_dataset,
    build_segmentation_transform,
    collate_segmentation,
)
from adaptformer.preprocessing import Preprocessing

# class k is drawn in colour COLOURS[k]; none is the padding's mean colour
COLOURS = np.array([[250, 10, 10], [10, 250, 10], [10, 10, 250], [250, 250, 10]], np.uint8)
MEAN = (0.2, 0.4, 0.6)
NEAREST = Preprocessing(mean=MEAN, std=(1.0, 1.0, 1.0), input_size=(3, 32, 32), interpolation="nearest")


def blocks(height: int, width: int, seed: int) -> tuple[torch.Tensor, tv_tensors.Mask]:
    """A uint8 (3, H, W) image of 4x4 blocks of the class colours and its (H, W) class mask."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, len(COLOURS), size=(-(-height // 4), -(-width // 4)))
    mask = np.kron(cells, np.ones((4, 4), np.int64))[:height, :width].astype(np.uint8)
    image = torch.from_numpy(COLOURS[mask].transpose(2, 0, 1).copy())  # (H, W, C) -> (C, H, W)
    return image, tv_tensors.Mask(torch.from_numpy(mask))


def pixels(image: torch.Tensor) -> np.ndarray:
    """The uint8 (H, W, C) picture a transformed image was normalised from (std 1)."""
    values = (image.numpy().transpose(1, 2, 0) + np.asarray(MEAN)) * 255
    return np.rint(values).astype(np.int64)


@pytest.mark.parametrize("size", [(40, 56), (20, 24)])
def test_random_scale_crop_flip_keep_image_and_mask_aligned(size: tuple[int, int]) -> None:
    transform = build_segmentation_transform(NEAREST, train=True, augment=SegmentationAugment(photometric=False))
    for seed in range(12):
        torch.manual_seed(seed)
        image, mask = transform(*blocks(*size, seed))
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert mask.shape == (32, 32) and mask.dtype == torch.int64
        picture, labels = pixels(image), mask.numpy()
        drawn = labels != IGNORE_INDEX
        assert np.array_equal(picture[drawn], COLOURS[labels[drawn]].astype(np.int64))  # the colour of its class
        assert (np.abs(picture[~drawn] - np.rint(np.asarray(MEAN) * 255)) <= 1).all()  # padding: mean colour


def test_an_image_smaller_than_the_crop_is_padded_with_the_ignore_index() -> None:
    augment = SegmentationAugment(scale=(1.0, 1.0), base_size=10, flip=False, photometric=False)
    image, mask = build_segmentation_transform(NEAREST, train=True, augment=augment)(*blocks(10, 12, 0))
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert int((mask != IGNORE_INDEX).sum()) == 10 * 12  # the whole picture, nothing else
    assert image[:, mask == IGNORE_INDEX].abs().max() < 1 / 255  # mean colour: 0 once normalised


def test_the_colour_jitter_changes_the_image_never_the_mask() -> None:
    augment = SegmentationAugment(scale=(1.0, 1.0), flip=False)  # base 32: no resize, the crop is the whole image
    transform = build_segmentation_transform(NEAREST, train=True, augment=augment)
    source, source_mask = blocks(32, 32, 3)
    changed = 0
    for seed in range(4):
        torch.manual_seed(seed)
        image, mask = transform(source, source_mask)
        assert torch.equal(mask, source_mask.as_subclass(torch.Tensor).long())
        changed += int(not np.array_equal(pixels(image), source.numpy().transpose(1, 2, 0)))
    assert changed >= 3


@pytest.mark.parametrize("resize, image_shape", [(True, (3, 32, 48)), (False, (3, 40, 60))])
def test_eval_resizes_the_image_and_keeps_the_mask_at_full_resolution(resize: bool, image_shape: tuple) -> None:
    augment = SegmentationAugment(eval_resize=resize)
    source, source_mask = blocks(40, 60, 1)
    image, mask = build_segmentation_transform(NEAREST, train=False, augment=augment)(source, source_mask)
    assert image.shape == image_shape and image.dtype == torch.float32
    assert mask.dtype == torch.int64 and torch.equal(mask, source_mask.as_subclass(torch.Tensor).long())


def test_transforms_run_on_dataset_items_and_collate() -> None:
    pre = Preprocessing(input_size=(3, 32, 32))
    train = build_segmentation_dataset(
        "digits-seg", None, "train", build_segmentation_transform(pre, True), num_samples=4
    )
    images, masks = collate_segmentation([train[i] for i in range(4)])
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32) and masks.dtype == torch.int64
    varied = [(torch.zeros(3, 32, 48), torch.zeros(40, 60)), (torch.zeros(3, 32, 32), torch.zeros(32, 32))]
    images, masks = collate_segmentation(varied)
    assert isinstance(images, list) and [m.shape for m in masks] == [(40, 60), (32, 32)]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("scale", (2.0, 0.5), "scale must be two numbers"),
        ("scale", (0.0, 1.0), "scale must be two numbers"),
        ("scale", (1.0,), "scale must be two numbers"),
        ("base_size", 0, "base_size must be a positive integer"),
        ("base_size", True, "base_size must be a positive integer"),
        ("flip", "yes", "flip must be true or false"),
        ("eval_resize", 1, "eval_resize must be true or false"),
    ],
)
def test_augment_settings_are_checked(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SegmentationAugment(**{field: value})


def test_grey_backbones_are_refused() -> None:
    with pytest.raises(ValueError, match="segmentation transforms produce RGB"):
        build_segmentation_transform(Preprocessing(mean=(0.5,), std=(0.5,), input_size=(1, 32, 32)), train=True)
