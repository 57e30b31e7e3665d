"""PEFT LoRA folders in and out (inference/peft_files.py, methods/peft_lora.py, ``import-peft``, ``export --format
peft``) against a real PEFT (``get_peft_model`` / ``save_pretrained`` / ``PeftModel.from_pretrained``) on a tiny timm
ViT: logits equal PEFT's both ways (fp32), the fused-qkv shared-A form and this library's per-third form, round trips
of the files, and the refusals, each naming the key and its value."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from tests.training_step import move_trainable

from adaptformer import LoRAConfig, create_model, read_adapter_config, save_adapter
from adaptformer.cli import main
from adaptformer.saving import create_model_from_adapter

peft = pytest.importorskip("peft")

NAME = "vit_tiny_patch16_224"
KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
CLASSES = 5
ATOL = 1e-5  # fp32; in practice the same operations in the same order


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """PEFT's base model's weights (random, seeded) as a timm state dict: both libraries build on these."""
    torch.manual_seed(0)
    path = tmp_path / "base.safetensors"
    save_file(timm.create_model(NAME, num_classes=CLASSES, **KWARGS).state_dict(), str(path))
    return path


def _timm(base: Path) -> nn.Module:
    model = timm.create_model(NAME, num_classes=CLASSES, **KWARGS)
    model.load_state_dict(load_file(str(base)))
    return model.eval()


def _peft_model(base: Path, seed: int = 1, **lora: Any) -> nn.Module:
    """A PEFT LoRA model, every trained tensor (factors and the head copy) random and non-zero."""
    config = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "modules_to_save": ["head"], **lora})
    model = peft.get_peft_model(_timm(base), config)
    torch.manual_seed(seed)
    move_trainable(model, 0.3)
    return model.eval()


def _x() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _import(peft_dir: Path, out: Path, base: Path, *extra: str) -> int:
    return main(["import-peft", str(peft_dir), "--out", str(out), "--model.backbone", NAME,
                 "--model.kwargs", json.dumps(KWARGS), "--model.checkpoint", str(base), *extra])  # fmt: skip


@pytest.mark.parametrize(
    "lora, expected",
    [
        ({"target_modules": ["qkv"]}, LoRAConfig(rank=4, alpha=8.0, targets=("qkv",))),
        (
            {"target_modules": ["qkv", "attn.proj"], "lora_alpha": 4, "lora_dropout": 0.1},
            LoRAConfig(rank=4, targets=("qkv", "o"), dropout=0.1),
        ),
        (
            {"target_modules": r"blocks\.1\.attn\.qkv", "r": 2, "lora_alpha": 3},
            LoRAConfig(rank=2, alpha=3.0, targets=("qkv",), layers=(1,)),
        ),
        (
            {"target_modules": ["attn.proj"], "layers_to_transform": [0], "layers_pattern": "blocks"},
            LoRAConfig(rank=4, alpha=8.0, targets=("o",), layers=(0,)),
        ),
    ],
    ids=["qkv", "qkv_proj_dropout", "regex_one_block", "proj_layers_to_transform"],
)
def test_a_peft_folder_imports_to_peft_s_own_logits(
    tmp_path: Path, base: Path, lora: dict, expected: LoRAConfig, capsys: pytest.CaptureFixture
) -> None:
    model = _peft_model(base, **lora)
    model.save_pretrained(tmp_path / "peft")
    assert _import(tmp_path / "peft", tmp_path / "ours", base) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["num_classes"] == CLASSES and printed["method_config"] == expected.to_dict()
    info = read_adapter_config(tmp_path / "ours")
    assert info.spec.method_config == expected and info.spec.head == "linear"
    ours = create_model_from_adapter(tmp_path / "ours").eval()  # its backbone rebuilt from the recorded checkpoint
    with torch.no_grad():
        theirs, got = model(_x()), ours(_x())
    assert (theirs - _timm(base)(_x())).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(got, theirs, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "config, rank, target_modules",
    [  # per-third updates: one PEFT update of the fused qkv, block-diagonal; other updates zero-padded to its rank
        (LoRAConfig(rank=4, targets=("q", "v")), 8, ["qkv"]),
        (LoRAConfig(rank=3, alpha=6, targets=("qkv",)), 3, ["qkv"]),  # PEFT's own form
        (LoRAConfig(rank=2, alpha=5, targets=("q", "k", "v", "o"), layers=(1,)), 6, ["1.attn.proj", "1.attn.qkv"]),
        (
            LoRAConfig(rank=2, targets=("qkv", "o"), dropout=0.1),
            2,
            ["attn.proj", "attn.qkv"],
        ),  # not "proj": patch_embed
    ],
    ids=["q_v", "qkv", "q_k_v_o_block1", "qkv_o"],
)
def test_our_adapter_exports_to_a_folder_peft_loads_to_our_logits(
    tmp_path: Path, base: Path, config: LoRAConfig, rank: int, target_modules: list[str]
) -> None:
    torch.manual_seed(3)
    model = create_model(NAME, CLASSES, method=config, head="linear", checkpoint=str(base), **KWARGS)
    save_adapter(move_trainable(model, 0.3).eval(), tmp_path / "run" / "adapter")
    assert main(["export", "--adapter", str(tmp_path / "run" / "adapter"), "--format", "peft"]) == 0
    folder = tmp_path / "run" / "peft"  # the default: beside the adapter
    loaded = peft.PeftModel.from_pretrained(_timm(base), str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(_x()), model(_x()), rtol=0, atol=ATOL)
    written = json.loads((folder / "adapter_config.json").read_text())
    assert written["r"] == rank and written["target_modules"] == target_modules
    assert written["lora_alpha"] / written["r"] == config.scaling and written["modules_to_save"] == ["head"]
    assert written["lora_dropout"] == config.dropout
    assert "library_name: peft" in (folder / "README.md").read_text()  # a card, as PEFT's save_pretrained writes
    assert _import(folder, tmp_path / "back", base) == 0  # and read back: a qkv (and o) LoRA of rank r, same function
    back = read_adapter_config(tmp_path / "back").spec.method_config
    assert back.rank == rank and back.targets == tuple(t for t in ("qkv", "o") if t == "qkv" or t in config.targets)
    with torch.no_grad():
        torch.testing.assert_close(
            create_model_from_adapter(tmp_path / "back").eval()(_x()), model(_x()), rtol=0, atol=ATOL
        )


def test_qkv_adapter_round_trips_to_the_same_files(tmp_path: Path, base: Path) -> None:
    """ours -> PEFT -> ours gives the same adapter folder; PEFT -> ours -> PEFT the same tensors."""
    torch.manual_seed(4)
    model = create_model(NAME, CLASSES, method=LoRAConfig(rank=4, targets=("qkv", "o")), head="linear",
                         checkpoint=str(base), **KWARGS)  # fmt: skip
    first = save_adapter(move_trainable(model, 0.3).eval(), tmp_path / "first")
    assert main(["export", "--adapter", str(first), "--format", "peft", "--out", str(tmp_path / "peft")]) == 0
    assert _import(tmp_path / "peft", tmp_path / "second", base) == 0
    # the same tensors, bit for bit, and the same description (safetensors writes its metadata in a hash map's
    # order, so two saves of one model may differ in bytes, and with them the recorded SHA-256)
    first_tensors, second_tensors = (
        load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("first", "second")
    )
    assert first_tensors.keys() == second_tensors.keys()
    assert all(torch.equal(first_tensors[k], second_tensors[k]) for k in first_tensors)
    first_config, second_config = (
        json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("first", "second")
    )
    assert first_config.pop("weights_sha256") and second_config.pop("weights_sha256")
    assert first_config == second_config

    _peft_model(base, target_modules=["qkv", "attn.proj"]).save_pretrained(tmp_path / "theirs")
    assert _import(tmp_path / "theirs", tmp_path / "ours", base) == 0
    assert (
        main(["export", "--adapter", str(tmp_path / "ours"), "--format", "peft", "--out", str(tmp_path / "back")]) == 0
    )
    before, after = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("theirs", "back"))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    a, b = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in ("theirs", "back"))
    keys = ("peft_type", "r", "lora_alpha", "lora_dropout", "modules_to_save", "bias", "use_dora", "use_rslora")
    assert {k: a[k] for k in keys} == {k: b[k] for k in keys}  # target_modules: other names, the same modules (above)


def _edited(tmp_path: Path, base: Path, **changes: Any) -> Path:
    """A real PEFT LoRA folder (qkv) with its adapter_config.json edited."""
    folder = tmp_path / "edited"
    _peft_model(base, target_modules=["qkv"]).save_pretrained(folder)
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
    return folder


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rank_pattern": {"blocks.0.attn.qkv": 8}}, r"rank_pattern \{'blocks.0.attn.qkv': 8\}"),
        ({"alpha_pattern": {"qkv": 2}}, r"alpha_pattern \{'qkv': 2\}"),
        ({"use_rslora": True}, "use_rslora True"),
        ({"use_dora": True}, "use_dora True"),
        ({"bias": "all"}, "bias 'all'"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights 'pissa'"),
        ({"target_modules": ["qkv", "query"]}, r"target_modules \['qkv', 'query'\]: \['query'\] name no module"),
        ({"target_modules": ["attn.proj"]}, r"target_modules \['attn.proj'\]: does not name blocks.0.attn.qkv"),
        ({"modules_to_save": None}, "modules_to_save None: the adapter holds no trained head"),
        ({"r": 8}, r"r 8: blocks.0.attn.qkv's lora_A is \(4, 32\)"),
        ({"use_qalora": True}, "use_qalora True: a PEFT setting this library does not reproduce"),
    ],
)
def test_settings_peft_cannot_share_are_refused_naming_key_and_value(
    tmp_path: Path, base: Path, changes: dict, message: str, capsys: pytest.CaptureFixture
) -> None:
    assert _import(_edited(tmp_path, base, **changes), tmp_path / "ours", base) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not (tmp_path / "ours").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: peft.IA3Config(target_modules=["qkv"], feedforward_modules=[]), "peft_type 'IA3'"),
        (lambda: peft.LoHaConfig(r=2, target_modules=["qkv"]), "peft_type 'LOHA'"),
        (
            lambda: peft.LoraConfig(r=2, target_modules=["qkv", "fc1"], modules_to_save=["head"]),
            r"adapts blocks.0.mlp.fc1, which this library's LoRA does not adapt \(it adapts each attention's",
        ),
        (
            lambda: peft.LoraConfig(r=2, target_modules=["qkv"], modules_to_save=["head", "norm"]),
            r"tensor 'base_model.model.norm.(bias|weight)': neither a LoRA factor nor a tensor of the classifier",
        ),
        (  # "proj" selects the patch embedding's Conv2d too
            lambda: peft.LoraConfig(r=2, target_modules=["qkv", "proj"], modules_to_save=["head"]),
            r"target_modules \[('qkv', 'proj'|'proj', 'qkv')\]: adapts patch_embed.proj, which this library's LoRA",
        ),
    ],
    ids=["ia3", "loha", "mlp_lora", "norm_saved", "patch_embed_proj"],
)
def test_real_peft_folders_of_other_kinds_are_refused(
    tmp_path: Path, base: Path, make: Any, message: str, capsys: pytest.CaptureFixture
) -> None:
    model = peft.get_peft_model(_timm(base), make())
    model.save_pretrained(tmp_path / "peft")
    assert _import(tmp_path / "peft", tmp_path / "ours", base) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


@pytest.mark.parametrize(
    "method, head, message",
    [
        ("adaptformer", "linear", "method 'adaptformer': a PEFT LoRA adapter holds a LoRA adapter only"),
        ("lora", "paper", "head 'paper': PEFT's model keeps the backbone's plain Linear head"),
    ],
)
def test_what_peft_cannot_hold_is_not_exported(
    tmp_path: Path, base: Path, method: str, head: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    model = create_model(NAME, CLASSES, method=method, head=head, checkpoint=str(base), **KWARGS)
    save_adapter(model, tmp_path / "adapter")
    assert main(["export", "--adapter", str(tmp_path / "adapter"), "--format", "peft"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "peft").exists()


def test_an_import_without_the_base_model_s_weights_is_refused(tmp_path: Path, base: Path, capsys) -> None:
    _peft_model(base, target_modules=["qkv"]).save_pretrained(tmp_path / "peft")
    args = ["import-peft", str(tmp_path / "peft"), "--out", str(tmp_path / "ours"), "--model.backbone", NAME]
    assert main(args) == 2
    assert "give the base model's weights (--model.checkpoint PATH, or timm) or its --model.init_seed" in (
        capsys.readouterr().err
    )
    assert _import(tmp_path / "peft", tmp_path / "ours", tmp_path / "missing.safetensors") == 2
    assert "--model.checkpoint" in capsys.readouterr().err and not (tmp_path / "ours").exists()
