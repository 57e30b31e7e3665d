"""One frozen backbone, many tasks: mixed-task batches equal each sample through its own single-task model, for
several methods, head sizes and orders; loading checks; adding and removing tasks; ``classify``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from tests.training_step import move_trainable

from adaptformer import create_model, save_adapter, saving
from adaptformer.inference.multitask import MultiTaskModel, UnknownTaskError
from adaptformer.methods import AdapterPlusConfig, AdaptFormerConfig, state
from adaptformer.saving import AdapterFileError, create_model_from_adapter

NAME = "vit_shapes_patch8_32"  # the shipped tiny backbone (6 blocks, width 128), weights from the package
ATOL = 1e-5  # fp32: only the batched products' rounding differs between a mixed batch and one task's own batch


def _adapter(root: Path, name: str, method, classes: int, seed: int, checkpoint: str = "timm") -> Path:
    torch.manual_seed(seed)
    model = move_trainable(create_model(NAME, classes, method=method, checkpoint=checkpoint), 0.2)
    return save_adapter(model, root / name / "adapter", classes=[f"{name}{i}" for i in range(classes)])


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "af8": _adapter(root, "af8", AdaptFormerConfig(bottleneck=8), 10, 0),
        "af16_seq": _adapter(
            root, "af16_seq", AdaptFormerConfig(bottleneck=16, form="sequential", layers=[1, 4]), 3, 1
        ),
        "af4_ln": _adapter(root, "af4_ln", AdaptFormerConfig(bottleneck=4, layernorm="in", scale=1.0), 7, 2),
        "linear": _adapter(root, "linear", "linear", 5, 3),
        "aplus": _adapter(root, "aplus", AdapterPlusConfig(bottleneck=4), 6, 4),
    }


def _singles(dirs: dict[str, Path]) -> dict[str, torch.nn.Module]:
    return {name: create_model_from_adapter(d).eval() for name, d in dirs.items()}


@pytest.mark.parametrize(
    "names",
    [("af8", "af16_seq", "af4_ln", "linear"), ("aplus", "linear"), ("af8",)],
    ids=["adaptformer-sizes-and-linear", "adapter_plus-and-linear", "one-task"],
)
@pytest.mark.parametrize("order_seed", [0, 1])
def test_a_mixed_batch_equals_each_sample_through_its_own_model(
    adapters: dict[str, Path], names: tuple[str, ...], order_seed: int
) -> None:
    dirs = {n: adapters[n] for n in names}
    multi = MultiTaskModel.from_adapters(list(dirs.values()), list(dirs)).eval()
    singles = _singles(dirs)
    generator = torch.Generator().manual_seed(order_seed)
    ids = torch.randint(0, len(names), (11,), generator=generator)
    if len(names) > 2:
        ids[ids == len(names) - 1] = 0  # the last task has no sample in this batch
    x = torch.randn(11, 3, 32, 32, generator=generator)
    with torch.no_grad():
        out = multi(x, ids)
        for k, name in enumerate(names):
            rows = (ids == k).nonzero().squeeze(1)
            if not len(rows):
                assert name not in out
                continue
            expected = singles[name](x[rows])  # the task's own model on its samples
            assert out[name].shape == (len(rows), singles[name].num_classes)
            torch.testing.assert_close(out[name], expected, atol=ATOL, rtol=0)
            for j, row in enumerate(rows.tolist()):  # and one sample at a time: batch of 1
                torch.testing.assert_close(out[name][j], singles[name](x[row : row + 1])[0], atol=ATOL, rtol=0)


def test_the_backbone_is_loaded_once_and_shared(adapters: dict[str, Path]) -> None:
    one = MultiTaskModel.from_adapters([adapters["af8"]], ["a"])
    many = MultiTaskModel.from_adapters([adapters[n] for n in ("af8", "af16_seq", "af4_ln", "linear")])
    frozen = {id(p) for p in many.trunk.parameters()}
    for name in many.tasks:
        task_params = list(many.task_model(name).parameters())
        assert all(id(p) in frozen for p in task_params if not p.requires_grad)  # no copy of the backbone per task

    def size(model: MultiTaskModel) -> int:
        unique = {id(t): t for t in (*model.parameters(), *model.buffers())}
        return sum(t.numel() for t in unique.values())

    plain = many._plain[0]  # the backbone as loaded, whose tensors every task shares
    trunk = {id(t) for t in (*plain.parameters(), *plain.buffers())}
    own = {id(t): t for n in many.tasks[1:] for m in [many.task_model(n)] for t in (*m.parameters(), *m.buffers())
           if id(t) not in trunk}  # fmt: skip
    assert size(many) - size(one) == sum(t.numel() for t in own.values())  # only the other tasks' adapters and heads
    assert sum(t.numel() for t in own.values()) < 0.02 * size(one)
    assert many.tasks == ("af8", "af16_seq", "af4_ln", "linear")  # named after the run folders


def test_switching_adding_and_removing_tasks_leaves_the_others_alone(adapters: dict[str, Path]) -> None:
    multi = MultiTaskModel.from_adapters([adapters["af8"], adapters["linear"]]).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = multi(x, multi.task_ids(["af8"] * 4))["af8"]
        multi.add_task("seq", adapters["af16_seq"])
        multi.add_task("other", adapters["af4_ln"])
        assert torch.equal(multi(x, multi.task_ids(["af8"] * 4))["af8"], before)
        multi.remove_task("other")
        assert multi.tasks == ("af8", "linear", "seq")
        assert torch.equal(multi(x, multi.task_ids(["af8"] * 4))["af8"], before)
        only_seq = multi(x, multi.task_ids(["seq"] * 4))["seq"]
        torch.testing.assert_close(
            only_seq, create_model_from_adapter(adapters["af16_seq"]).eval()(x), atol=ATOL, rtol=0
        )
    with pytest.raises(UnknownTaskError, match=r"unknown task 'other'; this model has \['af8', 'linear', 'seq'\]"):
        multi.remove_task("other")


def test_another_backbone_is_refused_naming_the_adapter(adapters: dict[str, Path], tmp_path: Path) -> None:
    # the same architecture, other weights (no checkpoint: random init): the fingerprint differs
    other = _adapter(tmp_path, "random", AdaptFormerConfig(bottleneck=8), 4, 5, checkpoint=None)
    multi = MultiTaskModel.from_adapters([adapters["af8"]])
    with pytest.raises(AdapterFileError, match=rf"{other}: the backbone weights differ .*fingerprint"):
        multi.add_task("random", other)
    assert multi.tasks == ("af8",)


def test_the_backbone_is_hashed_once_per_method_and_another_backbone_still_refused(
    adapters: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed = []
    original = state.backbone_fingerprint

    def counting(model: torch.nn.Module) -> str | None:
        hashed.extend([] if getattr(model, state.FINGERPRINT_ATTR, None) else [model])
        return original(model)

    monkeypatch.setattr(state, "backbone_fingerprint", counting)
    monkeypatch.setattr(saving, "backbone_fingerprint", counting)
    root = tmp_path / "same"
    dirs = [_adapter(root, f"t{k}", AdaptFormerConfig(bottleneck=8), 10, k) for k in range(5)]
    multi = MultiTaskModel.from_adapters(dirs[:4]).eval()
    first = len(hashed)
    multi.add_task("t4", dirs[4])
    assert len(hashed) == first  # tasks 2.. and later ones of the same method spec reuse the first one's hash
    # the same spec on other backbone weights (random init): still refused, against the remembered fingerprint
    other = _adapter(tmp_path, "random", AdaptFormerConfig(bottleneck=8), 10, 5, checkpoint=None)
    with pytest.raises(AdapterFileError, match=rf"{other}: the backbone weights differ .*fingerprint"):
        multi.add_task("random", other)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            multi(x, multi.task_ids(["t4"] * 3))["t4"], create_model_from_adapter(dirs[4]).eval()(x),
            atol=ATOL, rtol=0,
        )  # fmt: skip


def test_methods_that_make_one_block_their_own_and_bad_names_are_refused(adapters: dict[str, Path]) -> None:
    with pytest.raises(TypeError, match="AdaptFormer and Adapter\\+ tasks cannot adapt the same blocks"):
        MultiTaskModel.from_adapters([adapters["af8"], adapters["aplus"]])
    multi = MultiTaskModel.from_adapters([adapters["af8"]])
    with pytest.raises(TypeError, match="cannot adapt the same blocks"):
        multi.add_task("aplus", adapters["aplus"])
    assert multi.tasks == ("af8",) and all(list(r.tasks) == ["af8"] for r in multi.routers.values())
    with pytest.raises(ValueError, match=r"task name 'v1.2' .*without '\.'"):
        multi.add_task("v1.2", adapters["linear"])
    for reserved in ("half", "eval", "forward"):  # attributes of the ModuleDicts the tasks are keys of
        with pytest.raises(ValueError, match=rf"task name '{reserved}' .* is reserved"):
            multi.add_task(reserved, adapters["linear"])
    with pytest.raises(ValueError, match="two adapters would be task 'adapter'"):
        MultiTaskModel.from_adapters([adapters["af8"], adapters["linear"]], ["adapter", "adapter"])


def test_classify_runs_every_image_for_every_task(adapters: dict[str, Path]) -> None:
    dirs = [adapters[n] for n in ("af8", "af16_seq", "linear")]
    multi = MultiTaskModel.from_adapters(dirs, max_batch=4)  # 3 images x 3 tasks: chunks of 4, 4, 1
    images = [Image.new("RGB", (40, 36), (40 * i, 200 - 30 * i, 90)) for i in range(3)]
    results = multi.classify(images, top_k=2)
    assert [sorted(r) for r in results] == [["af16_seq", "af8", "linear"]] * 3
    for image, result in zip(images, results, strict=True):
        for name in ("af8", "linear"):
            single = multi.task_model(name)
            x = _eval_tensor(multi, name, image).unsqueeze(0)
            with torch.no_grad():
                probs = single(x)[0].softmax(0)
            top = probs.topk(2)
            assert [c for c, _, _ in result[name]] == [f"{name}{i}" for i in top.indices.tolist()]
            assert [p for _, _, p in result[name]] == pytest.approx(top.values.tolist(), abs=1e-5)
    chosen = multi.classify(images[:1], [["linear"]], top_k=9)
    assert list(chosen[0]) == ["linear"] and len(chosen[0]["linear"]) == 5  # top-k capped at the class count
    with pytest.raises(UnknownTaskError, match="unknown task 'cars'"):
        multi.classify(images[:1], [["cars"]])


def _eval_tensor(multi: MultiTaskModel, name: str, image: Image.Image) -> torch.Tensor:
    from adaptformer.data import build_image_transform

    return build_image_transform(multi.task(name).preprocessing, train=False)(image)


def test_predict_with_several_adapters_prints_every_tasks_top_k(
    adapters: dict[str, Path], tmp_path: Path, capsys
) -> None:
    from adaptformer.cli import main

    files = []
    for i in range(2):
        Image.new("RGB", (32, 32), (60 * i, 120, 200 - 50 * i)).save(tmp_path / f"{i}.png")
        files.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    single = {}
    for name in ("af8", "linear"):
        # fp32: in bf16 a batch of 2 and two batches of 1 round differently on some CPUs (oneDNN picks kernels by
        # shape), enough to swap near-tied classes
        assert main(["predict", "--adapter", str(adapters[name]), "--top-k", "3", "--precision", "fp32", "--json",
                     *files]) == 0  # fmt: skip
        single[name] = [json.loads(line)["top"] for line in capsys.readouterr().out.strip().splitlines()]
    argv = ["predict", "--adapter", str(adapters["af8"]), "--adapter", str(adapters["linear"]), "--top-k", "3",
            "--precision", "fp32"]  # fmt: skip
    assert main([*argv, "--json", files[0], str(tmp_path / "bad.png"), files[1]]) == 2
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.strip().splitlines()]
    assert [r["file"] for r in rows] == [files[0], str(tmp_path / "bad.png"), files[1]]
    assert all("cannot" in r["error"] or "decode" in r["error"] for r in rows[1]["tasks"].values())
    for row, expected in ((rows[0], 0), (rows[2], 1)):
        for task in ("af8", "linear"):
            got, want = row["tasks"][task]["top"], single[task][expected]
            assert [t["class"] for t in got] == [t["class"] for t in want]
            assert [t["prob"] for t in got] == pytest.approx([t["prob"] for t in want], abs=1e-5)
    assert "2 of 6 (file, task) pairs could not be classified" in captured.err
    assert main([*argv, files[0]]) == 0  # text: one line per file and task
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"{files[0]} [af8]", f"{files[0]} [linear]"]


def test_multi_task_predict_reads_each_adapter_config_once(
    adapters: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.2 read each adapter_config.json up to three times (the overrides, the model, the precisions)."""
    import adaptformer.saving as saving
    from adaptformer.cli import main

    reads: list[Path] = []
    read_json = saving._read_json

    def counting(path: Path) -> dict:
        reads.append(Path(path))
        return read_json(path)

    monkeypatch.setattr(saving, "_read_json", counting)
    Image.new("RGB", (32, 32), (60, 120, 200)).save(tmp_path / "0.png")
    names = ("af8", "linear")
    argv = [arg for name in names for arg in ("--adapter", str(adapters[name]))]
    assert main(["predict", *argv, "--model.init_seed", "0", str(tmp_path / "0.png")]) == 0  # an override too
    assert sorted(reads) == sorted(adapters[name] / "adapter_config.json" for name in names)
