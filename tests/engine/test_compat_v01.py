"""adaptformer 0.1.0's files still work in 0.2: its adapter folders (format_version 1 with task.json) load and give
0.1.0's logits bit for bit, its run config.yaml files read as their 0.2 nesting, and a checkpoint-less 0.1.0 adapter
is usable with the seed its run recorded. The fixtures in tests/fixtures/v0_1 were written by 0.1.0 itself."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tests.paths import FIXTURES

from adaptformer import AdaptFormerConfig, LinearConfig, VPTConfig, read_adapter_config
from adaptformer.backbones import SHAPES_VIT_FILE
from adaptformer.cli import main
from adaptformer.engine.config.parser import parse_mapping
from adaptformer.inference.evaluate import load_trained_model
from adaptformer.saving import AdapterFileError, create_model_from_adapter, save_adapter

V01 = FIXTURES / "v0_1"
METHODS = {
    "adaptformer_digits": AdaptFormerConfig(bottleneck=4),
    "vpt_digits": VPTConfig(num_tokens=2, deep=True),
    "linear_random_init": LinearConfig(),
}


def _expected(name: str) -> dict[str, torch.Tensor]:
    return load_file(str(V01 / "expected" / f"{name}.safetensors"))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_v01_adapter_folder_reads_with_its_task_json(name: str) -> None:
    info = read_adapter_config(V01 / name)
    assert info.format_version == 1 and info.spec.method_config == METHODS[name]
    assert info.classes == [str(i) for i in range(10)] and info.training.dataset == "digits"
    assert info.training.precision == "fp32" and info.source.checkpoint_source == "timm"


def _same_logits(got: torch.Tensor, expected: torch.Tensor) -> None:
    """The 0.1 logits, up to the float rounding of another CPU: the fixtures were computed on one CPU model, and fp32
    matmuls on another (AMD without AMX vs Intel with it) sum in another order. A wrong weight, head or method moves
    logits by far more than 1e-5."""
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["adaptformer_digits", "vpt_digits"])
def test_v01_adapters_give_v01_logits(name: str) -> None:
    # 0.1.0 recorded the checkpoint's absolute path at the time; the same weights are the shipped file
    model, _ = load_trained_model(V01 / name, checkpoint=str(SHAPES_VIT_FILE))
    expected = _expected(name)
    with torch.no_grad():
        _same_logits(model(expected["input"]), expected["logits"])


def test_a_checkpoint_less_v01_adapter_needs_and_takes_its_seed() -> None:
    with pytest.raises(AdapterFileError, match="initial seed is not recorded.*--model.init_seed"):
        load_trained_model(V01 / "linear_random_init")
    seed = yaml.safe_load((V01 / "configs" / "linear_random_init.yaml").read_text())["seed"]
    # The seed rebuilds the backbone up to float rounding: on another CPU model than the fixtures' the seeded init
    # differs in the last bits (likely the vectorised erfinv of timm's truncated-normal init), so the SHA-256
    # fingerprint of the weights matches only on a CPU like the fixtures' (the loader then refuses, naming both);
    # the logits agree within 1e-5, and another seed's differ by ~2.
    source = replace(read_adapter_config(V01 / "linear_random_init").source, init_seed=seed)
    model = create_model_from_adapter(V01 / "linear_random_init", source, allow_backbone_mismatch=True).eval()
    expected = _expected("linear_random_init")
    with torch.no_grad():
        _same_logits(model(expected["input"]), expected["logits"])
    with pytest.raises(AdapterFileError, match="backbone weights differ"):
        load_trained_model(V01 / "linear_random_init", init_seed=seed + 1)  # another seed: another backbone


def test_a_v01_folder_evaluates_from_the_command_line(capsys: pytest.CaptureFixture) -> None:
    args = ["eval", "--adapter", str(V01 / "adaptformer_digits"), "--model.checkpoint", str(SHAPES_VIT_FILE)]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    test_of_run = json.loads((V01 / "manifest.json").read_text())["fixtures"]["adaptformer_digits"]["test_of_run"]
    assert printed["n"] == test_of_run["n"] and printed["acc1"] == pytest.approx(test_of_run["acc1"])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_v01_config_yaml_reads_as_its_nested_equivalent(name: str) -> None:
    flat = yaml.safe_load((V01 / "configs" / f"{name}.yaml").read_text())
    cfg = parse_mapping(flat)
    assert cfg.model.method == METHODS[name] and cfg.model.backbone == flat["model"]
    assert (cfg.data.dataset, cfg.optim.epochs, cfg.optim.batch_size, cfg.run.seed) == (
        flat["dataset"], flat["epochs"], flat["batch_size"], flat["seed"],
    )  # fmt: skip
    assert parse_mapping(cfg.to_dict()) == cfg  # and it writes out as 0.2 nesting


def test_removed_or_unknown_v01_keys_say_what_to_change() -> None:
    flat = yaml.safe_load((V01 / "configs" / "adaptformer_digits.yaml").read_text())
    with pytest.raises(ValueError, match="allocator: 'tuned' was removed in 0.2"):
        parse_mapping({**flat, "allocator": "tuned"})
    with pytest.raises(ValueError, match="unknown key 'colour' in a flat \\(0.1\\) configuration"):
        parse_mapping({**flat, "colour": 1})


def test_resaving_a_v01_adapter_writes_one_v2_description(tmp_path: Path) -> None:
    model, info = load_trained_model(V01 / "adaptformer_digits", checkpoint=str(SHAPES_VIT_FILE))
    save_adapter(model, tmp_path / "v2", classes=info.classes, training=info.training)
    names = sorted(p.name for p in (tmp_path / "v2").iterdir())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors"]  # one description + its card
    again = read_adapter_config(tmp_path / "v2")
    assert again.format_version == 2 and again.spec == info.spec and again.classes == info.classes
    assert again.source.checkpoint == str(SHAPES_VIT_FILE.resolve())
    a, b = (
        load_file(str(V01 / "adaptformer_digits" / "adapter_model.safetensors")),
        load_file(str(tmp_path / "v2" / "adapter_model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # tensors, not bytes (metadata order)
    shutil.rmtree(tmp_path / "v2")
