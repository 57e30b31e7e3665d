"""The corruptions applied on the fly: each one the reference implementation's own pixels at the asked severity,
the same pixels for the same seed (in another process too, and under loader workers), a changed seed or image
index giving other draws, and bad names or severities refused listing the valid ones."""

from __future__ import annotations

import subprocess
import sys

import imagecorruptions
import numpy as np
import pytest
import torch
from tests.paths import ROOT
from torch.utils.data import DataLoader

from adaptformer.data.shift import CORRUPTIONS, Condition, CorruptedImages, check_severities, corrupt_image
from adaptformer.data.shift.corruptions import EXTRA_CORRUPTIONS, check_corruptions, corruption_seed

IMAGE = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "snow", "frost", "fog",
          "elastic_transform", "speckle_noise", "spatter"}  # fmt: skip


def _library_output(name: str, severity: int, seed: int) -> np.ndarray:
    """What imagecorruptions itself gives with NumPy's generator (and its own ``seed`` argument) seeded."""
    np.random.seed(seed)
    function = imagecorruptions.corruption_dict[name]
    own = {"seed": seed} if "seed" in function.__code__.co_varnames[: function.__code__.co_argcount] else {}
    return imagecorruptions.corrupt(IMAGE.copy(), corruption_name=name, severity=severity, **own)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_is_the_reference_at_its_severity_and_deterministic(name: str) -> None:
    severity = 1 + CORRUPTIONS.index(name) % 5  # every severity is asked of some corruption
    ours = corrupt_image(IMAGE.copy(), name, severity, seed=7)
    assert ours.shape == IMAGE.shape and ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, _library_output(name, severity, 7))
    np.testing.assert_array_equal(ours, corrupt_image(IMAGE.copy(), name, severity, seed=7))
    assert not np.array_equal(ours, IMAGE)  # it corrupts
    if severity < 5:  # the severity is the one asked: another one gives other pixels
        assert not np.array_equal(ours, corrupt_image(IMAGE.copy(), name, severity + 1, seed=7))
    if name in RANDOM:  # the seed drives its draws
        assert not np.array_equal(ours, corrupt_image(IMAGE.copy(), name, severity, seed=8))


def test_the_callers_global_generator_is_left_as_it_was() -> None:
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    corrupt_image(IMAGE.copy(), "gaussian_noise", 3, seed=1)
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_a_second_process_gives_the_same_pixels() -> None:
    code = (
        "import numpy as np, sys; from adaptformer.data.shift import corrupt_image; "
        "image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8); "
        "sys.stdout.write(corrupt_image(image, 'glass_blur', 2, seed=5).tobytes().hex())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert bytes.fromhex(done.stdout) == corrupt_image(IMAGE.copy(), "glass_blur", 2, seed=5).tobytes()


class _Images(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = np.random.default_rng(index).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        return torch.from_numpy(pixels).permute(2, 0, 1), index  # (3, H, W) uint8


def test_loader_workers_and_order_do_not_change_the_pixels() -> None:
    grid = [Condition(), Condition("shot_noise", 2), Condition("glass_blur", 1)]
    dataset = CorruptedImages(_Images(), grid, torch.nn.Identity(), seed=3)
    alone = [dataset[k][0] for k in range(len(dataset))]
    reversed_order = [dataset[k][0] for k in reversed(range(len(dataset)))][::-1]
    loader = DataLoader(dataset, batch_size=3, num_workers=2)
    workers = torch.cat([images for images, _ in loader])
    assert all(torch.equal(a, b) for a, b in zip(alone, reversed_order, strict=True))
    assert torch.equal(torch.stack(alone), workers)
    assert torch.equal(alone[1], _Images()[1][0])  # item 1: image 1, clean
    expected = corrupt_image(_Images()[2][0].permute(1, 2, 0).numpy().copy(), "shot_noise", 2,
                             corruption_seed(3, "shot_noise", 2, 2))  # fmt: skip
    assert torch.equal(alone[4 + 2], torch.from_numpy(expected).permute(2, 0, 1))  # item 6: image 2, shot noise
    assert not torch.equal(alone[4 + 2], alone[4 + 3])  # each image draws its own noise


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: check_corruptions(["fog", "rain"]), "unknown corruption(s) ['rain']; valid: gaussian_noise, "),
        (lambda: check_severities([0, 3]), "severities must be distinct values among [1, 2, 3, 4, 5], got [0, 3]"),
        (lambda: check_severities([6]), "among [1, 2, 3, 4, 5], got [6]"),
        (lambda: corrupt_image(IMAGE[:16, :16], "fog", 1, 0), "at least 32x32 pixels, got 16x16"),
        (lambda: Condition("fog", None), "a condition is clean (neither) or a corruption with a severity"),
    ],
)
def test_bad_corruption_requests_are_refused_listing_the_valid_ones(call, message: str) -> None:
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)
    if "unknown corruption" in message:
        assert all(name in str(error.value) for name in EXTRA_CORRUPTIONS)


def test_a_missing_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptformer.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "imagecorruptions", None)  # what an absent package raises on import
    with pytest.raises(MissingDependencyError, match=r"pip install 'adaptformer\[robustness\]'"):
        corrupt_image(IMAGE.copy(), "fog", 1, 0)
