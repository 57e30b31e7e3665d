"""The method registry: a method defined outside the package (config + what it attaches + what trains), registered
with one call, is known to the whole library: create_model, parameter report, optimizer, configuration files and
command line, training, the saved adapter, load_adapter and eval."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file
from tests.conftest import VIT, tiny_kwargs

from adaptformer import (
    Method,
    MethodConfig,
    build_backbone,
    count_trainable,
    create_model,
    get_method,
    load_adapter,
    method_names,
    parameter_report,
    read_adapter_config,
    register_method,
)
from adaptformer.cli import main
from adaptformer.engine import build_optimizer
from adaptformer.engine.config.parser import parse_cli, parse_mapping
from adaptformer.methods import unregister_method


@dataclass(frozen=True)
class NormTuneConfig(MethodConfig):
    """Norm tuning: the LayerNorms of the last blocks train (a method this package does not ship).

    Args:
        last: how many of the last blocks have their LayerNorms trained.
    """

    last: int = 1

    def __post_init__(self) -> None:
        if self.last < 1:
            raise ValueError(f"last must be >= 1, got {self.last}")


def _attach(model: nn.Module, config: NormTuneConfig) -> nn.Module:
    return model  # nothing to add: it trains modules the backbone already has


def _norms(model: nn.Module) -> list[nn.Module]:
    config = model.adaptformer_spec.method_config
    blocks = list(model.blocks)[-config.last :]
    return [m for block in blocks for m in block.modules() if isinstance(m, nn.LayerNorm)]


NORM_TUNE = Method("normtune", NormTuneConfig, _attach, _norms, summary="LayerNorms of the last blocks", group="norms")


@pytest.fixture
def registered() -> Iterator[Method]:
    method = register_method(NORM_TUNE)
    yield method
    unregister_method(method.name)


def test_a_registered_method_works_through_the_python_api(registered: Method) -> None:
    assert "normtune" in method_names() and get_method("normtune") is registered
    model = create_model(VIT, 5, method=NormTuneConfig(last=2), **tiny_kwargs(VIT))
    width = model.embed_dim
    assert count_trainable(model) == 2 * 2 * (2 * width) + (width + 1) * 5  # 2 blocks x 2 norms + the head
    assert parameter_report(model).to_dict()["groups"]["norms"]["trainable"] == 8 * width
    optimizer = build_optimizer(model, "sgd", 0.1, weight_decay=0.1)
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == count_trainable(model)
    with pytest.raises(ValueError, match="already registered"):
        register_method(NORM_TUNE)


def test_a_registered_method_is_a_configuration_and_command_line_choice(registered: Method) -> None:
    cfg = parse_cli(["--data.dataset", "synthetic", "--model.method", "normtune", "--model.method.last", "3"])
    assert cfg.model.method == NormTuneConfig(last=3) and cfg.model.method_name == "normtune"
    again = parse_mapping(cfg.to_dict())
    assert again == cfg and cfg.to_dict()["model"]["method"] == {"name": "normtune", "last": 3}
    with pytest.raises(ValueError, match="last must be >= 1"):
        parse_cli(["--data.dataset", "synthetic", "--model.method", "normtune", "--model.method.last", "0"])


def test_train_save_load_and_eval_a_registered_method(
    registered: Method, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    backbone = tmp_path / "backbone.safetensors"
    torch.manual_seed(0)
    save_file(build_backbone(VIT, 10, **tiny_kwargs(VIT)).state_dict(), str(backbone))
    out = tmp_path / "run"
    args = ["train", "--model.backbone", VIT, "--model.kwargs", json.dumps(tiny_kwargs(VIT)), "--model.checkpoint",
            str(backbone), "--model.method", "normtune", "--model.method.last", "2", "--data.dataset", "synthetic",
            "--data.options", "{num_samples: 32, image_size: 32}", "--optim.epochs", "2", "--optim.warmup_epochs",
            "0", "--optim.batch_size", "8", "--optim.blr", "4", "--optim.precision", "fp32", "--data.num_workers",
            "0", "--run.output_dir", str(out)]  # fmt: skip
    assert main(args) == 0
    info = read_adapter_config(out / "adapter")
    assert info.spec.method == "normtune" and info.spec.method_config == NormTuneConfig(last=2)
    trained = create_model(VIT, 10, method=NormTuneConfig(last=2), checkpoint=str(backbone), **tiny_kwargs(VIT))
    restored = load_adapter(trained, out / "adapter")  # strict: the file's tensors are exactly the method's + head
    tuned = dict(restored.named_parameters())["blocks.2.norm2.weight"]
    assert not torch.equal(tuned, torch.ones_like(tuned))  # the norms did train
    capsys.readouterr()
    assert main(["eval", "--adapter", str(out / "adapter")]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["acc1"] == json.loads((out / "test.json").read_text())["acc1"]


def test_a_method_training_the_backbone_declares_its_own_backbone_to_share_a_batch() -> None:
    from adaptformer.methods.linear import attach, no_modules

    with pytest.raises(ValueError, match=r"method 'tuned' trains the backbone: .* only with own_backbone=True"):
        Method("tuned", NormTuneConfig, attach, no_modules, trains_backbone=True, batch_refusal=None)
    assert Method("tuned", NormTuneConfig, attach, no_modules, trains_backbone=True, own_backbone=True,
                  batch_refusal=None).own_backbone  # fmt: skip
    assert get_method("full").own_backbone and not get_method("lora").own_backbone
    assert (
        get_method("lora").module_sites and get_method("vpt").module_sites and get_method("lora").batch_refusal is None
    )
