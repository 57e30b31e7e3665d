"""Segmentation on ``transformers`` backbones (``hf:<folder>``): at init the decode head reads exactly transformers'
own per-layer hidden states (plain encoders: ``output_hidden_states``; Swin: its encoder's stage maps before
downsampling, ``reshaped_hidden_states``); a training step moves only the adapters and the decode head; a model
saved and loaded gives the same logits; an input size the backbone does not take is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.hf_folders import write_hf_model
from tests.training_step import move_trainable

from adaptformer import VPTConfig, save_adapter
from adaptformer.segmentation import create_segmentation_model, load_segmentation_model

CLASSES = 3
PLAIN = ["vit", "deit", "dinov2-registers", "clip", "siglip", "beit", "beit-abs"]


def _x(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", [*PLAIN, "swin"])
def test_the_features_at_init_are_transformers_own_hidden_states(tmp_path: Path, kind: str) -> None:
    theirs = write_hf_model(kind, tmp_path / kind)
    model = create_segmentation_model(f"hf:{tmp_path / kind}", CLASSES, method="adaptformer", channels=8).eval()
    x = _x()
    with torch.no_grad():
        ours = model.features(x)
        if kind == "swin":
            embedded, dimensions = theirs.embeddings(x)
            expected = theirs.encoder(
                embedded, dimensions, output_hidden_states=True, output_hidden_states_before_downsampling=True
            ).reshaped_hidden_states[1:]  # (B, C, h, w) per stage, after the embedding's
        else:
            grid = 32 // theirs.config.patch_size
            states = theirs(pixel_values=x, output_hidden_states=True).hidden_states[1:]  # per layer
            expected = [s[:, -grid * grid :].transpose(1, 2).reshape(2, -1, grid, grid) for s in states]
    wanted = [expected[i] for i in model.config.layers]
    assert [tuple(f.shape) for f in ours] == [tuple(e.shape) for e in wanted]
    for got, want in zip(ours, wanted, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert model(x).shape == (2, CLASSES, 32, 32)


@pytest.mark.parametrize(
    "kind, method", [("vit", VPTConfig(num_tokens=2)), ("swin", "lora"), ("dinov2", "adapter_plus")]
)
def test_a_training_step_moves_the_method_and_the_decode_head_only(tmp_path: Path, kind: str, method) -> None:
    write_hf_model(kind, tmp_path / kind)
    model = create_segmentation_model(f"hf:{tmp_path / kind}", CLASSES, method=method, head="upernet", channels=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    masks = torch.randint(0, CLASSES, (2, 32, 32), generator=torch.Generator().manual_seed(2))
    torch.nn.functional.cross_entropy(model.train()(_x()), masks).backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("decode_head.") or n in _method_names(model) for n in moved)
    assert any(n.startswith("decode_head.") for n in moved) and any(not n.startswith("decode_head.") for n in moved)


def _method_names(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("decode_head.")}


def test_a_saved_hf_segmenter_loads_to_the_same_logits(tmp_path: Path) -> None:
    write_hf_model("dinov2", tmp_path / "dinov2")
    torch.manual_seed(0)
    model = create_segmentation_model(f"hf:{tmp_path / 'dinov2'}", CLASSES, method="adaptformer", channels=8)
    move_trainable(model, 0.3)
    save_adapter(model.eval(), tmp_path / "adapter")
    loaded = load_segmentation_model(tmp_path / "adapter")
    x = _x(40)  # DINOv2 takes any multiple of its patch (its position table is interpolated)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_an_input_size_a_fixed_size_hf_backbone_does_not_take_is_refused(tmp_path: Path) -> None:
    write_hf_model("vit", tmp_path / "vit")
    model = create_segmentation_model(f"hf:{tmp_path / 'vit'}", CLASSES, method="adaptformer", channels=8)
    with pytest.raises(ValueError, match="takes 32x32 inputs only, got 48x48.*the image_size of its config"):
        model(_x(48))
