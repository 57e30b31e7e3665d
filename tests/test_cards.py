"""The model card of an adapter folder (cards.py): the Hub's YAML metadata written from what the folder records
(test.json's numbers once training measured them), documentation only (a hand-edited card changes nothing at load),
and a local clone of a Hub repository (a .git folder, .gitattributes, the card, other files) loads as it is, its
other files never read or run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tests.conftest import VIT, tiny_kwargs
from tests.training_step import move_trainable

from adaptformer import LoRAConfig, create_model, load_adapter, read_adapter_config, save_adapter
from adaptformer.cards import CARD_NAME, model_card, write_model_card
from adaptformer.inference.multitask import MultiTaskModel
from adaptformer.saving import AdapterFileError, TrainingRecord, create_model_from_adapter


def _front_matter(path: Path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = move_trainable(create_model(VIT, 3, method=LoRAConfig(rank=2), init_seed=0, **tiny_kwargs(VIT)), 0.3)
    training = TrainingRecord(dataset="shapes", dataset_options={"num_samples": 8})
    return save_adapter(model.eval(), tmp_path / "run" / "adapter", classes=["a", "b", "c"], training=training)


def test_the_card_carries_the_hub_metadata_from_what_the_folder_records(adapter: Path) -> None:
    meta = _front_matter(adapter / CARD_NAME)
    assert meta == {
        "library_name": "adaptformer", "base_model": VIT, "tags": ["adaptformer", "lora", "image-classification"],
        "pipeline_tag": "image-classification", "datasets": ["shapes"], "license": None,  # left for the user
    }  # fmt: skip
    text = (adapter / CARD_NAME).read_text()
    assert '"rank": 2' in text and "a, b, c" in text and "create_model_from_adapter" in text
    assert "## Results" not in text  # no test.json yet


def test_the_run_s_test_numbers_reach_the_card(adapter: Path) -> None:
    (adapter.parent / "test.json").write_text(json.dumps({"split": "test", "acc1": 87.5, "loss": 0.25, "epoch": 3}))
    write_model_card(adapter)  # as training does once test.json is written
    meta = _front_matter(adapter / CARD_NAME)
    assert meta["metrics"] == ["acc1", "loss"]  # the measured numbers, not the epoch
    assert "| acc1 | 87.5 |" in (adapter / CARD_NAME).read_text()
    info = read_adapter_config(adapter)
    assert model_card(json.loads((adapter / "adapter_config.json").read_text()), {"acc1": 87.5}).count("acc1") == 2
    assert info.spec.method == "lora"


def test_a_card_edited_by_hand_changes_nothing_at_load(adapter: Path) -> None:
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = create_model_from_adapter(adapter).eval()(x)
    info = read_adapter_config(adapter)
    (adapter / CARD_NAME).write_text(
        "---\nlibrary_name: peft\nbase_model: resnet50\nmethod: vpt\nnum_classes: 9\n---\n"
    )
    assert read_adapter_config(adapter) == info
    with torch.no_grad():
        assert torch.equal(create_model_from_adapter(adapter).eval()(x), expected)


def test_a_local_clone_of_a_hub_repository_loads_with_its_other_files_ignored(tmp_path: Path, adapter: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(adapter, clone)
    marker = tmp_path / "executed"
    (clone / ".git").mkdir()
    (clone / ".git" / "config").write_text("[core]\n\trepositoryformatversion = 0\n")
    (clone / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    for name in ("setup.py", "modeling.py", "__init__.py"):  # code a loader must never import or run
        (clone / name).write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (clone / "config.json").write_text(json.dumps({"architectures": ["ViTForImageClassification"]}))
    (clone / "pytorch_model.bin").write_bytes(b"not a pickle anyone should load")
    (clone / CARD_NAME).write_text("# edited on the Hub\n")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = create_model_from_adapter(adapter).eval()(x)
        assert torch.equal(create_model_from_adapter(clone).eval()(x), expected)
        plain = create_model(VIT, 3, method="linear", init_seed=0, **tiny_kwargs(VIT))
        fresh = create_model(VIT, 3, method=LoRAConfig(rank=2), init_seed=0, **tiny_kwargs(VIT))
        assert torch.equal(load_adapter(fresh, clone).eval()(x), expected)
        multi = MultiTaskModel.from_adapters([clone, adapter]).eval()
        first, second = multi(x, torch.tensor([0, 1])).values()  # each task's logits for its rows
        torch.testing.assert_close(first, expected[:1], rtol=0, atol=1e-5)
        torch.testing.assert_close(second, expected[1:], rtol=0, atol=1e-5)
    assert not marker.exists() and plain is not None


def test_a_clone_made_without_git_lfs_says_so(tmp_path: Path, adapter: Path) -> None:
    clone = tmp_path / "clone"
    shutil.copytree(adapter, clone)
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 4242\n"
    (clone / "adapter_model.safetensors").write_text(pointer)
    with pytest.raises(AdapterFileError, match="a Git LFS pointer, not the weights; run `git lfs pull`"):
        create_model_from_adapter(clone)
