"""The training engine: configuration, optimizer/schedule, samplers, the loop, evaluation, resume and bad input."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import logging
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file
from tests.conftest import VIT, changed, nested
from tests.engine.tiny_runs import TINY, tiny_backbone_file, tiny_config

from adaptformer import AdaptFormerConfig, VPTConfig, create_model
from adaptformer.engine import (
    DataConfig,
    DistributedContext,
    ModelConfig,
    NonFiniteLossError,
    OptimConfig,
    Predictions,
    Progress,
    RunConfig,
    ShardSampler,
    TrainBatchSampler,
    TrainingStateError,
    WarmupCosine,
    build_optimizer,
    classification_metrics,
    load_training_state,
    param_groups,
    resolve_precision,
    save_training_state,
    scaled_lr,
    train_one_epoch,
)
from adaptformer.engine.config.layers import merge_config
from adaptformer.engine.config.parser import parse_cli, parse_mapping, read_config, train_parser
from adaptformer.engine.loaders import SeededSamples, load_image_split, with_transform
from adaptformer.engine.records import MetricsLog
from adaptformer.engine.train import build_model, train
from adaptformer.saving import read_adapter_config

CPU = DistributedContext()


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT saved as a timm checkpoint: the stand-in for pre-trained weights."""
    return tiny_backbone_file(tmp_path_factory)


# -- configuration ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "dora"}, r"unknown method 'dora'; registered methods: \['adaptformer'"),
        ({"epochs": "3x"}, r"configuration: optim.epochs: Expected a <class .int.>. Got value: 3x"),
        ({"epochs": 0}, "optim.epochs must be >= 1"),
        ({"lr": -1.0}, "optim.lr must be a positive number"),
        ({"val_split": 1.5}, "data.val_split must be"),
        ({"val_split": 0}, "run.select 'best' needs a validation split"),
        ({"effective_batch": 100, "batch_size": 64}, "multiple of optim.batch_size"),
        ({"warmup_epochs": 5.0, "epochs": 2}, "must not exceed optim.epochs"),
        ({"dataset": ""}, "data.dataset is required"),
        ({"betas": [0.9]}, "configuration: optim.betas: Expected a tuple with 2 elements"),
        ({"momentum": 1.0}, r"optim.momentum must be in \[0, 1\)"),
        ({"bottleneck": 0}, "bottleneck must be >= 1"),
        ({"vpt_tokens": 4}, r"unknown AdaptFormerConfig fields \['num_tokens'\]"),
    ],
)
def test_config_rejects_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_mapping(merge_config(nested(dataset="synthetic"), nested(**changes)))


def test_config_yaml_round_trip_keeps_types(tmp_path: Path) -> None:
    cfg = parse_mapping(
        nested(dataset="synthetic", lr=1e-3, val_split=100, bottleneck=[4, 8], model_kwargs={"img_size": 32})
    )
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = read_config(path)
    assert again == cfg
    assert isinstance(again.data.val_split, int) and isinstance(again.optim.lr, float)
    assert again.model.method == AdaptFormerConfig(bottleneck=(4, 8))
    with pytest.raises(ValueError, match="configuration: unknown key optim.learning_rate"):
        parse_mapping({"data": {"dataset": "synthetic"}, "optim": {"learning_rate": 0.1}})
    with pytest.raises(ValueError, match=r"unknown configuration sections \['training'\]"):
        parse_mapping({"data": {"dataset": "synthetic"}, "training": {}})


def test_cli_flags_are_typed_and_every_field_has_help() -> None:
    cfg = parse_cli(
        ["--data.dataset", "synthetic", "--optim.lr", "1e-3", "--model.kwargs", "{img_size: 32}",
         "--model.checkpoint", "null", "--data.verify_checksums", "false"]
    )  # fmt: skip
    assert (cfg.optim.lr, cfg.model.kwargs, cfg.model.checkpoint) == (1e-3, {"img_size": 32}, None)
    assert cfg.data.verify_checksums is False and cfg.optim.epochs == 100  # the rest keeps its defaults
    text = train_parser().format_help()
    assert "--optim.warmup_epochs" in text and "linear lr warmup" in text
    for section in (ModelConfig, DataConfig, OptimConfig, RunConfig):
        for f in fields(section):
            assert f"{f.name}: " in (section.__doc__ or ""), f"{section.__name__}.{f.name} has no help line"
    with pytest.raises(ValueError, match="--bottleneck is adaptformer 0.1's flag; it is now --model.method.bottleneck"):
        parse_cli(["--data.dataset", "synthetic", "--bottleneck", "8"])


# -- optimizer, schedule, precision -------------------------------------------------------------------------------


def test_lr_scaling_rule() -> None:
    assert scaled_lr(0.1, 1024) == pytest.approx(0.4)
    assert scaled_lr(0.01, 1024) == pytest.approx(0.04)


@pytest.mark.parametrize("method", ["full", "vpt"])
def test_no_weight_decay_for_norms_biases_embeddings_and_prompts(method: str) -> None:
    model = create_model(VIT, 5, method=VPTConfig(num_tokens=2) if method == "vpt" else method, **TINY)
    decay, no_decay = param_groups(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])
    if method == "full":
        assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.attn.qkv.bias"} <= undecayed
    else:
        assert {"blocks.0.vpt.tokens", "blocks.1.vpt.tokens"} <= undecayed


def test_warmup_cosine_curve_and_state() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosine(opt, peak_lr=0.4, warmup_steps=20, total_steps=100, min_lr=0.001)
    lrs = [sched.lr_at(s) for s in range(101)]
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(0.2) and lrs[20] == pytest.approx(0.4)
    assert all(a >= b for a, b in itertools.pairwise(lrs[20:]))
    assert lrs[100] == pytest.approx(0.001) and lrs[60] == pytest.approx((0.4 + 0.001) / 2)
    sched.step_count = 37
    assert sched.apply() == opt.param_groups[0]["lr"] == pytest.approx(lrs[37])
    fresh = WarmupCosine(opt, 0.4, 20, 100, 0.001)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.lr_at(fresh.step_count) == lrs[37]


def test_precision_defaults_and_scaler() -> None:
    assert resolve_precision("auto", torch.device("cpu")).name == "bf16"
    assert resolve_precision("fp16", torch.device("cpu")).grad_scaler().is_enabled()
    assert not resolve_precision("bf16", torch.device("cpu")).grad_scaler().is_enabled()


# -- data order ---------------------------------------------------------------------------------------------------


def test_batch_order_is_the_same_for_any_split_of_the_effective_batch() -> None:
    single = TrainBatchSampler(50, batch_size=4, accum_steps=2, world_size=1, rank=0, seed=3)
    ranks = [TrainBatchSampler(50, batch_size=4, accum_steps=1, world_size=2, rank=r, seed=3) for r in (0, 1)]
    for sampler in (single, *ranks):
        sampler.set_epoch(1)
    one = list(single)
    assert len(one) == 2 * 6 and single.steps_per_epoch == 6  # 50 // 8 steps, 2 leftovers dropped
    two = [list(r) for r in ranks]
    assert [b for step in zip(*two, strict=True) for b in step] == one
    flat = [i for batch in one for _, i in batch]
    assert len(set(flat)) == 48
    single.set_epoch(2)
    assert list(single) != one
    single.set_epoch(1, start_step=4)
    assert list(single) == one[8:]
    with pytest.raises(ValueError, match="fewer than one optimizer step"):
        TrainBatchSampler(7, batch_size=4, accum_steps=2)


def test_shards_cover_each_sample_exactly_once() -> None:
    shards = [list(ShardSampler(11, world_size=3, rank=r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(11))


def test_grouped_shards_keep_each_group_whole_on_one_process() -> None:
    shards = [list(ShardSampler(15, world_size=2, rank=r, group=3)) for r in range(2)]
    assert shards == [[0, 1, 2, 6, 7, 8, 12, 13, 14], [3, 4, 5, 9, 10, 11]]
    with pytest.raises(ValueError, match="cannot be cut into groups of 3"):
        ShardSampler(10, group=3)


def test_augmentation_is_seeded_per_epoch_and_sample() -> None:
    from adaptformer.data import build_image_transform
    from adaptformer.preprocessing import Preprocessing

    data = load_image_split("synthetic", None, "train", options={"num_samples": 8})
    seeded = SeededSamples(with_transform(data, build_image_transform(Preprocessing(input_size=(3, 16, 16)), True)), 7)
    first = seeded[(0, 3)][0]
    torch.rand(5)  # global RNG state does not matter
    assert torch.equal(seeded[(0, 5)][0], seeded[(0, 5)][0]) and torch.equal(seeded[(0, 3)][0], first)
    assert not torch.equal(seeded[(1, 3)][0], first)


# -- the loop -----------------------------------------------------------------------------------------------------


def _loop_parts(model: nn.Module, lr: float):
    opt = build_optimizer(model, "sgd", lr)
    sched = WarmupCosine(opt, lr, 0, 10)
    precision = resolve_precision("fp32", torch.device("cpu"))
    return opt, sched, precision, precision.grad_scaler()


def test_gradient_accumulation_matches_one_large_batch() -> None:
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    results = []
    for accum in (1, 2):
        torch.manual_seed(0)
        model = create_model(VIT, 4, head="linear", method=AdaptFormerConfig(dropout=0.0, init="bert"), **TINY)
        opt, sched, precision, scaler = _loop_parts(model, 0.5)
        size = 8 // accum
        batches = [(x[i : i + size], y[i : i + size], torch.arange(size)) for i in range(0, 8, size)]
        stats = train_one_epoch(
            model, batches, nn.CrossEntropyLoss(), opt, sched, precision, scaler, CPU, epoch=0, accum_steps=accum
        )
        assert stats.steps == 1 and stats.samples == 8
        results.append([p.detach().clone() for p in model.parameters() if p.requires_grad])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_non_finite_loss_stops_before_the_update() -> None:
    model = create_model(VIT, 4, **TINY)
    opt, sched, precision, scaler = _loop_parts(model, 0.1)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    batches = [(torch.full((4, 3, 32, 32), float("nan")), torch.arange(4), torch.arange(4))]
    with pytest.raises(NonFiniteLossError, match="training loss is nan"):
        train_one_epoch(model, batches, nn.CrossEntropyLoss(), opt, sched, precision, scaler, CPU, epoch=0)
    after = [p for p in model.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_gradient_clipping_bounds_the_first_update() -> None:
    model = create_model(VIT, 4, method=AdaptFormerConfig(dropout=0.0, init="bert"), **TINY)
    opt, sched, precision, scaler = _loop_parts(model, 1.0)
    before = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    batches = [(torch.randn(4, 3, 32, 32), torch.arange(4), torch.arange(4))]
    train_one_epoch(model, batches, nn.CrossEntropyLoss(), opt, sched, precision, scaler, CPU, epoch=0, clip_grad=0.01)
    after = torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])
    assert 0 < (after - before).norm() <= 1.0 * 0.01 + 1e-6  # SGD's first step moves lr x clipped gradient


def test_classification_metrics() -> None:
    logits = torch.tensor(
        [[5.0, 1, 0, 0, 0, 0, 0, 0], [0, 5.0, 1, 0, 0, 0, 0, 0], [-1, 0.1, 0.2, 0.3, 0.4, 5, 1, 2]]
    )  # top-1 hit; top-5 hit only; miss
    labels = torch.tensor([0, 2, 0])
    m = classification_metrics(Predictions(logits, labels, torch.arange(3)))
    assert m["n"] == 3 and m["acc1"] == pytest.approx(100 / 3) and m["acc5"] == pytest.approx(200 / 3)
    assert m["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item())


def test_progress_writes_log_lines_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adaptformer.engine.progress")
    progress = Progress(4, "epoch 1/1", log_every=2, stream=io.StringIO())
    for _ in range(4):
        progress.update(loss=0.5, lr=0.1)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "[4/4]" in lines[1] and "loss 0.5" in lines[1] and "eta" in lines[1]


# -- runs: outputs, resume, bad input -----------------------------------------------------------------------------


def test_run_writes_metrics_config_adapter_and_test(tmp_path: Path, backbone_file: Path) -> None:
    result = train(tiny_config(tmp_path, backbone_file, epochs=3, select="best"))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]  # numbered from 1, as the progress lines and the log say
    assert {"epoch", "lr", "train_loss", "val_acc1", "val_acc5", "seconds", "images/s"} <= set(records[0])
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    best = max(records, key=lambda r: (r["val_acc1"], -r["epoch"]))["epoch"]
    assert result.best_epoch == best and result.test["epoch"] == best and result.test["n"] == 48
    assert json.loads((tmp_path / "test.json").read_text())["acc1"] == result.test["acc1"]
    assert read_config(tmp_path / "config.yaml") == tiny_config(tmp_path, backbone_file, epochs=3)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    info = read_adapter_config(tmp_path / "adapter")
    assert info.classes[0] == "class_0" and info.training.dataset == "synthetic"
    assert info.source.kwargs["img_size"] == 32
    assert not (tmp_path / "adapter" / "task.json").exists()  # one description of the adapter


def test_resume_after_a_stop_matches_an_uninterrupted_run_bit_for_bit(tmp_path: Path, backbone_file: Path) -> None:
    cfg = tiny_config(tmp_path / "a", backbone_file, select="last", adapter_dropout=0.1)  # dropout: RNG must resume
    full = train(cfg)
    stopped = train(changed(cfg, output_dir=str(tmp_path / "b"), stop_after_steps=3))  # mid-epoch 1 (2 per epoch)
    assert stopped.stopped_early and stopped.test is None
    state = load_training_state(tmp_path / "b" / "checkpoint.pt")
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 3)
    resumed = train(changed(cfg, output_dir=str(tmp_path / "b"), resume=True))
    a = load_file(str(tmp_path / "a" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    measured = ("peak_memory_mb",)  # the process's own peak, which differs between runs
    assert {k: v for k, v in resumed.test.items() if k not in measured} == {
        k: v for k, v in full.test.items() if k not in measured
    }

    def losses(d: str) -> list:
        return [
            (r["epoch"], r["train_loss"], r["val_acc1"]) for r in map(json.loads, open(tmp_path / d / "metrics.jsonl"))
        ]

    assert losses("a") == losses("b")


def test_resume_refuses_a_different_configuration(tmp_path: Path, backbone_file: Path) -> None:
    cfg = tiny_config(tmp_path, backbone_file, epochs=1, stop_after_steps=1)
    train(cfg)
    with pytest.raises(TrainingStateError, match="optim.blr"):
        train(changed(cfg, blr=0.5, resume=True, stop_after_steps=None))


def test_nan_loss_stops_the_run_and_keeps_the_last_good_state(tmp_path: Path, backbone_file: Path) -> None:
    cfg = tiny_config(tmp_path, backbone_file, epochs=2, warmup_epochs=0, lr=1e30, save_every_steps=1, head="linear")
    with pytest.raises(NonFiniteLossError, match="The last saved training state is intact"):
        train(cfg)
    state = load_training_state(tmp_path / "checkpoint.pt")
    assert state["global_step"] >= 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_fp16_run_saves_its_grad_scaler_and_drop_path_reaches_the_backbone(tmp_path: Path, backbone_file: Path) -> None:
    cfg = tiny_config(tmp_path, backbone_file, precision="fp16", drop_path=0.2, stop_after_steps=1)
    train(cfg)
    scaler = load_training_state(tmp_path / "checkpoint.pt")["scaler"]
    assert scaler["scale"] > 0 and "_growth_tracker" in scaler
    model = build_model(cfg, 10)
    assert model.blocks[1].drop_path1.drop_prob == pytest.approx(0.2)


def test_tensorboard_is_optional(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = MetricsLog(tmp_path, tensorboard=True)
    log.append({"epoch": 0, "train_loss": float("nan")})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"epoch": 0, "train_loss": None}
    if importlib.util.find_spec("tensorboard") is None:
        assert "not installed" in caplog.text and log.writer is None
    else:
        assert (tmp_path / "tensorboard").is_dir()


def test_training_state_file_is_checked(tmp_path: Path) -> None:
    entries = {"config": {}, "epoch": 2, "step_in_epoch": 0, "global_step": 0, "best_val": None,
               "best_epoch": None, "epoch_stats": {}, "model": {"w": torch.ones(2)}, "optimizer": {},
               "scheduler": {}, "scaler": {}, "rng": []}  # fmt: skip
    path = save_training_state(tmp_path / "state.pt", entries)
    assert load_training_state(path)["epoch"] == 2
    save_training_state(path, {"epoch": 2, "model": {"w": torch.ones(2)}})
    with pytest.raises(TrainingStateError, match=r"missing entries \['best_epoch', 'best_val', 'config'"):
        load_training_state(path)
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingStateError, match="cannot be read"):
        load_training_state(path)


def test_a_version_1_training_state_reads_its_best_top1_as_best_val(tmp_path: Path) -> None:
    entries = {"format": "adaptformer-training-state", "format_version": 1, "config": {}, "epoch": 2,
               "step_in_epoch": 0, "global_step": 0, "best_val_acc1": 71.5, "best_epoch": 1, "epoch_stats": {},
               "model": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": []}  # fmt: skip
    torch.save(entries, tmp_path / "state.pt")
    state = load_training_state(tmp_path / "state.pt")
    assert state["best_val"] == 71.5 and "best_val_acc1" not in state


def test_lr_is_logged_with_the_effective_batch(tmp_path: Path, backbone_file: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="adaptformer.engine.train")
    train(tiny_config(tmp_path, backbone_file, epochs=1, warmup_epochs=0, stop_after_steps=1))
    text = caplog.text
    assert "effective batch 16 = 8 per device x 2 accumulation x 1 devices; lr 0.125 (blr 2 x 16 / 256)" in text
    assert math.isclose(scaled_lr(2.0, 16), 0.125)
