"""Video Swin (torchvision's Swin3D registered as tv_swin3d_*): the same computation and names as torchvision's
model, the pretrained config the data pipeline reads, the paper's Table 7 trainable count, and the checkpoint sources
(official Video Swin release, torchvision files, an inflated image Swin) on tiny real files written in tmp dirs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.training_step import move_trainable
from torchvision.models import SwinTransformer, swin_b, swin_s, swin_t
from torchvision.models.video import SwinTransformer3d, swin3d_b, swin3d_s, swin3d_t

from adaptformer import AdaptFormerConfig, CheckpointError, Preprocessing, build_backbone, create_model
from adaptformer.backbones.checkpoints.load import load_pretrained
from adaptformer.backbones.checkpoints.video_swin import convert_inflate_image_swin
from adaptformer.cli import main
from adaptformer.model import parameter_report
from adaptformer.preprocessing import clip_frames

# Two stages, two blocks in the first (one shifted), windows of 2 x 4 x 4 tokens: 4 frames of 32x32 -> 2 x 8 x 8
TINY = {"embed_dim": 16, "depths": [2, 1], "num_heads": [1, 2], "window_size": [2, 4, 4], "num_frames": 4,
        "img_size": 32, "drop_path_rate": 0.0}  # fmt: skip
TV_TINY = {"patch_size": [2, 4, 4], "embed_dim": 16, "depths": [2, 1], "num_heads": [1, 2], "window_size": [2, 4, 4]}

# The official Video Swin model (mmaction/models/backbones/swin_transformer.py: SwinTransformer3D in a Recognizer3D
# with an I3DHead), written out by hand for TINY in the order its modules register their tensors: PatchEmbed3D (proj,
# norm), BasicLayer.blocks (norm1, attn: relative_position_bias_table, relative_position_index, qkv, proj; norm2,
# mlp: fc1, fc2), BasicLayer.downsample = PatchMerging (reduction without bias, norm), the final norm, cls_head.fc_cls.
_BLOCK = ["norm1.weight", "norm1.bias", "attn.relative_position_bias_table", "attn.relative_position_index",
          "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
          "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]  # fmt: skip
OFFICIAL_TINY_KEYS = [
    "backbone.patch_embed.proj.weight", "backbone.patch_embed.proj.bias",
    "backbone.patch_embed.norm.weight", "backbone.patch_embed.norm.bias",
    *[f"backbone.layers.0.blocks.{j}.{k}" for j in (0, 1) for k in _BLOCK],
    "backbone.layers.0.downsample.reduction.weight",
    "backbone.layers.0.downsample.norm.weight", "backbone.layers.0.downsample.norm.bias",
    *[f"backbone.layers.1.blocks.0.{k}" for k in _BLOCK],
    "backbone.norm.weight", "backbone.norm.bias",
    "cls_head.fc_cls.weight", "cls_head.fc_cls.bias",
]  # fmt: skip


def _tiny(seed: int = 0, **kwargs: object) -> torch.nn.Module:
    return build_backbone("tv_swin3d_t", 5, init_seed=seed, **{**TINY, **kwargs}).eval()


def _clips(batch: int = 2, frames: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, frames, 32, 32, generator=torch.Generator().manual_seed(0))  # (B, C, T, H, W)


def _official(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s tensors under the official names: the hand-written list above, paired in registration order."""
    own = model.state_dict()
    assert len(own) == len(OFFICIAL_TINY_KEYS)
    return {name: tensor.clone() for name, tensor in zip(OFFICIAL_TINY_KEYS, own.values(), strict=True)}


def _save_official(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    torch.save({"meta": {"epoch": 30, "mmaction_version": "0.15.0"}, "state_dict": state_dict}, path)
    return path


def test_tv_swin3d_computes_exactly_torchvisions_swin3d() -> None:
    ours = _tiny()
    theirs = SwinTransformer3d(**TV_TINY, num_classes=5, stochastic_depth_prob=0.0).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)  # same names, same shapes
    x = _clips()
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        assert ours.forward_head(ours.forward_features(x), pre_logits=True).shape == (2, 32)  # pooled, before head


@pytest.mark.parametrize(("name", "builder", "params"), [
    ("tv_swin3d_t", swin3d_t, 28_158_070),
    ("tv_swin3d_s", swin3d_s, 49_816_678),
    ("tv_swin3d_b", swin3d_b, 88_048_984),
])  # fmt: skip
def test_variants_have_torchvisions_names_shapes_and_sizes(name: str, builder: object, params: int) -> None:
    """torchvision's weight files (whose sizes its model cards give) therefore load without renaming."""
    with torch.device("meta"):
        ours, theirs = build_backbone(name, 400), builder()  # type: ignore[operator]
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert sum(p.numel() for p in ours.parameters()) == params


def test_pretrained_cfg_gives_the_data_pipeline_frames_size_and_normalisation() -> None:
    with torch.device("meta"):
        default = build_backbone("tv_swin3d_b", 400)
    cfg = default.pretrained_cfg
    assert (cfg["architecture"], cfg["num_frames"], cfg["input_size"]) == ("tv_swin3d_b", 32, (3, 224, 224))
    assert Preprocessing.from_model(default) == Preprocessing(
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(3, 224, 224), interpolation="bilinear",
        crop_pct=0.875,
    )  # fmt: skip
    tiny = _tiny()
    assert clip_frames(tiny) == 4 and Preprocessing.from_model(tiny).input_size == (3, 32, 32)
    assert tiny.get_classifier() is tiny.head and tiny.num_features == 32 and tiny.num_classes == 5


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"in_chans": 1}, "in_chans must be 3"),
    ({"global_pool": "token"}, "global_pool must be 'avg'"),
    ({"window_size": [2, 4]}, r"window_size must be 3 positive sizes \(T, H, W\), got \[2, 4\]"),
    ({"num_heads": [1]}, "must name the same stages"),
    ({"depths": [1], "num_heads": [1]}, r"depths \[1\]: every stage needs a block, and the model at least two"),
])  # fmt: skip
def test_bad_constructor_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _tiny(**kwargs)


def test_grad_checkpointing_gives_the_adapters_the_same_gradients() -> None:
    """timm's activation checkpointing over the stages (``speed.grad_checkpointing``) recomputes, changing nothing."""
    grads = []
    for checkpointing in (False, True):
        model = move_trainable(
            create_model("tv_swin3d_t", 5, method=AdaptFormerConfig(dropout=0.0), init_seed=0, **TINY)
        )
        model.set_grad_checkpointing(checkpointing)
        F.cross_entropy(model.train()(_clips(4)), torch.tensor([0, 1, 2, 3])).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any(".adaptmlp." in n for n in grads[0])
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize(("classes", "trainable"), [(174, 1_340_298), (51, 1_214_223)])
def test_swin_b_with_per_stage_dim_over_12_adapters_has_table7_trainable_count(classes: int, trainable: int) -> None:
    """Adapters of dim // 12 = 10/21/42/85 per stage: 1,161,948; the paper head on the 1024-wide pooled feature."""
    with torch.device("meta"):
        model = create_model("tv_swin3d_b", classes, method=AdaptFormerConfig(bottleneck=1 / 12))
    rows = {name: t for name, t, _ in parameter_report(model).rows}
    assert rows == {"adapters": 1_161_948, "head": 1025 * classes, "backbone": 0}
    assert sum(rows.values()) == trainable
    assert isinstance(model.get_classifier()[0], torch.nn.BatchNorm1d)  # BatchNorm1d(affine=False) + Linear
    assert model.get_classifier()[1].weight.shape == (classes, 1024)


def test_official_checkpoint_loads_onto_torchvision_names_and_reproduces_the_model(tmp_path: Path) -> None:
    original = _tiny(seed=0)
    path = _save_official(tmp_path / "swin_tiny_patch244_window244_k400.pth", _official(original))
    fresh = _tiny(seed=1)
    report = load_pretrained(fresh, path, source="video-swin")
    assert len(report.loaded) == len(OFFICIAL_TINY_KEYS) and not report.missing
    x = _clips()
    with torch.no_grad():
        assert torch.equal(fresh(x), original(x))  # head (cls_head.fc_cls) included: same class count


@pytest.mark.parametrize(("edit", "message"), [
    (lambda sd: sd.pop("backbone.layers.0.blocks.1.mlp.fc2.bias"), r"missing keys \['features\.0\.1\.mlp\.3\.bias'\]"),
    (lambda sd: sd.update({"backbone.layers.0.blocks.0.attn.extra": torch.zeros(1)}),
     r"unexpected keys \['features\.0\.0\.attn\.extra'\]"),
    (lambda sd: sd.update({"neck.fc.weight": torch.zeros(1)}), r"unexpected keys \['neck\.fc\.weight'\]"),
    (lambda sd: sd["backbone.layers.1.blocks.0.attn.relative_position_index"].add_(1),
     "backbone.layers.1.blocks.0.attn.relative_position_index: the file's relative position index differs"),
])  # fmt: skip
def test_official_checkpoint_with_wrong_keys_fails_naming_them(tmp_path: Path, edit: object, message: str) -> None:
    state_dict = _official(_tiny())
    edit(state_dict)  # type: ignore[operator]
    path = _save_official(tmp_path / "edited.pth", state_dict)
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(_tiny(seed=1), path, source="video-swin")


def test_official_checkpoint_of_another_window_size_is_refused_naming_both(tmp_path: Path) -> None:
    """An 8x7x7 Kinetics file into a 16x7x7 model (the official Video Swin SSv2 starting point) in miniature: 2x4x4
    saved, 4x4x4 built."""
    path = _save_official(tmp_path / "window244.pth", _official(_tiny()))
    match = (
        r"backbone\.layers\.0\.blocks\.0\.attn\.relative_position_bias_table: shape \(147, 1\) was saved for another "
        r"attention window than the model's window_size \[4, 4, 4\] \(expected \(343, 1\)\)"
    )
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(_tiny(window_size=[4, 4, 4]), path, source="video-swin")


def test_torchvision_weight_files_load_strictly(tmp_path: Path) -> None:
    original = _tiny()
    path = tmp_path / "swin3d_tiny-00000000.pth"
    torch.save(original.state_dict(), path)
    fresh = _tiny(seed=1)
    load_pretrained(fresh, path, source="torchvision")
    x = _clips()
    with torch.no_grad():
        assert torch.equal(fresh(x), original(x))
    state_dict = original.state_dict()
    del state_dict["features.2.0.norm2.weight"]
    torch.save(state_dict, path)
    with pytest.raises(CheckpointError, match=r"missing keys \['features\.2\.0\.norm2\.weight'\]"):
        load_pretrained(_tiny(seed=1), path, source="torchvision")


def _image_swin(window: int = 4) -> SwinTransformer:
    torch.manual_seed(3)
    kwargs = {"patch_size": [4, 4], "embed_dim": 16, "depths": [2, 1], "num_heads": [1, 2], "window_size": [window] * 2}
    return SwinTransformer(**kwargs, stochastic_depth_prob=0.0, num_classes=5).eval()


def test_inflated_image_swin_gives_a_static_clip_the_images_logits(tmp_path: Path) -> None:
    """Video Swin's inflation: the patch kernel averaged over time and position tables repeated over temporal
    offsets, so a clip of one repeated frame is classified as that frame (with the shifted block's temporal mask)."""
    image_model = _image_swin()
    path = tmp_path / "swin_tiny_image.pth"
    torch.save(image_model.state_dict(), path)
    video_model = _tiny(seed=1)
    load_pretrained(video_model, path, source="inflate-image-swin")
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    clip = image[:, :, None].expand(-1, -1, 4, -1, -1)  # (B, C, T=4, H, W), 2 temporal tokens = one window
    with torch.no_grad():
        torch.testing.assert_close(video_model(clip), image_model(image), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("image", "video"), [(swin_t, "tv_swin3d_t"), (swin_s, "tv_swin3d_s"), (swin_b, "tv_swin3d_b")]
)
def test_torchvision_image_swin_inflates_onto_every_tensor_of_its_video_model(image: object, video: str) -> None:
    """Full size (meta tensors): swin_b's weight file (window 7x7, patch 4) fills every tv_swin3d_b tensor."""
    with torch.device("meta"):
        model = build_backbone(video, 1000)
        converted = convert_inflate_image_swin(image().state_dict(), model)  # type: ignore[operator]
    own = model.state_dict()
    assert {k: v.shape for k, v in converted.items()} == {k: v.shape for k, v in own.items()}


def test_inflating_an_image_swin_of_another_window_fails_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "swin_window2.pth"
    torch.save(_image_swin(window=2).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"features\.1\.0\.attn\.relative_position_bias_table: shape \(9, 1\)"):
        load_pretrained(_tiny(), path, source="inflate-image-swin")


def test_inflating_onto_an_image_model_is_refused_naming_the_source(tmp_path: Path) -> None:
    path = tmp_path / "swin_image.pth"
    torch.save(_image_swin().state_dict(), path)
    with pytest.raises(CheckpointError, match=r"inflate-image-swin inflates onto a video Swin \(tv_swin3d_\*\)"):
        load_pretrained(_image_swin(), path, source="inflate-image-swin")


def test_cli_trains_evaluates_and_predicts_with_a_tiny_video_swin(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data, out = tmp_path / "motion", tmp_path / "run"
    kwargs = {key: value for key, value in TINY.items() if key not in ("num_frames", "drop_path_rate")}
    assert main(["prepare", "synthetic-video", "--out", str(data), "--options", "{num_samples: 24}"]) == 0
    train = [
        "train", "--data.dataset", "videofolder", "--data.data_dir", str(data), "--model.backbone", "tv_swin3d_t",
        "--model.kwargs", json.dumps(kwargs), "--data.video.num_frames", "4", "--model.method.bottleneck", "4",
        "--model.method.dropout", "0", "--model.drop_path", "0", "--optim.epochs", "1", "--optim.warmup_epochs", "0",
        "--optim.batch_size", "4", "--optim.precision", "fp32", "--data.num_workers", "0", "--data.val_split", "0",
        "--run.select", "last", "--data.video.test_clips", "2", "--data.video.test_crops", "3",
        "--run.output_dir", str(out),
    ]  # fmt: skip
    assert main(train) == 0
    trained = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]
    assert main(["eval", "--adapter", str(out / "adapter"), "--data.data_dir", str(data)]) == 0
    evaluated = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]
    assert trained["test"]["views_per_video"] == 6  # 2 clips x 3 crops, logits averaged per video
    assert evaluated == {key: trained["test"][key] for key in evaluated}  # the saved adapter, the same numbers
    videos = sorted((data / "test").rglob("*.mp4"))[:2]
    assert main(["predict", "--adapter", str(out / "adapter"), *map(str, videos)]) == 0
    predicted = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in predicted] == [str(v) for v in videos]
