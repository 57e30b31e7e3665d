"""Bad input to the configuration: every impossible flag value and every broken config file is an error that names
the flag as typed, or the file and key; the defaults fit the machine and short runs; the help texts read cleanly."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import yaml

from adaptformer import AdaptFormerConfig
from adaptformer.cli import main
from adaptformer.engine import TrainBatchSampler, TrainConfig
from adaptformer.engine.config.parser import ConfigError, parse_cli, parse_mapping, read_config
from adaptformer.engine.loaders import resolve_num_workers
from adaptformer.recipes import load_recipe

SMALL = "vit_shapes_patch8_32"


def _parse(*flags: str) -> TrainConfig:
    return parse_cli(["--data.dataset", "synthetic", *flags])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ("--optim.epochs 0", "--optim.epochs must be >= 1, got 0"),
        ("--optim.epochs -3", "--optim.epochs must be >= 1, got -3"),
        ("--optim.epochs 3x", "--optim.epochs: Expected a <class 'int'>. Got value: 3x"),
        ("--optim.batch_size 0", "--optim.batch_size must be >= 1, got 0"),
        ("--optim.eval_batch_size 0", "--optim.eval_batch_size must be >= 1"),
        ("--optim.lr -0.1", "--optim.lr must be a positive number, got -0.1"),
        ("--optim.blr 0", "--optim.blr must be a positive number"),
        ("--optim.min_lr -1", "--optim.min_lr must be >= 0"),
        ("--optim.momentum 1", r"--optim.momentum must be in [0, 1)"),
        ("--optim.betas '[0.9]'", "--optim.betas: Expected a tuple with 2 elements"),
        ("--optim.precision fp8", "--optim.precision: Expected a typing.Literal"),
        ("--optim.epochs 2 --optim.warmup_epochs 3", "--optim.warmup_epochs (3.0) must not exceed --optim.epochs"),
        ("--optim.batch_size 8 --optim.effective_batch 12", "--optim.effective_batch (12) must be a multiple"),
        ("--data.val_split 1.5", "--data.val_split must be 0, a fraction in (0, 1) or a sample count >= 1"),
        ("--data.val_split 0", "run.select 'best' needs a validation split; set --data.val_split > 0"),
        ("--data.crop_scale '[0.5, 0.1]'", "--data.crop_scale must satisfy 0 < min <= max <= 1"),
        ("--data.num_workers -1", "--data.num_workers must be >= 0, got -1"),
        ("--data.video.test_crops 1", "--data.video.test_crops apply to video datasets only; 'synthetic' is an"),
        ("--data.options '{colour: 3}'", "--data.options ['colour'] are not options of 'synthetic'; it takes"),
        ("--data.options '{num_samples:8}'", "YAML needs a space after each ':': '{num_samples: 8}'"),
        ("--model.kwargs '{img_size:32,patch_size:8}'", "after each ':': '{img_size: 32,patch_size: 8}'"),
        ("--model.kwargs '{img_size: 32, patch_size:8}'", "--model.kwargs: key 'patch_size:8' has no value"),
        ("--model.head mlp", "--model.head: Does not validate against any of the Union subtypes"),
        ("--model.drop_path 1", r"--model.drop_path must be in [0, 1)"),
        ("--model.checkpoint_source caffe", "--model.checkpoint_source must be one of"),
        ("--model.method dora", "--model.method: unknown method 'dora'"),
        ("--model.method.bottleneck 0", "--model.method.bottleneck must be >= 1, got 0"),
        ("--model.method.bottleneck 3/2", "--model.method.bottleneck as a ratio of the block width"),
        ("--model.method.layers '[1, -1]'", "--model.method.layers must be a non-empty list of block indices >= 0"),
        ("--model.method.dropout 1.5", "--model.method.dropout must be a probability in [0, 1)"),
        ("--model.method.num_tokens 3", "--model.method.num_tokens is not a field of adaptformer"),
        ("--model.method vpt --model.method.num_tokens 0", "--model.method.num_tokens must be a positive"),
        ("--optim.batch_size 1", "--optim.batch_size 1 cannot train model.head 'paper': its BatchNorm1d"),
        ("--run.device gpu0", "--run.device 'gpu0' is not auto or a torch device"),
        ("--run.eval_every 0", "--run.eval_every must be >= 1"),
        ("--run.seed -1", "--run.seed must be >= 0"),
        ("--run.select worst", "--run.select: Expected a typing.Literal['best', 'last']"),
        ("--speed.attention flash", "--speed.attention: Expected a typing.Literal"),
        ("--optim.learning_rate 1", "unrecognized arguments: --optim.learning_rate 1"),
    ],
)  # fmt: skip
def test_an_impossible_flag_value_is_an_error_naming_the_flag(flags: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        _parse(*shlex.split(flags))
    assert message in str(error.value)
    assert not str(error.value).startswith("the command line")  # the flag says where, not a vague place


CORRUPT = [
    ("truncated", "optim: {epochs: [1\n", "not valid YAML"),
    ("list", "- 1\n- 2\n", "expected a mapping of configuration keys, got list"),
    ("section", "optim: 5\n", "optim must be a mapping of its keys, got 5"),
    ("unknown section", "training: {epochs: 2}\n", "unknown configuration sections ['training']"),
    ("unknown key", "optim: {learning_rate: 0.1}\n", "unknown key optim.learning_rate"),
    ("method field", "model: {method: {name: vpt, bottleneck: 3}}\n", "unknown VPTConfig fields ['bottleneck']"),
    ("type", "optim: {epochs: 3x}\n", "optim.epochs: Expected a <class 'int'>. Got value: 3x"),
    ("value", "optim: {epochs: 0}\n", "optim.epochs must be >= 1, got 0"),
    ("method value", "model: {method: {bottleneck: 0}}\n", "model.method.bottleneck must be >= 1, got 0"),
    ("kwargs", "model: {kwargs: {img_size:32}}\n", "model.kwargs: key 'img_size:32' has no value"),
    ("batch of one", "optim: {batch_size: 1}\n", "optim.batch_size 1 cannot train model.head 'paper'"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "message"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_a_broken_config_file_is_an_error_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str, text: str, message: str
) -> None:
    path = tmp_path / "my config.yaml"
    path.write_text(text)
    assert main(["params", "--model.backbone", SMALL, "--num-classes", "10", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ") and message in err and "Traceback" not in err
    with pytest.raises(ValueError, match=f"^{path}: "):  # the Python API names the file too
        read_config(path)


def test_a_binary_config_file_and_a_missing_one_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x00\xff\xfe")
    assert main(["params", "--config", str(path)]) == 2
    assert f"error: {path}: not a YAML text file" in capsys.readouterr().err
    assert main(["params", "--config", str(tmp_path / "nowhere.yaml")]) == 2
    assert f"--config {tmp_path / 'nowhere.yaml'}: no such file" in capsys.readouterr().err


def test_values_from_a_file_and_from_a_flag_are_each_named_by_their_origin(tmp_path: Path) -> None:
    path = tmp_path / "short.yaml"
    path.write_text("optim: {epochs: 2}\n")
    with pytest.raises(ConfigError) as error:
        parse_cli(
            ["--data.dataset", "synthetic", "--optim.warmup_epochs", "5"],
            [(str(path), yaml.safe_load(path.read_text()))],
        )
    assert str(error.value) == f"{path}: --optim.warmup_epochs (5.0) must not exceed optim.epochs (2)"  # fmt: skip


def test_warmup_defaults_to_the_papers_proportion_of_the_epochs() -> None:
    short = _parse("--optim.epochs", "2")  # 0.1: an error (the default warmup of 20 epochs exceeded 2)
    assert short.optim.warmup_epochs is None and short.optim.warmup() == pytest.approx(0.4)
    assert _parse().optim.warmup() == 20.0  # 20 of the default 100 epochs, the paper's
    assert _parse("--optim.epochs", "2", "--optim.warmup_epochs", "0").optim.warmup() == 0.0  # explicit values stay
    recipe = parse_mapping(load_recipe("hmdb51_adaptformer64"))
    assert (recipe.optim.epochs, recipe.optim.warmup_epochs) == (90, 10.0)  # recipes keep their explicit values
    assert "warmup_epochs: null" in short.to_yaml()  # recorded as given: --config repeats the same resolution


@pytest.mark.parametrize(
    ("requested", "cpus", "local_processes", "workers"),
    [(None, 2, 1, 2), (None, 16, 1, 4), (None, 16, 8, 2), (None, 1, 2, 0), (3, 1, 1, 3), (0, 64, 1, 0)],
)
def test_num_workers_default_fits_the_cpus_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch, requested: int | None, cpus: int, local_processes: int, workers: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert resolve_num_workers(requested, local_processes) == workers
    assert _parse().data.num_workers is None  # the default is "auto", resolved (and logged) when the run starts


def test_bottleneck_one_twelfth_as_the_paper_writes_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = _parse("--model.method.bottleneck", "1/12")
    assert cfg.model.method == AdaptFormerConfig(bottleneck=1 / 12)
    assert cfg.model.method.bottleneck_for(768, 0) == 64 and cfg.model.method.bottleneck_for(1024, 3) == 85
    assert _parse("--model.method.bottleneck", "0.0833").model.method.bottleneck == 0.0833
    assert _parse("--model.method.bottleneck", "64").model.method.bottleneck == 64
    recorded = tmp_path / "config.yaml"
    recorded.write_text(cfg.to_yaml())  # what a run writes: the ratio as a number, read back exactly
    assert read_config(recorded) == cfg
    written = tmp_path / "by_hand.yaml"
    written.write_text("data: {dataset: synthetic}\nmodel: {method: {name: adaptformer, bottleneck: 1/12}}\n")
    assert read_config(written) == cfg
    assert main(["params", "--model.backbone", SMALL, "--num-classes", "10", "--model.method.bottleneck", "1/12"]) == 0
    assert "adapters" in capsys.readouterr().out


@pytest.mark.parametrize(("num_samples", "batch", "accum", "world"), [(17, 2, 1, 1), (23, 4, 2, 1), (31, 3, 1, 2)])
def test_training_micro_batches_are_always_full(num_samples: int, batch: int, accum: int, world: int) -> None:
    """BatchNorm of the paper head fails on a batch of one: the last, short batch is dropped (on every process)."""
    for rank in range(world):
        sampler = TrainBatchSampler(num_samples, batch, accum, world, rank, seed=0)
        for epoch in range(3):
            sampler.set_epoch(epoch)
            sizes = {len(micro) for micro in sampler}
            assert sizes == {batch}


def test_a_batch_of_one_is_fine_with_the_linear_head() -> None:
    assert _parse("--optim.batch_size", "1", "--model.head", "linear").optim.batch_size == 1


COMMANDS = ["train", "params", "eval", "predict", "prepare ssv2", "prepare hmdb51", "recipes", "demo", "study"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_texts_have_no_doubled_defaults_or_internal_names(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as done:
        main([*command.split(), "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert text.count("usage: adaptformer") >= 1
    for entry in text.split(" --"):
        assert entry.count("default:") <= 1, entry
    for internal in ("class_path", "known subclasses", "--data-dir", "--dataset ", "init_args", "cli/", "__main__"):
        assert internal not in text
