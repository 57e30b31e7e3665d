"""PEFT LoRA folders in and out for ``transformers`` backbones (``hf:<folder>``): a real PEFT LoRA of transformers'
own ``*ForImageClassification`` (its q/v projections, ``classifier`` saved) imports to PEFT's logits, and this
library's LoRA on an ``hf:`` backbone exports to a folder ``PeftModel.from_pretrained`` loads onto that same
transformers model with our logits; tiny random-weight models written to real folders, fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from tests.hf_folders import inputs, write_hf_model
from tests.training_step import move_trainable
from transformers import AutoModelForImageClassification

from adaptformer import LoRAConfig, create_model, read_adapter_config, save_adapter
from adaptformer.cli import main
from adaptformer.saving import create_model_from_adapter

peft = pytest.importorskip("peft")

CLASSES = 5
ATOL = 1e-5


def _theirs(folder: Path) -> nn.Module:
    """transformers' own classification model on the folder's weights (its classifier freshly initialised)."""
    torch.manual_seed(7)
    return AutoModelForImageClassification.from_pretrained(folder, num_labels=CLASSES).eval()


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_a_peft_lora_of_a_transformers_model_imports_to_its_logits_and_exports_back(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / kind
    write_hf_model(kind, folder)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"])
    theirs = peft.get_peft_model(_theirs(folder), config)
    torch.manual_seed(1)
    move_trainable(theirs, 0.3)
    theirs.eval().save_pretrained(tmp_path / "peft")

    args = ["import-peft", str(tmp_path / "peft"), "--out", str(tmp_path / "ours"), "--model.backbone", f"hf:{folder}"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["method_config"] == LoRAConfig(rank=4, alpha=8.0, targets=("q", "v")).to_dict()
    assert read_adapter_config(tmp_path / "ours").spec.backbone == f"hf:{folder.resolve()}"
    ours = create_model_from_adapter(tmp_path / "ours").eval()
    x = inputs(kind)
    with torch.no_grad():
        expected = theirs(pixel_values=x).logits
        assert (expected - _theirs(folder)(pixel_values=x).logits).abs().max() > 1e-2  # the LoRA does something
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=ATOL)

    assert (
        main(["export", "--adapter", str(tmp_path / "ours"), "--format", "peft", "--out", str(tmp_path / "back")]) == 0
    )
    written = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert written["target_modules"] == ["q_proj", "v_proj"] and written["modules_to_save"] == ["classifier"]
    loaded = peft.PeftModel.from_pretrained(_theirs(folder), str(tmp_path / "back")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, expected, rtol=0, atol=ATOL)


def test_our_lora_on_an_hf_backbone_exports_to_peft_s_logits(tmp_path: Path) -> None:
    """Targets q, k, v and o (four separate Linears in transformers' layer, each its own PEFT module), one block."""
    folder = tmp_path / "vit"
    write_hf_model("vit", folder)
    torch.manual_seed(3)
    config = LoRAConfig(rank=2, alpha=5, targets=("q", "k", "v", "o"), layers=(1,))
    model = move_trainable(create_model(f"hf:{folder}", CLASSES, method=config, head="linear"), 0.3).eval()
    save_adapter(model, tmp_path / "adapter")
    assert main(["export", "--adapter", str(tmp_path / "adapter"), "--format", "peft"]) == 0
    written = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert written["r"] == 2 and written["lora_alpha"] == 5
    assert written["base_model_name_or_path"] == f"hf:{folder.resolve()}"
    loaded = peft.PeftModel.from_pretrained(_theirs(folder), str(tmp_path / "peft")).eval()
    x = inputs("vit")
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, model(x), rtol=0, atol=ATOL)
