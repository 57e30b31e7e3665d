"""The host allocator option: glibc is tuned once per process when asked, left alone by "auto", refused where the C
library is not glibc."""

from __future__ import annotations

import subprocess
import sys

import pytest

import adaptformer.allocator as allocator
import adaptformer.speed as speed
from adaptformer.speed import SpeedConfig, resolve

GLIBC = allocator.allocator_tunable()


def test_auto_leaves_the_allocator_alone() -> None:
    assert resolve(SpeedConfig(), "cpu", "bf16").allocator == "default"
    assert resolve(SpeedConfig(), "cuda", "bf16").allocator == "default"
    if GLIBC:
        assert resolve(SpeedConfig(allocator="tuned"), "cpu", "bf16").allocator == "tuned"
    assert resolve(SpeedConfig(allocator="default"), "cpu", "bf16").allocator == "default"
    with pytest.raises(ValueError, match="allocator"):
        SpeedConfig(allocator="jemalloc")


def test_tuned_is_refused_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speed, "allocator_tunable", lambda: False)
    with pytest.raises(ValueError, match="needs Linux with glibc"):
        resolve(SpeedConfig(allocator="tuned"), "cpu", "fp32")


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_tuning_sets_both_thresholds_once_per_process() -> None:
    """In a fresh interpreter: default and auto leave malloc alone, tuned calls mallopt twice, once per process."""
    program = f"""
import ctypes, torch
import adaptformer.allocator as a
from adaptformer import create_model
from adaptformer.speed import SpeedConfig, apply_speed
calls = []
real = a._glibc().mallopt
class Spy:
    def __getattr__(self, name): return getattr(ctypes.CDLL(None), name)
    def mallopt(self, option, value):
        calls.append((option, value)); return real(option, value)
a._glibc = lambda: Spy()
kwargs = dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
apply_speed(create_model("vit_tiny_patch16_224", 3, **kwargs), SpeedConfig(allocator="default"), "cpu", "fp32")
apply_speed(create_model("vit_tiny_patch16_224", 3, **kwargs), SpeedConfig(), "cpu", "fp32")
assert calls == [] and not a.allocator_tuned(), calls
apply_speed(create_model("vit_tiny_patch16_224", 3, **kwargs), SpeedConfig(allocator="tuned"), "cpu", "fp32")
apply_speed(create_model("vit_tiny_patch16_224", 3, **kwargs), SpeedConfig(allocator="tuned"), "cpu", "fp32")
assert calls == [(-3, {allocator.MMAP_THRESHOLD}), (-1, {allocator.TRIM_THRESHOLD})], calls
assert a.allocator_tuned()
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_a_refused_setting_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Refusing:
        def mallopt(self, option: int, value: int) -> int:
            return 0

    monkeypatch.setattr(allocator, "_tuned", False)
    monkeypatch.setattr(allocator, "_glibc", lambda: Refusing())
    with pytest.raises(RuntimeError, match="M_MMAP_THRESHOLD"):
        allocator.tune_allocator()
    assert not allocator.allocator_tuned()
