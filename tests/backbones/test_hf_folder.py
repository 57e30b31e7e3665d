"""Building ``hf:<folder>`` backbones from real local transformers folders: what is read, what is recorded, and a clear
error for every bad folder (no config, no weights, an unsupported architecture, weights that do not fit, wrong
flags); nothing is ever downloaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.hf_folders import write_hf_model
from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

from adaptformer import CheckpointError, build_backbone, create_model
from adaptformer.backbones.families import find_family, hf_families
from adaptformer.backbones.hf.layers import LAYERS
from adaptformer.backbones.hf.model import ARCHITECTURES
from adaptformer.backbones.hf.names import HF_FAMILY_NAMES
from adaptformer.factory import get_source
from adaptformer.preprocessing import Preprocessing, clip_frames


@pytest.fixture(scope="module")
def dino(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf") / "dinov2"
    write_hf_model("dinov2", folder)
    return folder


def test_the_backbone_records_its_absolute_folder_and_the_hf_source(
    dino: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(dino.parent)
    model = create_model("hf:dinov2", 3, method="lora")
    source = get_source(model)
    assert source is not None and source.checkpoint == str(dino.resolve()) and source.checkpoint_source == "hf"
    assert model.pretrained_cfg["architecture"] == f"hf:{dino.resolve()}"
    assert model.adaptformer_spec.backbone == f"hf:{dino.resolve()}"  # an adapter finds it from anywhere
    assert build_backbone("hf:dinov2", 3).pretrained_cfg["architecture"] == f"hf:{dino.resolve()}"  # adapt() reads it


def test_preprocessing_comes_from_the_folders_preprocessor_config(dino: Path, tmp_path: Path) -> None:
    assert Preprocessing.from_model(build_backbone(f"hf:{dino}", 3)).input_size == (3, 32, 32)
    folder = tmp_path / "with_processor"
    write_hf_model("siglip", folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2,
                    "do_center_crop": True, "size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}})
    )  # fmt: skip
    pre = Preprocessing.from_model(build_backbone(f"hf:{folder}", 3))
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5) and pre.interpolation == "bilinear"
    assert pre.crop_pct == 224 / 256  # DINOv2's processor: the short side to 256, the centre 224


def test_a_video_model_takes_clips_of_its_config_length(tmp_path: Path) -> None:
    write_hf_model("videomae", tmp_path / "videomae")
    model = build_backbone(f"hf:{tmp_path / 'videomae'}", 3, num_frames=4)
    assert clip_frames(model) == 4 and model.task_modules == ("fc_norm",)
    assert model(torch.zeros(2, 3, 4, 32, 32)).shape == (2, 3)  # (B, C, T, H, W), adaptformer's clip layout


def test_another_folder_of_the_same_architecture_gives_the_weights(dino: Path, tmp_path: Path) -> None:
    other = write_hf_model("dinov2", tmp_path / "finetuned", seed=7)
    model = build_backbone(f"hf:{dino}", 3, checkpoint=tmp_path / "finetuned")
    assert torch.equal(model.model.embeddings.cls_token, other.embeddings.cls_token)
    assert get_source(model).checkpoint == str((tmp_path / "finetuned").resolve())


def test_kwargs_set_config_fields_and_refuse_unknown_ones(dino: Path) -> None:
    assert build_backbone(f"hf:{dino}", 3, drop_path_rate=0.1).model.config.drop_path_rate == 0.1
    with pytest.raises(ValueError, match="model kwarg 'colour' is not a field of the transformers dinov2 config"):
        build_backbone(f"hf:{dino}", 3, colour="red")


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_two_tower_folder_gives_its_vision_tower(tmp_path: Path, kind: str) -> None:
    config_class, model_class = (CLIPConfig, CLIPModel) if kind == "clip" else (SiglipConfig, SiglipModel)
    tower = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    torch.manual_seed(0)
    both = model_class(config_class(vision_config={**tower, "image_size": 32, "patch_size": 8}, text_config=tower))
    both.eval().save_pretrained(tmp_path / kind)
    ours = create_model(f"hf:{tmp_path / kind}", 3, method="adaptformer").eval()
    assert find_family(ours).name == f"hf_{kind}"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours.forward_features(x), both.vision_model(pixel_values=x).last_hidden_state)


def _copy(folder: Path, to: Path, drop: str | None = None) -> Path:
    to.mkdir()
    (to / "config.json").write_text((folder / "config.json").read_text())
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if k != drop}, to / "model.safetensors", metadata={"format": "pt"})
    return to


def test_bad_folders_are_errors_naming_the_file_and_what_was_expected(dino: Path, tmp_path: Path) -> None:
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((dino / "config.json").read_text())
    with pytest.raises(CheckpointError, match=rf"{no_weights}: no weights; expected one of model\.safetensors"):
        build_backbone(f"hf:{no_weights}", 3)

    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_backbone(f"hf:{tmp_path}", 3)

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    supported = ", ".join(ARCHITECTURES)
    with pytest.raises(CheckpointError, match=f"model_type 'bert' is not a supported .*; supported: {supported}"):
        build_backbone(f"hf:{bert}", 3)

    short = _copy(dino, tmp_path / "short", drop="encoder.layer.1.mlp.fc2.weight")
    with pytest.raises(CheckpointError, match=r"does not fit .*missing keys \['encoder.layer.1.mlp.fc2.weight'\]"):
        build_backbone(f"hf:{short}", 3)

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(
        CheckpointError, match=f"{unknown}: config.json: .*no-such-architecture.*; supported: {supported}"
    ):
        build_backbone(f"hf:{unknown}", 3)

    with pytest.raises(FileNotFoundError, match="not a Hub model in the local Hugging Face cache"):
        build_backbone("hf:no-such-owner/no-such-model", 3)


def test_a_timm_checkpoint_source_or_timms_weights_are_refused_for_an_hf_backbone(dino: Path) -> None:
    with pytest.raises(ValueError, match="its weights are a transformers folder .* checkpoint source 'mae'"):
        build_backbone(f"hf:{dino}", 3, checkpoint=dino, checkpoint_source="mae")
    with pytest.raises(ValueError, match="its weights are a transformers folder"):
        build_backbone(f"hf:{dino}", 3, checkpoint="timm")


def test_without_transformers_the_library_works_and_an_hf_backbone_names_the_extra() -> None:
    """transformers is the `hf` extra: with it missing, importing the library, its families and a timm model work,
    and an hf: backbone is an ImportError saying what to install."""
    code = """
import sys
class NoTransformers:
    tried = []
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "transformers":
            NoTransformers.tried.append(name)
            raise ImportError("no transformers here")
sys.meta_path.insert(0, NoTransformers())
import adaptformer
from adaptformer.backbones.families import families
from adaptformer.methods.adaptformer import ADAPTED_BLOCKS
print("tried", NoTransformers.tried, len(ADAPTED_BLOCKS))  # not even an attempt: its modeling modules cost 2 s
print(sorted(f.name for f in families()))
adaptformer.create_model("vit_tiny_patch16_224", 3, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2)
adaptformer.create_model("hf:some/folder", 3)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "tried [] 6" in done.stdout and "['beit', 'eva', 'swin', 'tv_swin', 'tv_vit', 'vit']" in done.stdout, (
        done.stdout + done.stderr[-2000:]
    )
    wanted = "ImportError: backbone hf:some/folder needs transformers >= 5.23: pip install 'adaptformer[hf]'"
    assert wanted in done.stderr


def test_the_hf_family_names_are_the_layers_described() -> None:
    """Once transformers is imported (this module imports it), its families join, in LAYERS' order: a model can hold
    transformers layers only after transformers is imported; `import adaptformer` alone never imports it (above)."""
    assert tuple(LAYERS) == HF_FAMILY_NAMES
    assert [f.name for f in hf_families()] == list(HF_FAMILY_NAMES)
