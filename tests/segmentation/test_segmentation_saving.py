"""Segmentation adapter files: the task record (head, feature layers, channels, ignore index) and the classes are
written, the decode head's tensors are task tensors, the rebuilt model computes the same logits, and a segmentation
adapter is refused where a classifier is asked for, and the reverse, before any backbone is built."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.conftest import SWIN, VIT, tiny_kwargs
from tests.segmentation.tiny_segmenters import CLASSES, TV_VIT, tiny_segmenter
from tests.training_step import move_trainable

from adaptformer import AdapterFileError, VPTConfig, create_model, get_method, load_adapter, save_adapter
from adaptformer.saving import CONFIG_NAME, WEIGHTS_NAME, create_model_from_adapter, read_adapter_config
from adaptformer.segmentation import SegmentationModel, load_segmentation_model

NAMES = ["road", "car", "sky"]


def _trained(name: str, method, head: str, **extra) -> SegmentationModel:
    """A tiny model whose trainable tensors and decode-head BatchNorm statistics moved off their init."""
    model = move_trainable(tiny_segmenter(name, method, head, **extra), 0.2).train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize(
    ("name", "method", "head", "extra"),
    [
        (VIT, "adaptformer", "upernet", {}),
        (VIT, VPTConfig(num_tokens=2, deep=False), "linear", {"layers": (1, 2), "ignore_index": 0}),
        (SWIN, "lora", "upernet", {}),
        (SWIN, "full", "linear", {}),
        (TV_VIT, "linear", "upernet", {}),
    ],
    ids=["vit-adaptformer-upernet", "vit-vpt-linear", "swin-lora-upernet", "swin-full-linear", "tv-vit-linear-upernet"],
)
def test_save_then_load_gives_the_same_logits(tmp_path: Path, name: str, method, head: str, extra: dict) -> None:
    model = _trained(name, method, head, **extra)
    save_adapter(model, tmp_path, classes=NAMES)

    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    layers = list(extra.get("layers", model.config.layers))
    assert config["task"] == {"type": "segmentation", "head": head, "layers": layers, "channels": 8,
                              "ignore_index": extra.get("ignore_index", 255)}  # fmt: skip
    assert config["classes"] == NAMES and config["num_classes"] == CLASSES
    keys = set(load_file(tmp_path / WEIGHTS_NAME))
    assert {f"decode_head.{k}" for k in model.decode_head.state_dict()} <= keys
    method_modules = {id(m) for m in get_method(config["method"]).modules(model)}
    method_keys = {f"{n}.{k}" for n, m in model.named_modules() if id(m) in method_modules for k in m.state_dict()}
    if not get_method(config["method"]).trains_backbone:  # the method's tensors and the decode head's, no others
        assert {k for k in keys if not k.startswith("decode_head.")} == method_keys

    loaded = load_segmentation_model(tmp_path)
    assert isinstance(loaded, SegmentationModel) and not loaded.training
    assert loaded.config == model.config and loaded.ignore_index == model.ignore_index == config["task"]["ignore_index"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _no_build(*args, **kwargs):
    raise AssertionError("a backbone was built for an adapter of the other task")


def test_a_segmentation_adapter_is_no_classifier_and_the_reverse(tmp_path: Path, monkeypatch) -> None:
    segmentation = save_adapter(_trained(VIT, "adaptformer", "linear"), tmp_path / "seg")
    classifier = save_adapter(create_model(VIT, CLASSES, init_seed=0, **tiny_kwargs(VIT)), tmp_path / "cls")
    monkeypatch.setattr("adaptformer.saving.build_backbone", _no_build)
    monkeypatch.setattr("adaptformer.segmentation.model.build_adapter_backbone", _no_build)

    refusal = (
        "a segmentation adapter, but a classification model was asked for; rebuild it with adaptformer.segmentation"
    )
    with pytest.raises(AdapterFileError, match=refusal):
        create_model_from_adapter(segmentation)
    with pytest.raises(AdapterFileError, match=refusal):
        load_adapter(create_model(VIT, CLASSES, init_seed=0, **tiny_kwargs(VIT)), segmentation)
    with pytest.raises(AdapterFileError, match="a classification adapter, but a segmentation model was asked for"):
        load_segmentation_model(classifier)
    with pytest.raises(AdapterFileError, match="a classification adapter, but a segmentation model was asked for"):
        load_adapter(tiny_segmenter(VIT, "adaptformer"), classifier)


def test_loading_into_a_model_with_another_head_or_backbone_is_refused(tmp_path: Path) -> None:
    save_adapter(_trained(VIT, "adaptformer", "linear"), tmp_path)
    with pytest.raises(AdapterFileError, match="the model's task differs from the adapter's"):
        load_adapter(tiny_segmenter(VIT, "adaptformer", "upernet"), tmp_path)
    info = read_adapter_config(tmp_path)
    other_seed = replace(info.source, init_seed=1)
    with pytest.raises(AdapterFileError, match="the backbone weights differ from those the adapter was trained on"):
        load_segmentation_model(tmp_path, other_seed)


def test_a_task_record_without_a_type_is_a_bad_file(tmp_path: Path) -> None:
    save_adapter(_trained(VIT, "linear", "linear"), tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "task": "segmentation"}))
    with pytest.raises(AdapterFileError, match="task must be an object with a \"type\", got 'segmentation'"):
        read_adapter_config(tmp_path)


def test_load_trained_model_rebuilds_either_task(tmp_path: Path) -> None:
    """eval and predict load any adapter folder: a segmentation one comes back as a SegmentationModel."""
    from adaptformer.inference.evaluate import load_trained_model

    model = _trained(VIT, "adaptformer", "linear")
    save_adapter(model, tmp_path)
    loaded, info = load_trained_model(tmp_path)
    assert isinstance(loaded, SegmentationModel) and info.task["type"] == "segmentation"
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
