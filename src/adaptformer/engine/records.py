"""What a run leaves behind besides weights: ``metrics.jsonl`` (one JSON object per epoch), ``test.json`` (the final,
separately reported test evaluation) and, when asked for and installed, TensorBoard scalars.

Epochs are numbered from 1 wherever a user reads them (``"epoch": 1`` is the first epoch, finished). Only the main
process writes. On resume, epochs that the restored training state has not finished are dropped from
``metrics.jsonl`` so that re-running them does not duplicate lines.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from ..files import append_text, atomic_write_bytes, writing

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TEST_FILE = "test.json"
TENSORBOARD_DIR = "tensorboard"


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def peak_memory(device: torch.device) -> dict[str, Any]:
    """The process's peak memory so far, for the run's report: on CUDA the most tensor memory PyTorch allocated on
    ``device`` (``torch.cuda.max_memory_allocated``), elsewhere the process's peak resident set size (``ru_maxrss``,
    which counts everything the process held: Python, the backbone, data loading)."""
    if device.type == "cuda":
        return {"peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20, "memory": "cuda max allocated"}
    import resource  # POSIX only, as is the rest of the run folder's handling

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB (macOS would say bytes)
    return {"peak_memory_mb": kib / 1024, "memory": "process max RSS"}


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps({k: _clean(v) for k, v in data.items()}, indent=2) + "\n").encode())


class MetricsLog:
    """Append-only per-epoch records in ``<output_dir>/metrics.jsonl``, mirrored to TensorBoard if requested.

    Args:
        output_dir: the run's folder.
        enabled: False on non-main processes (nothing is written).
        tensorboard: also write scalars to ``<output_dir>/tensorboard`` (skipped with a warning if not installed).
    """

    def __init__(self, output_dir: Path, enabled: bool = True, tensorboard: bool = False) -> None:
        self.path = output_dir / METRICS_FILE
        self.tensorboard_dir = output_dir / TENSORBOARD_DIR
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            if importlib.util.find_spec("tensorboard") is None:
                logger.warning("TensorBoard was asked for but is not installed (pip install tensorboard); skipping it")
            else:
                from torch.utils.tensorboard import SummaryWriter

                with writing(self.tensorboard_dir):
                    self.writer = SummaryWriter(str(self.tensorboard_dir))

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def keep_finished(self, epochs: int) -> None:
        """Keep the records of the first ``epochs`` epochs, drop later ones (they will be run again after a resume).

        A file that numbers epochs from 0 (written before they were numbered from 1) is renumbered.
        """
        if not self.enabled or not self.path.is_file():
            return
        records = self.read()
        if records and records[0]["epoch"] == 0:
            logger.info("%s numbers epochs from 0: renumbered from 1", self.path)
            records = [{**r, "epoch": r["epoch"] + 1} for r in records]
        kept = [r for r in records if r["epoch"] <= epochs]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {k: _clean(v) for k, v in record.items()}
        append_text(self.path, json.dumps(record) + "\n")
        if self.writer is not None:
            with writing(self.tensorboard_dir):  # an OSError in its writer thread is raised at a later call
                for key, value in record.items():
                    if key != "epoch" and isinstance(value, (int, float)):
                        self.writer.add_scalar(key.replace("/", "_per_"), value, record["epoch"])
                self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            with writing(self.tensorboard_dir):
                self.writer.close()
