"""The command-line side of task types: ``serve --threshold TASK=VALUE`` is checked (its form, its range, that the
task exists and is multi-label) before anything is served, and ``predict`` with several ``--adapter``, which prints
single-label top-k, refuses multi-label and segmentation tasks by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tests.inference.task_adapters import image_task_adapters

from adaptformer.cli import main


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return image_task_adapters(tmp_path_factory.mktemp("flags"))


def _serve(adapters: dict[str, Path], threshold: str) -> list[str]:
    return [
        "serve",
        "--adapter",
        str(adapters["animals"]),
        "--adapter",
        str(adapters["tags"]),
        "--threshold",
        threshold,
    ]


@pytest.mark.parametrize("value", ["tags", "tags=1.5", "tags=nan", "=0.3", "tags=0"])
def test_a_malformed_serve_threshold_is_a_usage_error(
    adapters: dict[str, Path], capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(_serve(adapters, value))
    assert exit_.value.code == 2
    assert f"expected TASK=VALUE with VALUE in (0, 1), e.g. tags=0.3; got {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("cars=0.3", "--threshold cars=0.3: no task 'cars'; the tasks are ['animals', 'tags']"),
        ("animals=0.3", "task 'animals' is a single-label task; a threshold applies to multi-label tasks"),
    ],
)
def test_a_serve_threshold_names_a_multi_label_task_or_nothing_is_served(
    adapters: dict[str, Path], capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    assert main(_serve(adapters, value)) == 2  # before the server starts: main returns
    assert message in capsys.readouterr().err


def test_predict_with_several_adapters_names_the_tasks_it_cannot_print(
    adapters: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    argv = ["predict", *(a for d in adapters.values() for a in ("--adapter", str(d))), str(tmp_path / "x.png")]
    assert main(argv) == 2
    assert "tags (multi-label), scene (segmentation) answer otherwise" in capsys.readouterr().err
